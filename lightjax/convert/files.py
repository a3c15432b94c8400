"""Checkpoint files: PyTorch state_dicts (``.pth/.pt/.bin/.ckpt`` through ``torch.load(weights_only=True)``,
``.safetensors`` without torch) in, lightjax's Flax msgpack variable files in and out (written atomically)."""

from __future__ import annotations

import os
from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lightjax._atomic import atomic_write
from lightjax.convert.core import CheckpointReadError

#: Suffixes read with ``torch.load(weights_only=True)``.
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
#: Every PyTorch checkpoint suffix :func:`read_checkpoint` reads (``.safetensors`` needs no torch).
CHECKPOINT_SUFFIXES = TORCH_SUFFIXES + (".safetensors",)
#: Suffixes of lightjax's own (Flax msgpack) variable files.
FLAX_SUFFIXES = (".msgpack", ".flax")


def save_flax(path: str, variables: Any) -> None:
    """Writes ``variables`` as a Flax msgpack file, atomically (temp file + rename: a crash mid-write leaves
    the previous file intact)."""
    from flax import serialization

    atomic_write(path, serialization.msgpack_serialize(jax.tree_util.tree_map(np.asarray, _plain(variables))))


def load_flax(path: str) -> Dict[str, Any]:
    """Reads a Flax msgpack variables file written by :func:`save_flax` / ``python -m lightjax.convert``."""
    from flax import serialization

    try:
        with open(path, "rb") as f:
            tree = serialization.msgpack_restore(f.read())
    except FileNotFoundError:
        raise CheckpointReadError(f"checkpoint file not found: {path}") from None
    except Exception as e:
        raise CheckpointReadError(f"{path} is not a readable Flax msgpack file ({type(e).__name__}: {e})") from e
    if not isinstance(tree, dict) or "params" not in tree:
        raise CheckpointReadError(f"{path} does not hold lightjax variables (no 'params' collection)")
    return jax.tree_util.tree_map(jnp.asarray, tree)


def _plain(tree):
    if hasattr(tree, "items"):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def read_checkpoint(src: Any) -> Dict[str, Any]:
    """Reads a state_dict from a path (``.pth/.pt/.bin/.ckpt`` via ``torch.load(weights_only=True)``,
    ``.safetensors`` without torch) or passes a mapping through; unwraps ``state_dict``/``model`` nesting and
    the ``module.`` prefix of DataParallel.
    """
    if isinstance(src, Mapping):
        sd = dict(src)
    elif isinstance(src, (str, os.PathLike)):
        sd = _read_file(os.fspath(src))
    else:
        raise CheckpointReadError(f"expected a checkpoint path or a state_dict mapping, got {type(src).__name__}")
    return normalize_state_dict(sd)


def _read_file(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointReadError(f"checkpoint file not found: {path}")
    lower = path.lower()
    if lower.endswith(".safetensors"):
        try:
            from safetensors.numpy import load_file
        except ImportError as e:  # pragma: no cover - safetensors is a dependency
            raise CheckpointReadError("reading .safetensors needs the 'safetensors' package") from e
        try:
            return dict(load_file(path))
        except Exception as e:
            raise CheckpointReadError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from e
    if lower.endswith(TORCH_SUFFIXES):
        try:
            import torch
        except ImportError as e:
            raise CheckpointReadError(
                f"reading {path} needs PyTorch (pip install torch); convert it to .safetensors to load without torch"
            ) from e
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else ""
            if "weights_only" in str(e) or "Unsupported global" in str(e):
                raise CheckpointReadError(
                    f"{path} holds pickled Python objects beyond tensors; lightjax only reads it with "
                    f"torch.load(weights_only=True) for safety ({msg})"
                ) from e
            raise CheckpointReadError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {type(e).__name__}: {msg}") from e
        if not isinstance(obj, Mapping):
            raise CheckpointReadError(f"{path} holds a {type(obj).__name__}, not a state_dict")
        return dict(obj)
    raise CheckpointReadError(
        f"unsupported checkpoint format {os.path.basename(path)!r}: expected one of "
        f"{', '.join(CHECKPOINT_SUFFIXES)}"
    )


def normalize_state_dict(sd: Dict[str, Any]) -> Dict[str, Any]:
    for wrapper in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if wrapper in sd and isinstance(sd[wrapper], Mapping) and not _looks_like_array(sd[wrapper]):
            sd = dict(sd[wrapper])
            break
    non_arrays = [k for k, v in sd.items() if not _looks_like_array(v)]
    if non_arrays:
        raise CheckpointReadError(
            f"not a state_dict: entries {non_arrays[:5]} are not arrays/tensors "
            f"(top-level keys: {list(sd)[:8]})"
        )
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _looks_like_array(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype")


