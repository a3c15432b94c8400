"""Getting a pretrained tag's file: cache, mirror, download with verification, huggingface_hub, locks, errors.

Where files come from, in order (the first that works wins):

1. ``cfg.file`` (a local checkpoint; nothing else is tried).
2. Our cache, ``$LIGHTJAX_CACHE`` (default ``~/.cache/lightjax``): ``weights/<url file name>`` for URL sources,
   ``weights/<hf_hub_id>/<filename>`` for hub sources; a file placed there by hand is used too.
3. ``$LIGHTJAX_WEIGHTS_MIRROR``, when set, *instead of* the public hosts: a base URL (``http(s)://``), a
   directory (a path or ``file://``), or ``gs://bucket/dir`` (through ``etils.epath`` or ``tf.io.gfile``),
   holding URL sources as ``<mirror>/<url file name>`` and hub sources as ``<mirror>/<hf_hub_id>/<filename>``.
4. The Hugging Face hub through ``huggingface_hub.hf_hub_download`` (its own cache and its variables ``HF_HOME``,
   ``HF_HUB_OFFLINE``, ``HF_ENDPOINT``, read at call time), then the published URL.

``LIGHTJAX_OFFLINE=1`` keeps everything off the network: caches, local files and directory mirrors only.

Every file is verified before it is trusted: against the entry's sha256 (prefix or whole) when it has one,
else against the digest recorded when we downloaded it (``<file>.sha256``). Downloads go to a temp file in the
target directory and land by ``os.replace``, under a ``filelock`` per target, so a killed download leaves
nothing a later load would trust and 8 processes on one host fetch once. The converted Flax variables are
cached as ``converted/<name>.<tag>-<key>.safetensors`` (``key``: a hash of the source and the conversion
settings; the file's metadata records the source file's sha256 and a digest of its own arrays), so a second
load needs neither torch nor the network.

Progress bars (tqdm, stderr) show when stderr is a terminal; ``LIGHTJAX_PROGRESS=0``/``1`` forces them off/on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.parse
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from lightjax._atomic import atomic_path, remove, remove_partials
from lightjax._download import AttemptFailed, cached_ok, download, lock, offline, sha256_file

log = logging.getLogger(__name__)

ENV_CACHE = "LIGHTJAX_CACHE"
ENV_MIRROR = "LIGHTJAX_WEIGHTS_MIRROR"
#: Bumped when the converted-variables format or the conversion itself changes (old cache files are ignored).
CONVERTED_FORMAT = "1"

__all__ = ["WeightsUnavailableError", "cache_dir", "weights_path", "mirror_sources", "fetch", "converted_path",
           "load_converted",
           "save_converted", "lock", "sha256_file"]


class WeightsUnavailableError(OSError):
    """No source of a tag's file could be used: names the tag, every location tried and why, and where to
    put the file by hand.

    Attributes:
      tag: the pretrained tag.
      attempts: ``[(location, reason), ...]`` in the order tried.
      cache_path: where a file placed by hand is picked up.
    """

    def __init__(self, message: str, *, tag: str = "", attempts: Optional[List[Tuple[str, str]]] = None,
                 cache_path: str = ""):
        super().__init__(message)
        self.tag, self.attempts, self.cache_path = tag, list(attempts or []), cache_path


# ------------------------------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------------------------------
def cache_dir() -> str:
    """``$LIGHTJAX_CACHE``, default ``~/.cache/lightjax`` (read at each call)."""
    return os.path.abspath(os.path.expanduser(os.environ.get(ENV_CACHE) or os.path.join("~", ".cache", "lightjax")))


def _url_name(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1])


def _rel_names(cfg) -> List[Tuple[str, Optional[str]]]:
    """File names relative to a mirror / our weights dir, with the sha256 each must have (None: unknown)."""
    names = []
    if cfg.hf_hub_id:
        # A hub file's digest is only known when the entry gives it and has no separate URL file.
        names.append((f"{cfg.hf_hub_id}/{cfg.filename}", cfg.sha256 if not cfg.url else None))
    if cfg.url:
        names.append((_url_name(cfg.url), cfg.sha256))
    return names


def mirror_sources(cfg) -> List[Tuple[str, str]]:
    """``(path under a mirror, public URL)`` of each file of ``cfg``: what to copy to fill a mirror."""
    out = []
    if cfg.hf_hub_id:
        out.append((f"{cfg.hf_hub_id}/{cfg.filename}", _hub_url(cfg, public=True)))
    if cfg.url:
        out.append((_url_name(cfg.url), cfg.url))
    return out


def weights_path(cfg) -> str:
    """Where the tag's file is cached (and where to place it by hand): the first of ``_rel_names``."""
    if cfg.file:
        return os.path.abspath(os.path.expanduser(cfg.file))
    return os.path.join(cache_dir(), "weights", *_rel_names(cfg)[0][0].split("/"))


# ------------------------------------------------------------------------------------------------------------
# Fetching
# ------------------------------------------------------------------------------------------------------------
def fetch(cfg) -> str:
    """A verified local path of the tag's checkpoint file (downloaded at most once per host).

    Raises:
      WeightsUnavailableError: every source failed (offline, 404, truncated, hash mismatch...).
    """
    attempts: List[Tuple[str, str]] = []
    if cfg.file:
        path = weights_path(cfg)
        if not os.path.isfile(path):
            raise _unavailable(cfg, [(path, "no such file (the entry's 'file')")])
        if cfg.sha256:
            found = sha256_file(path)
            if not found.startswith(cfg.sha256):
                raise _unavailable(cfg, [(path, f"sha256 mismatch: expected {cfg.sha256}..., found {found}")])
        return path

    names = _rel_names(cfg)
    for rel, sha in names:
        dest = os.path.join(cache_dir(), "weights", *rel.split("/"))
        if os.path.exists(dest):
            with lock(dest):
                ok, why = cached_ok(dest, sha)
            if ok:
                return dest
            attempts.append((dest, why))

    mirror = os.environ.get(ENV_MIRROR, "").strip()
    if mirror:
        for rel, sha in names:
            loc = _join(mirror, rel)
            dest = os.path.join(cache_dir(), "weights", *rel.split("/"))
            try:
                return download(loc, dest, sha, cfg.tag)
            except AttemptFailed as e:
                attempts.append((f"{loc} ({ENV_MIRROR})", str(e)))
        raise _unavailable(cfg, attempts)

    if cfg.hf_hub_id:
        try:
            return _hub_download(cfg)
        except AttemptFailed as e:
            attempts.append((_hub_url(cfg), str(e)))
    if cfg.url:
        dest = os.path.join(cache_dir(), "weights", _url_name(cfg.url))
        try:
            return download(cfg.url, dest, cfg.sha256, cfg.tag)
        except AttemptFailed as e:
            attempts.append((cfg.url, str(e)))
    raise _unavailable(cfg, attempts)


def _join(mirror: str, rel: str) -> str:
    if urllib.parse.urlparse(mirror).scheme in ("http", "https", "gs", "file"):
        return mirror.rstrip("/") + "/" + urllib.parse.quote(rel)
    return os.path.join(os.path.expanduser(mirror), *rel.split("/"))


def _hub_url(cfg, public: bool = False) -> str:
    endpoint = ("" if public else os.environ.get("HF_ENDPOINT", "")) or "https://huggingface.co"
    endpoint = endpoint.rstrip("/")
    return f"{endpoint}/{cfg.hf_hub_id}/resolve/{cfg.revision or 'main'}/{cfg.filename}"


def _hub_download(cfg) -> str:
    """``hf_hub_download`` with the environment read now (HF_ENDPOINT, HF_HUB_OFFLINE, HF_HOME, HF_HUB_CACHE),
    its blob verified."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise AttemptFailed("huggingface_hub is not installed (pip install huggingface_hub)") from None
    kw: Dict[str, Any] = {}
    if os.environ.get("HF_ENDPOINT"):
        kw["endpoint"] = os.environ["HF_ENDPOINT"].rstrip("/")
    # huggingface_hub reads its cache location once, at import; these two (its precedence) are read now.
    if os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME"):
        kw["cache_dir"] = os.path.expanduser(os.environ.get("HF_HUB_CACHE")
                                             or os.path.join(os.environ["HF_HOME"], "hub"))
    hub_offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    offline_now = hub_offline or offline()
    for attempt in range(2):
        try:
            path = hf_hub_download(cfg.hf_hub_id, cfg.filename, revision=cfg.revision, local_files_only=offline_now,
                                   force_download=attempt > 0, **kw)
        except Exception as e:  # its errors: offline & not cached, 404, connection errors...
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            flag = "HF_HUB_OFFLINE" if hub_offline else "LIGHTJAX_OFFLINE"
            where = f" ({flag} is set and the file is not in the hub cache)" if offline_now else ""
            raise AttemptFailed(f"huggingface_hub: {type(e).__name__}: {first[:300]}{where}") from None
        # Large (LFS) files are stored as blobs named by their sha256: check it, the hub client does not on reuse.
        blob = os.path.basename(os.path.realpath(path))
        if len(blob) != 64 or any(c not in "0123456789abcdef" for c in blob):
            return path
        found = sha256_file(path)
        if found == blob:
            return path
        log.warning("hub cache file %s is corrupt (sha256 %s, expected %s): downloading it again", path, found, blob)
        if offline_now:
            raise AttemptFailed(f"hub cache file {path} is corrupt (sha256 {found}, expected {blob}) and "
                                f"offline mode is set")
        for p in (os.path.realpath(path), path):
            remove(p)
    raise AttemptFailed(f"the hub file {path} is corrupt after a fresh download")


def _unavailable(cfg, attempts: List[Tuple[str, str]]) -> WeightsUnavailableError:
    place = weights_path(cfg)
    tried = "\n".join(f"  - {loc}: {why}" for loc, why in attempts) or "  (nothing)"
    if cfg.file:
        how = f"Check the entry's local file {place}."
    else:
        rel, sha = _rel_names(cfg)[0]
        digest = f" (its sha256 starts with {sha})" if sha else ""
        public = [u for u in (_hub_url(cfg) if cfg.hf_hub_id else None, cfg.url) if u]
        how = (f"To load it without the network, download {' or '.join(public)} on a machine with access and place "
               f"it at\n  {place}{digest}\nor set {ENV_MIRROR} to a URL or directory holding the same file names "
               f"(URL sources as <mirror>/<file name>, hub sources as <mirror>/<hf_hub_id>/<filename>: here "
               f"<mirror>/{rel}).")
    return WeightsUnavailableError(f"cannot get the weights of pretrained tag {cfg.tag!r}. Tried:\n{tried}\n{how}",
                                   tag=cfg.tag, attempts=attempts, cache_path=place)


# ------------------------------------------------------------------------------------------------------------
# Converted variables
# ------------------------------------------------------------------------------------------------------------
def _source_key(cfg) -> str:
    """Hash of what the converted variables depend on: the source and the conversion settings."""
    ident: Dict[str, Any] = {k: getattr(cfg, k) for k in ("tag", "url", "sha256", "hf_hub_id", "filename", "revision",
                                                          "layout", "num_classes")}
    ident["model_kwargs"] = sorted((k, repr(v)) for k, v in cfg.model_kwargs.items())
    ident["format"] = CONVERTED_FORMAT
    if cfg.file:  # a local file that changes gets a new key
        path = weights_path(cfg)
        st = os.stat(path) if os.path.exists(path) else None
        ident["file"] = [path, st.st_size if st else None, st.st_mtime_ns if st else None]
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def converted_path(cfg) -> str:
    """``$LIGHTJAX_CACHE/converted/<name>.<tag>-<source hash>.safetensors``."""
    return os.path.join(cache_dir(), "converted", f"{cfg.tag}-{_source_key(cfg)}.safetensors")


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        if "/" in k:  # pragma: no cover - Flax names never hold '/'
            raise ValueError(f"cannot cache a variable named {k!r}")
        if hasattr(v, "items"):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = np.ascontiguousarray(np.asarray(v))
    return out


def _digest(flat: Dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(flat):
        a = flat[k]
        h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_converted(cfg, variables: Dict[str, Any], source_path: str) -> str:
    """Writes the tag's converted variables (safetensors, atomically) with the source's sha256 in the metadata."""
    from safetensors.numpy import save_file

    path = converted_path(cfg)
    flat = _flatten(variables)
    meta = {"lightjax_format": CONVERTED_FORMAT, "tag": cfg.tag, "model": cfg.model, "source_file":
            os.path.basename(source_path), "source_sha256": sha256_file(source_path), "data_sha256": _digest(flat)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    remove_partials(path)  # of killed processes (callers hold lock(path))
    with atomic_path(path) as tmp:
        save_file(flat, tmp, metadata=meta)
    return path


def load_converted(cfg) -> Optional[Dict[str, Any]]:
    """The cached converted variables of ``cfg``, or None (missing, unreadable or corrupt: then deleted)."""
    path = converted_path(cfg)
    if not os.path.isfile(path):
        return None
    try:
        from safetensors import safe_open
        from safetensors.numpy import load_file

        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
        flat = load_file(path)
        ok = meta.get("lightjax_format") == CONVERTED_FORMAT and meta.get("data_sha256") == _digest(flat)
    except Exception as e:  # truncated or overwritten file
        ok, flat = False, None
        log.debug("unreadable converted cache %s: %s", path, e)
    if not ok:
        log.warning("converted cache %s is corrupt: deleted, converting again", path)
        remove(path)
        return None
    import jax.numpy as jnp

    tree: Dict[str, Any] = {}
    for key, arr in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = jnp.asarray(arr)
    return tree
