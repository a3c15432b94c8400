"""glibc ``malloc`` settings for CPU training processes: keep XLA's large buffers mapped between steps.

XLA:CPU allocates each executable's temp buffer (MobileNetV2 train step at batch 32: ~2 GiB) on one of its
worker threads, i.e. from a glibc thread arena, which cannot hold a block that large: glibc maps it with
``mmap`` and unmaps it on free, so every step faults the whole buffer in again (MobileNetV2: ~489,000 page
faults and 1.12 s per step, vs 0 faults and 0.83-0.86 s with the settings below; mimalloc: 0.62-0.72 s).

It is a trade-off, so it is opt-in (the library never calls it; ``LIGHTJAX_TUNE_MALLOC=1 python -m train``
applies it at start-up): with one arena every thread shares one lock, and XLA's two compile threads slowed
down (MobileNetV3-large train step XLA compile 5.8-6.8 s -> 8.5-9.8 s), as did the small default digits run
(34.6 s -> 51.5 s wall). It pays off for long runs of large activations (224 px, batch 32 and up).
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Optional

log = logging.getLogger("lightjax")

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
