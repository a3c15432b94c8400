"""The ONE place a convolution is computed: :func:`conv2d` (and its channel-parts forms) picks the formulation.

Every convolution in lightjax (dense, grouped, depthwise, pointwise) goes through :func:`conv2d`; parameters
are always in Flax's layout (kernel ``(kh, kw, in/groups, out)``) whatever runs, so checkpoints do not depend
on the backend. ``"xla"`` and ``"export"``: ``lax.conv_general_dilated`` with ``feature_group_count``. ``"cpu"``:
depthwise as shifted multiply-adds (:mod:`lightjax.ops.depthwise`), 1x1 as matrix products
(:mod:`lightjax.ops.dots`, :mod:`lightjax.ops.grouped`), an RGB stem as broadcast multiply-adds (inference) or
im2col + one product (training), other dense k x k convolutions on ``lax.conv`` forward and im2col + two
products backward (1.5x faster SqueezeNet 1.1 training than XLA's convolution backward); measurements in
docs/benchmarks.md. Low-precision inputs accumulate in float32 and are cast back, like ``lax.conv`` on CPU.
"""

from __future__ import annotations

import functools
from typing import List, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lightjax.ops import backend
from lightjax.ops.depthwise import depthwise
from lightjax.ops.dots import DOT_NN, pointwise, pointwise_bwd
from lightjax.ops.geometry import Padding, acc_dtype, padding_pairs, to_pairs
from lightjax.ops.grouped import (MAX_BLOCK_DIAGONAL_GROUPS, block_diagonal, group_layout, grouped_pointwise,
                                  grouped_pointwise_of_parts, grouped_pointwise_parts, parts_per_group, regroup,
                                  split_per_group)
from lightjax.ops.shuffle import channel_shuffle, shuffle_permutation
from lightjax.ops.windows import im2col, tap_windows

#: Dense (groups == 1) k x k convolutions with at most this many input channels (RGB stems) run their forward
#: as broadcast multiply-adds on CPU.
FEW_CHANNELS_MAX_CIN = 4


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    stride: Union[int, Sequence[int]] = 1,
    padding: Padding = 0,
    dilation: Union[int, Sequence[int]] = 1,
    groups: int = 1,
    precision=None,
    shuffle_in: int = 0,
) -> jax.Array:
    """2-D convolution in NHWC with a Flax HWIO kernel, PyTorch semantics (explicit padding, groups).

    Args:
      x: ``(N, H, W, C_in)``.
      kernel: ``(kh, kw, C_in // groups, C_out)``.
      stride, padding, dilation: as in ``torch.nn.Conv2d``.
      groups: ``feature_group_count``; ``groups == C_in`` is a depthwise convolution.
      precision: passed to XLA.
      shuffle_in: if > 0, the convolution reads ``channel_shuffle(x, shuffle_in)``. Where the formulation is a
        matrix product (1x1 on CPU) the permutation is folded into the weight's rows instead of moving the
        activation (ShuffleNet's shuffle then costs nothing); elsewhere the shuffle runs first.

    Returns:
      ``(N, H', W', C_out)``.
    """
    if x.ndim != 4:
        raise ValueError(f"conv2d expects NHWC input of rank 4, got shape {x.shape}")
    cin = x.shape[-1]
    if cin != kernel.shape[2] * groups:
        raise ValueError(
            f"conv2d: input has {cin} channels but the kernel {kernel.shape} with groups={groups} "
            f"expects {kernel.shape[2] * groups}"
        )
    stride, pads, dilation = to_pairs(stride), padding_pairs(padding), to_pairs(dilation)
    for size, (lo, hi), k, d in zip(x.shape[1:3], pads, kernel.shape[:2], dilation):
        if size + lo + hi < d * (k - 1) + 1:
            raise ValueError(f"conv2d: input {x.shape} padded by {pads} is smaller than the kernel {kernel.shape}")
    cpu = backend.is_cpu()
    in_perm = None
    if shuffle_in:
        if cpu and _conv_cpu_is_matmul(kernel.shape, groups, cin):
            in_perm = shuffle_permutation(cin, shuffle_in)
        else:
            x = channel_shuffle(x, shuffle_in)
    if cpu:
        return _conv_cpu(x, kernel, stride, pads, dilation, groups, precision, in_perm)
    return _conv_xla(x, kernel, stride, pads, dilation, groups, precision)


def conv2d_concat(parts: Sequence[jax.Array], kernel: jax.Array, **kwargs) -> jax.Array:
    """``conv2d(concatenate(parts, axis=-1), kernel, **kwargs)`` without materialising the concatenation
    where that is cheaper.

    On CPU a 1x1 convolution (groups 1, no shuffle) of channel parts is the sum of one matrix product per
    part with the matching rows of the kernel: SqueezeNet's fire outputs are two halves (expand 1x1 / 3x3)
    whose concatenation cost more than the next squeeze convolution (55², 128 channels, batch 32: 12.7 ms).
    Elsewhere the parts are concatenated first.

    Args:
      parts: NHWC arrays with equal ``(N, H, W)``; their channels add up to the kernel's input channels.
      kernel, kwargs: as for :func:`conv2d`.
    """
    parts = list(parts)
    if len(parts) == 1:
        return conv2d(parts[0], kernel, **kwargs)
    groups = kwargs.get("groups", 1)
    if parts_per_group(parts, kernel, kwargs):
        return jnp.concatenate(grouped_pointwise_of_parts(regroup(parts, [kernel.shape[2]] * groups), kernel,
                                                           kwargs.get("precision")), axis=-1)
    split = (backend.is_cpu() and kernel.shape[:2] == (1, 1) and groups == 1
             and not kwargs.get("shuffle_in", 0) and padding_pairs(kwargs.get("padding", 0)) == ((0, 0), (0, 0)))
    if not split:
        return conv2d(jnp.concatenate(parts, axis=-1), kernel, **kwargs)
    widths = np.cumsum([0] + [p.shape[-1] for p in parts])
    if widths[-1] != kernel.shape[2]:
        raise ValueError(f"conv2d_concat: parts with {widths[-1]} channels in all, kernel {kernel.shape}")
    out = None
    for p, lo, hi in zip(parts, widths[:-1], widths[1:]):
        y = conv2d(p, kernel[:, :, lo:hi, :], **kwargs)
        out = y if out is None else out + y
    return out


def conv2d_parts(x: Union[jax.Array, Sequence[jax.Array]], kernel: jax.Array, **kwargs) -> List[jax.Array]:
    """:func:`conv2d` (of an array, or of channel parts as :func:`conv2d_concat`) returning its output as a
    list of channel parts, read as their concatenation.

    On CPU a grouped 1x1 that runs as one product per group returns one part per group, so the per-group
    outputs are never concatenated, and a consumer that splits them by group again (the next grouped 1x1,
    a per-group residual) reads them as they are. ShuffleNet v1 keeps its activations as such parts: with
    the concatenation XLA:CPU fused each unit's residual sum into the channel slices of the next unit's
    grouped product and recomputed the whole chain of sums for every slice (ShuffleNet v1 g3 inference
    ~100 ms per batch of 32 vs ~75 ms for its units compiled one by one). Elsewhere one part.

    Args:
      x, kernel, kwargs: as for :func:`conv2d` / :func:`conv2d_concat`.

    Returns:
      Channel parts of the ``(N, H', W', C_out)`` output.
    """
    parts = list(x) if isinstance(x, (list, tuple)) else [x]
    groups, shuffle = kwargs.get("groups", 1), kwargs.get("shuffle_in", 0)
    if parts_per_group(parts, kernel, kwargs):
        return grouped_pointwise_of_parts(regroup(parts, [kernel.shape[2]] * groups), kernel, kwargs.get("precision"))
    one = len(parts) == 1
    cin = sum(p.shape[-1] for p in parts)
    if not (one and backend.is_cpu() and groups > 1 and _conv_cpu_is_matmul(kernel.shape, groups, cin)
            and to_pairs(kwargs.get("stride", 1)) == (1, 1)
            and padding_pairs(kwargs.get("padding", 0)) == ((0, 0), (0, 0)) and cin == kernel.shape[2] * groups):
        return [conv2d_concat(parts, kernel, **kwargs)]
    layout = group_layout(cin, groups, shuffle_permutation(cin, shuffle) if shuffle else None)
    if layout is None:  # a permutation the per-group slices cannot express: one block-diagonal product
        return [conv2d(parts[0], kernel, **kwargs)]
    x = parts[0]
    n, h, w, _ = x.shape
    out_dtype = jnp.result_type(x.dtype, kernel.dtype)
    acc = acc_dtype(out_dtype)
    ys = grouped_pointwise_parts(x.reshape(n * h * w, cin).astype(acc), kernel.reshape(kernel.shape[2], -1).astype(acc),
                                  groups, layout, kwargs.get("precision"))
    return [y.reshape(n, h, w, -1).astype(out_dtype) for y in ys]


def _conv_xla(x, kernel, stride, padding, dilation, groups, precision):
    # The plain formulation: one XLA convolution (GPU/TPU, export, and the reference of every other one).
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=stride,
        padding=padding,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
        precision=precision,
    )


def _conv_cpu_is_matmul(kernel_shape, groups, cin) -> bool:
    """Whether the CPU formulation of this convolution is one matrix product on ``(N*H*W, C_in)``."""
    kh, kw, cin_g, _ = kernel_shape
    is_depthwise = groups == cin and cin_g == 1
    return kh == kw == 1 and not is_depthwise and groups <= MAX_BLOCK_DIAGONAL_GROUPS


def _conv_cpu(x, kernel, stride, pads, dilation, groups, precision, in_perm=None):
    kh, kw, cin_g, cout = kernel.shape
    cin = x.shape[-1]
    out_dtype = jnp.result_type(x.dtype, kernel.dtype)
    acc = acc_dtype(out_dtype)
    if groups == cin and cin_g == 1:
        mult = cout // cin
        if mult > 1:  # depthwise multiplier: output channel o reads input channel o // mult
            x = jnp.repeat(x, mult, axis=-1)
        k = kernel.reshape(kh, kw, cout).astype(acc)
        y = depthwise(x.astype(acc), k, stride, pads, dilation)
        return y.astype(out_dtype)
    if _conv_cpu_is_matmul(kernel.shape, groups, cin):
        # 1x1: pad (rare), subsample for stride, then a matrix product; dilation is irrelevant.
        if any(p for pair in pads for p in pair):
            x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
        if stride != (1, 1):
            x = x[:, :: stride[0], :: stride[1], :]
        n, h, w, _ = x.shape
        x2 = x.reshape(n * h * w, cin).astype(acc)
        layout = group_layout(cin, groups, in_perm) if groups > 1 else None
        if layout is not None:
            y = grouped_pointwise(x2, kernel.reshape(cin_g, cout).astype(acc), groups, layout,
                                  split_per_group(cin_g, cout // groups), precision)
            return y.reshape(n, h, w, cout).astype(out_dtype)
        if groups == 1:
            w2 = kernel.reshape(cin, cout).astype(acc)
            if in_perm is not None:  # x[..., perm] @ W == x @ W[argsort(perm)]: permute the weight
                w2 = jnp.take(w2, np.argsort(in_perm), axis=0)
        else:
            w2 = block_diagonal(kernel.reshape(cin_g, cout).astype(acc), groups, in_perm)
        y = pointwise(x2, w2, precision)
        return y.reshape(n, h, w, cout).astype(out_dtype)
    if groups == 1:
        few = cin <= FEW_CHANNELS_MAX_CIN  # the multiply-add forward accumulates in float32 like im2col did
        dt = acc if few else out_dtype
        y = _dense_conv(x.astype(dt), kernel.astype(dt), tuple(stride), tuple(tuple(p) for p in pads),
                        tuple(dilation), precision)
        return y.astype(out_dtype)
    return _conv_xla(x, kernel, stride, pads, dilation, groups, precision)


def _few_channel_conv_math(x, kernel, stride, pads, dilation):
    """Dense k x k convolution of an input with few channels (an RGB stem) as ``kh*kw*C_in`` broadcast
    multiply-adds in one fused loop: each term is one input channel of one shifted window times a row of the
    kernel. 1.8-3.8x faster here than im2col + dot (whose (N*Ho*Wo, kh*kw*3) matrix is mostly memory traffic)
    and 1.3-13x faster than XLA's convolution (batch 32 stems, 3 -> 16..64 channels, docs/benchmarks.md)."""
    kh, kw, cin, _ = kernel.shape
    windows, hstarts, wstarts = tap_windows(x, kh, kw, stride, pads, dilation)
    y = None
    for i, hs in enumerate(hstarts):
        for j, ws in enumerate(wstarts):
            win = windows(hs, ws)
            for c in range(cin):
                t = win[..., c:c + 1] * kernel[i, j, c]
                y = t if y is None else y + t
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _dense_conv(x, kernel, stride, pads, dilation, precision):
    """Dense k x k convolution. Inference forward: broadcast multiply-adds when the input has few channels
    (stems, :func:`_few_channel_conv_math`), else XLA's convolution (as fast as im2col + dot here, without the
    k*k-times larger matrix). Under differentiation (:func:`_dense_conv_fwd`) a few-channel input goes through
    im2col + one dot instead. Gradients through im2col + two dots (1.5x faster training on SqueezeNet 1.1 than
    XLA's convolution backward with its default YNNPACK kernels). Only ``x`` is saved; the columns are rebuilt
    in the backward pass."""
    if x.shape[-1] <= FEW_CHANNELS_MAX_CIN:
        return _few_channel_conv_math(x, kernel, stride, pads, dilation)
    return _conv_xla(x, kernel, stride, pads, dilation, 1, precision)


def _dense_conv_fwd(x, kernel, stride, pads, dilation, precision):
    if x.shape[-1] <= FEW_CHANNELS_MAX_CIN:
        # Training: XLA treats the multiply-add chain as cheap and duplicates it into each consumer of the stem
        # output (the saved activation, BatchNorm statistics, the pool, the ReLU mask in the backward): SqueezeNet's
        # stem cost ~270 ms per step that way vs ~130 ms through im2col + dot, whose product is computed once.
        kh, kw, cin, cout = kernel.shape
        cols, (ho, wo) = im2col(x, kh, kw, stride, pads, dilation)
        y = lax.dot_general(cols, kernel.reshape(kh * kw * cin, cout), DOT_NN, precision=precision)
        return y.reshape(x.shape[0], ho, wo, cout), (x, kernel)
    return _dense_conv(x, kernel, stride, pads, dilation, precision), (x, kernel)


def _dense_conv_bwd(stride, pads, dilation, precision, res, dy):
    x, kernel = res
    kh, kw, cin, cout = kernel.shape
    acc = acc_dtype(dy.dtype)  # bfloat16 gradients accumulate in float32, like the forward
    cols, cols_transpose = jax.vjp(lambda t: im2col(t, kh, kw, stride, pads, dilation)[0], x.astype(acc))
    w2 = kernel.reshape(kh * kw * cin, cout).astype(acc)
    # The columns times the kernel is a pointwise product: reuse its backward (dW contracts N*Ho*Wo directly).
    dcols, dw = pointwise_bwd(precision, (cols, w2), dy.reshape(-1, cout).astype(acc))
    (dx,) = cols_transpose(dcols)
    return dx.astype(x.dtype), dw.reshape(kernel.shape).astype(kernel.dtype)


_dense_conv.defvjp(_dense_conv_fwd, _dense_conv_bwd)
