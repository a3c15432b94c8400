"""The benchmark's processes: the allocator re-exec and XLA flags of its own process, one fresh child process
per row (retried at half the batch when it runs out of memory; ``--processes N`` medians), memory children, and
the watchdog that stops a child whose resident memory passes the limit.

Every child is started from :func:`child_command` (one place for its command line and environment) and checked
against :func:`memory_limit_mib` (one place for the 70%-of-RAM rule).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from train.malloc import MIMALLOC_SETTINGS, mimalloc_path

#: The repository root: children run ``python -m benchmarks.bench`` with it on ``PYTHONPATH`` (any cwd).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEDULER_FLAG = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
#: Set in every child (and after the allocator re-exec): the child neither re-executes nor spawns rows.
_CHILD_ENV = "LIGHTJAX_BENCH_CHILD"
#: A row whose process peaked above this share of the machine's RAM is re-run at half the batch: Xception65 at
#: batch 16 (299 px, both frameworks in one process) peaked near 24 GiB of 24 and ran its train step 5x slower
#: than at batch 8 (page-cache thrashing), which measures the memory pressure, not the kernels.
MEMORY_PRESSURE_SHARE = 0.7

__all__ = ["MIMALLOC_SETTINGS", "mimalloc_path", "current_allocator", "child_command", "memory_limit_mib"]


# ----------------------------------------------------------------------------------------------------------
# This process's settings (before jax is imported).
# ----------------------------------------------------------------------------------------------------------
def current_allocator() -> str:
    """The allocator this process runs under, as the header prints it."""
    pre = os.environ.get("LD_PRELOAD", "")
    if "mimalloc" in pre:
        opts = ", ".join(f"{k}={os.environ.get(k, 'default')}" for k in MIMALLOC_SETTINGS)
        return f"mimalloc ({os.path.basename(pre)}, {opts})"
    if "jemalloc" in pre or "tcmalloc" in pre:
        return os.path.basename(pre)
    extra = f", MALLOC_MMAP_MAX_={os.environ['MALLOC_MMAP_MAX_']}" if "MALLOC_MMAP_MAX_" in os.environ else ""
    return f"glibc malloc{extra}"


def _reexec_with_allocator(args: argparse.Namespace) -> None:
    """Re-executes this process under the requested allocator (env must be set before the process starts)."""
    if os.environ.get(_CHILD_ENV) == "1" or args.device:
        return
    env = dict(os.environ)
    want = args.allocator
    if want == "auto":
        want = "mimalloc" if mimalloc_path() else "system"
    if want == "mimalloc":
        lib = mimalloc_path()
        if lib is None:
            raise SystemExit("--allocator mimalloc: libmimalloc not found (pip install cmeel-mimalloc, or set "
                             "LIGHTJAX_MIMALLOC=/path/to/libmimalloc.so)")
        if lib in env.get("LD_PRELOAD", ""):
            return
        env["LD_PRELOAD"] = ":".join(filter(None, [lib, env.get("LD_PRELOAD")]))
        for k, v in MIMALLOC_SETTINGS.items():
            env.setdefault(k, v)
    else:
        if "mimalloc" in env.get("LD_PRELOAD", ""):
            env["LD_PRELOAD"] = ":".join(p for p in env["LD_PRELOAD"].split(":") if "mimalloc" not in p)
        if not args.plain_glibc:
            env.setdefault("MALLOC_MMAP_MAX_", "0")
        if env == dict(os.environ):
            return
    cmd, env = child_command(sys.argv[1:], env=env)
    os.execve(cmd[0], cmd, env)


def _set_xla_flags(args: argparse.Namespace) -> None:
    """Adds the memory-optimised XLA:CPU scheduler to ``XLA_FLAGS`` (this process only; not with --device)."""
    if args.no_xla_flags or args.device:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_scheduler_type" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " " + SCHEDULER_FLAG).strip()


# ----------------------------------------------------------------------------------------------------------
# Children.
# ----------------------------------------------------------------------------------------------------------
def child_command(task: Sequence[str], args: Optional[argparse.Namespace] = None, batch: Optional[int] = None,
                  env: Optional[Mapping[str, str]] = None, **env_extra: str) -> Tuple[List[str], Dict[str, str]]:
    """The command line and environment of a benchmark child process (rows, memory children, the re-exec).

    Args:
      task: the child's own arguments: ``["--_row", MODEL]``, ``["--_memory", MODEL, SIDE]``, or (the allocator
        re-exec, ``args=None``) this process's whole command line.
      args: the parent's parsed arguments; when given, the settings every child shares with its parent are
        appended (batch, repeats, size, device, no-torch, quick).
      batch: the batch the child runs at (default ``args.batch``: a retried row runs smaller).
      env: the base environment (default ``os.environ``).
      **env_extra: variables set on top (e.g. ``LIGHTJAX_CONV_IMPL="xla"``).

    Returns:
      ``(argv, env)`` for ``subprocess`` / ``os.execve``: ``python -m benchmarks.bench ...`` with the repository
      root first on ``PYTHONPATH`` (so it runs from any directory) and the child marker set.
    """
    argv = [sys.executable, "-m", "benchmarks.bench", *task]
    if args is not None:
        argv += ["--batch", str(args.batch if batch is None else batch), "--repeats", str(args.repeats)]
        if args.size:
            argv += ["--size", str(args.size)]
        argv += [flag for flag, on in (("--device", args.device), ("--no-torch", args.no_torch),
                                       ("--quick", args.quick)) if on]
    out = dict(os.environ if env is None else env, **env_extra)
    paths = [p for p in out.get("PYTHONPATH", "").split(os.pathsep) if p and p != REPO_ROOT]
    out["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, *paths])
    out[_CHILD_ENV] = "1"
    return argv, out


def _total_ram_mib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return float("inf")


def memory_limit_mib() -> float:
    """Resident memory (MiB) above which a row's child is stopped and the row re-run at half the batch."""
    return MEMORY_PRESSURE_SHARE * _total_ram_mib()


def _run_row(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    """Benchmarks one model in a fresh process: compiled executables, torch modules and allocator caches of
    earlier models do not pile up (with mimalloc's purge delay -1 nothing is returned to the OS, and the full
    table in one process was OOM-killed at 24 GiB on xception65), and a crash costs one row, not the table.
    A process killed (out of memory: Xception65 at 299 px, batch 32, both frameworks in one process on 24
    GiB) or one that peaked above ``MEMORY_PRESSURE_SHARE`` of the RAM is retried at half the batch, down to
    1; the row then says which batch it ran at and why."""
    batch, dropped, limit = args.batch, [], memory_limit_mib()
    while True:
        row = _run_row_at(name, args, batch)
        peak = row.get("peak_rss_mib") or 0
        if batch <= 1 or not (row.get("killed") or peak > limit):
            break
        if row.get("killed"):
            dropped.append(f"batch {batch} killed (out of memory?)")
        else:
            verb = "stopped at" if row.get("stopped") else "peaked at"
            dropped.append(f"batch {batch} {verb} {peak / 1024:.1f} GiB (> {limit / 1024:.1f})")
        batch //= 2
    row.pop("killed", None)
    row.pop("stopped", None)
    if dropped:
        row["note"] = f"{'; '.join(dropped)}: ran at batch {batch}"
    return row


def _run_row_processes(name: str, args: argparse.Namespace) -> Dict[str, Any]:
    """``_run_row`` in ``args.processes`` fresh processes; the row holds the median of each figure over them
    (ratios: the median of the per-process ratios) and the per-process ratios under ``ratios_infer`` /
    ``ratios_train``. Why: on this VM the same-process alternation cancels drift within a process, but whatever
    a process starts with (we suspect its memory placement and huge pages) lasts its lifetime: whole-process
    ratios moved by 20-25% between runs of the same tree (torch's MobileNetV2 inference 228.5 vs 296.9 img/s in
    two processes), far more than the spread of the 5 runs inside one process."""
    first = _run_row(name, args)
    if args.processes <= 1 or "error" in first:
        return first
    rows, dropped = [first], []
    later = argparse.Namespace(**{**vars(args), "batch": first["batch"]})
    for _ in range(args.processes - 1):
        row = _run_row(name, later)
        if "error" not in row and row["batch"] == first["batch"]:
            rows.append(row)
        else:  # not comparable with the others: left out of the medians, and the row says why
            dropped.append(row.get("error") or row.get("note") or f"ran at batch {row['batch']}")
    out = dict(first)
    for key, val in first.items():
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if isinstance(val, float) and len(vals) == len(rows):
            out[key] = statistics.median(vals)
    for mode in ("infer", "train"):
        ratios = [r[f"ratio_{mode}"] for r in rows if f"ratio_{mode}" in r]
        if ratios:
            out[f"ratios_{mode}"] = ratios  # ratio_{mode} itself is already the median (loop above)
            fmts = [r[f"torch_{mode}_fmt"] for r in rows]
            out[f"torch_{mode}_fmt"] = max(set(fmts), key=fmts.count)
    spread = "; ".join(f"{mode} ratio {min(out[f'ratios_{mode}']):.2f}-{max(out[f'ratios_{mode}']):.2f}x"
                       for mode in ("infer", "train") if f"ratios_{mode}" in out)
    out["note_processes"] = f"median of {len(rows)} processes ({spread})"
    if dropped:
        out["note_processes"] += f"; {len(dropped)} of {args.processes} left out: " + "; ".join(dropped)
    keep = ("jax_infer", "torch_infer", "jax_train", "torch_train", "peak_rss_mib", "anon_huge_pages_mib")
    out["processes"] = [{k: r[k] for k in keep if k in r} for r in rows]
    return out


def _run_row_at(name: str, args: argparse.Namespace, batch: int) -> Dict[str, Any]:
    """One row's child at ``batch``, watched by :class:`_RssWatch`; its JSON row, or an ``error`` row that says
    whether it was killed (``killed``) or stopped over the memory limit (``stopped``)."""
    cmd, env = child_command(["--_row", name], args, batch)
    limit = memory_limit_mib()
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        watch = _RssWatch(proc.pid, limit)
        try:
            stdout, stderr = proc.communicate()
        finally:
            watch.stop()
    if watch.stopped_at is not None:
        return {"model": name, "error": f"stopped at batch {batch}: resident memory {watch.stopped_at / 1024:.1f} "
                f"GiB > {limit / 1024:.1f}", "peak_rss_mib": watch.stopped_at, "killed": False, "stopped": True}
    lines = [l for l in stdout.strip().splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        killed = proc.returncode in (-9, 137)
        why = f"exit {proc.returncode}" + (f" (killed at batch {batch}: out of memory?)" if killed else "")
        return {"model": name, "error": f"{why}: {stderr.strip()[-300:]}", "killed": killed}
    return json.loads(lines[-1])


def _run_memory(name: str, side: str, args: argparse.Namespace) -> Optional[float]:
    """Peak RSS increase (MiB) of two train steps of one side (``jax``, ``jax_xla``, ``torch_nchw``/``_cl``) in a
    fresh process; None if that process failed or timed out (the table shows a dash)."""
    env_extra = {"LIGHTJAX_CONV_IMPL": "xla"} if side.endswith("xla") else {}
    cmd, env = child_command(["--_memory", name, side], args, **env_extra)
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.memory_timeout)
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
    except Exception:  # noqa: BLE001
        return None


# ----------------------------------------------------------------------------------------------------------
# Memory of a child.
# ----------------------------------------------------------------------------------------------------------
def proc_mib(path: str, field: str) -> Optional[float]:
    """A ``<field> <n> kB`` line of a Linux ``/proc`` file, in MiB; None where unavailable."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rss_mib_of(pid: int) -> Optional[float]:
    """Resident set size of process ``pid`` in MiB (Linux ``/proc``), or None where unavailable."""
    return proc_mib(f"/proc/{pid}/status", "VmRSS:")


class _RssWatch:
    """Kills a benchmark child as soon as its resident memory passes ``limit_mib``: the row is re-run at half
    the batch anyway, and a child left to run near the RAM limit thrashes for minutes (Xception65, batch 16:
    page-cache eviction of its own code, 1.5 GB/s of reads, ~15 s per train step) before it finishes."""

    def __init__(self, pid: int, limit_mib: float, interval_s: float = 0.5):
        self.pid, self.limit, self.interval = pid, limit_mib, interval_s
        self.stopped_at: Optional[float] = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            rss = _rss_mib_of(self.pid)
            if rss is None:
                return
            if rss > self.limit:
                self.stopped_at = rss
                try:
                    os.kill(self.pid, 9)
                except OSError:
                    pass
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join()
