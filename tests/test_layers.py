"""The layered house: every import in src/retouch (function-level ones included) points down.

core (schedule, latents, inversion, …) ← methods ← the public package `retouch` (the editing runtime)
← ShapesWorld (`retouch.shapes`: the world, its model's architecture and training, the judge) ← apps
(cli, ui, bench, batch) ← the root command (`retouch.main`). No app imports another app; the import
graph has no cycle. Lazy references ("retouch.cli:edit", importlib.import_module("retouch.x")) count too.
Importing the runtime and editing with it loads no app, no ShapesWorld and no app's dependency.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
APPS = ("cli", "ui", "bench", "batch")
LAZY = re.compile(r"^(retouch(?:\.\w+)*)(?::\w+)?$")


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name → file."""
    out = {}
    for path in (SRC / "retouch").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The retouch modules a file imports anywhere in it, and those it names lazily."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = LAZY.match(node.value)
            if m and "." in m.group(1):
                found.add(m.group(1))
    resolved = {_resolve(n, known) for n in found if n.split(".")[0] == "retouch"}
    return {r for r in resolved if r is not None}


def rank(module: str) -> int:
    """0 core, 1 methods, 2 the public package, 3 ShapesWorld, 4 apps, 5 the root command."""
    parts = module.split(".")
    if module in ("retouch.main", "retouch.__main__"):
        return 5
    if len(parts) > 1 and parts[1] in APPS:
        return 4
    if len(parts) > 1 and parts[1] == "shapes":
        return 3
    if module == "retouch":
        return 2
    if len(parts) > 1 and parts[1] == "methods":
        return 1
    return 0


def app(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in APPS else None


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: imports(p, known) - {m} for m, p in known.items()}


def violations(g: dict[str, set[str]]) -> list[str]:
    out = []
    for m, targets in sorted(g.items()):
        for t in sorted(targets):
            if rank(t) > rank(m):
                out.append(f"{m} imports {t}: upward (layer {rank(m)} → {rank(t)})")
            elif app(m) and app(t) and app(m) != app(t):
                out.append(f"{m} imports {t}: one app importing another")
    return out


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by depth-first search (each reported once, from its smallest module)."""
    found, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for t in sorted(g.get(m, ())):
            if state.get(t) == "open":
                cyc = stack[stack.index(t) :] + [t]
                found.append(cyc)
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return found


def test_imports_point_down_and_no_app_imports_another():
    assert violations(graph()) == []


def test_the_import_graph_has_no_cycle():
    assert cycles(graph()) == []


def test_the_checker_sees_function_level_and_lazy_imports(tmp_path):
    """The checks fail on what they are meant to catch."""
    g = {
        "retouch.schedule": {"retouch.cli"},  # core reaching up into an app
        "retouch.ui.app": {"retouch.bench.edits"},  # an app importing another
        "retouch.latents": {"retouch.types"},
        "retouch.types": {"retouch.latents"},  # a cycle
    }
    assert len(violations(g)) == 2
    assert violations({"retouch.models": {"retouch.shapes.world"}}) == [
        "retouch.models imports retouch.shapes.world: upward (layer 0 → 3)"
    ]
    assert violations({"retouch.bench.cases": {"retouch.shapes.world"}}) == []
    assert cycles(g) == [["retouch.latents", "retouch.types", "retouch.latents"]]
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from retouch.cli import edit\n\nLAZY = 'retouch.ui.command:ui'\n")
    known = {"retouch.cli": Path(), "retouch.ui.command": Path(), "retouch.ui": Path()}
    assert imports(src, known) == {"retouch.cli", "retouch.ui.command"}


@pytest.mark.parametrize("needle", [r"\bprint\(", r"set_num_threads\(", r"\btqdm\b", r"sys\.std(out|err)"])
def test_the_library_neither_prints_nor_draws_nor_sets_global_state(needle):
    """Core and methods leave output and threads to the apps (`shell` draws bars for them)."""
    offenders = [
        m
        for m, p in modules().items()
        if rank(m) <= 3 and m != "retouch.shell" and re.search(needle, p.read_text())
    ]
    assert offenders == []


APP_MODULES = ("retouch.shapes", "retouch.bench", "retouch.ui", "retouch.batch", "retouch.cli")
APP_DEPENDENCIES = ("gradio", "ray", "matplotlib")
EDIT_WITH_THE_RUNTIME = """
import json, sys
import numpy as np
import retouch
light = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "diffusers", "transformers"})
for name in retouch.__all__:
    getattr(retouch, name)
model = retouch.load(device="cpu")
image = np.full((64, 64, 3), 255, np.uint8)
image[20:44, 20:44] = (255, 0, 0)
retouch.diffedit(model, image, query="a blue square", reference="a red square", num_inference_steps=2,
                 mask_samples=1)
retouch.ledits(model, image, add=["blue square"], remove=["red square"], num_inference_steps=2,
               skip=0)
print(json.dumps(dict(light=light, loaded=sorted(sys.modules))))
"""


def _loaded(code: str) -> dict:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def _apps_in(loaded: list[str]) -> list[str]:
    names = APP_MODULES + APP_DEPENDENCIES
    return sorted(m for m in loaded if any(m == n or m.startswith(n + ".") for n in names))


def test_import_retouch_and_an_edit_with_each_method_load_no_app_and_no_shapesworld():
    """The editing runtime stands alone: `import retouch` loads no heavy library, and loading the
    shipped model and editing with both methods imports neither ShapesWorld, the benchmark, the
    apps nor their dependencies (gradio, ray, matplotlib)."""
    seen = _loaded(EDIT_WITH_THE_RUNTIME)
    assert seen["light"] == []
    assert "retouch.methods.ledits" in seen["loaded"] and "retouch.models" in seen["loaded"]
    assert _apps_in(seen["loaded"]) == []


def test_the_light_import_check_sees_an_app_when_one_is_loaded():
    """The check above fails when the runtime pulls in an app: here the benchmark's cases."""
    seen = _loaded(
        "import json, sys, retouch.bench.cases; print(json.dumps(dict(loaded=sorted(sys.modules))))"
    )
    assert {"retouch.bench.cases", "retouch.shapes.world"} <= set(_apps_in(seen["loaded"]))
