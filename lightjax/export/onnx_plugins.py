"""jax2onnx lowerings of the export formulation's primitives (:mod:`lightjax.ops.export`).

Each primitive becomes the ONNX operator a runtime fuses, computed in NCHW between a Transpose pair::

    NHWC --Transpose(0,3,1,2)--> MaxPool / AveragePool / GlobalAveragePool / Reshape+Transpose+Reshape
         --Transpose(0,2,3,1)--> NHWC

jax2onnx writes every ``Conv`` the same way, so after onnxruntime's basic graph optimisation (its transpose
optimiser) the inner pairs cancel and the graph is NCHW from the first Transpose to the head. Hard swish and
hard sigmoid are layout-free (``HardSwish``, ``HardSigmoid`` with alpha 1/6, beta 1/2).

Importing this module registers the plugins in jax2onnx's global table (idempotent: a re-import of the
module object does nothing new); it imports jax2onnx and onnx_ir, so only :mod:`lightjax.export.onnx`
imports it, inside the export call.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx_ir as ir
from jax2onnx.plugins.plugin_system import PrimitiveLeafPlugin, register_primitive

from lightjax.ops import export as prims

NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)

_FLOATS = ("float16", "bfloat16", "float32", "float64")


class ExportOperatorError(ValueError):
    """A primitive whose parameters or dtype have no ONNX lowering (the message names the operator)."""


# ----------------------------------------------------------------------------------------------------------
# Small builder helpers (jax2onnx's context: ``ctx.builder.<OpType>(*inputs, _outputs=[name], **attrs)``).
# ----------------------------------------------------------------------------------------------------------
def _dims(val: ir.Value, aval_shape: Sequence[Any], perm: Sequence[int] = None) -> list:
    """ONNX dims for ``aval_shape`` (optionally permuted), taking the batch dim's symbol from ``val``."""
    dims = list(aval_shape)
    shape = getattr(val, "shape", None)
    if shape is not None and len(shape) > 0 and not isinstance(shape[0], (int, np.integer)):
        dims[0] = shape[0]  # ir.SymbolicDim('B'): keep the graph's batch symbol
    elif not isinstance(dims[0], (int, np.integer)):
        dims[0] = ir.SymbolicDim(str(dims[0]))
    if perm is not None:
        dims = [dims[p] for p in perm]
    return dims


def _stamp(v: ir.Value, like: ir.Value, dims: Sequence[Any], dtype: Any = None) -> ir.Value:
    v.type = ir.TensorType(dtype) if dtype is not None else like.type
    v.shape = ir.Shape(list(dims))
    return v


def _out_name(ctx: Any, var: Any, hint: str) -> str:
    """The name jax2onnx gave the equation's output value (a fresh one if that value is already produced)."""
    spec = ctx.get_value_for_var(var, name_hint=ctx.fresh_name(hint))
    name = getattr(spec, "name", None) or ctx.fresh_name(hint)
    producer = getattr(spec, "producer", None)
    if callable(producer) and producer() is not None:
        name = ctx.fresh_name(hint)
    return name


def _check_float(eqn: Any, op: str) -> np.dtype:
    dtype = np.dtype(eqn.invars[0].aval.dtype)
    if dtype.name not in _FLOATS:
        raise ExportOperatorError(f"{eqn.primitive.name} -> ONNX {op}: dtype {dtype} is not supported "
                                  f"(floating point only: {', '.join(_FLOATS)})")
    return dtype


def _nchw_op(ctx: Any, eqn: Any, hint: str, build) -> None:
    """Transpose to NCHW, ``build(ctx, x_nchw, x_nchw_dims) -> (value, nchw dims)``, transpose back, bind."""
    (x_var,), (y_var,) = eqn.invars, eqn.outvars
    x = ctx.get_value_for_var(x_var, name_hint=ctx.fresh_name(f"{hint}_in"))
    out_name = _out_name(ctx, y_var, f"{hint}_out")
    b = ctx.builder
    x_dims = _dims(x, x_var.aval.shape)
    xt = b.Transpose(x, _outputs=[ctx.fresh_name(f"{hint}_nchw")], perm=NHWC_TO_NCHW)
    _stamp(xt, x, [x_dims[p] for p in NHWC_TO_NCHW])
    y_nchw, y_nchw_dims = build(ctx, xt, [x_dims[p] for p in NHWC_TO_NCHW])
    if y_nchw_dims is None:  # the op already returned the final (non-NCHW) layout
        ctx.bind_value_for_var(y_var, y_nchw)
        return
    y = b.Transpose(y_nchw, _outputs=[out_name], perm=NCHW_TO_NHWC)
    _stamp(y, x, [y_nchw_dims[p] for p in NCHW_TO_NHWC])
    ctx.bind_value_for_var(y_var, y)


def _out_spatial(eqn: Any) -> list:
    return list(eqn.outvars[0].aval.shape[1:3])


# ----------------------------------------------------------------------------------------------------------
# Plugins.
# ----------------------------------------------------------------------------------------------------------
@register_primitive(jaxpr_primitive=prims.MAX_POOL, onnx=[{"component": "MaxPool"}], since="lightjax",
                    context="primitives.lightjax", component="max_pool2d")
class MaxPool2dPlugin(PrimitiveLeafPlugin):
    """``lightjax_max_pool2d`` -> ``MaxPool`` (explicit asymmetric pads, ceil_mode 0: the ceil-mode overhang
    is already in the high pads, and ONNX MaxPool never reads its pads as values)."""

    def lower(self, ctx: Any, eqn: Any) -> None:
        _check_float(eqn, "MaxPool")
        p = eqn.params
        (top, bottom), (left, right) = p["pads"]

        def build(ctx, x, dims):
            y = ctx.builder.MaxPool(x, _outputs=[ctx.fresh_name("MaxPool")], kernel_shape=tuple(p["kernel"]),
                                    strides=tuple(p["stride"]), pads=(top, left, bottom, right), ceil_mode=0)
            out = [dims[0], dims[1], *_out_spatial(eqn)]
            return _stamp(y, x, out), out

        _nchw_op(ctx, eqn, "max_pool", build)


@register_primitive(jaxpr_primitive=prims.AVG_POOL, onnx=[{"component": "AveragePool"}], since="lightjax",
                    context="primitives.lightjax", component="avg_pool2d")
class AvgPool2dPlugin(PrimitiveLeafPlugin):
    """``lightjax_avg_pool2d`` -> ``AveragePool`` with torch's symmetric pads, ceil_mode and
    count_include_pad (onnxruntime applies torch's rule: a ceil-mode window that starts in the padding is
    dropped, and the overhang past the padding is never counted)."""

    def lower(self, ctx: Any, eqn: Any) -> None:
        _check_float(eqn, "AveragePool")
        p = eqn.params
        ph, pw = p["padding"]

        def build(ctx, x, dims):
            y = ctx.builder.AveragePool(x, _outputs=[ctx.fresh_name("AveragePool")],
                                        kernel_shape=tuple(p["kernel"]), strides=tuple(p["stride"]),
                                        pads=(ph, pw, ph, pw), ceil_mode=int(p["ceil_mode"]),
                                        count_include_pad=int(p["count_include_pad"]))
            out = [dims[0], dims[1], *_out_spatial(eqn)]
            return _stamp(y, x, out), out

        _nchw_op(ctx, eqn, "avg_pool", build)


@register_primitive(jaxpr_primitive=prims.GLOBAL_AVG_POOL, onnx=[{"component": "GlobalAveragePool"}],
                    since="lightjax", context="primitives.lightjax", component="global_avg_pool")
class GlobalAvgPoolPlugin(PrimitiveLeafPlugin):
    """``lightjax_global_avg_pool`` -> ``GlobalAveragePool`` (float16/bfloat16 cast to float32 around it, the
    accumulation dtype of the jax reference); ``keepdims=False`` flattens ``(N, C, 1, 1)`` to ``(N, C)``."""

    def lower(self, ctx: Any, eqn: Any) -> None:
        dtype = _check_float(eqn, "GlobalAveragePool")
        keepdims = eqn.params["keepdims"]
        narrow = dtype.itemsize < 4

        def build(ctx, x, dims):
            b = ctx.builder
            src = x
            if narrow:
                src = _stamp(b.Cast(x, _outputs=[ctx.fresh_name("gap_f32")], to=ir.DataType.FLOAT), x, dims,
                             ir.DataType.FLOAT)
            y = b.GlobalAveragePool(src, _outputs=[ctx.fresh_name("GlobalAveragePool")])
            out = [dims[0], dims[1], 1, 1]
            _stamp(y, src, out)
            if narrow:
                y = _stamp(b.Cast(y, _outputs=[ctx.fresh_name("gap_cast")], to=x.type.dtype), x, out)
            if keepdims:
                return y, out
            # (N, C, 1, 1) -> (N, C): Flatten keeps the batch axis symbolic, and is a view in every runtime.
            flat = b.Flatten(y, _outputs=[_out_name(ctx, eqn.outvars[0], "gap_out")], axis=1)
            _stamp(flat, x, out[:2])
            return flat, None

        _nchw_op(ctx, eqn, "gap", build)


@register_primitive(jaxpr_primitive=prims.CHANNEL_SHUFFLE, onnx=[{"component": "Reshape"}, {"component": "Transpose"}],
                    since="lightjax", context="primitives.lightjax", component="channel_shuffle")
class ChannelShufflePlugin(PrimitiveLeafPlugin):
    """``lightjax_channel_shuffle`` -> torchvision's own graph in NCHW: ``Reshape(N, g, C/g, H, W)`` ->
    ``Transpose(0, 2, 1, 3, 4)`` -> ``Reshape(N, C, H, W)`` (``0`` in a Reshape shape copies the batch)."""

    def lower(self, ctx: Any, eqn: Any) -> None:
        g = int(eqn.params["groups"])
        _, h, w, c = eqn.invars[0].aval.shape

        def build(ctx, x, dims):
            b = ctx.builder
            split = ctx.builder.const_i64(ctx.fresh_name("shuffle_split"), [0, g, c // g, h, w])
            merge = ctx.builder.const_i64(ctx.fresh_name("shuffle_merge"), [0, c, h, w])
            y = b.Reshape(x, split, _outputs=[ctx.fresh_name("shuffle_split")])
            _stamp(y, x, [dims[0], g, c // g, h, w])
            y = b.Transpose(y, _outputs=[ctx.fresh_name("shuffle_swap")], perm=(0, 2, 1, 3, 4))
            _stamp(y, x, [dims[0], c // g, g, h, w])
            y = b.Reshape(y, merge, _outputs=[ctx.fresh_name("shuffle_merge")])
            return _stamp(y, x, dims), dims

        _nchw_op(ctx, eqn, "shuffle", build)


def _unary(op: str):
    def lower(self, ctx: Any, eqn: Any) -> None:
        _check_float(eqn, op)
        (x_var,), (y_var,) = eqn.invars, eqn.outvars
        x = ctx.get_value_for_var(x_var, name_hint=ctx.fresh_name(f"{op}_in"))
        attrs = {"alpha": 1.0 / 6.0, "beta": 0.5} if op == "HardSigmoid" else {}
        y = getattr(ctx.builder, op)(x, _outputs=[_out_name(ctx, y_var, op)], **attrs)
        _stamp(y, x, _dims(x, x_var.aval.shape) if x_var.aval.ndim else [])
        ctx.bind_value_for_var(y_var, y)

    return lower


@register_primitive(jaxpr_primitive=prims.HARD_SWISH, onnx=[{"component": "HardSwish"}], since="lightjax",
                    context="primitives.lightjax", component="hard_swish")
class HardSwishPlugin(PrimitiveLeafPlugin):
    """``lightjax_hard_swish`` -> ``HardSwish`` (opset >= 14): ``x * max(0, min(1, x / 6 + 1 / 2))``."""

    lower = _unary("HardSwish")


@register_primitive(jaxpr_primitive=prims.HARD_SIGMOID, onnx=[{"component": "HardSigmoid"}], since="lightjax",
                    context="primitives.lightjax", component="hard_sigmoid")
class HardSigmoidPlugin(PrimitiveLeafPlugin):
    """``lightjax_hard_sigmoid`` -> ``HardSigmoid(alpha=1/6, beta=1/2)``: ``max(0, min(1, x / 6 + 1 / 2))``."""

    lower = _unary("HardSigmoid")


#: The primitives this module lowers (every one of :data:`lightjax.ops.export.PRIMITIVES`).
LOWERED = (prims.MAX_POOL, prims.AVG_POOL, prims.GLOBAL_AVG_POOL, prims.CHANNEL_SHUFFLE, prims.HARD_SWISH,
           prims.HARD_SIGMOID)
