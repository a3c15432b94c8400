"""The benchmark harness (``benchmarks/``): the --quick run prints its table; sides alternate and only timed runs
count; a killed row is retried at half the batch; the median over processes; the RSS watchdog; the allocator
re-exec; the ``lightjax.bench`` forwarder; the one child-command builder; the torch references (megvii's from
tests/); the header's batch line; ``--onnx`` wiring; the JSON file. Nothing here asserts a speed (speed goals live
in the benchmark's own table)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # benchmarks/ is a directory of the checkout, not an installed package
    sys.path.insert(0, REPO)


def test_bench_quick_prints_table():
    """``python -m lightjax.bench --quick`` runs and prints the table (nothing is asserted about speed)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "lightjax.bench", "--quick"], env=env, capture_output=True,
                       text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "allocator:" in out and "jax " in out
    assert "| model | size | infer lj |" in out
    assert "| squeezenet1_1 | 64 |" in out


def test_bench_times_each_side_after_a_run_of_the_same_side(monkeypatch):
    """Sides alternate, and every timed run follows an untimed run of the same side (torch's spinning OpenMP
    worker would otherwise steal a core from whichever side runs right after it); the figures come from the
    timed runs only."""
    import time

    from benchmarks import harness as bench
    from lightjax import convert

    calls = []

    class Side:
        def __init__(self, label, per_call_s):
            self.label, self.per_call_s, self.n = label, per_call_s, 0

        def _run(self, mode):
            calls.append((self.label, mode))
            self.n += 1
            time.sleep(0.05 if self.n % 2 else self.per_call_s)  # the untimed (odd) runs are the slow ones

        def infer(self):
            self._run("infer")

        def train(self):
            self._run("train")

    class Ref:
        def eval(self):
            return self

        def state_dict(self):
            return {}

    def fake_jax(name, variables, kwargs, batch, size):
        side = Side("jax", 0.001)
        side.compile = lambda: (0.0, 0.0)
        return side

    monkeypatch.setattr(bench, "torch_reference", lambda name: (Ref(), "x", {}, "ref"))
    monkeypatch.setattr(convert, "from_torch", lambda *a, **k: {})
    monkeypatch.setattr(bench, "JaxSide", fake_jax)
    monkeypatch.setattr(bench, "TorchSide", lambda m, fmt, batch, size, device: Side(f"torch_{fmt}", 0.002))
    row = bench.bench_model("squeezenet1_1", 4, 32, 3, False, True, False)
    timed = [c for c in calls if c[1] in ("infer", "train")]
    # Set-up runs (first train step, one infer, one infer+train per torch side), then per mode and round each
    # side twice in a row, sides in turn.
    loop = timed[-2 * 3 * 3 * 2:]
    for mode, block in (("infer", loop[:18]), ("train", loop[18:])):
        assert block == [(lab, mode) for _ in range(3) for lab in ("jax", "torch_nchw", "torch_cl") for _ in (0, 1)]
    assert row["jax_infer"] == pytest.approx(4 / 0.001, rel=0.6)  # the 0.05 s untimed runs never count
    assert row["torch_train"] == pytest.approx(4 / 0.002, rel=0.6)
    assert 0.7 < row["ratio_infer"] * 0.5 < 1.3

    one = []
    assert bench._switch_in_and_time(lambda: one.append(1), 1) >= 0 and one == [1]


def test_bench_retries_a_killed_row_at_half_the_batch(monkeypatch):
    """A benchmark row whose process is killed (out of memory) is re-run at half the batch until it fits; the
    table says at which batch it ran and which were killed. A row that fails otherwise is not retried."""
    import argparse

    from benchmarks import bench, processes

    calls = []

    def fake(name, args, batch):
        calls.append(batch)
        if name == "big" and batch > 16:
            return {"model": name, "error": "exit -9", "killed": True}
        if name == "broken":
            return {"model": name, "error": "exit 1: ValueError", "killed": False}
        peak = 10_000 * 1024 if batch > 8 else 3 * 1024  # MiB: 10,000 GiB at batch 16, 3 GiB at 8
        return {"model": name, "batch": batch, "size": 299, "torch_ref": "ref", "jax_infer": 1.0, "peak_rss_mib": peak}

    monkeypatch.setattr(processes, "_run_row_at", fake)
    monkeypatch.setattr(processes, "_total_ram_mib", lambda: 24 * 1024.0)
    args = argparse.Namespace(batch=32)
    row = processes._run_row("big", args)
    assert calls == [32, 16, 8] and row["batch"] == 8 and "killed" not in row
    assert row["note"] == ("batch 32 killed (out of memory?); batch 16 peaked at 10000.0 GiB (> 16.8): "
                           "ran at batch 8")
    text = bench.table([row], memory=False)
    assert "| big | 299 (batch 8) |" in text and "ran at batch 8" in text
    calls.clear()
    assert "error" in processes._run_row("broken", args) and calls == [32]


def test_bench_median_over_processes(monkeypatch):
    """``--processes 3``: each figure is the median over the fresh processes, the ratio the median of the
    per-process ratios (listed, with their range in the notes); later processes start at the batch the first
    one settled on; a process that failed is left out, and the notes say so."""
    import argparse

    from benchmarks import bench, processes

    calls, ratios = [], iter([(0.8, 0.7), (1.1, 0.6), (None, None), (0.9, 0.75)])

    def fake(name, args):
        calls.append(args.batch)
        ri, rt = next(ratios)
        if ri is None:
            return {"model": name, "error": "exit 1"}
        return {"model": name, "batch": 8, "size": 299, "torch_ref": "ref", "jax_infer": 10.0 * ri,
                "torch_infer": 10.0, "torch_infer_fmt": "cl", "ratio_infer": ri, "jax_train": 2.0 * rt,
                "torch_train": 2.0, "torch_train_fmt": "nchw", "ratio_train": rt, "compile_train_s": 5.0 + ri,
                "note": "batch 32 killed (out of memory?): ran at batch 8"}

    monkeypatch.setattr(processes, "_run_row", fake)
    row = processes._run_row_processes("x", argparse.Namespace(batch=32, processes=4))
    assert calls == [32, 8, 8, 8]
    assert row["ratios_infer"] == [0.8, 1.1, 0.9] and row["ratio_infer"] == 0.9 and row["ratio_train"] == 0.7
    assert row["jax_infer"] == 9.0 and row["compile_train_s"] == 5.9 and row["torch_train_fmt"] == "nchw"
    assert row["note_processes"] == ("median of 3 processes (infer ratio 0.80-1.10x; train ratio 0.60-0.75x); "
                                     "1 of 4 left out: exit 1")
    text = bench.table([row], memory=False)
    assert "| x | 299 (batch 8) | 9.0 | 10.0 (cl) | 0.90x |" in text and "median of 3 processes" in text
    ratios = iter([(0.8, 0.7)])
    calls.clear()
    assert processes._run_row_processes("x", argparse.Namespace(batch=32, processes=1))["ratio_infer"] == 0.8
    assert calls == [32]


def test_bench_stops_a_child_over_the_memory_limit():
    """A benchmark child whose resident memory passes the limit is killed at once (not left to thrash near the
    RAM limit) and reported as stopped with the size it had reached; a child under the limit runs to the end."""
    from benchmarks import processes as bench

    grow = "import time; b = bytearray(400 * 2**20); time.sleep(30)"
    with subprocess.Popen([sys.executable, "-c", grow]) as proc:
        watch = bench._RssWatch(proc.pid, limit_mib=200.0, interval_s=0.05)
        rc = proc.wait(timeout=60)
        watch.stop()
    assert rc == -9 and watch.stopped_at is not None and 200.0 < watch.stopped_at < 2000.0
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"]) as proc:
        watch = bench._RssWatch(proc.pid, limit_mib=2000.0, interval_s=0.05)
        rc = proc.wait(timeout=60)
        watch.stop()
    assert rc == 0 and watch.stopped_at is None


def test_bench_mimalloc_settings_reach_the_child(monkeypatch):
    """``--allocator mimalloc`` re-executes with the library preloaded and ``MIMALLOC_SETTINGS`` (freed memory
    kept; XLA's multi-GiB temp buffer served from an arena instead of a fresh mmap per step); a value the user
    set wins."""
    import argparse

    from benchmarks import processes as bench

    seen = {}

    def fake_execve(path, argv, env):
        seen.update(env)
        raise SystemExit(0)

    monkeypatch.setattr(bench.os, "execve", fake_execve)
    monkeypatch.setattr(bench, "mimalloc_path", lambda: "/opt/libmimalloc.so")
    monkeypatch.delenv(bench._CHILD_ENV, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.setenv("MIMALLOC_PURGE_DELAY", "250")
    monkeypatch.delenv("MIMALLOC_ARENA_MAX_OBJECT_SIZE", raising=False)
    with pytest.raises(SystemExit):
        bench._reexec_with_allocator(argparse.Namespace(device=False, allocator="mimalloc", plain_glibc=False))
    assert seen["LD_PRELOAD"] == "/opt/libmimalloc.so" and seen[bench._CHILD_ENV] == "1"
    assert seen["MIMALLOC_ARENA_MAX_OBJECT_SIZE"] == bench.MIMALLOC_SETTINGS["MIMALLOC_ARENA_MAX_OBJECT_SIZE"]
    assert seen["MIMALLOC_PURGE_DELAY"] == "250"


# ----------------------------------------------------------------------------------------------------------
# The move out of the library: forwarder, child processes, references, header, --onnx wiring, JSON file.
# ----------------------------------------------------------------------------------------------------------
def test_lightjax_bench_forwards_without_importing_the_benchmark(tmp_path):
    """Importing ``lightjax.bench`` imports neither ``benchmarks`` nor torch; without the repo's benchmarks/
    beside the package, running it says where the benchmark is instead of failing on an import."""
    code = ("import sys, lightjax.bench as b; print(b.bench_script()); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('benchmarks', 'torch')))")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[:2] == [os.path.join(REPO, "benchmarks", "bench.py"), "[]"]

    lone = tmp_path / "lightjax"
    lone.mkdir()
    with open(os.path.join(REPO, "lightjax", "bench.py")) as src:
        (lone / "bench.py").write_text(src.read())
    r = subprocess.run([sys.executable, str(lone / "bench.py"), "--quick"], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode != 0 and "python -m benchmarks.bench" in r.stderr and "source checkout" in r.stderr, r.stderr


def test_child_command_is_the_one_builder(tmp_path):
    """Row children, memory children and the allocator re-exec get their command line and environment from one
    function: the parent's shared settings, the repo first on PYTHONPATH (once), the child marker; and the
    command runs from any directory."""
    import argparse

    from benchmarks import processes

    args = argparse.Namespace(batch=32, repeats=5, size=97, device=False, no_torch=True, quick=False)
    env = {"PYTHONPATH": os.pathsep.join(["/elsewhere", REPO]), "KEEP": "1"}
    cmd, child_env = processes.child_command(["--_row", "xception65"], args, 8, env=env)
    assert cmd == [sys.executable, "-m", "benchmarks.bench", "--_row", "xception65", "--batch", "8", "--repeats", "5",
                   "--size", "97", "--no-torch"]
    assert child_env["PYTHONPATH"] == os.pathsep.join([REPO, "/elsewhere"]) and child_env["KEEP"] == "1"
    assert child_env[processes._CHILD_ENV] == "1" and processes._CHILD_ENV not in env
    cmd, child_env = processes.child_command(["--_memory", "x", "jax_xla"], args, env=env, LIGHTJAX_CONV_IMPL="xla")
    assert cmd[3:8] == ["--_memory", "x", "jax_xla", "--batch", "32"] and child_env["LIGHTJAX_CONV_IMPL"] == "xla"
    cmd, _ = processes.child_command(["--quick", "--models", "a"], env=env)  # the re-exec: argv passed unchanged
    assert cmd[3:] == ["--quick", "--models", "a"]

    cmd, child_env = processes.child_command(["--help"])
    r = subprocess.run(cmd, env=child_env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0 and "usage: python -m benchmarks.bench" in r.stdout, r.stderr[-2000:]


def test_header_says_which_rows_ran_at_a_smaller_batch():
    import argparse

    from benchmarks import bench

    args = argparse.Namespace(batch=32, repeats=5, processes=3, in_process=False, device=False)
    rows = [{"model": "squeezenet1_1", "batch": 32}, {"model": "xception65", "batch": 8, "note": "..."},
            {"model": "broken", "error": "exit 1"}]
    text = bench.header(args, rows, load_at_start=1.25)
    assert "batch 32 (xception65 at 8: see the notes), float32, median of 5 alternating runs" in text
    assert "each row the median over 3 fresh processes" in text and "load average at start: 1.25" in text
    assert "batch 32, float32," in bench.header(args, rows[:1]) and "batch 32, float32," in bench.header(args)


def test_torch_references_convert_and_megvii_comes_from_tests(torch, torchvision, timm):
    """Every flagship has a reference (timm's MobileNetV1 converts strictly with its layout and ReLU6; the
    torchvision/timm ones are converted in each family's tests). megvii's ShuffleNetV1 is the module of
    ``tests/seed_shufflenet.py`` (no copy; its parity with lightjax is test_shufflenet_v1's): at 224 px it equals
    that module unchanged, and unlike it also runs at other sizes. A model without a reference is an error."""
    import copy

    import numpy as np

    from benchmarks import bench, references
    from lightjax import convert
    from parity import randomize_, torch_to_np

    for name in bench.FLAGSHIPS:
        module, layout, kwargs, desc = references.torch_reference(name)
        assert isinstance(module, torch.nn.Module) and desc
        if name == "mobilenet_v1_100":
            sd = {k: v.detach() for k, v in module.state_dict().items()}
            convert.from_torch(name, sd, layout=layout, **kwargs)  # strict: raises on any missing/unexpected key
    module, layout, _, desc = references.torch_reference("shufflenet_v1_g3")
    assert type(module).__init__.__code__.co_filename == os.path.join(REPO, "tests", "seed_shufflenet.py")
    assert "tests/seed_shufflenet.py" in desc and layout == "megvii"
    seed = references.load_tests_module("seed_shufflenet")
    randomize_(module)
    module.eval()
    unchanged = seed.ShuffleNetV1(seed.MEGVII_STAGE_OUT_CHANNELS[3]["1.0x"], 3).eval()
    unchanged.load_state_dict(copy.deepcopy(module.state_dict()))
    rng = np.random.default_rng(0)
    with torch.no_grad():
        x = torch.from_numpy(rng.standard_normal((1, 3, 224, 224)).astype(np.float32))
        want, got = torch_to_np(unchanged(x)), torch_to_np(module(x))
        assert np.abs(want).max() > 0.1 and np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
        x = torch.from_numpy(rng.standard_normal((2, 3, 65, 65)).astype(np.float32))
        assert module(x).shape == (2, 1000)
        with pytest.raises(RuntimeError):  # why the head is swapped: AvgPool2d(7) of a 3x3 map
            unchanged(x)
    with pytest.raises(KeyError, match="no PyTorch reference known for 'squeezenet1_1_cifar'"):
        references.torch_reference("squeezenet1_1_cifar")


def test_onnx_flag_runs_the_onnx_module_and_errors_clearly(monkeypatch, capsys):
    """``--onnx`` loads ``benchmarks/onnx_bench.py`` (its options join the CLI) and prints its table;
    ``--onnx-only`` runs no other row; missing packages and clashing options are named."""
    import argparse
    import importlib.util
    import types

    from benchmarks import bench

    seen = {}

    def add_arguments(parser):
        parser.add_argument("--onnx-batches", type=int, nargs="+", default=[1, 32])

    def run(args):
        seen["args"] = args
        return "| onnx table |"

    fake = types.SimpleNamespace(add_arguments=add_arguments, run=run)
    real_loader = bench.load_onnx_bench
    monkeypatch.setattr(bench, "load_onnx_bench", lambda: fake)
    monkeypatch.setattr(bench.processes, "_run_row_processes", lambda *a: pytest.fail("--onnx-only ran a row"))
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # main() adds the scheduler flag: restore it
    assert bench.main(["--onnx-only", "--onnx-batches", "1", "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert seen["args"].onnx_batches == [1] and "| onnx table |" in out and "allocator:" in out
    assert "| model | size |" not in out
    assert bench.parse_args(["--batch", "4"]) == (argparse.Namespace(**vars(bench.build_parser().parse_args(
        ["--batch", "4"]))), None)  # without --onnx the module is not loaded

    clash = types.SimpleNamespace(add_arguments=lambda p: p.add_argument("--batch"), run=run)
    with pytest.raises(SystemExit, match="must not reuse the benchmark's own names"):
        bench.build_parser(clash)

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == "jax2onnx" else real_find_spec(m, *a))
    with pytest.raises(SystemExit, match=r"--onnx needs jax2onnx, not installed: pip install"):
        real_loader()


def test_json_file_is_replaced_whole(tmp_path):
    """``--json`` is rewritten after every row: through a temp file and a rename, so a failed write keeps the
    last complete file and leaves no temp file behind."""
    import json

    from benchmarks import bench

    path = str(tmp_path / "rows.json")
    bench._write_json(path, {"rows": [1]})
    with pytest.raises(TypeError):
        bench._write_json(path, {"rows": [object()]})
    with open(path) as f:
        assert json.load(f) == {"rows": [1]}
    assert os.listdir(tmp_path) == ["rows.json"]


def test_onnx_rows_run_end_to_end_and_the_two_graphs_agree(torch, capsys):
    """The real ONNX rows at a small size: both graphs built from one module's weights, every side timed, and
    the two graphs' outputs on the benchmark input agree (a wrong export or a mismatched input would show as a
    relative difference of O(1), flagged in the table)."""
    from conftest import require

    require("onnxruntime")
    require("jax2onnx")
    import argparse

    from benchmarks import onnx_bench

    p = argparse.ArgumentParser()
    onnx_bench.add_arguments(p)
    args = p.parse_args(["--onnx-models", "squeezenet1_1", "--onnx-batches", "1,3", "--onnx-repeats", "1",
                         "--onnx-size", "48"])
    table = onnx_bench.run(args)
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| squeezenet1_1 ")]
    assert [r[2] for r in rows] == ["1", "3"] and all(r[1] == "48" for r in rows)
    for r in rows:
        assert all(float(v) > 0 for v in (r[3], r[4], r[6], r[7])), r  # img/s of the four sides
        assert float(r[-1].rstrip(" |")) < onnx_bench.AGREE, r
        lj, tv = (int(n) for n in r[8].split(" / "))
        assert 0 < lj <= tv, r  # torch's graph keeps its Constant/shape nodes; ours is folded
    assert "(DISAGREE)" not in table
    bad = dict(model="m", batch=1, size=8, ips={k: 1.0 for k in ("ort_lightjax", "ort_torch", "xla", "torch_eager")},
               ratio=1.0, nodes_lightjax=1, nodes_torch=1, agree=0.5)
    assert "(DISAGREE)" in onnx_bench.format_table([bad])
