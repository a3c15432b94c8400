"""Shapes and dtypes every formulation shares: torch-style padding and pairs, output sizes (incl. PyTorch's
ceil-mode pooling rule), the accumulation dtype.

Pure Python on static shapes (nothing here is traced): each formulation computes its own output size from
these so that all of them agree with ``torch.nn.Conv2d`` / ``MaxPool2d`` to the pixel.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import jax.numpy as jnp

#: Torch-style padding: an int, ``(ph, pw)``, or ``((top, bottom), (left, right))``.
Padding = Union[int, Tuple[int, int], Sequence[Tuple[int, int]]]


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


def acc_dtype(dtype) -> jnp.dtype:
    """Accumulation dtype: float32 for bfloat16/float16, the dtype itself for float32/float64."""
    return jnp.promote_types(dtype, jnp.float32)


def out_size(size: int, k: int, s: int, pad: Tuple[int, int], d: int) -> int:
    """Output length of a convolution along one axis (kernel ``k``, stride ``s``, padding ``(lo, hi)``, dilation ``d``)."""
    return (size + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1


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


def pool_padding(shape: Sequence[int], kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int],
                 ceil_mode: bool) -> List[Tuple[int, int]]:
    """Explicit ``(lo, hi)`` padding per spatial axis that gives PyTorch's pooling output size in floor mode
    (the high side absorbs the ceil-mode overhang)."""
    pads = []
    for size, k, s, p in zip(shape, kernel, stride, pad):
        out = pool_output_size(size, k, s, p, ceil_mode)
        high = max((out - 1) * s + k - size - p, 0)
        pads.append((p, high))
    return pads


def pool_plan(x_shape, kernel_size, stride, padding, ceil_mode):
    """``(kernel, stride, padding, explicit pads)`` of a ``torch.nn.*Pool2d`` on an NHWC shape."""
    k = to_pairs(kernel_size)
    s = to_pairs(stride if stride is not None else kernel_size)
    p = to_pairs(padding)
    return k, s, p, pool_padding(x_shape[1:3], k, s, p, ceil_mode)
