"""``train.malloc.tune_glibc_malloc``: opt-in glibc settings that keep large blocks mapped between uses (run in
subprocesses, so the test process keeps its own allocator state)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc malloc only")

# A 256 MiB block allocated, touched and freed twice from one worker thread (XLA allocates its temp buffers on
# its worker threads); prints the minor page faults of the second round.
_PROBE = textwrap.dedent("""
    import ctypes, resource, sys, threading
    from train.malloc import tune_glibc_malloc
    print(tune_glibc_malloc() if sys.argv[1] == "tune" else None)
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    n = 256 << 20
    out = []
    def rounds():
        for i in range(2):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            p = libc.malloc(n)
            ctypes.memset(p, 1, n)
            libc.free(p)
            out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    t = threading.Thread(target=rounds); t.start(); t.join()
    print(out[1])
""")


def _run(mode: str, **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD",
                                                                                            "GLIBC_TUNABLES")}
    env.update(env_extra, PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    desc, faults = r.stdout.strip().splitlines()[-2:]
    return desc, int(faults)


def test_tune_glibc_malloc_keeps_large_blocks_mapped():
    desc, faults = _run("tune")
    assert "one arena" in desc and "no trimming" in desc
    _, faults_default = _run("plain")
    # 256 MiB re-touched: ~65,000 4-KiB faults (or ~128 huge pages) under the defaults, ~none once tuned.
    assert faults_default > 100 and faults < faults_default / 10, (faults, faults_default)


@pytest.mark.parametrize("env", [{"MALLOC_ARENA_MAX": "2"}, {"LD_PRELOAD": "/nonexistent/libmimalloc.so"}])
def test_tune_glibc_malloc_leaves_the_users_choice(env):
    desc, _ = _run("tune", **env)
    assert desc == "None"
