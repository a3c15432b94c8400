"""The ``metadata_props`` of a lightjax ONNX file: what a deployer needs without lightjax.

Keys (all strings; structured values are JSON): ``lightjax_version``, ``model_name``, ``model_kwargs``,
``input_layout`` (NHWC/NCHW), ``input_shape``, ``input_size``, ``input_dtype``, ``num_classes``,
``pretrained_tag``, ``source``, ``preprocessing_mean`` / ``_std`` / ``_interpolation`` / ``_crop_size`` /
``_resize_shorter`` (the eval transform: resize the shorter side, center-crop, scale to [0, 1], normalise),
``preprocessing`` (that rule in words), ``class_names`` (a JSON list in class-index order). A value that is not
known (weights from a file without a pretrained tag or ``preprocessing=``) is the string ``"unknown"``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

#: Preprocessing fields recorded in the metadata (the eval transform of lightjax.transforms).
PREPROCESSING_FIELDS = ("mean", "std", "interpolation", "crop_size", "resize_shorter")
UNKNOWN = "unknown"


class OnnxExportError(ValueError):
    """A model, option or operator that cannot be exported; the message names it and says why."""


def pretrained_cfg_of(tag: Any) -> Any:
    if tag is None or not isinstance(tag, str):
        return tag
    from lightjax import pretrained  # local: the weights layer stands above export's model code

    return pretrained.pretrained_cfg(tag)


def preprocessing_fields(pre: Any) -> Dict[str, Any]:
    """Mean/std/interpolation/crop/resize of a PretrainedCfg, an EvalTransform or a mapping."""
    if pre is None:
        return {}
    get = (lambda k: pre.get(k)) if isinstance(pre, Mapping) else (lambda k: getattr(pre, k, None))
    if isinstance(pre, Mapping):
        unknown = sorted(set(pre) - set(PREPROCESSING_FIELDS) - {"resize_size"})
        if unknown:
            raise OnnxExportError(f"preprocessing: unknown field(s) {unknown}; known: {list(PREPROCESSING_FIELDS)}")
    out = {k: get(k) for k in PREPROCESSING_FIELDS}
    if out["resize_shorter"] is None:
        out["resize_shorter"] = get("resize_size")
    for k in ("mean", "std"):
        if out[k] is not None:
            vals = tuple(float(v) for v in np.ravel(out[k]))
            if len(vals) not in (1, 3):
                raise OnnxExportError(f"preprocessing.{k}={out[k]!r} must have 1 or 3 values")
            out[k] = list(vals)
    return {k: v for k, v in out.items() if v is not None}


def model_metadata(name: str, model_kwargs: Mapping[str, Any], input_shape: Sequence[Any], layout: str,
                   pre: Dict[str, Any], labels: Optional[Sequence[str]], cfg: Any, num_classes: Optional[int]
                   ) -> Dict[str, str]:
    """The ``metadata_props`` of an export (see the module docstring)."""
    from lightjax import __version__

    meta = {
        "lightjax_version": __version__,
        "model_name": name,
        "model_kwargs": json.dumps({k: v for k, v in model_kwargs.items()}, sort_keys=True, default=str),
        "input_layout": layout,
        "input_shape": json.dumps(list(input_shape)),
        "input_size": json.dumps(list(input_shape[1:3] if layout == "NHWC" else input_shape[2:4])),
        "input_dtype": "float32",
        "num_classes": str(num_classes) if num_classes is not None else UNKNOWN,
        "pretrained_tag": getattr(cfg, "tag", None) or UNKNOWN,
        "source": getattr(cfg, "source", None) or UNKNOWN,
    }
    for k in PREPROCESSING_FIELDS:
        meta[f"preprocessing_{k}"] = json.dumps(pre[k]) if k in pre and not isinstance(pre[k], str) else str(pre.get(k, UNKNOWN))
    meta["preprocessing"] = (
        "the input is the eval transform's output: RGB in [0, 1], resized (shorter side preprocessing_resize_shorter, "
        "preprocessing_interpolation), center-cropped to preprocessing_crop_size, then (x - mean) / std per channel"
        if pre else "unknown: exported from weights without a pretrained tag or preprocessing= argument; "
        "the training transform of these weights is not recorded")
    meta["class_names"] = json.dumps(list(labels)) if labels is not None else UNKNOWN
    return meta


def read_metadata(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The ``metadata_props`` of an ONNX file, JSON values decoded (``"unknown"`` stays a string)."""
    import onnx

    props = {p.key: p.value for p in onnx.load_model(os.fspath(path), load_external_data=False).metadata_props}
    out: Dict[str, Any] = {}
    for k, v in props.items():
        try:
            out[k] = json.loads(v) if v != UNKNOWN else v
        except ValueError:
            out[k] = v
    return out
