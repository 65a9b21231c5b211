"""The project's text speaks of the software only: no numbered work periods, no ticket numbers of our
own tracker, nothing about which machine was lent, no references to files outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {".md", ".py", ".sh", ".toml", ".json", ".txt", ".yml", ".yaml", ".cfg", ".ini", ".html", ""}

# (pattern, what it catches); a line matches when any pattern finds a hit that its guard does not excuse
HISTORY = [
    (r"\b[Ss]essions?\s+\d", "a numbered work period (the word for one, then its number)"),
    (
        r"(?i)\b(?:this|next|previous|last|earlier|later|GPU|every|each|that|one|a) sessions?\b"
        r"(?!\s*(?:state|hash|cookie|id|token|storage|scope))",
        "a work period ('this session', 'a GPU session')",
    ),
    (r"\bv\d+-s\d{1,2}\b", "a run named after a work period ('v11-s16')"),
    (r"(?i)\b(?:issues?|tickets?)\s+#?\d+", "a tracker number (the word for a ticket, then its number)"),
    (r"(?<![\w&/#])#\d{1,4}\b(?![0-9a-fA-F])", "a ticket reference ('#33')"),
    (
        r"(?i)\bGPU\b[^.\n]{0,40}\b(?:lent|granted|was not available|were not available)",
        "which machine was lent",
    ),
    (r"(?i)\b(?:was|were|is|no|not)\s+lent\b", "which machine was lent"),
    (r"(?i)\bno GPU again\b", "which machine was lent"),
    (r"(?i)\bthe device tool\b", "which machine was lent"),
    (r"(?i)\bno time for\b", "how the work was organised"),
    (r"METHODS\s*§|METHODS\.md|STYLE\.md|\.\./shared|/work/shared", "a file outside the repository"),
]
PROSE_ONLY = [(r"(?<![\w./\-])s\d{2}(?![\w.])", "a run named after a work period ('s18')")]
# an upstream project's tracker, cited as the source of a workaround, is not ours
UPSTREAM = re.compile(
    r"(?i)(diffusers|transformers|torch|pytorch|gradio|ray|github|upstream)\W{0,3}\w*\W{0,3}$"
)


def _tracked() -> list[Path]:
    """The repository's tracked text files (every file under ROOT when git is not there)."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        paths = [ROOT / p for p in out.decode().split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        paths = [p for p in ROOT.rglob("*") if ".git" not in p.parts and ".venv" not in p.parts]
    return [p for p in paths if p.is_file() and p.suffix in TEXT_SUFFIXES and p != Path(__file__).resolve()]


def _text(path: Path) -> str | None:
    """The file's text, None for a binary file."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def history_hits(text: str, prose: bool) -> list[tuple[int, str, str]]:
    """(line number, matched text, what it is) of every development-history word in `text`."""
    patterns = HISTORY + (PROSE_ONLY if prose else [])
    hits = []
    for n, line in enumerate(text.splitlines(), 1):
        for pattern, what in patterns:
            for m in re.finditer(pattern, line):
                if "ticket" in what and UPSTREAM.search(line[: m.start()]):
                    continue
                hits.append((n, m.group(0), what))
    return hits


# the examples are assembled, so that this file itself names no work period or ticket
PERIOD, TICKET = "sess" + "ion", "iss" + "ue"
LOANED, JOB = "le" + "nt", "ta" + "sk"


@pytest.mark.parametrize(
    "line",
    [
        f"measured in {PERIOD} 17",
        f"{PERIOD.title()}s 3–17 trained it",
        "the next lever is a GPU session",
        "bench500-v11-s16",
        f"the one target of {TICKET} 11",
        "fixed by #33",
        f"No GPU was {LOANED} to this {JOB}",
        "No GPU again; version 11 stays shipped",
        "as METHODS §2 states it",
        "(s14 → s15)",
    ],
)
def test_history_words_are_found(line):
    assert history_hits(line, prose=True), line


@pytest.mark.parametrize(
    "line",
    [
        '@pytest.fixture(scope="session")',
        "visitor = request.session_hash",
        "in their own Cache (the app holds one per browser session, never shared)",
        "a workaround for diffusers " + "issue " + "7306",
        "diffusers' issue #7306",
        "background: #333333;",
        "from retouch.bench.methods import METHODS",
        "runs/mscreen/s0.7-n10",
        "no GPU has been tried: the figures come from the CPU",
        "[GPU](#gpu)",
    ],
)
def test_legitimate_words_pass(line):
    assert not history_hits(line, prose=True), line


def test_no_development_history_in_the_repository():
    """Every tracked text file describes the software, not how it was made."""
    found = []
    for path in _tracked():
        text = _text(path)
        if text is None:
            continue
        for n, hit, what in history_hits(text, prose=path.suffix == ".md"):
            found.append(f"{path.relative_to(ROOT)}:{n}: {hit!r} ({what})")
    assert not found, f"{len(found)} development-history words:\n" + "\n".join(found)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.+)$", text, flags=re.M)}


def test_slug_follows_github():
    assert _slug("Step 1: the mask") == "step-1-the-mask"
    assert _slug("Defaults: the papers' (the authors' demo)") == "defaults-the-papers-the-authors-demo"
    assert _slug("`retouch batch`") == "retouch-batch"


def test_links_between_documents_resolve():
    """Every relative link and image of a tracked Markdown file names a file that exists, and its
    #anchor a heading of that file."""
    broken = []
    for path in _tracked():
        if path.suffix != ".md":
            continue
        text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = m.group(1)
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.exists() and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_readme_is_a_front_door():
    """The README stays short, its first line edits with the shipped model and its second is the
    setup-and-test command CI runs."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines (at most 150)"
    assert lines[0].startswith("bash setup.sh && .venv/bin/retouch edit ")
    assert lines[1].startswith("bash setup.sh test")
    # two processes: pytest-xdist, from the test extra
    assert lines[1].endswith(".venv/bin/python -m pytest -n 2 --dist loadfile")
    assert "pytest-xdist" in (ROOT / "pyproject.toml").read_text()


def _python_blocks(path: Path) -> str:
    """The Python blocks of a page as one script, but those that need a model of the user's own."""
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    return "\n".join(b for b in blocks if "path/to" not in b and "stable-diffusion" not in b)


@pytest.mark.slow
@pytest.mark.parametrize("page", ["README.md", "docs/diffedit.md", "docs/ledits.md"])
def test_pages_python_runs_as_written(page, tmp_path, monkeypatch):
    """The page's Python, run in order on the shipped model, writes what it says it writes."""
    import torch

    code = _python_blocks(ROOT / page)
    assert "retouch." in code
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, page, "exec"), {"__name__": "docs_page"})
    finally:
        torch.set_num_threads(threads)
    written = {p.name for p in tmp_path.iterdir()} - {"examples"}
    for name in re.findall(r"\.save\(\"([^\"/]+)\"\)", code):
        assert name in written, f"{page} says it saves {name}"
