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

import retouch
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


@pytest.mark.slow
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
            assert params["family"] == "sd" and params["retouch"]
            assert r["unet_evals"] > 0
    again = CliRunner().invoke(main, ["batch", str(manifest), "--out", str(out), "--json", "--no-progress"])
    # resumed: only the two failed rows are tried again (and fail again); one line per row still
    assert json.loads(again.stdout)["run_now"] == 2 and len(results(out)) == 12


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# --- what a batch owns in its output folder, and what it refuses before any model work -------------------


def batch_cli(manifest: Path, out: Path, *extra):
    return CliRunner().invoke(main, ["batch", str(manifest), "--out", str(out), "--no-progress", *extra])


def one_line_error(run) -> str:
    assert run.exit_code == 2, (run.exit_code, run.output, run.exception)
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), run.stderr
    return lines[0]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def one_image(folder: Path, name: str = "red_circle.png") -> Path:
    scene = sample_scene(HELD_OUT_SEED + 100, n_objects=1)
    Image.fromarray(render(scene)).save(folder / name)
    return folder / name


TINY_ROW = dict(method="diffedit", query="a green circle", num_inference_steps=3, mask_samples=1)


def test_a_row_never_overwrites_an_input_image_however_its_path_is_spelled(tmp_path):
    """An output naming the row's own image, another row's image or mask (through '..', './' or a
    link) fails that row before any model work; every input keeps its bytes."""
    img = one_image(tmp_path)
    other = one_image(tmp_path, "blue.png")
    mask = tmp_path / "mask.png"
    Image.new("L", (64, 64), 255).save(mask)
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.png").symlink_to(other)
    os.link(img, tmp_path / "hard.png")
    before = {p: p.read_bytes() for p in (img, other, mask)}
    ledits = dict(method="ledits", add=["a square"], num_inference_steps=3)
    rows = [
        dict(TINY_ROW, image="red_circle.png", output="red_circle.png"),
        dict(TINY_ROW, image="red_circle.png", output="sub/../red_circle.png"),
        dict(TINY_ROW, image="red_circle.png", output="blue.png"),  # another row's image
        dict(TINY_ROW, image="blue.png", output="./link.png"),  # a link to its image
        dict(TINY_ROW, image="blue.png", output="mask.png"),  # the next row's mask
        dict(ledits, image="blue.png", mask="mask.png", output="hard.png"),  # a hard link to row 0's
    ]
    run = batch_cli(write_rows(tmp_path / "m.jsonl", rows), tmp_path, "--json")
    assert run.exit_code == 1, run.output
    res = {r["row"]: r for r in results(tmp_path)}
    assert all(res[i]["status"] == "failed" and "input" in res[i]["error"] for i in range(6)), res
    assert {p: p.read_bytes() for p in (img, other, mask)} == before


def test_two_rows_writing_one_output_fail_the_later_one_before_any_model_work(tmp_path):
    from retouch.batch.manifest import resolve_rows

    one_image(tmp_path)
    raw = [
        dict(TINY_ROW, image="red_circle.png", output="dup.png"),
        dict(TINY_ROW, image="red_circle.png", output="./dup.png"),
        dict(TINY_ROW, image="red_circle.png", output="00003-red_circle-diffedit.png"),
        dict(TINY_ROW, image="red_circle.png"),  # row 3's own default name: taken by row 2
        dict(TINY_ROW, image="red_circle.png", output="edit.xyz"),  # no writer for .xyz
    ]
    rows = resolve_rows(raw, tmp_path, tmp_path / "out")
    assert rows[0].error is None and rows[2].error is None
    assert "row 0 writes dup.png too" in rows[1].error
    assert "row 2 writes 00003-red_circle-diffedit.png too" in rows[3].error
    assert "unknown image format '.xyz'" in rows[4].error


@pytest.mark.slow
def test_a_second_batch_on_a_folder_in_use_exits_2_in_one_line(tmp_path):
    """Two runs started on one folder: the second says the folder is in use (exit 2, one line);
    the first does every row exactly once."""
    manifest = make_manifest(tmp_path, images=2, bad=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "retouch", "batch", str(manifest), "--out", str(out), "--no-progress"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / ".retouch-batch" / "lock").is_file() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    first.stdout.close(), first.stderr.close()
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by another retouch batch" in lines[0], second.stderr
    assert sorted(r["row"] for r in results(out)) == list(range(4))


def test_a_batch_removes_only_the_temporary_files_it_made(tmp_path):
    """The user's '.*.tmp' files under the output folder stay; a killed run's own temporary file
    (in the batch's own folder) is removed by the next run."""
    one_image(tmp_path)
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    mine = [out / ".keep.tmp", out / "sub" / ".user.data.tmp", out / ".x.png.123.tmp"]
    for p in mine:
        p.write_text("the user's")
    own = out / ".retouch-batch" / "tmp"
    own.mkdir(parents=True)
    (own / "0123abcd.999999.tmp").write_bytes(b"half an image")
    bad = write_rows(tmp_path / "m.jsonl", [dict(TINY_ROW, image="nowhere.png")])
    assert batch_cli(bad, out).exit_code == 1
    assert all(p.read_text() == "the user's" for p in mine)
    assert not list(own.iterdir())


def test_resume_reruns_a_changed_row_and_retries_a_failed_one(tmp_path):
    """Results are keyed by each row's content: a row whose query changed runs again (its old
    image replaced), a row that failed runs once its cause is fixed, an unchanged row does not."""
    one_image(tmp_path)
    rows = [
        dict(TINY_ROW, image="red_circle.png", output="a.png"),
        dict(TINY_ROW, image="later.png", output="b.png"),
        dict(TINY_ROW, image="red_circle.png", output="c.png"),
    ]
    out = tmp_path / "out"
    manifest = write_rows(tmp_path / "m.jsonl", rows)
    assert batch_cli(manifest, out).exit_code == 1  # later.png is missing
    stamp = {n: (out / n).stat().st_mtime_ns for n in ("a.png", "c.png")}
    one_image(tmp_path, "later.png")
    rows[2]["query"] = "a blue circle"
    run = batch_cli(write_rows(manifest, rows), out, "--json")
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout)["run_now"] == 2
    assert (out / "a.png").stat().st_mtime_ns == stamp["a.png"]  # unchanged: not run again
    assert (out / "c.png").stat().st_mtime_ns != stamp["c.png"]
    assert read_params(out / "c.png")["settings"]["query"] == "a blue circle"
    res = results(out)
    assert sorted(r["row"] for r in res) == [0, 1, 2] and all(r["status"] == "ok" for r in res)


def test_manifests_keep_what_they_hold(tmp_path):
    """JSON Lines split on newlines only (U+2028, U+0085, form feed stay inside a string); CSV
    cells keep quoted newlines; a UTF-8 byte-order mark is read past."""
    from retouch.batch.manifest import read_manifest

    texts = ["a green\u2028circle", "a green\x85circle", "a green\x0ccircle"]
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(
        "".join(json.dumps(dict(image="a.png", query=t), ensure_ascii=False) + "\n" for t in texts)
    )
    assert [r["query"] for r in read_manifest(jsonl)] == texts
    csv_file = tmp_path / "m.csv"
    csv_file.write_bytes('\ufeffimage,method,query\na.png,diffedit,"a green\ncircle"\n'.encode())
    assert read_manifest(csv_file) == [dict(image="a.png", method="diffedit", query="a green\ncircle")]
    jsonl.write_bytes("\ufeff".encode() + b'{"image": "a.png"}\n')
    assert read_manifest(jsonl) == [dict(image="a.png")]


@pytest.mark.parametrize(
    "name, text", [("m.jsonl", ""), ("m.jsonl", "\n\n"), ("m.csv", ""), ("m.csv", "image,method,query\n")]
)
def test_a_manifest_without_rows_is_exit_2_in_one_line(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    assert "has no rows" in one_line_error(batch_cli(tmp_path / name, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_bad_rows_fail_alone_with_their_reason(tmp_path):
    """A seed '²', a NUL byte in image or output, a 5,000-character name, an invalid row: each
    fails its own row, in one line; the manifest's good row still runs."""
    one_image(tmp_path)
    (tmp_path / "m.csv").write_text(
        "image,method,query,num_inference_steps,mask_samples,seed,output\n"
        "red_circle.png,diffedit,a green circle,3,1,\u00b2,a.png\n"
        "red\x00.png,diffedit,a green circle,3,1,0,b.png\n"
        "red_circle.png,diffedit,a green circle,3,1,0,c\x00.png\n"
        f"{'x' * 5000}.png,diffedit,a green circle,3,1,0,d.png\n"
        f"red_circle.png,diffedit,a green circle,3,1,0,{'y' * 5000}.png\n"
        "red_circle.png,diffedit,a green circle,3,1,0,ok.png\n"
    )
    run = batch_cli(tmp_path / "m.csv", tmp_path / "out")
    assert run.exit_code == 1 and run.exception is None or isinstance(run.exception, SystemExit), run.output
    res = {r["row"]: r for r in results(tmp_path / "out")}
    assert [res[i]["status"] for i in range(6)] == ["failed"] * 5 + ["ok"]
    assert "seed" in res[0]["error"] and "NUL" in res[1]["error"] and "NUL" in res[2]["error"]
    assert "too long" in res[3]["error"] and "too long" in res[4]["error"]
    assert all("\n" not in r["error"] for r in res.values() if r["status"] == "failed")


@pytest.mark.parametrize(
    "content",
    [b"garbage\n", b'{"status": "ok"}\n', b"\xff\xfe\n", None],
    ids=["garbage line", "no row", "invalid UTF-8", "a folder"],
)
def test_an_unusable_results_file_is_exit_2_in_one_line(tmp_path, content):
    one_image(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    if content is None:
        (out / "results.jsonl").mkdir()
    else:
        (out / "results.jsonl").write_bytes(content)
    manifest = write_rows(tmp_path / "m.jsonl", [dict(TINY_ROW, image="red_circle.png")])
    assert "results.jsonl" in one_line_error(batch_cli(manifest, out))
    assert sorted(p.name for p in out.iterdir() if p.name != ".retouch-batch") == ["results.jsonl"]


@pytest.mark.parametrize("out", ["/proc/x", "file"])
def test_an_unusable_output_folder_is_exit_2_in_one_line(tmp_path, out):
    one_image(tmp_path)
    (tmp_path / "file").write_text("a file")
    manifest = write_rows(tmp_path / "m.jsonl", [dict(TINY_ROW, image="red_circle.png")])
    one_line_error(batch_cli(manifest, tmp_path / out if out == "file" else Path(out)))


def test_bad_rows_are_recorded_with_one_disk_sync_not_one_each(tmp_path, monkeypatch):
    """20,000 bad rows are rejected without a disk sync per row (that took about a minute)."""
    from retouch.batch import engine

    syncs = []
    monkeypatch.setattr(engine.os, "fsync", lambda fd: syncs.append(fd))
    manifest = write_rows(tmp_path / "m.jsonl", [dict(TINY_ROW, image=f"no{i}.png") for i in range(2000)])
    assert batch_cli(manifest, tmp_path / "out").exit_code == 1
    assert len(results(tmp_path / "out")) == 2000 and len(syncs) <= 3


# --- workers' lifetime, and SIGKILL at any moment ------------------------------------------------------


def children(pid: int) -> set[int]:
    """The live processes whose parent is `pid` (from /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


def alive(pids: set[int]) -> set[int]:
    live = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            live.add(pid)
    return live


def kill_parent_only(proc: subprocess.Popen, workers: set[int]) -> None:
    """SIGKILL the batch process alone; its workers must be gone within 10 s."""
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while alive(workers) and time.time() < deadline:
        time.sleep(0.1)
    left = {pid: command(pid) for pid in alive(workers)}
    for pid in left:  # (clean up before failing)
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} outlived their parent by 10 s"


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_workers_die_with_their_parent(tmp_path):
    """kill -9 of the batch process alone: its pool's workers (and the pool's helpers) exit."""
    manifest = make_manifest(tmp_path, images=6, bad=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "retouch", "batch", str(manifest), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.time() + 240, set()
    while time.time() < deadline and proc.poll() is None:
        workers |= children(proc.pid)
        path = out / "results.jsonl"
        if workers and path.is_file() and len(path.read_text().splitlines()) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None and workers, "the batch ended before it could be killed"
    kill_parent_only(proc, workers | children(proc.pid))


def descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        new = children(todo.pop()) - found
        found |= new
        todo += new
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_ray_local_processes_die_with_the_batch(tmp_path):
    """kill -9 of a `--ray local` batch alone, once a row is done: every process started under it
    (Ray's GCS server, raylet, agents, log monitor, workers, the actor) is gone 10 s later."""
    pytest.importorskip("ray")
    manifest = make_manifest(tmp_path, images=4, bad=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "retouch", "batch", str(manifest), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(
        [*cmd, "--ray", "local", "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline, started = time.time() + 240, {}
    while time.time() < deadline and proc.poll() is None and not result_lines(out):
        started |= {pid: command(pid) for pid in descendants(proc.pid)}  # (a process's latest title)
        time.sleep(0.1)
    started |= {pid: command(pid) for pid in descendants(proc.pid)}
    assert proc.poll() is None and result_lines(out), "the batch ended before it could be killed"
    names = " ".join(started.values())
    for name in ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::_Actor"):
        assert name in names, (name, started)
    kill_parent_only(proc, set(started))


def result_lines(out: Path) -> list[dict]:
    path = out / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads /proc")
def test_sigkill_at_random_moments_loses_no_row_and_does_none_twice(tmp_path):
    """Batch runs killed (the parent alone) at random moments, then resumed, until one finishes:
    every row ends with one result and one readable image; a row recorded as done is never run
    again (its image untouched); no worker outlives its parent by 10 s; no temporary file stays."""
    rng = np.random.default_rng(0)
    one_image(tmp_path, "a.png"), one_image(tmp_path, "b.png")
    rows = [
        dict(TINY_ROW, image=name, seed=seed, output=f"{name[0]}{seed}.png")
        for name in ("a.png", "b.png")
        for seed in range(4)
    ]
    manifest = write_rows(tmp_path / "m.jsonl", rows)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "retouch", "batch", str(manifest), "--out", str(out), "--no-progress"]
    rounds, killed, finished = 0, 0, False
    while rounds < 8 and not finished:
        before = {r["key"]: (out / Path(r["output"]).name).stat().st_mtime_ns for r in result_lines(out)}
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t_kill, workers = time.time() + rng.uniform(1.0, 8.0), set()
        while time.time() < t_kill and proc.poll() is None:
            workers |= children(proc.pid)
            time.sleep(0.02)
        finished = proc.poll() is not None
        if finished:
            assert proc.returncode == 0
        else:
            kill_parent_only(proc, workers | children(proc.pid))
            killed += 1
        rounds += 1
        lines = result_lines(out)
        for key, stamp in before.items():  # done before this round: not done again
            assert [r["key"] for r in lines].count(key) == 1
            assert (
                out / next(Path(r["output"]).name for r in lines if r["key"] == key)
            ).stat().st_mtime_ns == stamp
    if not finished:
        assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
    lines = result_lines(out)
    assert sorted(r["row"] for r in lines) == list(range(len(rows)))
    print(f"{rounds} rounds, {killed} killed")  # (shown with pytest -s)
    assert all(r["status"] == "ok" for r in lines) and rounds >= 3
    for r in lines:
        with Image.open(r["output"]) as img:
            img.load()
    assert not list((out / ".retouch-batch" / "tmp").iterdir())


def test_a_ledits_pp_row_is_ledits_under_its_preset(tmp_path):
    """ "method": "ledits++" runs LEDITS under the "ledits++" preset (its row's own setting beats
    the preset's; recorded in the PNG); with another preset its row fails alone, in one line."""
    Image.fromarray(render(sample_scene(HELD_OUT_SEED + 5, n_objects=1))).save(tmp_path / "a.png")
    rows = [
        dict(image="a.png", method="ledits++", add=["green circle"], num_inference_steps=10),
        dict(image="a.png", method="ledits++", add=["green circle"], preset="object"),
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    run = CliRunner().invoke(main, ["batch", str(manifest), "--out", str(out), "--json", "--no-progress"])
    assert run.exit_code == 1, run.output
    ok, bad = sorted(results(out), key=lambda r: r["row"])
    assert ok["status"] == "ok" and bad["status"] == "failed"
    assert "ledits under preset ledits++, got preset 'object'" in bad["error"]
    s = read_params(ok["output"])["settings"]
    assert (s["preset"], s["implicit_mask"], s["solver"], s["num_inference_steps"]) == (
        "ledits++", "intersect", "dpmsolver++", 10,
    )  # fmt: skip


FLOW_ROW = dict(method="flowedit", source="", num_inference_steps=6, n_max=4)


def test_flowedit_rows_on_a_flow_model_give_retouch_edit_flowedits_images(tmp_path):
    """FlowEdit rows on the shipped mini SD3: a row's image is `retouch edit flowedit`'s with the same
    seed and settings; --batch-size 2 runs the rows of one source, seed and settings as one
    flowedit_many, with the same images; a row whose n_max exceeds its steps fails alone, unrun."""
    img = one_image(tmp_path)
    rows = [
        dict(FLOW_ROW, image=img.name, target="a blue square on a white background", seed=4),
        dict(FLOW_ROW, image=img.name, target="a green circle on a white background", seed=4),
        dict(FLOW_ROW, image=img.name, target="a green circle", n_max=7),
    ]
    manifest = write_rows(tmp_path / "m.jsonl", rows)
    outs = {}
    for size in (1, 2):
        outs[size] = tmp_path / f"out{size}"
        run = batch_cli(manifest, outs[size], "--model", "shapes-sd3", "--batch-size", str(size))
        assert run.exit_code == 1, run.output  # the bad row
    one, two = ({r["row"]: r for r in results(outs[k])} for k in (1, 2))
    assert one[2]["status"] == "failed" and one[2]["unet_evals"] == 0
    assert "n_max must be <= num_inference_steps (6), got 7" in one[2]["error"]
    args = ["edit", "flowedit", str(img), "--model", "shapes-sd3", "--target", rows[1]["target"], "--seed",
            "4", "--num-inference-steps", "6", "--n-max", "4", "-o", str(tmp_path / "e.png")]  # fmt: skip
    assert CliRunner().invoke(main, args).exit_code == 0
    paths = {"edit": tmp_path / "e.png"}
    paths.update({f"{k}:{i}": d[i]["output"] for k, d in (("one", one), ("two", two)) for i in (0, 1)})
    pixels = {}
    for name, path in paths.items():
        with Image.open(path) as im:
            pixels[name] = np.asarray(im.convert("RGB"), int)
    assert np.array_equal(pixels["edit"], pixels["one:1"])
    assert np.abs(pixels["one:0"] - pixels["one:1"]).max() > 10  # another target, another image
    for i in (0, 1):
        assert np.abs(pixels[f"one:{i}"] - pixels[f"two:{i}"]).max() <= 1
    params = read_params(one[0]["output"])
    assert params["method"] == "flowedit" and params["seed"] == 4
    assert (params["settings"]["n_max"], params["settings"]["target_guidance_scale"]) == (4, 13.5)
    assert one[0]["unet_evals"] == one[1]["unet_evals"] == 4 * 4  # four branches a step
    # one flowedit_many: a step is [∅, source] once and [∅, target] for each row
    assert two[0]["unet_evals"] + two[1]["unet_evals"] == 4 * (2 + 2 * 2)


def test_flowedit_rows_with_masks_give_retouch_edit_flowedits_images(tmp_path):
    """A FlowEdit row's mask ("infer", or a file) is `retouch edit flowedit --mask`'s; rows with and
    without masks run as one flowedit_many (--batch-size 3) with the images they give alone."""
    img = one_image(tmp_path)
    left = np.zeros((64, 64), np.uint8)
    left[:, :32] = 255
    Image.fromarray(left).save(tmp_path / "left.png")
    target = "a green circle on a white background"
    rows = [
        dict(FLOW_ROW, image=img.name, target=target, seed=2, mask=m) for m in ("infer", "left.png", None)
    ]
    manifest = write_rows(tmp_path / "m.jsonl", rows)
    outs = {}
    for size in (1, 3):
        outs[size] = tmp_path / f"out{size}"
        run = batch_cli(manifest, outs[size], "--model", "shapes-sd3", "--batch-size", str(size))
        assert run.exit_code == 0, run.output
    one, three = ({r["row"]: r for r in results(outs[k])} for k in (1, 3))
    pixels = {}
    for i, mask in enumerate(("infer", str(tmp_path / "left.png"))):
        out = tmp_path / f"e{i}.png"
        args = ["edit", "flowedit", str(img), "--model", "shapes-sd3", "--target", target, "--seed", "2",
                "--num-inference-steps", "6", "--n-max", "4", "--mask", mask, "-o", str(out)]  # fmt: skip
        assert CliRunner().invoke(main, args).exit_code == 0
        pixels[f"edit:{i}"] = out
    pixels.update({f"{k}:{i}": d[i]["output"] for k, d in (("one", one), ("three", three)) for i in range(3)})
    for name, path in pixels.items():
        with Image.open(path) as im:
            pixels[name] = np.asarray(im.convert("RGB"), int)
    for i in (0, 1):
        assert np.array_equal(pixels[f"edit:{i}"], pixels[f"one:{i}"])
    for i in range(3):
        assert np.abs(pixels[f"one:{i}"] - pixels[f"three:{i}"]).max() <= 1
    assert read_params(one[0]["output"])["settings"]["mask"] == "infer"
    assert one[0]["unet_evals"] > one[2]["unet_evals"] == one[1]["unet_evals"]  # the inferred mask's cost


def test_a_row_of_a_method_the_model_cannot_run_fails_alone_before_model_work(tmp_path):
    """The model's family read from its folder: FlowEdit rows fail on Stable Diffusion, DiffEdit and
    LEDITS rows on FLUX (and a FlowEdit row whose n_max exceeds FLUX's published 28 steps), each in
    one line, when the manifest is checked; the batch's other rows run."""
    from retouch.batch.manifest import resolve_rows
    from retouch.models import family_of

    assert (family_of(None), family_of("shapes-sd3"), family_of(tmp_path)) == ("sd", "sd3", None)
    one_image(tmp_path)
    raw = [
        dict(TINY_ROW, image="red_circle.png"),
        dict(image="red_circle.png", method="ledits", add=["a green circle"]),
        dict(image="red_circle.png", method="flowedit", target="a green circle"),
        dict(image="red_circle.png", method="flowedit", target="a green circle", n_max=30),
        dict(image="red_circle.png", method="flowedit", source="a red circle"),
        dict(image="red_circle.png", method="flowedit", target="a green circle", mask="no_such_mask.png"),
    ]
    errors = {
        family: [r.error for r in resolve_rows(raw, tmp_path, tmp_path / "out", family=family)]
        for family in ("sd", "sd3", "flux", None)
    }
    assert (
        errors["sd3"]
        == errors[None]
        == [None] * 4
        + [
            "a flowedit row needs a target text",
            "cannot read mask no_such_mask.png: no such file",
        ]
    )
    assert errors["sd"][:2] == [None, None] and all("runs on a flow model" in e for e in errors["sd"][2:4])
    assert all("use flowedit on FLUX" in e for e in errors["flux"][:2]) and errors["flux"][2] is None
    assert "n_max must be <= num_inference_steps (28), got 30" in errors["flux"][3]
    manifest = write_rows(tmp_path / "m.jsonl", [raw[0], raw[2]])
    run = batch_cli(manifest, tmp_path / "out", "--json")  # the shipped Stable Diffusion model
    assert run.exit_code == 1, run.output
    res = {r["row"]: r for r in results(tmp_path / "out")}
    assert res[0]["status"] == "ok" and res[1]["status"] == "failed" and res[1]["unet_evals"] == 0
    assert (
        res[1]["error"]
        == "flowedit runs on a flow model (Stable Diffusion 3, FLUX; shipped: shapes-sd3); this one is sd"
    )


def test_a_flowedit_rows_preset_is_checked_for_the_models_family_and_its_settings_run(tmp_path):
    """A FlowEdit row names a preset of its family's (SD3's; FLUX has none), checked with the manifest:
    a bad name fails that row alone; a good one runs, recorded, its settings under the row's own."""
    from retouch.batch.manifest import resolve_rows

    one_image(tmp_path)
    raw = [
        dict(image="red_circle.png", method="flowedit", target="a green circle", preset="stronger"),
        dict(image="red_circle.png", method="flowedit", target="a green circle", preset="recolor"),
    ]
    errors = {
        family: [r.error for r in resolve_rows(raw, tmp_path, tmp_path / "out", family=family)]
        for family in ("sd3", "flux", None)
    }
    assert errors["sd3"][0] is None and errors[None][0] is None
    assert errors["sd3"][1] == errors[None][1] == "preset must be one of stronger, background, got 'recolor'"
    assert errors["flux"][0] == "FlowEdit has no presets on flux (they are measured on SD3)"
    row = dict(raw[0], num_inference_steps=6, n_max=2, seed=1)
    run = batch_cli(write_rows(tmp_path / "m.jsonl", [row]), tmp_path / "out", "--model", "shapes-sd3")
    assert run.exit_code == 0, run.output
    (res,) = results(tmp_path / "out")
    settings = read_params(res["output"])["settings"]
    assert (settings["preset"], settings["n_max"], settings["target_guidance_scale"]) == ("stronger", 2, 7.0)


def test_a_flux_folder_edits_end_to_end_in_a_batch_on_the_command_line_and_in_python(tmp_path):
    """A FLUX folder (tiny, random) through every shell: a flowedit batch row gives the command
    line's and the library's image for the same seed, its PNG names the family; a LEDITS row on it
    fails alone in one line."""
    from diffusers import FluxPipeline

    from flow_tiny import flux_parts

    folder = tmp_path / "flux"
    FluxPipeline(**flux_parts()).save_pretrained(folder)
    img = one_image(tmp_path)
    edit = dict(source="a red circle", target="a green circle", num_inference_steps=4, n_max=3, seed=1)
    rows = [
        dict(image=img.name, method="flowedit", **edit),
        dict(image=img.name, method="ledits", add=["a cat"]),
    ]
    run = batch_cli(
        write_rows(tmp_path / "m.jsonl", rows), tmp_path / "out", "--model", str(folder), "--json"
    )
    assert run.exit_code == 1, run.output
    res = {r["row"]: r for r in results(tmp_path / "out")}
    assert (
        res[0]["status"] == "ok"
        and res[1]["status"] == "failed"
        and "use flowedit on FLUX" in res[1]["error"]
    )
    params = read_params(res[0]["output"])
    assert params["family"] == "flux" and params["method"] == "flowedit" and params["seed"] == 1
    flags = ["--source", "a red circle", "--target", "a green circle", "--num-inference-steps", "4"]
    cli = CliRunner().invoke(
        main, ["edit", "flowedit", str(img), *flags, "--n-max", "3", "--seed", "1", "--model", str(folder),
               "-o", str(tmp_path / "c.png")],
    )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    lib = retouch.flowedit(
        retouch.load(folder, device="cpu", dtype="float32"), np.asarray(Image.open(img)), **edit
    )
    with Image.open(res[0]["output"]) as a, Image.open(tmp_path / "c.png") as c:
        assert np.array_equal(np.asarray(a), np.asarray(c)) and np.array_equal(
            np.asarray(a), np.asarray(lib.image)
        )
