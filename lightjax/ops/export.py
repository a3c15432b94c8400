"""The export formulation's primitives: pools, global average pool, channel shuffle, hard activations.

Under ``ops.formulation("export")`` the op modules (:mod:`lightjax.ops.pool`, :mod:`~lightjax.ops.shuffle`,
:mod:`~lightjax.ops.act`) call these instead of building the operation from ``lax`` pieces. Each is one named
``jax.extend.core.Primitive`` in the jaxpr, so an exporter sees the operation whole and lowers it to the
runtime's native operator (``lightjax/export/onnx_plugins.py``: ONNX ``MaxPool`` / ``AveragePool`` with
explicit pads / ``GlobalAveragePool`` / ``HardSwish`` / ``HardSigmoid`` / ``Reshape`` + ``Transpose``). Traced
from lax pieces instead, jax2onnx lowers an NHWC ``reduce_window_max`` to a 6-D pooling that onnxruntime
rejects ("Unsupported pooling size"), and a hard swish to five elementwise nodes.

Every primitive computes exactly what the ``"xla"`` formulation computes (same lax operations, so the same
float rounding): it has an eager implementation, a jit lowering (``mlir.lower_fun`` of that implementation),
an abstract evaluation that passes a symbolic batch dimension through (``jax.export`` shape polymorphism), a
batching rule (``vmap``: the mapped axis is merged into the batch axis) and a JVP (so ``jax.grad`` of a
function traced under the export formulation works too; its linear part is plain lax). Nothing here imports
an exporter.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from lightjax.ops.geometry import acc_dtype, out_size, pool_output_size, pool_padding

Pair = Tuple[int, int]

#: Names of the primitives (what an exporter's plugin table is keyed by).
MAX_POOL = "lightjax_max_pool2d"
AVG_POOL = "lightjax_avg_pool2d"
GLOBAL_AVG_POOL = "lightjax_global_avg_pool"
CHANNEL_SHUFFLE = "lightjax_channel_shuffle"
HARD_SWISH = "lightjax_hard_swish"
HARD_SIGMOID = "lightjax_hard_sigmoid"


# ----------------------------------------------------------------------------------------------------------
# Reference implementations: the "xla" formulation's lax operations, verbatim.
# ----------------------------------------------------------------------------------------------------------
def _max_pool_impl(x, *, kernel, stride, pads):
    init = np.array(-np.inf, dtype=x.dtype)
    return lax.reduce_window(x, init, lax.max, (1, *kernel, 1), (1, *stride, 1), ((0, 0), *pads, (0, 0)))


def _avg_pool_impl(x, *, kernel, stride, padding, ceil_mode, count_include_pad):
    pads = _avg_pool_pads(x.shape[1:3], kernel, stride, padding, ceil_mode)
    window, strides, full = (1, *kernel, 1), (1, *stride, 1), ((0, 0), *pads, (0, 0))
    summed = lax.reduce_window(x, np.array(0, x.dtype), lax.add, window, strides, full)
    if count_include_pad and not ceil_mode:
        return summed / (kernel[0] * kernel[1])
    # Divisor = elements inside the symmetrically padded input; the ceil-mode overhang never counts (torch).
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    if count_include_pad:
        ones = jnp.pad(ones, ((0, 0), (padding[0],) * 2, (padding[1],) * 2, (0, 0)), constant_values=1)
        full = ((0, 0), (0, pads[0][1] - padding[0]), (0, pads[1][1] - padding[1]), (0, 0))
    counts = lax.reduce_window(ones, np.array(0, x.dtype), lax.add, window, strides, full)
    return summed / counts


def _global_avg_pool_impl(x, *, keepdims):
    return jnp.mean(x, axis=(1, 2), keepdims=keepdims, dtype=acc_dtype(x.dtype)).astype(x.dtype)


def _channel_shuffle_impl(x, *, groups):
    n, h, w, c = x.shape
    return x.reshape(n, h, w, groups, c // groups).swapaxes(-1, -2).reshape(n, h, w, c)


def _hard_sigmoid_impl(x):
    return jnp.clip(x + 3.0, 0, 6) / 6.0


def _hard_swish_impl(x):
    return x * (jnp.clip(x + 3.0, 0, 6) / 6.0)


def _avg_pool_pads(hw, kernel, stride, padding, ceil_mode) -> Tuple[Pair, Pair]:
    # Explicit (lo, hi) pads giving torch's output size in floor mode: the high side takes the ceil overhang.
    return tuple(tuple(p) for p in pool_padding(hw, kernel, stride, padding, ceil_mode))  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------
# Abstract evaluation (shapes only; the batch dimension may be symbolic and is passed through untouched).
# ----------------------------------------------------------------------------------------------------------
def _shaped(x, shape):
    return jax.core.ShapedArray(tuple(shape), x.dtype)


def _max_pool_abstract(x, *, kernel, stride, pads):
    n, h, w, c = x.shape
    return _shaped(x, (n, out_size(h, kernel[0], stride[0], pads[0], 1), out_size(w, kernel[1], stride[1], pads[1], 1), c))


def _avg_pool_abstract(x, *, kernel, stride, padding, ceil_mode, count_include_pad):
    n, h, w, c = x.shape
    return _shaped(x, (n, pool_output_size(h, kernel[0], stride[0], padding[0], ceil_mode),
                       pool_output_size(w, kernel[1], stride[1], padding[1], ceil_mode), c))


def _global_avg_pool_abstract(x, *, keepdims):
    n, _, _, c = x.shape
    return _shaped(x, (n, 1, 1, c) if keepdims else (n, c))


def _same_abstract(x, **_):
    return _shaped(x, x.shape)


# ----------------------------------------------------------------------------------------------------------
# Registration.
# ----------------------------------------------------------------------------------------------------------
def _batch_into_n(prim: Primitive) -> Callable[..., Any]:
    """vmap rule of an NHWC primitive: the mapped axis is merged into N, the primitive runs once, split back."""

    def rule(args, dims, **params):
        (x,), (d,) = args, dims
        x = jnp.moveaxis(x, d, 0)
        b, n = x.shape[:2]
        y = prim.bind(x.reshape(b * n, *x.shape[2:]), **params)
        return y.reshape(b, n, *y.shape[1:]), 0

    return rule


def _elementwise_batch(prim: Primitive) -> Callable[..., Any]:
    def rule(args, dims, **params):
        return prim.bind(args[0], **params), dims[0]

    return rule


def _jvp_of(impl: Callable[..., Any], prim: Primitive) -> Callable[..., Any]:
    """JVP through the reference implementation: the primal stays one primitive, the tangent is plain lax."""

    def jvp(primals, tangents, **params):
        (x,), (t,) = primals, tangents
        t = ad.instantiate_zeros(t)
        _, t_out = jax.jvp(functools.partial(impl, **params), (x,), (t,))
        return prim.bind(x, **params), t_out

    return jvp


def _register(name: str, impl: Callable[..., Any], abstract: Callable[..., Any], nhwc: bool) -> Primitive:
    prim = Primitive(name)
    prim.def_impl(impl)
    prim.def_abstract_eval(abstract)
    mlir.register_lowering(prim, mlir.lower_fun(impl, multiple_results=False))
    batching.primitive_batchers[prim] = _batch_into_n(prim) if nhwc else _elementwise_batch(prim)
    ad.primitive_jvps[prim] = _jvp_of(impl, prim)
    return prim


max_pool2d_p = _register(MAX_POOL, _max_pool_impl, _max_pool_abstract, nhwc=True)
avg_pool2d_p = _register(AVG_POOL, _avg_pool_impl, _avg_pool_abstract, nhwc=True)
global_avg_pool_p = _register(GLOBAL_AVG_POOL, _global_avg_pool_impl, _global_avg_pool_abstract, nhwc=True)
channel_shuffle_p = _register(CHANNEL_SHUFFLE, _channel_shuffle_impl, _same_abstract, nhwc=True)
hard_swish_p = _register(HARD_SWISH, _hard_swish_impl, _same_abstract, nhwc=False)
hard_sigmoid_p = _register(HARD_SIGMOID, _hard_sigmoid_impl, _same_abstract, nhwc=False)

#: Every primitive of this module, by name.
PRIMITIVES = {p.name: p for p in (max_pool2d_p, avg_pool2d_p, global_avg_pool_p, channel_shuffle_p,
                                  hard_swish_p, hard_sigmoid_p)}


def _pair(v, what: str) -> Pair:
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{what} must be 2 ints (H, W), got {v}")
    return v  # type: ignore[return-value]


def _check_nhwc(x, what: str) -> None:
    if jnp.ndim(x) != 4:
        raise ValueError(f"{what}: expected an NHWC array (rank 4), got shape {jnp.shape(x)}")


# ----------------------------------------------------------------------------------------------------------
# Public functions (what the op modules call under the export formulation).
# ----------------------------------------------------------------------------------------------------------
def max_pool2d(x: jax.Array, kernel: Tuple[int, int], stride: Tuple[int, int],
               pads: Tuple[Tuple[int, int], Tuple[int, int]]) -> jax.Array:
    """Max pooling of an NHWC array with explicit padding (padded with -inf), as one primitive.

    Args:
      x: ``(N, H, W, C)``.
      kernel, stride: ``(kh, kw)``, ``(sh, sw)``.
      pads: ``((top, bottom), (left, right))``, already including torch's ceil-mode overhang on the high side.

    Returns:
      ``(N, Ho, Wo, C)``, equal to ``lax.reduce_window(x, -inf, lax.max, ...)``.
    """
    _check_nhwc(x, "max_pool2d")
    pads = (_pair(pads[0], "pads[0]"), _pair(pads[1], "pads[1]"))
    return max_pool2d_p.bind(x, kernel=_pair(kernel, "kernel"), stride=_pair(stride, "stride"), pads=pads)


def avg_pool2d(x: jax.Array, kernel: Tuple[int, int], stride: Tuple[int, int], padding: Tuple[int, int],
               ceil_mode: bool, count_include_pad: bool) -> jax.Array:
    """``torch.nn.AvgPool2d`` on an NHWC array (symmetric ``padding``), as one primitive.

    Args:
      x: ``(N, H, W, C)``.
      kernel, stride, padding: ``(kh, kw)``, ``(sh, sw)``, ``(ph, pw)``.
      ceil_mode, count_include_pad: torch's flags (the ceil-mode overhang is never counted in the divisor).

    Returns:
      ``(N, Ho, Wo, C)`` with torch's output size.
    """
    _check_nhwc(x, "avg_pool2d")
    return avg_pool2d_p.bind(x, kernel=_pair(kernel, "kernel"), stride=_pair(stride, "stride"),
                             padding=_pair(padding, "padding"), ceil_mode=bool(ceil_mode),
                             count_include_pad=bool(count_include_pad))


def global_avg_pool(x: jax.Array, keepdims: bool) -> jax.Array:
    """Mean over H and W of an NHWC array, accumulated in float32 (float64 stays float64), cast back.

    Returns:
      ``(N, 1, 1, C)`` if ``keepdims`` else ``(N, C)``.
    """
    _check_nhwc(x, "global_avg_pool")
    return global_avg_pool_p.bind(x, keepdims=bool(keepdims))


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """torchvision's channel shuffle on NHWC: channel ``i * (C // g) + j`` moves to ``j * g + i``."""
    _check_nhwc(x, "channel_shuffle")
    c = x.shape[-1]
    if int(groups) < 1 or c % int(groups):
        raise ValueError(f"channel_shuffle: {c} channels are not divisible by groups={groups}")
    return channel_shuffle_p.bind(x, groups=int(groups))


def hard_swish(x: jax.Array) -> jax.Array:
    """``torch.nn.Hardswish``: ``x * relu6(x + 3) / 6``."""
    return hard_swish_p.bind(jnp.asarray(x))


def hard_sigmoid(x: jax.Array) -> jax.Array:
    """``torch.nn.Hardsigmoid``: ``relu6(x + 3) / 6``."""
    return hard_sigmoid_p.bind(jnp.asarray(x))
