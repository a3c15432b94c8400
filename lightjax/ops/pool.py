"""Max / average / global average pooling with torch semantics (padding, ceil mode, count_include_pad).

CPU: the ``kh*kw`` windows (unit-stride slices of the stride phases, like the depthwise taps) combined in one
fused loop, 5x faster than XLA:CPU's ``reduce_window`` for SqueezeNet's 3x3/2 pool on 111x111x64, with a
max-pool gradient to the first maximum of each window (PyTorch's rule); global average pooling as a batched
product with a constant ``1/(H*W)`` row (docs/benchmarks.md). Accelerators: ``lax.reduce_window`` and
``jnp.mean``. Export: named primitives (:mod:`lightjax.ops.export`) an exporter lowers to ``MaxPool`` /
``AveragePool`` / ``GlobalAveragePool``.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lightjax.ops import backend
from lightjax.ops.geometry import acc_dtype, pool_plan
from lightjax.ops.windows import tap_windows, window_transpose

def _pool_window_sum_or_max(x, k, s, pads, combine, pad_value):
    """Combines the ``kh*kw`` windows of a pooling, read like a convolution's taps (:func:`tap_windows`:
    unit-stride slices of the stride phases). Padding to a multiple of the stride also keeps XLA from fusing
    the producer into the window loop, which recomputed it for every overlapping tap (SqueezeNet's stem,
    computed as multiply-adds, inside its 3x3/2 pool: 73 ms instead of 29 + 8)."""
    windows, hstarts, wstarts = tap_windows(x, k[0], k[1], s, pads, (1, 1), pad_value=pad_value)
    out = None
    for hs in hstarts:
        for ws in wstarts:
            t = windows(hs, ws)
            out = t if out is None else combine(out, t)
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_taps(x, k, s, pads):
    return _pool_window_sum_or_max(x, k, s, pads, jnp.maximum, -jnp.inf)


def _max_pool_taps_fwd(x, k, s, pads):
    out = _max_pool_taps(x, k, s, pads)
    return out, (x, out)


def _max_pool_taps_bwd(k, s, pads, res, dy):
    """The whole gradient of a window goes to its FIRST maximum in scan order, as PyTorch's (and XLA's
    select-and-scatter) max-pool gradient does; ``jnp.maximum`` autodiff would split ties (zeros after a ReLU).

    One pass finds each window's first maximal tap (int8 index), then the gradient is scattered back like the
    depthwise input gradient (:func:`window_transpose`): 9 masked, zero-dilated pads of ``dy`` summed in one
    loop took SqueezeNet's 3x3/2 pool backward 207 ms per step, 10x PyTorch's.
    """
    x, out = res
    windows, hstarts, wstarts = tap_windows(x, k[0], k[1], s, pads, (1, 1), pad_value=-jnp.inf)
    ntaps = len(hstarts) * len(wstarts)
    first = jnp.full(out.shape, ntaps, jnp.int8 if ntaps < 127 else jnp.int32)
    for t, (hs, ws) in enumerate((hs, ws) for hs in hstarts for ws in wstarts):
        first = jnp.where((first == ntaps) & (windows(hs, ws) == out), jnp.asarray(t, first.dtype), first)
    zero = jnp.zeros((), dy.dtype)

    def term(i, j, read):
        return jnp.where(read(first, fill=-1) == i * k[1] + j, read(dy), zero)

    return (window_transpose(term, x.shape, out.shape[1:3], k[0], k[1], s, pads, (1, 1), dy.dtype),)


_max_pool_taps.defvjp(_max_pool_taps_fwd, _max_pool_taps_bwd)


def max_pool2d(
    x: jax.Array,
    kernel_size: Union[int, Sequence[int]],
    stride: Optional[Union[int, Sequence[int]]] = None,
    padding: Union[int, Sequence[int]] = 0,
    ceil_mode: bool = False,
) -> jax.Array:
    """``torch.nn.MaxPool2d`` in NHWC (padding with -inf, torch's ceil-mode output size).

    On CPU the window maximum is taken over the ``kh*kw`` windows in one fused loop (5x faster than
    XLA:CPU's ``reduce_window`` for SqueezeNet's 3x3/2 pool on 111x111x64), with a custom VJP that gives each
    window's gradient to its first maximum, like PyTorch; elsewhere ``lax.reduce_window``.
    """
    k, s, _, pads = pool_plan(x.shape, kernel_size, stride, padding, ceil_mode)
    if backend.is_export():
        from lightjax.ops import export

        return export.max_pool2d(x, k, s, tuple(tuple(p) for p in pads))
    if backend.is_cpu():
        return _max_pool_taps(x, k, s, tuple(tuple(p) for p in pads))
    init = np.array(-np.inf, dtype=x.dtype)  # numpy, not jnp: a traced init makes reduce_window non-differentiable
    return lax.reduce_window(x, init, lax.max, (1, *k, 1), (1, *s, 1), ((0, 0), *pads, (0, 0)))


def avg_pool2d(
    x: jax.Array,
    kernel_size: Union[int, Sequence[int]],
    stride: Optional[Union[int, Sequence[int]]] = None,
    padding: Union[int, Sequence[int]] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> jax.Array:
    """``torch.nn.AvgPool2d`` in NHWC (torch defaults: ``count_include_pad=True``).

    The window sum is a sum of the ``kh*kw`` windows on CPU (see :func:`max_pool2d`), ``lax.reduce_window``
    elsewhere.
    """
    k, s, p, pads = pool_plan(x.shape, kernel_size, stride, padding, ceil_mode)
    if backend.is_export():
        from lightjax.ops import export

        return export.avg_pool2d(x, k, s, p, ceil_mode, count_include_pad)
    window = (1, *k, 1)
    strides = (1, *s, 1)
    full = ((0, 0), *pads, (0, 0))
    if backend.is_cpu():
        summed = _pool_window_sum_or_max(x, k, s, pads, jnp.add, 0)
    else:
        summed = lax.reduce_window(x, np.array(0, x.dtype), lax.add, window, strides, full)
    if count_include_pad and not ceil_mode:
        return summed / (k[0] * k[1])
    # Divisor = number of elements inside the (symmetrically) padded input; ceil-mode overhang never counts.
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    if count_include_pad:
        ones = jnp.pad(ones, ((0, 0), (p[0], p[0]), (p[1], p[1]), (0, 0)), constant_values=1)
        full = ((0, 0), (0, pads[0][1] - p[0]), (0, pads[1][1] - p[1]), (0, 0))
    counts = lax.reduce_window(ones, np.array(0, x.dtype), lax.add, window, strides, full)
    return summed / counts


def global_avg_pool(x: jax.Array, keepdims: bool = False) -> jax.Array:
    """``AdaptiveAvgPool2d((1, 1))``: a mean over H and W, accumulated in float32 (float64 stays float64).

    On CPU the mean is a batched product with a constant ``1/(H*W)`` row: as a reduction, XLA:CPU fused the
    classifier's matrix product into its YNNPACK reduction kernel, which ran it slower than Eigen (SqueezeNet
    head, batch 32: 52.5 -> 44.0 ms forward, 156 -> 134 ms with gradients; MobileNetV2 head 10.4 -> 9.0).
    """
    if backend.is_export():
        from lightjax.ops import export

        return export.global_avg_pool(x, keepdims)
    n, h, w, c = x.shape
    acc = acc_dtype(x.dtype)
    if backend.is_cpu():
        row = jnp.full((n, 1, h * w), 1.0 / (h * w), acc)
        y = lax.dot_general(row, x.reshape(n, h * w, c).astype(acc), (((2,), (1,)), ((0,), (0,))))
        y = y.reshape(n, 1, 1, c) if keepdims else y.reshape(n, c)
    else:
        y = jnp.mean(x, axis=(1, 2), keepdims=keepdims, dtype=acc)
    return y.astype(x.dtype)
