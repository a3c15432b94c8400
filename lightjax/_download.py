"""Moving one file into lightjax's cache: read a URL / path / ``gs://`` location, verify, land atomically.

The transport under :mod:`lightjax.hub` (which decides *where* to look): ``download`` streams a location into a
temp file in the target directory under a per-target ``filelock``, checks the byte count and the sha256, then
``os.replace``s it and records the digest beside it (``<file>.sha256``); ``cached_ok`` re-checks a cached file
against the expected digest (or that record) and deletes a wrong one. Failures raise :class:`AttemptFailed`
with a one-line reason; the hub layer collects them into one error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional, Tuple

from lightjax._atomic import atomic_path, atomic_write, remove, remove_partials

log = logging.getLogger("lightjax.hub")

ENV_PROGRESS = "LIGHTJAX_PROGRESS"
ENV_TIMEOUT = "LIGHTJAX_DOWNLOAD_TIMEOUT"
#: When true, nothing is fetched over the network (http(s)://, gs://): only caches, files and local mirrors.
ENV_OFFLINE = "LIGHTJAX_OFFLINE"
_CHUNK = 1 << 20


class AttemptFailed(Exception):
    """One location failed (internal: collected into a :class:`WeightsUnavailableError`)."""


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def lock(path: str):
    """An inter-process lock for ``path`` (``<path>.lock``; the directory is created)."""
    from filelock import FileLock

    os.makedirs(os.path.dirname(path), exist_ok=True)
    return FileLock(path + ".lock")


def cached_ok(path: str, sha: Optional[str]) -> Tuple[bool, str]:
    """Is a cached file the right one? A wrong one is deleted (with its record) so it is fetched again."""
    if not os.path.isfile(path):
        return False, "not in the cache"
    found = sha256_file(path)
    record = path + ".sha256"
    if sha:
        ok, expected = found.startswith(sha), f"{sha}..."
    elif os.path.isfile(record):
        with open(record) as f:
            expected = f.read().strip()
        ok = found == expected
    else:
        log.info("using %s (placed by hand: no digest to check it against)", path)
        return True, ""
    if ok:
        return True, ""
    for p in (path, record):
        remove(p)
    log.warning("cached %s is corrupt (sha256 %s, expected %s): deleted, fetching it again", path, found, expected)
    return False, f"cached file was corrupt (sha256 {found}, expected {expected}); deleted"


def download(location: str, dest: str, sha: Optional[str], tag: str) -> str:
    """Copies ``location`` (URL, path, gs://) to ``dest`` via a temp file, verifying size and sha256."""
    with lock(dest):
        if os.path.exists(dest):  # another process finished it while we waited for the lock
            ok, _ = cached_ok(dest, sha)
            if ok:
                return dest
        remove_partials(dest)  # left by killed processes (we hold the lock: nobody else writes them)
        stream = None
        try:
            with atomic_path(dest) as tmp:  # a failed check below raises: the temp file is dropped, dest untouched
                stream, size = _open(location)
                h, n = hashlib.sha256(), 0
                with open(tmp, "wb") as f, progress(size, os.path.basename(dest)) as bar:
                    while True:
                        try:
                            chunk = stream.read(_CHUNK)
                        except Exception as e:  # http.client.IncompleteRead, socket errors, timeouts
                            raise AttemptFailed(f"connection lost after {n} bytes"
                                                + (f" of {size}" if size else "") + f" ({type(e).__name__})") from None
                        if not chunk:
                            break
                        f.write(chunk)
                        h.update(chunk)
                        n += len(chunk)
                        bar.update(len(chunk))
                if size is not None and n != size:
                    raise AttemptFailed(f"connection closed after {n} of {size} bytes")
                found = h.hexdigest()
                if sha and not found.startswith(sha):
                    raise AttemptFailed(f"sha256 mismatch: expected {sha}..., found {found} (file not kept)")
            atomic_write(dest + ".sha256", found + "\n")
            log.info("%s: downloaded %s (%d bytes, sha256 %s)", tag, location, n, found)
            return dest
        finally:
            if stream is not None:
                try:
                    stream.close()
                except Exception:  # pragma: no cover - closing a broken connection
                    pass


def _open(location: str):
    """``(readable stream, size or None)`` of a URL, a local path, ``file://`` or ``gs://`` location."""
    scheme = urllib.parse.urlparse(location).scheme
    if scheme in ("http", "https", "gs") and offline():
        raise AttemptFailed(f"not fetched: {ENV_OFFLINE} is set")
    if scheme in ("http", "https"):
        from lightjax import __version__ as version

        req = urllib.request.Request(location, headers={"User-Agent": f"lightjax/{version}"})
        try:
            resp = urllib.request.urlopen(req, timeout=float(os.environ.get(ENV_TIMEOUT, "60")))
        except urllib.error.HTTPError as e:
            raise AttemptFailed(f"HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            reason = e.reason
            raise AttemptFailed(f"unreachable ({getattr(reason, 'strerror', None) or reason})") from None
        except (OSError, ValueError) as e:  # timeouts, bad URLs
            raise AttemptFailed(f"unreachable ({type(e).__name__}: {e})") from None
        length = resp.headers.get("Content-Length")
        return resp, (int(length) if length and length.isdigit() else None)
    if scheme == "gs":
        return _open_gcs(location)
    path = urllib.request.url2pathname(urllib.parse.urlparse(location).path) if scheme == "file" else location
    if not os.path.isfile(path):
        raise AttemptFailed("no such file")
    return open(path, "rb"), os.path.getsize(path)


def _open_gcs(location: str):
    try:
        from etils import epath

        p = epath.Path(location)
        if not p.exists():
            raise AttemptFailed("no such object")
        return p.open("rb"), p.stat().length
    except ImportError:
        pass
    except AttemptFailed:
        raise
    except Exception as e:
        raise AttemptFailed(f"cannot read through etils.epath ({type(e).__name__}: {e})") from None
    try:
        import tensorflow as tf  # noqa: F401
    except ImportError:
        raise AttemptFailed("gs:// mirrors need etils[epath] (with gcsfs) or tensorflow installed") from None
    try:
        if not tf.io.gfile.exists(location):
            raise AttemptFailed("no such object")
        return tf.io.gfile.GFile(location, "rb"), tf.io.gfile.stat(location).length
    except AttemptFailed:
        raise
    except Exception as e:
        raise AttemptFailed(f"cannot read through tf.io.gfile ({type(e).__name__}: {e})") from None


def offline() -> bool:
    """``LIGHTJAX_OFFLINE`` is true (read at each call)."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n: int) -> None:
        pass


def progress(total: Optional[int], desc: str):
    flag = os.environ.get(ENV_PROGRESS, "").strip().lower()
    show = flag in ("1", "true", "yes", "on") or (flag == "" and sys.stderr.isatty())
    if not show:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return _NoBar()
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, file=sys.stderr, leave=False)
