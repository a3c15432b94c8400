"""Allocator settings for CPU training processes: keep XLA's large buffers mapped between steps.

XLA:CPU allocates each executable's temp buffer (MobileNetV2 train step at batch 32: ~2 GiB) on one of its
worker threads, i.e. from a glibc thread arena, which cannot hold a block that large: glibc maps it with
``mmap`` and unmaps it on free, so every step faults the whole buffer in again (MobileNetV2: ~489,000 page
faults and 1.12 s per step, vs 0 faults and 0.83-0.86 s with the settings below; mimalloc: 0.62-0.72 s).

:func:`tune_glibc_malloc` is a trade-off, so it is opt-in (``LIGHTJAX_TUNE_MALLOC=1 python -m train`` applies it
at start-up): with one arena every thread shares one lock, and XLA's two compile threads slowed down
(MobileNetV3-large train step XLA compile 5.8-6.8 s -> 8.5-9.8 s), as did the small default digits run
(34.6 s -> 51.5 s wall). It pays off for long runs of large activations (224 px, batch 32 and up).

Preloading mimalloc is faster still and has no such cost; it has to be chosen before the process starts, so
this module only finds it (:func:`mimalloc_path`) and names its settings (:data:`MIMALLOC_SETTINGS`), which the
benchmark (``benchmarks/``) uses for both frameworks and the README gives for ``python -m train``::

    LD_PRELOAD=$(python -c "from train.malloc import mimalloc_path; print(mimalloc_path())") \
    MIMALLOC_PURGE_DELAY=-1 MIMALLOC_ARENA_MAX_OBJECT_SIZE=1TiB python -m train ...
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import sys
from typing import Optional

log = logging.getLogger("train")

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
#: One arena (the main heap, which can grow to any size), no ``mmap`` for large blocks, and no trimming (-1,
#: see ``man mallopt``): freed memory stays mapped for the next step. A finite threshold is not enough: with
#: 2 GiB - 1 (the largest C int) MobileNetV2 was back at ~492,000 faults per step.
SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
_OTHER_ALLOCATORS = ("mimalloc", "jemalloc", "tcmalloc")


def tune_glibc_malloc() -> Optional[str]:
    """Applies :data:`SETTINGS` with ``mallopt`` if this process runs on glibc's malloc.

    Call it at the start of a process, before JAX creates its thread pools (later calls still help: new large
    blocks stop being mapped per allocation, but arenas already created stay). Nothing is changed when
    ``LD_PRELOAD`` holds another allocator (mimalloc, jemalloc, tcmalloc), when a ``MALLOC_*`` environment
    variable is set (the user's settings win), or off glibc.

    Returns:
      A one-line description of what was done, or ``None`` if nothing was.
    """
    if any(a in os.environ.get("LD_PRELOAD", "") for a in _OTHER_ALLOCATORS):
        return None
    if any(k.startswith("MALLOC_") for k in os.environ) or "GLIBC_TUNABLES" in os.environ:
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        version = libc.gnu_get_libc_version().decode()
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not all(mallopt(param, value) == 1 for param, value in SETTINGS):
        log.warning("mallopt rejected lightjax's malloc settings (glibc %s)", version)
        return None
    return f"glibc {version} malloc: one arena, no mmap for large blocks, no trimming"


#: mimalloc settings the benchmark runs both frameworks under (user-set values win). ``PURGE_DELAY=-1``: freed
#: memory is never returned to the OS, so steady-state steps take no page faults. ``ARENA_MAX_OBJECT_SIZE``:
#: mimalloc 3 serves objects above 2 GiB straight from the OS (``mmap`` + ``MADV_HUGEPAGE`` per allocation,
#: ``munmap`` on free), and XLA:CPU's per-step temp buffer is one such object (Xception65 train step, batch 8:
#: 5 GiB). Mapped afresh every step it took ~2,600 huge-page faults per step, which after torch's steps stalled
#: in compaction (2-4 s of system time; lightjax 3.5-5.3 s per step). From an arena it stays mapped: 0 faults,
#: 3.06-3.19 s.
MIMALLOC_SETTINGS = {"MIMALLOC_PURGE_DELAY": "-1", "MIMALLOC_ARENA_MAX_OBJECT_SIZE": "1TiB"}


def mimalloc_path() -> Optional[str]:
    """Finds ``libmimalloc.so`` to preload.

    Returns:
      ``$LIGHTJAX_MIMALLOC`` if that file exists, else the library of the ``cmeel-mimalloc`` wheel
      (``pip install cmeel-mimalloc``) on ``sys.path``, else ``None``.
    """
    env = os.environ.get("LIGHTJAX_MIMALLOC")
    if env and os.path.exists(env):
        return env
    for p in sys.path:
        for cand in sorted(glob.glob(os.path.join(p, "cmeel.prefix", "lib", "libmimalloc.so*"))):
            return cand
    return None
