"""The CPU formulation's matrix product for 1x1 convolutions, with the weight gradient XLA:CPU is fast at.

A 1x1 convolution on ``(N*H*W, C_in)`` is one ``dot_general``; as ``lax.conv`` it ran 2.5-4x slower on
XLA:CPU. Autodiff of that dot made XLA transpose whole activations for the weight gradient (one 64x401,408
transpose: 327 ms), so the custom VJP contracts the flattened ``N*H*W`` axis of ``x`` and ``dy`` directly
(112²x32->64 layer gradient ~1,009 -> ~250 ms; docs/benchmarks.md).
"""

from __future__ import annotations

import functools

import jax
from jax import lax

#: ``dot_general`` dimension numbers: x @ w, x @ w.T, and x.T @ y over the flattened N*H*W axis.
DOT_NN = (((1,), (0,)), ((), ()))
DOT_NT = (((1,), (1,)), ((), ()))
DOT_TN = (((0,), (0,)), ((), ()))  # contract the flattened N*H*W axis of both operands


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def pointwise(x2, w2, precision=None):
    """``x2 (M, C_in) @ w2 (C_in, C_out)`` with the weight-gradient-friendly VJP."""
    return lax.dot_general(x2, w2, DOT_NN, precision=precision)


def _pointwise_fwd(x2, w2, precision=None):
    return pointwise(x2, w2, precision), (x2, w2)


def pointwise_bwd(precision, res, dy):
    """Backward of :func:`pointwise` (reused by the im2col convolution's backward): ``(dx, dw)``."""
    x2, w2 = res
    dx = lax.dot_general(dy, w2, DOT_NT, precision=precision)
    # Contract the flattened N*H*W axis of both operands directly: (C_in, C_out), no activation transpose.
    dw = lax.dot_general(x2, dy, DOT_TN, precision=precision)
    return dx, dw


pointwise.defvjp(_pointwise_fwd, pointwise_bwd)
