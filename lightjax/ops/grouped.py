"""Grouped 1x1 convolutions on CPU (ShuffleNet's), and channel parts (activations kept as per-group pieces).

XLA:CPU ran ShuffleNet's grouped 1x1 (g=3, 240->240, 28²) as ``lax.conv`` 5.6x slower than torch; as
matrix products it is at torch's speed or better. Forward: one product per group on channel slices for large
group blocks, else ONE product with the block-diagonal weight (``SPLIT_GROUPS_MIN_BLOCK``); backward (custom
VJP) always one ``dx`` and one ``dW`` product per group. A channel shuffle in front is folded into which
channels each group reads (megvii's order: strided slices) or into the block-diagonal weight's rows.
:func:`regroup` / :func:`concat_parts` let a model keep its activations as one part per group, so XLA never
fuses a concatenation into the next unit's slices (ShuffleNet v1 g3 inference ~100 -> ~75 ms per batch of
32; docs/benchmarks.md).
"""

from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lightjax.ops import backend
from lightjax.ops.dots import DOT_NN, DOT_NT, DOT_TN, pointwise
from lightjax.ops.geometry import acc_dtype, padding_pairs, to_pairs

#: Grouped 1x1 convolutions with at most this many groups run as one dense dot with a block-diagonal weight.
MAX_BLOCK_DIAGONAL_GROUPS = 8
#: Grouped 1x1 (CPU) forward: a group block of at least ``C_in/g * C_out/g`` weights runs as one matrix product
#: per group (slices in, concatenation out), a smaller one as ONE product with the block-diagonal weight, whose
#: g-fold FLOPs cost less there than g narrow products (ShuffleNet v1 g3, batch 32, Eigen dots, forward ms
#: block-diagonal / per group: 28², 80x20 block 5.6 / 11.2, 20x80 3.9 / 6.4; 14², 160x40 6.9 / 4.6, 40x160
#: 5.5 / 4.6; 7², 320x80 6.7 / 3.4). The backward is per group at every size (28² 80x20: forward+backward
#: 26.2 ms block-diagonal vs 19.9 per group).
SPLIT_GROUPS_MIN_BLOCK = 6400


def split_per_group(cin_g: int, cout_g: int) -> bool:
    """Whether a grouped 1x1 forward runs one product per group (else one block-diagonal product)."""
    return cin_g * cout_g >= SPLIT_GROUPS_MIN_BLOCK


def parts_per_group(parts, kernel, kwargs) -> bool:
    """Whether :func:`grouped_pointwise_of_parts` computes ``conv2d_concat(parts, kernel, **kwargs)``."""
    # A CPU grouped 1x1 (stride 1, no padding or shuffle) of several channel parts: the parts are cut at the
    # group boundaries (``regroup``: nothing moves where they already line up), then one product per group.
    groups = kwargs.get("groups", 1)
    return (len(parts) > 1 and groups > 1 and backend.is_cpu() and kernel.shape[:2] == (1, 1)
            and not kwargs.get("shuffle_in", 0) and to_pairs(kwargs.get("stride", 1)) == (1, 1)
            and padding_pairs(kwargs.get("padding", 0)) == ((0, 0), (0, 0))
            and sum(p.shape[-1] for p in parts) == kernel.shape[2] * groups
            and groups <= MAX_BLOCK_DIAGONAL_GROUPS)


def grouped_pointwise_of_parts(parts, kernel, precision):
    """Grouped 1x1, group ``h`` reading ``parts[h]``: one product per group (each with its own VJP)."""
    cin_g, cout = kernel.shape[2], kernel.shape[3]
    n = cout // len(parts)
    out = []
    for h, p in enumerate(parts):
        out_dtype = jnp.result_type(p.dtype, kernel.dtype)
        acc = acc_dtype(out_dtype)
        b, hh, ww, _ = p.shape
        w = kernel.reshape(cin_g, cout)[:, h * n:(h + 1) * n].astype(acc)
        y = pointwise(p.reshape(b * hh * ww, cin_g).astype(acc), w, precision)
        out.append(y.reshape(b, hh, ww, n).astype(out_dtype))
    return out


def regroup(parts: Sequence[jax.Array], widths: Sequence[int]) -> List[jax.Array]:
    """Channel parts re-cut to the given channel ``widths`` (same concatenation): parts that already line up
    are passed through, others are sliced and/or concatenated only where a boundary requires it.

    Args:
      parts: NHWC arrays read as their concatenation along channels (an array is one part).
      widths: channel counts of the parts wanted; they must add up to the total.

    Returns:
      ``len(widths)`` arrays.
    """
    parts = [parts] if hasattr(parts, "shape") else list(parts)
    have = [p.shape[-1] for p in parts]
    widths = [int(w) for w in widths]
    if have == widths:
        return parts
    if sum(have) != sum(widths) or min(widths, default=1) <= 0:
        raise ValueError(f"regroup: parts of {have} channels cannot be cut into {widths}")
    out, i, off = [], 0, 0
    for need in widths:
        pieces = []
        while need:
            p = parts[i]
            take = min(p.shape[-1] - off, need)
            pieces.append(p if take == p.shape[-1] else p[..., off:off + take])
            need, off = need - take, off + take
            if off == p.shape[-1]:
                i, off = i + 1, 0
        out.append(pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=-1))
    return out


def concat_parts(parts: Union[jax.Array, Sequence[jax.Array]]) -> jax.Array:
    """The array that channel parts stand for (an array is returned as it is)."""
    if hasattr(parts, "shape"):
        return parts
    parts = list(parts)
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def block_diagonal(w: jax.Array, groups: int, in_perm=None) -> jax.Array:
    """Grouped 1x1 kernel ``(C_in/g, C_out)`` to the dense ``(C_in, C_out)`` block-diagonal matrix.

    With ``in_perm`` the rows are reordered so that ``x @ dense == x[..., in_perm] @ block_diagonal``: the
    (small) weight absorbs the input permutation instead of the activation being gathered.
    """
    cin_g, cout = w.shape
    cout_g = cout // groups
    blocks = w.reshape(cin_g, groups, cout_g)  # output channel o = group * cout_g + j
    eye = jnp.eye(groups, dtype=w.dtype)
    # dense[g, i, h, j] = blocks[i, h, j] * (g == h)
    dense = (eye[:, None, :, None] * blocks[None, :, :, :]).reshape(groups * cin_g, cout)
    if in_perm is not None:
        dense = jnp.take(dense, np.argsort(in_perm), axis=0)
    return dense


def group_layout(cin: int, groups: int, in_perm) -> Optional[str]:
    """Where group ``h`` of a grouped 1x1 finds its input channels in the (unpermuted) activation.

    ``"blocks"``: channels ``[h*k, (h+1)*k)`` (no shuffle folded in); ``"interleaved"``: channels ``h, h+g,
    h+2g, ...`` (megvii's shuffle folded in); ``None``: any other permutation (the caller keeps the
    block-diagonal product, whose weight rows absorb any permutation). ``k = C_in / g``.
    """
    if in_perm is None:
        return "blocks"
    perm = np.asarray(in_perm)  # perm[h*k:(h+1)*k] = activation channels read by group h
    if np.array_equal(perm, np.arange(cin)):
        return "blocks"
    if np.array_equal(perm, layout_perm(cin, groups, "interleaved")):
        return "interleaved"
    return None


def layout_perm(cin: int, groups: int, layout: str) -> Optional[np.ndarray]:
    """The input permutation a :func:`group_layout` stands for (``None`` for ``"blocks"``)."""
    return None if layout == "blocks" else np.arange(cin).reshape(cin // groups, groups).T.reshape(-1)


def group_split(x2, groups, layout):
    k = x2.shape[1] // groups
    if layout == "blocks":
        return [x2[:, h * k:(h + 1) * k] for h in range(groups)]
    return [x2[:, h::groups] for h in range(groups)]


def group_merge(parts, layout):
    """Inverse of :func:`group_split`."""
    if layout == "blocks":
        return jnp.concatenate(parts, axis=1)
    return jnp.stack(parts, axis=-1).reshape(parts[0].shape[0], -1)  # [m, j, h] -> channel j*g + h


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def grouped_pointwise(x2, w2, groups, layout, split, precision=None):
    """Grouped 1x1 on ``x2 (M, C_in)`` with the grouped kernel ``w2 (C_in/g, C_out)`` -> ``(M, C_out)``.

    Forward: one product per group if ``split``, else one product with the block-diagonal weight (rows
    reordered for the interleaved layout). Backward: always per group (``dx`` and ``dW`` of g narrow products
    beat the g-fold dense ones at every ShuffleNet v1 size measured, see ``SPLIT_GROUPS_MIN_BLOCK``).
    """
    cin_g = w2.shape[0]
    if split:
        return jnp.concatenate(grouped_pointwise_parts(x2, w2, groups, layout, precision), axis=1)
    return lax.dot_general(x2, block_diagonal(w2, groups, layout_perm(cin_g * groups, groups, layout)), DOT_NN,
                           precision=precision)


def _grouped_pointwise_fwd(x2, w2, groups, layout, split, precision=None):
    return grouped_pointwise(x2, w2, groups, layout, split, precision), (x2, w2)


def _grouped_pointwise_bwd(groups, layout, split, precision, res, dy):
    n = res[1].shape[1] // groups
    return grouped_pointwise_grads(res, [dy[:, h * n:(h + 1) * n] for h in range(groups)], groups, layout, precision)


def grouped_pointwise_grads(res, dys, groups, layout, precision):
    # dx and dW of a grouped 1x1 from the per-group output gradients: one product each per group.
    x2, w2 = res
    n = w2.shape[1] // groups
    xs = group_split(x2, groups, layout)
    dx = group_merge([lax.dot_general(d, w2[:, h * n:(h + 1) * n], DOT_NT, precision=precision)
                       for h, d in enumerate(dys)], layout)
    dw = jnp.concatenate([lax.dot_general(xh, d, DOT_TN, precision=precision) for xh, d in zip(xs, dys)], axis=1)
    return dx, dw


grouped_pointwise.defvjp(_grouped_pointwise_fwd, _grouped_pointwise_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def grouped_pointwise_parts(x2, w2, groups, layout, precision=None):
    """:func:`grouped_pointwise` with ``split``, returning the g per-group products ``(M, C_out/g)`` as a tuple."""
    n = w2.shape[1] // groups
    return tuple(lax.dot_general(xh, w2[:, h * n:(h + 1) * n], DOT_NN, precision=precision)
                 for h, xh in enumerate(group_split(x2, groups, layout)))


def _grouped_pointwise_parts_fwd(x2, w2, groups, layout, precision=None):
    return grouped_pointwise_parts(x2, w2, groups, layout, precision), (x2, w2)


def _grouped_pointwise_parts_bwd(groups, layout, precision, res, dys):
    return grouped_pointwise_grads(res, list(dys), groups, layout, precision)


grouped_pointwise_parts.defvjp(_grouped_pointwise_parts_fwd, _grouped_pointwise_parts_bwd)
