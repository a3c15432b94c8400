"""lightjax._atomic: a write that fails or is killed midway leaves the last good file and no trusted leftovers."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from lightjax._atomic import atomic_path, atomic_write, remove_partials


def _listing(d):
    return sorted(os.listdir(d))


def test_atomic_write_replaces_whole_content(tmp_path):
    target = tmp_path / "ckpt.msgpack"
    atomic_write(target, b"old")
    atomic_write(target, "new text \u00e9")
    assert target.read_bytes() == "new text \u00e9".encode("utf-8")
    assert _listing(tmp_path) == ["ckpt.msgpack"]


def test_failure_inside_the_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "weights.safetensors"
    atomic_write(target, b"good")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half of the new")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"good"
    assert _listing(tmp_path) == ["weights.safetensors"]  # the temp file is gone


def test_a_killed_writer_leaves_the_old_file_and_a_partial_that_is_cleared(tmp_path):
    target = tmp_path / "model.onnx"
    atomic_write(target, b"good")
    child = textwrap.dedent(f"""
        import os, sys, time
        from lightjax._atomic import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
                f.flush()
                print("writing", flush=True)
                time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "writing"
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait(timeout=30)
    left = _listing(tmp_path)
    assert target.read_bytes() == b"good"
    assert len(left) == 2 and any(n.startswith("model.onnx.") and n.endswith(".partial") for n in left), left
    remove_partials(target)
    assert _listing(tmp_path) == ["model.onnx"]
    assert target.read_bytes() == b"good"


def test_atomic_write_into_a_missing_directory_names_the_path(tmp_path):
    target = tmp_path / "no_such_dir" / "f.bin"
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        atomic_write(target, b"x")
