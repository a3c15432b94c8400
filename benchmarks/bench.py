"""Benchmark: lightjax vs PyTorch eager on the same weights, same process, alternating runs.

```
python -m benchmarks.bench                     # every family's flagship, batch 32, native size, CPU
python -m benchmarks.bench --models mobilenet_v2_100 xception65 --repeats 7
python -m benchmarks.bench --quick             # CI smoke run: one small size, asserts nothing about speed
python -m benchmarks.bench --device            # the same on the accelerator (jax GPU backend, torch CUDA)
python -m benchmarks.bench --onnx              # + the ONNX rows (benchmarks/onnx_bench.py); --onnx-only: just those
```

(``python -m lightjax.bench ...`` forwards here from a source checkout.) For each model it prints one table row:
inference img/s and training-step img/s (SGD momentum 0.9, cross-entropy, train-mode BatchNorm) for lightjax and
for PyTorch eager (the better of NCHW and channels_last), their ratio, the first-call compile time of lightjax
(AOT lower + compile of the train step, and of the forward), and the peak RSS of a train step for each side
(``--memory``, separate processes). Every timing is the median of ``--repeats`` (>= 5 by default) runs taken in
the same process, alternating lightjax and torch (each timed run preceded by an untimed run of the same side:
``harness._switch_in_and_time``); each model runs in a fresh process unless ``--in-process`` (or ``--quick``),
in ``--processes N`` of them if asked (each figure then the median over the processes: on this VM
whole-process ratios moved by 20-25% between runs of the same tree, more than within a process; the README
table uses 3). A model whose process is killed (out of memory) or peaks above
``processes.MEMORY_PRESSURE_SHARE`` (70%) of the machine's RAM is re-run at half the batch (Xception65 at 299
px on a 24 GiB machine: batch 32 killed, 16 thrashing, 8 measured); its row and the header say so.

Process settings (this process only; the library itself never changes XLA flags):

* ``XLA_FLAGS += --xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED`` unless ``--no-xla-flags``
  (measured +13-18% on the CPU train step; has no effect on GPU).
* ``--allocator mimalloc`` (default when the ``cmeel-mimalloc`` wheel is installed) re-executes the benchmark
  with ``LD_PRELOAD=libmimalloc.so``, ``MIMALLOC_PURGE_DELAY=-1`` and ``MIMALLOC_ARENA_MAX_OBJECT_SIZE=1TiB``
  (``train.malloc.MIMALLOC_SETTINGS``); ``--allocator system`` keeps glibc malloc (with ``MALLOC_MMAP_MAX_=0``
  unless ``--plain-glibc``). Both frameworks always run under the same allocator; the header says which.

Modules: this one (CLI, header, table), :mod:`benchmarks.harness` (the two sides, timing, alternation),
:mod:`benchmarks.processes` (child processes, memory limit and watchdog, allocator re-exec),
:mod:`benchmarks.references` (the PyTorch reference modules).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import sys
import time
from types import ModuleType
from typing import Any, Dict, List, Optional

if __package__ in (None, ""):  # run as a file (python benchmarks/bench.py): make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import processes
from lightjax._atomic import atomic_write
from benchmarks.harness import bench_here, memory_child

FLAGSHIPS = (
    "squeezenet1_1",
    "mobilenet_v1_100",
    "mobilenet_v2_100",
    "mobilenet_v3_large_100",
    "shufflenet_v1_g3",
    "shufflenet_v2_x1_0",
    "xception65",
)
#: What ``--onnx`` needs beyond the benchmark's own dependencies (the onnx extra of pyproject.toml).
ONNX_REQUIREMENTS = ("onnx", "onnxruntime", "jax2onnx")


# ----------------------------------------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------------------------------------
def _batch_line(args: argparse.Namespace, rows: Optional[List[Dict[str, Any]]]) -> str:
    """``batch 32``, and which rows ran at another batch (memory rule: see each row's note)."""
    smaller = [f"{r['model']} at {r['batch']}" for r in rows or () if "error" not in r and r.get("batch") != args.batch]
    return f"batch {args.batch}" + (f" ({', '.join(smaller)}: see the notes)" if smaller else "")


def header(args: argparse.Namespace, rows: Optional[List[Dict[str, Any]]] = None,
           load_at_start: Optional[float] = None) -> str:
    """The settings block printed above the table: date, machine, versions, allocator, flags, method.

    Args:
      args: the parsed command line.
      rows: the measured rows, when known: rows that ran at a smaller batch are named in the batch line.
      load_at_start: the 1-minute load average when the run started (default: now).
    """
    import jax
    import jaxlib

    import lightjax
    from lightjax import ops

    lines = [f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    lines.append(f"machine: {cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}")
    try:
        load = os.getloadavg()[0] if load_at_start is None else load_at_start
        lines.append(f"load average at start: {load:.2f}")
    except OSError:
        pass
    devs = jax.devices()
    lines.append(f"jax {jax.__version__} / jaxlib {jaxlib.__version__} backend={jax.default_backend()} "
                 f"({devs[0].device_kind}), conv impl: {ops.conv_impl()}")
    try:
        import flax

        lines.append(f"flax {flax.__version__}")
    except ImportError:
        pass
    try:
        import torch

        lines.append(f"torch {torch.__version__}, {torch.get_num_threads()} threads"
                     + (f", cuda {torch.cuda.get_device_name()}" if args.device and torch.cuda.is_available() else ""))
    except ImportError:
        lines.append("torch: not installed (lightjax columns only)")
    lines.append(f"allocator: {processes.current_allocator()} (both frameworks)")
    lines.append(f"XLA_FLAGS: {os.environ.get('XLA_FLAGS', '') or '(none)'}")
    lines.append(f"lightjax jit compiler_options (lightjax.compiler_options()): {lightjax.compiler_options() or '(none)'}")
    procs = getattr(args, "processes", 1)
    per_proc = f"; each row the median over {procs} fresh processes" if procs > 1 and not args.in_process else ""
    lines.append(f"{_batch_line(args, rows)}, float32, median of {args.repeats} alternating runs (each after an "
                 f"untimed run of the same side){per_proc}; torch = best of NCHW and channels_last eager; "
                 "ratio = lightjax / torch")
    return "\n".join(lines)


def _f(v, fmt="{:.1f}"):
    return "–" if v is None else fmt.format(v)


def table(rows: List[Dict[str, Any]], memory: bool) -> str:
    """The markdown table of the rows, then one note per row (its torch reference, batch and process notes)."""
    cols = ["model", "size", "infer lj", "infer torch", "ratio", "train lj", "train torch", "ratio",
            "compile fwd s", "compile train s", "first step s"]
    if memory:
        cols += ["peak MiB lj", "peak MiB lj-xla", "peak MiB torch"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | error: {r['error']} |")
            continue
        cells = [
            r["model"], str(r["size"]) + (f" (batch {r['batch']})" if "note" in r else ""),
            _f(r.get("jax_infer")),
            _f(r.get("torch_infer")) + (f" ({r['torch_infer_fmt']})" if "torch_infer_fmt" in r else ""),
            _f(r.get("ratio_infer"), "{:.2f}x"),
            _f(r.get("jax_train")),
            _f(r.get("torch_train")) + (f" ({r['torch_train_fmt']})" if "torch_train_fmt" in r else ""),
            _f(r.get("ratio_train"), "{:.2f}x"),
            _f(r.get("compile_fwd_s")), _f(r.get("compile_train_s")), _f(r.get("first_train_s")),
        ]
        if memory:
            cells += [_f(r.get("mem_jax"), "{:.0f}"), _f(r.get("mem_jax_xla"), "{:.0f}"),
                      _f(r.get("mem_torch"), "{:.0f}")]
        out.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r['model']}: torch reference: {r['torch_ref'] or 'none'}"
             + (f" ({r['torch_error']})" if "torch_error" in r else "") + (f"; {r['note']}" if "note" in r else "")
             + (f"; {r['note_processes']}" if "note_processes" in r else "") for r in rows if "error" not in r]
    return "\n".join(out + [""] + notes)


def _write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` atomically (a crash mid-write keeps the last complete file)."""
    atomic_write(path, json.dumps(obj, indent=1))


# ----------------------------------------------------------------------------------------------------------
# Command line.
# ----------------------------------------------------------------------------------------------------------
def load_onnx_bench() -> ModuleType:
    """``benchmarks/onnx_bench.py`` (the ONNX rows), after checking that what it needs is installed.

    Raises:
      SystemExit: naming the missing packages or file.
    """
    missing = [m for m in ONNX_REQUIREMENTS if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"--onnx needs {', '.join(missing)}, not installed: pip install -e '.[onnx]' (or pip "
                         f"install {' '.join(missing)})")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onnx_bench.py")
    if not os.path.exists(path):
        raise SystemExit(f"--onnx: {path} not found (the ONNX rows live there)")
    return importlib.import_module("benchmarks.onnx_bench")


def build_parser(onnx_bench: Optional[ModuleType] = None) -> argparse.ArgumentParser:
    """The CLI; with ``onnx_bench`` given, its own options are added (``onnx_bench.add_arguments``)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None, help=f"default: the flagships {', '.join(FLAGSHIPS)}")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=None, help="input size (default: each model's native size)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--processes", type=int, default=1, help="run each row in this many fresh processes and report "
                   "the median of each figure (ratios: median of the per-process ratios); the README table uses 3")
    p.add_argument("--quick", action="store_true", help="CI smoke: squeezenet1_1 at 64 px, batch 2, 2 repeats")
    p.add_argument("--device", action="store_true", help="run on the accelerator (jax GPU/TPU, torch CUDA)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--memory", action="store_true", help="peak RSS of a train step per side (fresh processes)")
    p.add_argument("--memory-xla", action="store_true", help="with --memory, also the plain 'xla' conv path")
    p.add_argument("--memory-timeout", type=int, default=900)
    p.add_argument("--allocator", choices=("auto", "mimalloc", "system"), default="auto")
    p.add_argument("--plain-glibc", action="store_true", help="with --allocator system: no MALLOC_MMAP_MAX_=0")
    p.add_argument("--no-xla-flags", action="store_true", help="do not add the memory-optimised XLA scheduler")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--onnx", action="store_true", help="also print the ONNX table (benchmarks/onnx_bench.py; "
                   "needs onnx, onnxruntime, jax2onnx); `--onnx --help` lists its options")
    p.add_argument("--onnx-only", action="store_true", help="only the ONNX table (no lightjax/torch rows)")
    p.add_argument("--_memory", nargs=2, metavar=("MODEL", "SIDE"), help=argparse.SUPPRESS)
    p.add_argument("--_row", metavar="MODEL", help=argparse.SUPPRESS)
    p.add_argument("--in-process", action="store_true", help="time every model in this process (default: one "
                   "fresh process per model)")
    if onnx_bench is not None:
        try:
            onnx_bench.add_arguments(p)
        except argparse.ArgumentError as e:
            raise SystemExit(f"benchmarks/onnx_bench.py add_arguments: {e} (its options must not reuse the "
                             "benchmark's own names)") from None
    return p


def parse_args(argv: Optional[List[str]] = None):
    """Parses ``argv``; the ONNX module (and its options) is loaded only when ``--onnx``/``--onnx-only`` is given.

    Returns:
      ``(args, onnx_bench module or None)``.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--onnx", action="store_true")
    pre.add_argument("--onnx-only", action="store_true")
    known, _ = pre.parse_known_args(argv)
    onnx_bench = load_onnx_bench() if known.onnx or known.onnx_only else None
    return build_parser(onnx_bench).parse_args(argv), onnx_bench


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the benchmark (``argv`` default: ``sys.argv[1:]``; the allocator re-exec happens only then)."""
    args, onnx_bench = parse_args(argv)
    try:
        load_at_start: Optional[float] = os.getloadavg()[0]
    except (AttributeError, OSError):  # not Unix
        load_at_start = None

    if argv is None:
        processes._reexec_with_allocator(args)
    processes._set_xla_flags(args)
    import jax

    if not args.device:
        jax.config.update("jax_platforms", "cpu")
    elif jax.default_backend() == "cpu":
        print("--device: no accelerator visible to jax; running on CPU", file=sys.stderr)
    try:
        import torch

        if not args.device:
            torch.set_num_threads(os.cpu_count() or 1)
    except ImportError:
        args.no_torch = True

    if args._memory:
        print(json.dumps(memory_child(args._memory[0], args._memory[1], args.batch, args.size, args.device)))
        return 0
    if args._row:
        print(json.dumps(bench_here(args._row, args)))
        return 0

    if args.quick:
        args.models = args.models or ["squeezenet1_1"]
        args.size, args.batch, args.repeats = args.size or 64, 2, 2
    import lightjax.models as lm

    names = [] if args.onnx_only else (args.models or list(FLAGSHIPS))
    # The header goes to stdout at the end, when it can say which rows ran at a smaller batch.
    print(f"[bench] {len(names)} row(s); allocator: {processes.current_allocator()}", file=sys.stderr, flush=True)
    rows: List[Dict[str, Any]] = []
    for name in names:
        if name not in lm.list_models():
            rows.append({"model": name, "error": "not registered"})
            continue
        try:
            row = bench_here(name, args) if args.in_process or args.quick else processes._run_row_processes(name, args)
        except Exception as e:  # noqa: BLE001 -- one broken model must not hide the others
            row = {"model": name, "error": f"{type(e).__name__}: {e}"[:300]}
        if args.memory and "error" not in row:
            row["mem_jax"] = processes._run_memory(name, "jax", args)
            if args.memory_xla:
                row["mem_jax_xla"] = processes._run_memory(name, "jax_xla", args)
            if not args.no_torch:
                fmt = row.get("torch_train_fmt", "cl")
                row["mem_torch"] = processes._run_memory(name, f"torch_{fmt}", args)
        rows.append(row)
        if args.json:  # after every row: a later crash keeps what was measured
            _write_json(args.json, {"header": header(args, rows, load_at_start), "rows": rows})
        print(f"[{name}] " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}),
              file=sys.stderr, flush=True)
    print(header(args, rows, load_at_start))
    if names:
        print()
        print(table(rows, args.memory))
    onnx_table = None
    if onnx_bench is not None:
        onnx_table = onnx_bench.run(args)
        print()
        print(onnx_table)
    if args.json:
        out: Dict[str, Any] = {"header": header(args, rows, load_at_start), "rows": rows}
        if onnx_table is not None:
            out["onnx_table"] = onnx_table
        _write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
