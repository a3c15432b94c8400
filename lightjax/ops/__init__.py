"""lightjax.ops: how every convolution, pool, shuffle, BatchNorm and hard activation is computed.

The models call only the public functions below; which formulation runs (``"xla"`` on accelerators,
``"cpu"`` on XLA:CPU, ``"export"`` for exporters) is one explicit value chosen in :mod:`lightjax.ops.backend`
(``with ops.formulation("xla"): ...``; ``$LIGHTJAX_CONV_IMPL`` sets the default). One module per concern:

| module | computes |
|---|---|
| ``backend`` | the formulation choice; XLA compile options |
| ``geometry`` | torch-style padding, output sizes, accumulation dtype |
| ``conv`` | :func:`conv2d` (the dispatcher), channel-parts forms, dense / im2col / RGB-stem formulations |
| ``dots`` | 1x1 convolutions as matrix products with a weight-gradient-friendly VJP |
| ``grouped`` | grouped 1x1 (ShuffleNet), block-diagonal weights, channel parts |
| ``depthwise`` | depthwise convolution as shifted multiply-adds, custom VJP |
| ``windows`` | the per-tap windows of a k x k op and their transpose, im2col |
| ``pool`` | max / average / global average pooling |
| ``norm`` | train-mode BatchNorm with its analytic gradient |
| ``shuffle`` | channel shuffle |
| ``act`` | ReLU6, Hardsigmoid, Hardswish |
| ``export`` | the export formulation's named primitives (pools, shuffle, hard activations) |

Every formulation is tested equal to ``"xla"`` (forward and gradients, ``tests/test_ops.py``).
"""

from lightjax.ops.act import hard_sigmoid, hard_swish, relu6  # noqa: F401
from lightjax.ops.backend import (  # noqa: F401
    FORMULATIONS,
    compiler_options,
    conv_impl,
    current_formulation,
    default_formulation,
    formulation,
    init_compiler_options,
    set_conv_impl,
)
from lightjax.ops.conv import conv2d, conv2d_concat, conv2d_parts  # noqa: F401
from lightjax.ops.geometry import Padding, padding_pairs, pool_output_size, to_pairs  # noqa: F401
from lightjax.ops.grouped import concat_parts, regroup  # noqa: F401
from lightjax.ops.norm import batch_norm_train  # noqa: F401
from lightjax.ops.pool import avg_pool2d, global_avg_pool, max_pool2d  # noqa: F401
from lightjax.ops.shuffle import channel_shuffle, shuffle_permutation  # noqa: F401

__all__ = [
    "FORMULATIONS", "Padding", "avg_pool2d", "batch_norm_train", "channel_shuffle", "compiler_options",
    "concat_parts", "conv2d", "conv2d_concat", "conv2d_parts", "conv_impl", "current_formulation",
    "default_formulation", "formulation", "global_avg_pool", "hard_sigmoid", "hard_swish",
    "init_compiler_options", "max_pool2d", "padding_pairs", "pool_output_size", "regroup", "relu6",
    "set_conv_impl", "shuffle_permutation", "to_pairs",
]
