"""Validation of :func:`lightjax.pretrained.register_pretrained`'s fields (one clear error per wrong field).

The layout named by an entry must be one its family registers for the model, and the settings that layout
requires (e.g. timm's MobileNetV1: ``act="relu6"``) join the entry's ``model_kwargs``; the model must build
with them.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Dict, Mapping, Optional, Tuple

from flax.core import FrozenDict

from lightjax.models import registry

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
CROP_MODES = ("center",)
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_TAG = re.compile(r"^[A-Za-z0-9_]+$")


def check_fields(tag: str, fields: Dict[str, Any], known: Tuple[str, ...]) -> Tuple[str, Dict[str, Any]]:
    """Validates ``register_pretrained(tag, **fields)``; returns the model name and the normalised fields.

    Raises:
      ValueError: naming the field (or the tag) that is wrong.
    """
    if not isinstance(tag, str) or tag.count(".") != 1:
        raise ValueError(f"pretrained tag must be '<model name>.<tag>' with exactly one dot, got {tag!r}")
    model, name = tag.split(".")
    if model not in registry.list_models():
        close = difflib.get_close_matches(model, registry.list_models(), n=3, cutoff=0.5)
        raise ValueError(f"pretrained tag {tag!r}: model {model!r} is not registered"
                         + (f" (did you mean {', '.join(close)}?)" if close else ""))
    if not _TAG.match(name):
        raise ValueError(f"pretrained tag {tag!r}: the part after the dot may hold letters, digits and '_' only")
    unknown = sorted(set(fields) - set(known))
    if unknown:
        hints = {u: difflib.get_close_matches(u, known, n=1) for u in unknown}
        hint = "; ".join(f"{u!r} (did you mean {h[0]!r}?)" if h else repr(u) for u, h in hints.items())
        raise ValueError(f"register_pretrained({tag!r}): unknown field(s) {hint}; known: {', '.join(known)}")
    f = dict(fields)

    def bad(field: str, why: str) -> ValueError:
        return ValueError(f"register_pretrained({tag!r}): field {field!r} {why} (got {f.get(field)!r})")

    if not (f.get("url") or f.get("hf_hub_id") or f.get("file")):
        raise ValueError(f"register_pretrained({tag!r}): no source: give 'url', 'hf_hub_id' or a local 'file'")
    for key in ("url", "hf_hub_id", "filename", "file", "revision", "layout", "label_set", "license", "source"):
        if f.get(key) is not None and not isinstance(f[key], str):
            raise bad(key, "must be a string")
    if f.get("url") and not re.match(r"^[a-z][a-z0-9+.-]*://", f["url"]):
        raise bad("url", "must be an absolute URL (https://..., file://...)")
    if f.get("hf_hub_id") and f["hf_hub_id"].count("/") != 1:
        raise bad("hf_hub_id", "must be '<owner>/<repo>'")
    if f.get("sha256") is not None:
        if not isinstance(f["sha256"], str) or not _HEX.match(f["sha256"]) or not 6 <= len(f["sha256"]) <= 64:
            raise bad("sha256", "must be 6 to 64 hex digits (a prefix of the file's sha256, or all of it)")
        f["sha256"] = f["sha256"].lower()
    for key in ("num_classes", "crop_size", "resize_size", "test_crop_size"):
        v = f.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "num_classes" else 1)):
            raise bad(key, "must be a positive integer" if key != "num_classes" else "must be an integer >= 0")
    if (f.get("resize_size") is None) == (f.get("crop_pct") is None):
        raise ValueError(f"register_pretrained({tag!r}): give exactly one of 'resize_size' (torchvision: shorter "
                         f"side) and 'crop_pct' (timm: shorter side = floor(crop_size / crop_pct))")
    for key in ("crop_pct", "test_crop_pct"):
        v = f.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1):
            raise bad(key, "must be a fraction in (0, 1]")
    if f.get("interpolation", "bilinear") not in INTERPOLATIONS:
        raise bad("interpolation", f"must be one of {', '.join(INTERPOLATIONS)}")
    if f.get("crop_mode", "center") not in CROP_MODES:
        raise bad("crop_mode", f"must be one of {', '.join(CROP_MODES)}")
    for key in ("mean", "std"):
        if key in f:
            v = f[key]
            try:
                v = tuple(float(x) for x in v)
            except (TypeError, ValueError):
                raise bad(key, "must be 3 numbers") from None
            if len(v) != 3 or (key == "std" and min(v) <= 0):
                raise bad(key, "must be 3 numbers" + (", all > 0" if key == "std" else ""))
            f[key] = v
    for key in ("top1", "top5", "test_top1", "test_top5"):
        v = f.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100):
            raise bad(key, "must be a percentage in [0, 100]")
    kwargs = f.get("model_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise bad("model_kwargs", "must be a mapping of create_model fields")
    f["layout"], kwargs = _check_layout(tag, model, f.get("layout"), dict(kwargs))
    try:
        registry.create_model(model, num_classes=f.get("num_classes", 1000), **kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"register_pretrained({tag!r}): field 'model_kwargs' does not build {model}: {e}") from None
    f["model_kwargs"] = FrozenDict(kwargs)
    return model, f


def _check_layout(tag: str, model: str, layout: Optional[str], kwargs: Dict[str, Any]):
    """The layout must be one the family registers for ``model``; its required settings join ``model_kwargs``."""
    from lightjax import convert  # local: the key tables stand above the models

    layouts = convert.layouts_for(model)
    if not layouts:
        raise ValueError(f"register_pretrained({tag!r}): no PyTorch key layout exists for {model!r}")
    if layout is None:
        lay = layouts[0]
    else:
        named = [lay for lay in layouts if lay.name == layout]
        if not named:
            raise ValueError(f"register_pretrained({tag!r}): field 'layout' must be one of "
                             f"{[lay.name for lay in layouts]} for {model} (got {layout!r})")
        lay = named[0]
    for k, v in lay.requires.items():
        if k in kwargs and kwargs[k] != v:
            raise ValueError(f"register_pretrained({tag!r}): field 'model_kwargs' sets {k}={kwargs[k]!r}, but the "
                             f"{lay.name} layout of {model} needs {k}={v!r}")
        kwargs.setdefault(k, v)
    return lay.name, kwargs
