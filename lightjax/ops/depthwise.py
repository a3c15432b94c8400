"""Depthwise convolutions on CPU: ``kh*kw`` shifted multiply-adds, with a custom VJP.

``lax.conv_general_dilated(..., feature_group_count=C)`` ran at ~0.7 GFLOP/s on XLA:CPU, 43-122x slower per
layer than torch channels_last; the shifted multiply-adds on the padded NHWC input are 5-45x faster than it
and match it to 4e-6 (docs/benchmarks.md). Inference with stride 1 and C a multiple of 8 runs on rows of
``W*C`` (one long slice per tap). Backward: the input gradient as shifted multiply-adds of the output
gradient (one polyphase component per stride phase), the weight gradient as ONE variadic reduction over W'
for all taps (one pass over x and dy, 3x faster than a reduction per tap) then a small sum.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from lightjax.ops.windows import tap_windows, taps, window, window_transpose

def _depthwise_fwd_math(x, k, stride, pads, dilation, rows=False):
    kh, kw, c = k.shape
    if rows and tuple(stride) == (1, 1) and c % DW_ROWS_CHANNEL_MULTIPLE == 0:
        return _depthwise_fwd_rows(x, k, pads, dilation)
    windows, hstarts, wstarts = tap_windows(x, kh, kw, stride, pads, dilation)
    y = None
    for i, hs in enumerate(hstarts):
        for j, ws in enumerate(wstarts):
            t = windows(hs, ws) * k[i, j]
            y = t if y is None else y + t
    return y


#: Inference (not differentiated) stride-1 depthwise over rows of ``W*C`` (:func:`_depthwise_fwd_rows`) when C is
#: a multiple of this (a 32-byte AVX vector of float32). Whole forwards in one process, 16 -> 8 (medians of 12):
#: MobileNetV3-large (72/120/184/200 channels join) 86.8/87.7 -> 84.7 ms and 85.7/89.1 -> 85.0, Xception65 (728)
#: 632 -> 628 ms, ShuffleNet v2 (only its 232 joins) 59.3 -> 59.2. With C = 58/116 the tiled kernel row
#: straddles vectors: ShuffleNet v2 with those on rows ran 17% slower.
DW_ROWS_CHANNEL_MULTIPLE = 8


def _depthwise_fwd_rows(x, k, pads, dilation):
    """Stride-1 depthwise taps on the padded input viewed as ``(N, H, W*C)``: a shift along W is an offset of
    whole channel groups, so every tap is one slice with a long contiguous minor axis (the kernel row tiled
    along it) instead of a (W, C) window whose minor axis is C. XLA:CPU vectorises that loop better: with the
    following BatchNorm + ReLU6, batch 32, ms: 112²x32 7.14 -> 5.55, 56²x128 7.39 -> 6.15, 28²x256 3.70 -> 3.08,
    14²x512 2.17 -> 1.57, 7²x1024 1.97 -> 1.33; batch 8, 19²x728 1.35 -> 1.41. Whole forward, batch 32, both
    variants in one process (median of 15): MobileNetV1 141.1 -> 130.3 ms, V2 124.9 -> 113.0, V3-large 101.3 ->
    95.8, ShuffleNet v1 g3 85.3-93.5 -> 87.4-91.7 (neutral)."""
    n, h, w, c = x.shape
    kh, kw, _ = k.shape
    ho, hstarts = taps(h, kh, 1, pads[0], dilation[0])
    wo, wstarts = taps(w, kw, 1, pads[1], dilation[1])
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    rows = xp.reshape(n, xp.shape[1], xp.shape[2] * c)
    y = None
    for i, hs in enumerate(hstarts):
        for j, ws in enumerate(wstarts):
            t = lax.slice(rows, (0, hs, ws * c), (n, hs + ho, (ws + wo) * c)) * jnp.tile(k[i, j], wo)
            y = t if y is None else y + t
    return y.reshape(n, ho, wo, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def depthwise(x, k, stride, pads, dilation):
    """Depthwise convolution of ``x (N, H, W, C)`` with taps ``k (kh, kw, C)``; stride, pads ``((lo, hi), (lo, hi))``,
    dilation as tuples. The caller casts to the accumulation dtype."""
    # Not differentiated (inference): the row formulation where it is faster. Under differentiation the
    # forward keeps the (N, H, W, C) windows: with rows, whole MobileNetV1/V2 train steps ran 12-13% slower.
    return _depthwise_fwd_math(x, k, stride, pads, dilation, rows=True)


def _depthwise_fwd(x, k, stride, pads, dilation):
    return _depthwise_fwd_math(x, k, stride, pads, dilation), (x, k)


def _depthwise_dx(dy, k, x_shape, stride, pads, dilation):
    kh, kw, _ = k.shape
    return window_transpose(lambda i, j, read: read(dy) * k[i, j], x_shape, dy.shape[1:3], kh, kw, stride, pads,
                             dilation, dy.dtype)


def _depthwise_dk(x, dy, k_shape, stride, pads, dilation):
    """Weight gradient: for each tap, sum over (N, H', W') of window * dy.

    All taps go through ONE variadic ``lax.reduce`` over the W' axis (one pass over ``x`` and ``dy``; per-tap
    ``jnp.sum`` over (N, H', W') made XLA:CPU read both once per tap, 3x slower), then a small sum over
    (N, H'). Summing rows first is also more accurate than one long accumulation.
    """
    kh, kw, _ = k_shape
    ho, wo = dy.shape[1:3]
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    prods = tuple(
        window(xp, i * dilation[0], j * dilation[1], ho, wo, stride) * dy for i in range(kh) for j in range(kw)
    )
    zero = jnp.zeros((), dy.dtype)
    rows = lax.reduce(prods, (zero,) * len(prods), lambda a, b: tuple(p + q for p, q in zip(a, b)), (2,))
    return jnp.sum(jnp.stack(rows), axis=(1, 2)).reshape(k_shape)


def _depthwise_bwd(stride, pads, dilation, res, dy):
    x, k = res
    # Materialise dy once: otherwise XLA fuses the producer of dy (e.g. BatchNorm's backward, reading 4-5
    # activations) into both the input-gradient and the 9-output weight-gradient fusion, which then read all
    # of those activations (A/B, train step: MobileNetV2 batch 32 1.71-2.04 s vs 2.15 s; Xception65 batch 4
    # 4.66 s vs 5.25 s). Same for x, whose producer (BatchNorm + ReLU) was recomputed per tap inside the
    # weight-gradient reduction (Xception65 batch 8: 0.83 vs 0.76 / 0.78 img/s in two same-process A/Bs;
    # MobileNetV2 batch 32 14.36 vs 14.45, noise). The barrier is an identity: values do not change.
    x, dy = lax.optimization_barrier((x, dy))
    dx = _depthwise_dx(dy, k, x.shape, stride, pads, dilation)
    dk = _depthwise_dk(x, dy, k.shape, stride, pads, dilation)
    return dx, dk


depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)
