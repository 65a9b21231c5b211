"""retouch batch: a manifest of edits, bad rows recorded, exactly once after SIGKILL, Ray = local."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from retouch.files import read_params
from retouch.main import main
from retouch.shapes.world import HELD_OUT_SEED, caption, render, sample_scene

FAST = {
    "diffedit": dict(num_inference_steps=10, mask_samples=2),
    "ledits": dict(num_inference_steps=10, skip=2),
}


def make_manifest(folder: Path, images: int = 5, bad: bool = True) -> Path:
    """Two edits per image (DiffEdit recolour, LEDITS concepts) and, with `bad`, two bad rows."""
    rows = []
    for i in range(images):
        scene = sample_scene(HELD_OUT_SEED + 100 + i, n_objects=1)
        Image.fromarray(render(scene)).save(folder / f"img{i}.png")
        obj, text = scene.objects[0], caption(scene)
        new = "green" if obj.color != "green" else "red"
        rows.append(
            dict(
                image=f"img{i}.png",
                method="diffedit",
                query=text.replace(obj.color, new),
                reference=text,
                seed=i,
                **FAST["diffedit"],
            )
        )
        rows.append(
            dict(
                image=f"img{i}.png",
                method="ledits",
                add=[f"{new} {obj.shape}"],
                remove=[obj.phrase],
                seed=i,
                **FAST["ledits"],
            )
        )
    if bad:
        rows.insert(3, dict(image="nowhere.png", method="diffedit", query="a red circle"))
        rows.insert(
            7, dict(image="img0.png", method="diffedit", query="a red circle", output="../escape.png")
        )
    path = folder / "edits.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_a_manifest_with_two_bad_rows_completes_with_one_result_per_row(tmp_path):
    manifest = make_manifest(tmp_path)
    out = tmp_path / "out"
    run = CliRunner().invoke(main, ["batch", str(manifest), "--out", str(out), "--json", "--no-progress"])
    assert run.exit_code == 1, run.output  # not every row succeeded
    assert json.loads(run.stdout) == {**json.loads(run.stdout), "rows": 12, "ok": 10, "failed": 2}
    res = results(out)
    assert sorted(r["row"] for r in res) == list(range(12))
    by_row = {r["row"]: r for r in res}
    assert by_row[3]["status"] == "failed" and "nowhere.png: no such file" in by_row[3]["error"]
    assert by_row[7]["status"] == "failed" and "outside the output folder" in by_row[7]["error"]
    assert not (tmp_path / "escape.png").exists()
    for r in res:
        if r["status"] == "ok":
            params = read_params(r["output"])
            assert Path(r["output"]).parent == out.resolve() and params["method"] in ("diffedit", "ledits")
            assert r["unet_evals"] > 0
    again = CliRunner().invoke(main, ["batch", str(manifest), "--out", str(out), "--json", "--no-progress"])
    assert json.loads(again.stdout)["run_now"] == 0 and len(results(out)) == 12  # resumed: nothing to do


def test_a_row_names_a_preset_of_its_method_under_its_own_settings(tmp_path):
    """A DiffEdit row's preset "remove" encodes through every step, steering away from the reference
    (N=10, n=2: mask 4 + encode 10 + decode 3·10) and is recorded; its own setting beats the
    preset's; another method's preset fails its row alone, in one line."""
    manifest = make_manifest(tmp_path, images=1, bad=False)
    row = json.loads(manifest.read_text().splitlines()[0])
    rows = [
        dict(row, preset="remove", output="remove.png"),
        dict(row, preset="remove", encode_ratio=0.5, output="half.png"),
        dict(row, preset="object", output="object.png"),
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert (
        CliRunner().invoke(main, ["batch", str(manifest), "--out", str(out), "--no-progress"]).exit_code == 1
    )
    res = {r["row"]: r for r in results(out)}
    settings = [read_params(res[i]["output"])["settings"] for i in (0, 1)]
    assert [(s["preset"], s["encode_ratio"]) for s in settings] == [("remove", 1.0), ("remove", 0.5)]
    assert res[0]["unet_evals"] == 4 + 10 + 30
    assert (
        res[2]["status"] == "failed"
        and "preset must be one of tight-mask, remove, recolor" in res[2]["error"]
    )


def test_rows_of_one_image_share_its_encoding_and_inversion(tmp_path):
    manifest = make_manifest(tmp_path, images=1, bad=False)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows + rows))  # each edit twice
    out = tmp_path / "out"
    CliRunner().invoke(main, ["batch", str(manifest), "--out", str(out), "--no-progress"])
    evals = [r["unet_evals"] for r in sorted(results(out), key=lambda r: r["row"])]
    # DiffEdit N=10, r=0.8, n=2: mask 4 + encode 8 + decode 16; again: the encoding is reused.
    # LEDITS N=10, skip 2, no source: invert 8 + edit 8·3; again: the inversion is reused.
    assert evals == [28, 32, 20, 24]


def test_batch_size_runs_rows_of_one_image_as_one_unet_batch_with_the_same_images(tmp_path):
    """--batch-size 4: each image's rows of one method and step grid go through the UNet together;
    the images are one-by-one's (pixels within one level), the evaluations the same, and a bad
    row among them still fails alone."""
    manifest = make_manifest(tmp_path, images=2, bad=False)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    more = [dict(r, seed=r["seed"] + 10) for r in rows]  # each edit again with another seed
    bad = dict(rows[0], guidance_scale=float("nan"))
    manifest.write_text("".join(json.dumps(r) + "\n" for r in [*rows, *more, bad]))
    outs = {}
    for size in (1, 4):
        outs[size] = tmp_path / f"out{size}"
        args = ["batch", str(manifest), "--out", str(outs[size]), "--no-progress", "--batch-size", str(size)]
        assert CliRunner().invoke(main, args).exit_code == 1  # the bad row
    one, four = ({r["row"]: r for r in results(outs[k])} for k in (1, 4))
    assert four[8]["status"] == "failed" and "guidance_scale must be finite" in four[8]["error"]
    for i in range(8):
        assert one[i]["status"] == four[i]["status"] == "ok"
        with Image.open(one[i]["output"]) as a, Image.open(four[i]["output"]) as b:
            assert np.abs(np.asarray(a, int) - np.asarray(b, int)).max() <= 1, i
    assert [one[i]["unet_evals"] for i in range(8)] == [four[i]["unet_evals"] for i in range(8)]


def test_killed_with_sigkill_and_resumed_every_row_exactly_once(tmp_path):
    manifest = make_manifest(tmp_path, images=6, bad=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "retouch", "batch", str(manifest), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        path = out / "results.jsonl"
        if path.is_file() and len(path.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the batch ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its pool's workers
    proc.wait()
    first = len(results(out))
    assert 3 <= first < 12
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [r["row"] for r in results(out)]
    assert sorted(rows) == list(range(12))  # every row exactly once
    assert not list(out.rglob("*.tmp"))  # no half-written image left
    for r in results(out):
        with Image.open(r["output"]) as img:
            img.load()


def test_ray_local_gives_the_same_images_as_the_local_pool(tmp_path):
    pytest.importorskip("ray")
    manifest = make_manifest(tmp_path, images=2, bad=False)
    local, ray = tmp_path / "local", tmp_path / "ray"
    for out, extra in ((local, []), (ray, ["--ray", "local", "--workers", "2"])):
        run = CliRunner().invoke(main, ["batch", str(manifest), "--out", str(out), "--no-progress", *extra])
        assert run.exit_code == 0, run.output
    names = sorted(p.name for p in local.glob("*.png"))
    assert names == sorted(p.name for p in ray.glob("*.png")) and len(names) == 4
    for name in names:
        a, b = (np.asarray(Image.open(d / name)) for d in (local, ray))
        assert np.array_equal(a, b), name


def test_a_csv_manifest_reads_as_its_json_lines_twin(tmp_path):
    from retouch.batch.manifest import read_manifest

    (tmp_path / "m.csv").write_text(
        "image,method,query,reference,add,remove,seed,num_inference_steps,edit_scale\n"
        "a.png,diffedit,a green circle,a red circle,,,3,10,\n"
        "a.png,ledits,,,green circle;blue square,red circle,0,12,5.5\n"
    )
    assert read_manifest(tmp_path / "m.csv") == [
        {
            "image": "a.png",
            "method": "diffedit",
            "query": "a green circle",
            "reference": "a red circle",
            "seed": 3,
            "num_inference_steps": 10,
        },
        {
            "image": "a.png",
            "method": "ledits",
            "add": ["green circle", "blue square"],
            "remove": ["red circle"],
            "seed": 0,
            "num_inference_steps": 12,
            "edit_scale": 5.5,
        },
    ]
