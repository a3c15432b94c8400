"""The windows a k x k convolution or pooling reads, one per tap, and their transpose.

CPU formulations compute a depthwise convolution, a pooling or an RGB stem as a sum (max) over the ``kh*kw``
shifted windows of the padded input, which XLA:CPU fuses into one loop; strided windows are read as
unit-stride slices of the stride phases (strided slices inside the fusion ran ~3x slower). Gradients go the
other way: :func:`window_transpose` scatters back one polyphase component per stride phase, with no
zero-dilated array (docs/benchmarks.md). :func:`im2col` lays the windows side by side for a
matrix product.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from lightjax.ops.geometry import out_size


def taps(size, k, s, pad, d):
    """Output size and, per tap, the start of its strided window in the padded input."""
    out = out_size(size, k, s, pad, d)
    return out, [i * d for i in range(k)]


def window(xp, hs, ws, ho, wo, stride):
    """The (strided) window of the padded ``xp`` starting at ``(hs, ws)``: ``(N, ho, wo, C)``."""
    n, _, _, c = xp.shape
    return lax.slice(
        xp, (0, hs, ws, 0), (n, hs + (ho - 1) * stride[0] + 1, ws + (wo - 1) * stride[1] + 1, c), (1, *stride, 1)
    )


def tap_windows(x, kh, kw, stride, pads, dilation, pad_value=0):
    """The ``kh*kw`` shifted (strided) windows of ``x`` that a k x k convolution or pooling reads, by tap.

    Returns ``(windows, hstarts, wstarts)``; ``windows(hs, ws)`` is the (N, Ho, Wo, C) slice for the tap whose
    window starts at ``(hs, ws)`` in the input padded with ``pad_value``.
    """
    ho, hstarts = taps(x.shape[1], kh, stride[0], pads[0], dilation[0])
    wo, wstarts = taps(x.shape[2], kw, stride[1], pads[1], dilation[1])
    sh, sw = stride
    if sh == 1 and sw == 1:
        xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=pad_value)
        return (lambda hs, ws: window(xp, hs, ws, ho, wo, stride)), hstarts, wstarts
    # Polyphase: pad to a multiple of the stride and view as (N, H/sh, sh, W/sw, sw, C); every tap is then
    # a unit-stride slice of one phase (strided slices in the fusion ran ~3x slower on XLA:CPU).
    n, h, w, c = x.shape
    hq = max(-(-(h + pads[0][0] + pads[0][1]) // sh), hstarts[-1] // sh + ho)
    wq = max(-(-(w + pads[1][0] + pads[1][1]) // sw), wstarts[-1] // sw + wo)
    xp = jnp.pad(x, ((0, 0), (pads[0][0], hq * sh - h - pads[0][0]), (pads[1][0], wq * sw - w - pads[1][0]), (0, 0)),
                 constant_values=pad_value)
    xr = xp.reshape(n, hq, sh, wq, sw, c)

    def windows(hs, ws):
        a, b = hs // sh, ws // sw
        return lax.slice(xr, (0, a, hs % sh, b, ws % sw, 0), (n, a + ho, hs % sh + 1, b + wo, ws % sw + 1, c)
                         ).reshape(n, ho, wo, c)

    return windows, hstarts, wstarts


def phase_taps(size, out, k, s, pad_lo, d):
    """Polyphase plan of the input gradient along one axis.

    Input position ``u = q * s + p`` receives ``k[i] * dy[q - o]`` from every tap ``i`` with
    ``(p + pad_lo - i * d) % s == 0``, where ``o = (i * d - p - pad_lo) // s``. Returns
    ``(Q, [(p, [(i, o), ...]) ...], lo, hi)`` with ``Q = ceil(size / s)`` rows per phase and the zero
    padding ``(lo, hi)`` of ``dy`` that makes every read in range.
    """
    q = -(-size // s)
    phases, offs = [], []
    for p in range(s):
        taps = [(i, (i * d - p - pad_lo) // s) for i in range(k) if (p + pad_lo - i * d) % s == 0]
        phases.append((p, taps))
        offs += [o for _, o in taps]
    lo = max([0] + offs)
    hi = max([0] + [q - 1 - o - (out - 1) for o in offs])
    return q, phases, lo, hi


def window_transpose(term, x_shape, out_hw, kh, kw, stride, pads, dilation, dtype):
    """Transpose of reading the ``kh*kw`` tap windows of an input of ``x_shape`` (the input gradient of a
    depthwise convolution or a pooling), one polyphase component per stride phase, no zero-dilated array.

    ``term(i, j, read)`` returns tap ``(i, j)``'s contribution on the phase grid; ``read(a, fill=0)`` reads an
    array ``a`` on the output grid (N, Ho, Wo, C) at the offset that tap needs, ``fill`` beyond its edges.
    """
    n, h, w, c = x_shape
    ho, wo = out_hw
    qh, ph_plan, hlo, hhi = phase_taps(h, ho, kh, stride[0], pads[0][0], dilation[0])
    qw, pw_plan, wlo, whi = phase_taps(w, wo, kw, stride[1], pads[1][0], dilation[1])

    def reader(oi, oj):
        def read(a, fill=0):
            ap = jnp.pad(a, ((0, 0), (hlo, hhi), (wlo, whi), (0, 0)), constant_values=fill)
            return lax.slice(ap, (0, hlo - oi, wlo - oj, 0), (n, hlo - oi + qh, wlo - oj + qw, c))
        return read

    rows = []
    for _, htaps in ph_plan:
        cols = []
        for _, wtaps in pw_plan:
            acc = None
            for i, oi in htaps:
                for j, oj in wtaps:
                    t = term(i, j, reader(oi, oj))
                    acc = t if acc is None else acc + t
            cols.append(jnp.zeros((n, qh, qw, c), dtype) if acc is None else acc)
        rows.append(cols)
    sh, sw = stride
    if sh == 1 and sw == 1:
        dx = rows[0][0]
    else:
        dx = jnp.stack([jnp.stack(cols, axis=3) for cols in rows], axis=2)  # (n, qh, sh, qw, sw, c)
        dx = dx.reshape(n, qh * sh, qw * sw, c)
    return dx[:, :h, :w, :]



def im2col(x, kh, kw, stride, pads, dilation):
    """The ``kh*kw`` shifted windows of ``x`` side by side: (N*Ho*Wo, kh*kw*C), plus (Ho, Wo)."""
    ho, hstarts = taps(x.shape[1], kh, stride[0], pads[0], dilation[0])
    wo, wstarts = taps(x.shape[2], kw, stride[1], pads[1], dilation[1])
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    cols = jnp.concatenate([window(xp, hs, ws, ho, wo, stride) for hs in hstarts for ws in wstarts], axis=-1)
    return cols.reshape(x.shape[0] * ho * wo, kh * kw * x.shape[-1]), (ho, wo)
