"""Low-level array ops shared by every family: the ONE place that decides how a convolution is computed.

Every convolution in lightjax (dense, grouped, depthwise, pointwise) goes through :func:`conv2d`, and every
channel shuffle through :func:`channel_shuffle`. Parameters are always stored in Flax's layout (kernel
``(kh, kw, in/groups, out)``), whatever formulation runs, so checkpoints do not depend on the backend.

The formulation is picked per backend by :func:`conv_impl` (``"xla"``: ``lax.conv_general_dilated`` with
``feature_group_count``, the right choice on GPU/TPU). Faster CPU formulations plug in here and nowhere else.
The environment variable ``LIGHTJAX_CONV_IMPL`` (or :func:`set_conv_impl`) overrides the choice.
"""

from __future__ import annotations

import functools
import os
from typing import Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from jax import lax

Padding = Union[int, Tuple[int, int], Sequence[Tuple[int, int]]]

_CONV_IMPL_OVERRIDE: Optional[str] = None
_KNOWN_IMPLS = ("xla",)


def set_conv_impl(impl: Optional[str]) -> None:
    """Forces a convolution formulation (``None`` restores the per-backend default).

    Args:
      impl: one of the registered formulations, or ``None``.
    """
    global _CONV_IMPL_OVERRIDE
    if impl is not None and impl not in _KNOWN_IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}; known: {_KNOWN_IMPLS}")
    _CONV_IMPL_OVERRIDE = impl


def conv_impl() -> str:
    """Returns the formulation used for grouped/depthwise/pointwise convolutions on the default backend."""
    impl = _CONV_IMPL_OVERRIDE or os.environ.get("LIGHTJAX_CONV_IMPL")
    if impl:
        if impl not in _KNOWN_IMPLS:
            raise ValueError(f"LIGHTJAX_CONV_IMPL={impl!r} is not one of {_KNOWN_IMPLS}")
        return impl
    return "xla"


def to_pairs(value: Union[int, Sequence[int]], n: int = 2) -> Tuple[int, ...]:
    """Normalises an int or a sequence to an ``n``-tuple (torch's ``_pair``)."""
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"expected {n} values, got {value}")
    return value


def padding_pairs(padding: Padding) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """Torch-style padding (int, (ph, pw) or ((top, bottom), (left, right))) to explicit low/high pairs.

    Explicit symmetric padding is what PyTorch does; Flax's ``'SAME'`` puts the odd pad on the high side,
    which shifts every stride-2 layer by one pixel relative to a PyTorch checkpoint.
    """
    if isinstance(padding, str):
        raise ValueError(f"string padding {padding!r} is not supported: give explicit (torch-style) padding")
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    padding = tuple(padding)
    if len(padding) == 2 and all(isinstance(p, int) for p in padding):
        return ((padding[0], padding[0]), (padding[1], padding[1]))
    if len(padding) == 2 and all(len(p) == 2 for p in padding):
        return tuple((int(a), int(b)) for a, b in padding)  # type: ignore[return-value]
    raise ValueError(f"cannot interpret padding {padding!r}")


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    stride: Union[int, Sequence[int]] = 1,
    padding: Padding = 0,
    dilation: Union[int, Sequence[int]] = 1,
    groups: int = 1,
    precision=None,
) -> jax.Array:
    """2-D convolution in NHWC with a Flax HWIO kernel, PyTorch semantics (explicit padding, groups).

    Args:
      x: ``(N, H, W, C_in)``.
      kernel: ``(kh, kw, C_in // groups, C_out)``.
      stride, padding, dilation: as in ``torch.nn.Conv2d``.
      groups: ``feature_group_count``; ``groups == C_in`` is a depthwise convolution.
      precision: passed to XLA.

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
    return _conv_xla(x, kernel, to_pairs(stride), padding_pairs(padding), to_pairs(dilation), groups, precision)


def _conv_xla(x, kernel, stride, padding, dilation, groups, precision):
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


@functools.partial(jax.jit, static_argnums=1)
def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """Channel shuffle of the seed / torchvision: ``(N, g, C/g, H, W) -> swap -> (N, C, H, W)``, in NHWC.

    Channel ``i * (C // g) + j`` moves to position ``j * g + i``.

    Args:
      x: ``(N, H, W, C)`` with ``C`` divisible by ``groups``.
      groups: number of groups.
    """
    n, h, w, c = x.shape
    if c % groups:
        raise ValueError(f"channel_shuffle: {c} channels are not divisible by groups={groups}")
    return x.reshape(n, h, w, groups, c // groups).swapaxes(-1, -2).reshape(n, h, w, c)


def pool_output_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool, dilation: int = 1) -> int:
    """PyTorch's pooling output size, including its ceil-mode rule (last window must start in the input)."""
    eff = dilation * (kernel - 1) + 1
    num = size + 2 * pad - eff
    if ceil_mode:
        out = -(-num // stride) + 1
        if (out - 1) * stride >= size + pad:
            out -= 1
    else:
        out = num // stride + 1
    return out


def _pool_padding(shape, kernel, stride, pad, ceil_mode):
    pads = []
    for size, k, s, p in zip(shape, kernel, stride, pad):
        out = pool_output_size(size, k, s, p, ceil_mode)
        high = max((out - 1) * s + k - size - p, 0)
        pads.append((p, high))
    return pads


def max_pool2d(
    x: jax.Array,
    kernel_size: Union[int, Sequence[int]],
    stride: Optional[Union[int, Sequence[int]]] = None,
    padding: Union[int, Sequence[int]] = 0,
    ceil_mode: bool = False,
) -> jax.Array:
    """``torch.nn.MaxPool2d`` in NHWC (padding with -inf, torch's ceil-mode output size)."""
    k = to_pairs(kernel_size)
    s = to_pairs(stride if stride is not None else kernel_size)
    p = to_pairs(padding)
    pads = _pool_padding(x.shape[1:3], k, s, p, ceil_mode)
    init = jnp.array(-jnp.inf, dtype=x.dtype)
    return lax.reduce_window(x, init, lax.max, (1, *k, 1), (1, *s, 1), ((0, 0), *pads, (0, 0)))


def avg_pool2d(
    x: jax.Array,
    kernel_size: Union[int, Sequence[int]],
    stride: Optional[Union[int, Sequence[int]]] = None,
    padding: Union[int, Sequence[int]] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> jax.Array:
    """``torch.nn.AvgPool2d`` in NHWC (torch defaults: ``count_include_pad=True``)."""
    k = to_pairs(kernel_size)
    s = to_pairs(stride if stride is not None else kernel_size)
    p = to_pairs(padding)
    pads = _pool_padding(x.shape[1:3], k, s, p, ceil_mode)
    window = (1, *k, 1)
    strides = (1, *s, 1)
    full = ((0, 0), *pads, (0, 0))
    summed = lax.reduce_window(x, jnp.array(0, x.dtype), lax.add, window, strides, full)
    if count_include_pad and not ceil_mode:
        return summed / (k[0] * k[1])
    # Divisor = number of elements inside the (symmetrically) padded input; ceil-mode overhang never counts.
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    if count_include_pad:
        ones = jnp.pad(ones, ((0, 0), (p[0], p[0]), (p[1], p[1]), (0, 0)), constant_values=1)
        full = ((0, 0), (0, pads[0][1] - p[0]), (0, pads[1][1] - p[1]), (0, 0))
    counts = lax.reduce_window(ones, jnp.array(0, x.dtype), lax.add, window, strides, full)
    return summed / counts


def global_avg_pool(x: jax.Array, keepdims: bool = False) -> jax.Array:
    """``AdaptiveAvgPool2d((1, 1))``: a mean over H and W, accumulated in float32."""
    return jnp.mean(x, axis=(1, 2), keepdims=keepdims, dtype=jnp.float32).astype(x.dtype)
