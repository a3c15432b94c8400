"""PyTorch's piecewise-linear activations (ReLU6, Hardsigmoid, Hardswish).

Computed as clips on every formulation; under the export formulation ``hard_sigmoid``/``hard_swish`` are named
primitives (:mod:`lightjax.ops.export`) that an exporter lowers to ONNX ``HardSigmoid``/``HardSwish``
(otherwise the graph holds the Add/Clip/Div/Mul they are made of).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lightjax.ops import backend


def relu6(x: jax.Array) -> jax.Array:
    """``torch.nn.ReLU6``: min(max(x, 0), 6)."""
    return jnp.clip(x, 0, 6)


def hard_sigmoid(x: jax.Array) -> jax.Array:
    """``torch.nn.Hardsigmoid``: relu6(x + 3) / 6."""
    if backend.is_export():
        from lightjax.ops import export

        return export.hard_sigmoid(x)
    return relu6(x + 3.0) / 6.0


def hard_swish(x: jax.Array) -> jax.Array:
    """``torch.nn.Hardswish``: x * relu6(x + 3) / 6."""
    if backend.is_export():
        from lightjax.ops import export

        return export.hard_swish(x)
    return x * (relu6(x + 3.0) / 6.0)
