"""One atomic file write for the whole package (checkpoints, exports, downloads, digests, results files).

The data goes to a unique temp file beside the target (same directory, hence same file system), is fsynced,
then ``os.replace``s the target (and the directory entry is fsynced where the OS allows): a crash mid-write
leaves the previous file (or none), never a half-written one; a failed write removes its temp file. The temp
name ends in ``.partial`` (:func:`remove_partials` clears those left by killed processes).

``atomic_path`` is the general form (the caller writes the temp path itself, e.g. safetensors' ``save_file`` or
a download loop, and may raise to discard it); ``atomic_write`` writes bytes or text through it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]
PARTIAL_SUFFIX = ".partial"


def _fsync(path: str, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # e.g. Windows cannot open a directory: the replace itself is still atomic
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def remove(path: PathLike) -> None:
    """Deletes ``path`` if it exists."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yields a temp path beside ``path``; on a normal exit it replaces ``path``, on an exception it is removed.

    Args:
      path: the target file; its directory must exist.

    Returns:
      A context manager yielding the temp file's path (not yet created) for the caller to write.
    """
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}"
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(os.path.dirname(os.path.abspath(path)), directory=True)
    finally:
        remove(tmp)


def atomic_write(path: PathLike, data: Union[bytes, str]) -> None:
    """Writes ``data`` (bytes, or text as UTF-8) to ``path`` atomically.

    Args:
      path: the target file; its directory must exist.
      data: the whole new content.
    """
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)


def remove_partials(dest: PathLike) -> None:
    """Deletes the temp files of ``dest`` left by killed processes (call it holding ``dest``'s lock)."""
    dest = os.fspath(dest)
    d, base = os.path.dirname(dest), os.path.basename(dest)
    for name in os.listdir(d) if os.path.isdir(d) else ():
        if name.startswith(base + ".") and name.endswith(PARTIAL_SUFFIX):
            remove(os.path.join(d, name))
