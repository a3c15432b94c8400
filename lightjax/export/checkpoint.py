"""Weights for an export: a checkpoint file or a pretrained tag, with the model settings they imply."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Optional, Tuple

from lightjax.convert.files import CHECKPOINT_SUFFIXES as TORCH_SUFFIXES  # noqa: F401  (the old export name)
from lightjax.models import registry


def read_variables(name: str, checkpoint: str, **model_kwargs: Any) -> Any:
    """Variables of a checkpoint file without a pretrained tag's settings: a PyTorch state_dict
    (``.pth/.pt/.bin/.ckpt/.safetensors``, via ``convert.from_torch``) or a Flax msgpack file."""
    from lightjax import convert  # local: conversion (and torch for .pth) is only needed here

    if checkpoint.lower().endswith(TORCH_SUFFIXES):
        return convert.from_torch(name, checkpoint, **model_kwargs)
    return convert.load_flax(checkpoint)


def model_kwargs_of(name: str, model: Any) -> Dict[str, Any]:
    """The ``create_model`` fields of ``model`` that differ from ``create_model(name)``'s (e.g. ``act`` of a
    timm MobileNetV1 file, ``num_classes`` of a fine-tuned head)."""
    default = registry.create_model(name)
    out = {}
    for f in dataclasses.fields(model):
        if f.name in ("parent", "name") or not f.init:
            continue
        value = getattr(model, f.name)
        if getattr(default, f.name, None) != value:
            out[f.name] = value
    return out


def resolve_weights(name: str, checkpoint: str, **model_kwargs: Any) -> Tuple[Any, Dict[str, Any], Optional[Any]]:
    """``(variables, model_kwargs, pretrained_cfg_or_None)`` for ``python -m lightjax.export NAME CHECKPOINT``.

    Args:
      name: the lightjax model name.
      checkpoint: a file (PyTorch state_dict or lightjax msgpack; the settings its key layout implies, e.g.
        timm MobileNetV1's ReLU6, are applied when :mod:`lightjax.pretrained` is installed), or a pretrained
        tag ``"NAME.TAG"`` (or just ``"TAG"``) resolved by ``lightjax.pretrained.load_model``.
      **model_kwargs: ``create_model`` fields the caller set (``num_classes``...).

    Raises:
      ValueError: not a file and not a pretrained tag (or the tag is for another model).
    """
    from lightjax import pretrained  # local: weights resolution stands above export's model code

    if os.path.exists(checkpoint):
        model, variables = pretrained.load_model(name, checkpoint, **model_kwargs)
        return variables, {**model_kwargs_of(name, model), **model_kwargs}, None
    tag = checkpoint if "." in checkpoint else f"{name}.{checkpoint}"
    try:
        cfg = pretrained.pretrained_cfg(tag)
    except ValueError as e:
        raise ValueError(f"checkpoint {checkpoint!r} is neither a file nor a pretrained tag: {e}") from e
    if cfg.model != name:
        raise ValueError(f"checkpoint {checkpoint!r} is a pretrained tag of {cfg.model!r}, not of {name!r}")
    model, variables = pretrained.load_model(cfg.tag, **model_kwargs)
    return variables, {**model_kwargs_of(name, model), **model_kwargs}, cfg
