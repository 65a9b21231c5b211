"""retouch.files: atomic writes, outputs that are never inputs, whole JSON lines."""

from __future__ import annotations

import json
import os

import pytest

from retouch.errors import OutputError
from retouch.files import append_jsonl, check_output, read_jsonl, write_all_atomic


def test_a_torn_last_line_is_cut_off_and_the_next_row_starts_a_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    with open(path, "a") as f:
        append_jsonl(f, {"row": 0})
        append_jsonl(f, {"row": 1})
    with open(path, "a") as f:
        f.write('{"row": 2, "status": "o')  # a writer killed mid-line
    assert read_jsonl(path) == [{"row": 0}, {"row": 1}]
    assert path.read_text().endswith("}\n")
    with open(path, "a") as f:
        append_jsonl(f, {"row": 2})
    assert [r["row"] for r in read_jsonl(path)] == [0, 1, 2]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_outputs_that_are_inputs_folders_or_special_files_are_refused(tmp_path):
    src = tmp_path / "in.png"
    src.write_bytes(b"x")
    with pytest.raises(OutputError, match="is the input file"):
        check_output(src, [src])
    with pytest.raises(OutputError, match="is a folder"):
        check_output(tmp_path, [])
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="not a regular file"):
        check_output(fifo, [])
    with pytest.raises(OutputError, match="unknown image format"):
        check_output(tmp_path / "out.xyz", [])


def test_write_all_atomic_writes_every_file_or_none(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"

    def fail(tmp):
        tmp.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="cannot write .*b.txt: No space left on device"):
        write_all_atomic({a: lambda tmp: tmp.write_text("a"), b: fail})
    assert list(tmp_path.iterdir()) == []
    write_all_atomic({a: lambda tmp: tmp.write_text("a"), b: lambda tmp: tmp.write_text("b")})
    assert (a.read_text(), b.read_text()) == ("a", "b")
