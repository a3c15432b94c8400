"""ShuffleNet v2 (x0.5 / x1.0 / x1.5 / x2.0), torchvision's definition.

Paper: "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design", Ma, Zhang, Zheng, Sun,
2018 (https://arxiv.org/abs/1807.11164). Reference code: torchvision ``shufflenet_v2_x0_5 .. x2_0``
(``torchvision/models/shufflenetv2.py``, weights ported from ericsun99/Shufflenet-v2-Pytorch). Its block is
channel split (``chunk(2)``) → branch → concat → ``channel_shuffle(x, 2)`` in the ``(N, g, C/g, H, W)``
transpose order; megvii's official V2 code fuses the shuffle into an even/odd split instead, so its
checkpoints need a different block (not provided here).

Flax paths mirror the PyTorch keys (index segments joined to their parent with ``_``):

| PyTorch                                  | Flax                                  |
|------------------------------------------|---------------------------------------|
| ``conv1.0.weight`` / ``conv1.1.*``        | ``conv1_0/kernel`` / ``conv1_1/*``    |
| ``stage2.0.branch1.0.weight``            | ``stage2_0/branch1_0/kernel``         |
| ``stage3.4.branch2.4.running_var``       | ``batch_stats/stage3_4/branch2_4/var`` |
| ``conv5.0.weight`` / ``fc.weight``        | ``conv5_0/kernel`` / ``fc/kernel``    |
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lightjax import ops
from lightjax.models import layers
from lightjax.models.base import ModelBase
from lightjax.models.registry import variant

# ----------------------------------------------------------------------------------------------------------
# Architecture (torchvision): blocks per stage (stage2..4; the first of each has stride 2) and
# ``stages_out_channels`` = (conv1, stage2, stage3, stage4, conv5), keyed by the width multiplier.
# ----------------------------------------------------------------------------------------------------------
STAGE_REPEATS: Tuple[int, int, int] = (4, 8, 4)
STAGE_OUT_CHANNELS: Dict[float, Tuple[int, int, int, int, int]] = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}
#: Feature levels: conv1 (stride 2), maxpool (4), stage2 (8), stage3 (16), conv5 (32).
LEVEL_STRIDES: Tuple[int, ...] = (2, 4, 8, 16, 32)


def stage_channels(width: float, model: str = "ShuffleNetV2") -> Tuple[int, int, int, int, int]:
    """``stages_out_channels`` for ``width``; a clear error for a width torchvision does not define."""
    try:
        return STAGE_OUT_CHANNELS[float(width)]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{model}: width must be one of {sorted(STAGE_OUT_CHANNELS)}, got {width!r}") from None


def level_channels(width: float) -> Tuple[int, ...]:
    c = stage_channels(width)
    return (c[0], c[0], c[1], c[2], c[4])


# ----------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------
class InvertedResidual(nn.Module):
    """torchvision's ShuffleNetV2 unit.

    stride 1: split channels in halves ``x1, x2``; ``out = concat(x1, branch2(x2))``.
    stride 2: ``out = concat(branch1(x), branch2(x))`` (both halves downsample; channels double).
    Then ``channel_shuffle(out, 2)``.

    ``branch1`` = dw3x3(s) → BN → 1x1 → BN → ReLU (torch indices 0..4);
    ``branch2`` = 1x1 → BN → ReLU → dw3x3(s) → BN → 1x1 → BN → ReLU (torch indices 0..7).
    The depthwise convs carry no activation, as in the paper and torchvision.
    """

    inp: int
    oup: int
    stride: int
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32

    def _conv(self, features: int, kernel: int, stride: int, groups: int, name: str) -> layers.Conv2d:
        # torchvision keeps PyTorch's default init for ShuffleNetV2 (kaiming-uniform a=sqrt(5), no bias).
        return layers.Conv2d(features, kernel, stride, (kernel - 1) // 2, groups=groups, use_bias=False,
                             dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=layers.torch_default_init,
                             name=name)

    def _bn(self, name: str) -> layers.BatchNorm:
        return layers.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.stride not in (1, 2, 3):
            raise ValueError(f"{self.name}: illegal stride {self.stride} (torchvision allows 1..3)")
        bf = self.oup // 2
        if self.stride == 1 and self.inp != bf * 2:
            raise ValueError(f"{self.name}: stride 1 needs inp == 2 * (oup // 2), got inp={self.inp}, oup={self.oup}")
        if x.shape[-1] != self.inp:
            raise ValueError(f"{self.name}: expected {self.inp} input channels, got {x.shape[-1]}")
        ura = not train
        if self.stride == 1:
            x1, x2 = jnp.split(x, 2, axis=-1)  # torch ``x.chunk(2, dim=1)``: first half passes through
        else:
            x1 = self._conv(self.inp, 3, self.stride, self.inp, "branch1_0")(x)
            x1 = self._bn("branch1_1")(x1, use_running_average=ura)
            x1 = self._conv(bf, 1, 1, 1, "branch1_2")(x1)
            x1 = nn.relu(self._bn("branch1_3")(x1, use_running_average=ura))
            x2 = x
        y = self._conv(bf, 1, 1, 1, "branch2_0")(x2)
        y = nn.relu(self._bn("branch2_1")(y, use_running_average=ura))
        y = self._conv(bf, 3, self.stride, bf, "branch2_3")(y)
        y = self._bn("branch2_4")(y, use_running_average=ura)
        y = self._conv(bf, 1, 1, 1, "branch2_5")(y)
        y = nn.relu(self._bn("branch2_6")(y, use_running_average=ura))
        return ops.channel_shuffle(jnp.concatenate([x1, y], axis=-1), 2)


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------
class ShuffleNetV2(ModelBase):
    """ShuffleNetV2: conv1 (3x3/2, BN, ReLU) → maxpool 3/2 pad 1 → stage2..4 → conv5 (1x1, BN, ReLU) →
    mean over H, W → fc.

    Attributes:
      width: 0.5, 1.0, 1.5 or 2.0 (selects ``stages_out_channels``).
      num_classes: classes; 0 returns the pooled conv5 features (1024-d, 2048-d for x2.0).
      drop_rate: dropout before ``fc`` (torchvision has none: default 0.0).
      features_only: maps after conv1 (stride 2), maxpool (4), stage2 (8), stage3 (16), conv5 (32).
    """

    width: float = 1.0

    @property
    def model_name(self) -> str:
        """Registry-style name for error messages (``shufflenet_v2_x1_0``)."""
        return f"shufflenet_v2_x{str(float(self.width)).replace('.', '_')}"

    def check_family_fields(self) -> None:
        stage_channels(self.width, "ShuffleNetV2")

    def feature_levels(self):
        return level_channels(self.width), LEVEL_STRIDES

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        """Args: x: ``(N, H, W, in_chans)``; train: BatchNorm batch statistics and dropout.

        Returns logits ``(N, num_classes)`` float32, or a list of NHWC maps when ``features_only``.
        """
        name = self.model_name
        self.check_input(x)
        chans = stage_channels(self.width, name)
        bn = lambda n: layers.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype,  # noqa: E731
                                        param_dtype=self.param_dtype, name=n)
        conv = lambda f, k, s, n: layers.Conv2d(  # noqa: E731
            f, k, s, (k - 1) // 2, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=layers.torch_default_init, name=n)

        feats = []
        x = conv(chans[0], 3, 2, "conv1_0")(x)
        x = nn.relu(bn("conv1_1")(x, use_running_average=not train))
        feats.append(x)
        x = ops.max_pool2d(x, 3, 2, padding=1)
        feats.append(x)
        inp = chans[0]
        for s, (repeats, oup) in enumerate(zip(STAGE_REPEATS, chans[1:4]), start=2):
            for i in range(repeats):
                x = InvertedResidual(inp, oup, 2 if i == 0 else 1, self.dtype, self.param_dtype,
                                     name=f"stage{s}_{i}")(x, train)
                inp = oup
            if s < 4:  # stage4's level is taken after conv5, at the end of the network
                feats.append(x)
        x = conv(chans[4], 1, 1, "conv5_0")(x)
        x = nn.relu(bn("conv5_1")(x, use_running_average=not train))
        feats.append(x)
        if self.features_only:
            return self.select_features(feats)
        # torch ``x.mean([2, 3])`` → fc
        return layers.classifier_head(x, self.num_classes, self.drop_rate, train, name="fc", dtype=self.dtype,
                                      param_dtype=self.param_dtype)


# ----------------------------------------------------------------------------------------------------------
# Pretrained weights (data: lightjax.pretrained registers each row; fields in docs/pretrained.md)
# ----------------------------------------------------------------------------------------------------------
from lightjax.models._pretrained_defaults import TV, TV_URL  # noqa: E402

PRETRAINED_CFGS: Dict[str, Dict[str, Any]] = {
    "shufflenet_v2_x0_5.tv_in1k": dict(TV, url=TV_URL + "shufflenetv2_x0.5-f707e7126e.pth", sha256="f707e7126e",
                                       resize_size=256, top1=60.552, top5=81.746,
                                       source="torchvision ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1"),
    "shufflenet_v2_x1_0.tv_in1k": dict(TV, url=TV_URL + "shufflenetv2_x1-5666bf0f80.pth", sha256="5666bf0f80",
                                       resize_size=256, top1=69.362, top5=88.316,
                                       source="torchvision ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1"),
    "shufflenet_v2_x1_5.tv_in1k": dict(TV, url=TV_URL + "shufflenetv2_x1_5-3c479a10.pth", sha256="3c479a10",
                                       resize_size=232, top1=72.996, top5=91.086,
                                       source="torchvision ShuffleNet_V2_X1_5_Weights.IMAGENET1K_V1"),
    "shufflenet_v2_x2_0.tv_in1k": dict(TV, url=TV_URL + "shufflenetv2_x2_0-8be3c8ee.pth", sha256="8be3c8ee",
                                       resize_size=232, top1=76.230, top5=93.006,
                                       source="torchvision ShuffleNet_V2_X2_0_Weights.IMAGENET1K_V1"),
}


# ----------------------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------------------
@variant(ShuffleNetV2, input_size=224, info={"reference": "torchvision shufflenet_v2_x0_5"}, width=0.5)
def shufflenet_v2_x0_5(**kwargs):
    """ShuffleNetV2 0.5x (torchvision ``shufflenet_v2_x0_5``, 1,366,792 params)."""


@variant(ShuffleNetV2, input_size=224, info={"reference": "torchvision shufflenet_v2_x1_0"}, width=1.0)
def shufflenet_v2_x1_0(**kwargs):
    """ShuffleNetV2 1.0x (torchvision ``shufflenet_v2_x1_0``, 2,278,604 params)."""


@variant(ShuffleNetV2, input_size=224, info={"reference": "torchvision shufflenet_v2_x1_5"}, width=1.5)
def shufflenet_v2_x1_5(**kwargs):
    """ShuffleNetV2 1.5x (torchvision ``shufflenet_v2_x1_5``, 3,503,624 params)."""


@variant(ShuffleNetV2, input_size=224, info={"reference": "torchvision shufflenet_v2_x2_0"}, width=2.0)
def shufflenet_v2_x2_0(**kwargs):
    """ShuffleNetV2 2.0x (torchvision ``shufflenet_v2_x2_0``, 7,393,996 params)."""
