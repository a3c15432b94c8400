"""One atomic file write for the whole package (checkpoints, exports, digests, results files).

The data goes to a unique temp file beside the target (same directory, hence same file system), is flushed
and fsynced, then ``os.replace``s the target: a crash mid-write leaves the previous file (or none), never a
half-written one; a failed write removes its temp file. The temp name ends in ``.partial``
(``lightjax._download.remove_partials`` clears those left by killed processes).
"""

from __future__ import annotations

import os
import uuid
from typing import Union


def atomic_write(path: Union[str, "os.PathLike[str]"], data: Union[bytes, str]) -> None:
    """Writes ``data`` (bytes, or text as UTF-8) to ``path`` atomically.

    Args:
      path: the target file; its directory must exist.
      data: the whole new content.
    """
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial"
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
