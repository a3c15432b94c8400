"""MobileNet v2.

Paper: "MobileNetV2: Inverted Residuals and Linear Bottlenecks", Sandler et al., 2018
(https://arxiv.org/abs/1801.04381). Reference code: torchvision ``mobilenet_v2(width_mult=...)`` (weights for
1.0) and timm ``mobilenetv2_050/075/100/140`` (same architecture and channel rounding at these widths, keys
differ; see :mod:`lightjax.convert.mobilenet_v2`).

Flax paths mirror torchvision's keys: ``features.0.0`` (stem conv) ↔ ``params/features_0/0``,
``features.0.1`` ↔ ``features_0/1``; an inverted residual ``features.i`` with expansion has
``conv.0.{0,1}`` (1x1 expand conv/BN) ↔ ``features_i/conv_0/{0,1}``, ``conv.1.{0,1}`` (depthwise) ↔
``conv_1/{0,1}``, ``conv.2`` (1x1 linear projection) ↔ ``conv_2``, ``conv.3`` (BN) ↔ ``conv_3``; the first block
(expansion 1) has ``conv.0`` depthwise, ``conv.1`` projection, ``conv.2`` BN. ``features.18.{0,1}`` is the 1x1
head conv (1280 channels, ``1280 * width`` for width > 1), ``classifier.1`` the Linear after Dropout(0.2).

``output_stride`` (8, 16, 32) follows timm's EfficientNet builder (and DeepLab): once a block's stride would
take the network past ``output_stride``, that block gets stride 1 (keeping the current dilation) and every
later depthwise conv is dilated by the skipped factor, with padding = dilation.

``features_only`` levels are the ends of the stride stages, as timm's ``feature_info``: 16, 24, 32, 96, 320
channels (x width) at strides 2, 4, 8, 16, 32 (capped at ``output_stride``); the 1x1 head conv is not built.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lightjax.models import layers
from lightjax.models.base import ModelBase, width_tag
from lightjax.models.registry import variant

# ----------------------------------------------------------------------------------------------------------
# Architecture (torchvision's inverted_residual_setting; timm's arch_def stages are the same rows):
#   (expand_ratio t, out_channels c, repeats n, first_stride s)
# ----------------------------------------------------------------------------------------------------------
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
SETTING: Tuple[Tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
OUTPUT_STRIDES = (8, 16, 32)


class BlockSpec(NamedTuple):
    """One inverted residual: torchvision index ``features.{index}``, timm ``blocks.{stage}.{pos}``."""

    index: int
    stage: int
    pos: int
    in_channels: int
    out_channels: int
    expand_ratio: int
    stride: int
    dilation: int
    level: int  # stride level (0..4) the block belongs to; the last block of a level ends it


round_channels = layers.round_channels  # torchvision ``_make_divisible(c * width_mult, 8)`` == timm's


def head_channels(width: float) -> int:
    """torchvision: ``_make_divisible(1280 * max(1.0, width))``; timm: ``max(1280, round(1280 * width))``."""
    return round_channels(HEAD_CHANNELS, max(1.0, width))


def block_specs(width: float = 1.0, output_stride: int = 32) -> List[BlockSpec]:
    """The 17 inverted residuals with strides and dilations for ``output_stride`` (timm's rule)."""
    cin = round_channels(STEM_CHANNELS, width)
    specs: List[BlockSpec] = []
    current_stride, dilation, level, idx = 2, 1, 0, 1  # the stem has stride 2
    for stage, (t, c, n, s) in enumerate(SETTING):
        cout = round_channels(c, width)
        for pos in range(n):
            stride = s if pos == 0 else 1
            next_dilation = dilation
            if stride > 1:
                level += 1
                if current_stride * stride > output_stride:
                    next_dilation, stride = dilation * stride, 1
                else:
                    current_stride *= stride
            specs.append(BlockSpec(idx, stage, pos, cin, cout, t, stride, dilation, level))
            dilation = next_dilation
            cin, idx = cout, idx + 1
    return specs


def level_channels(width: float = 1.0) -> Tuple[int, ...]:
    """Output channels of the last block of each stride level (16, 24, 32, 96, 320 at width 1)."""
    specs = block_specs(width)
    return tuple(specs[k].out_channels for k in range(len(specs)) if k + 1 == len(specs)
                 or specs[k + 1].level != specs[k].level)


# ----------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------
class InvertedResidual(nn.Module):
    """torchvision ``InvertedResidual``: [1x1 expand → BN → ReLU6] → dw 3x3 → BN → ReLU6 → 1x1 → BN (+ x).

    The residual is added when ``stride == 1`` and ``in == out`` (torchvision; timm tests the stride after
    ``output_stride`` is applied, which is the same here: every nominally strided block changes channels).
    """

    features: int
    expand_ratio: int
    stride: int = 1
    dilation: int = 1
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        cin = x.shape[-1]
        hidden = int(round(cin * self.expand_ratio))
        cba = dict(act="relu6", conv_name="0", bn_name="1", dtype=self.dtype, param_dtype=self.param_dtype)
        y, i = x, 0
        if self.expand_ratio != 1:
            y = layers.ConvBnAct(hidden, 1, 1, 0, name="conv_0", **cba)(y, train)
            i = 1
        y = layers.ConvBnAct(hidden, 3, self.stride, self.dilation, self.dilation, groups=hidden,
                             name=f"conv_{i}", **cba)(y, train)
        y = layers.Conv2d(self.features, 1, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                          kernel_init=layers.kaiming_normal_fan_out, name=f"conv_{i + 1}")(y)
        y = layers.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype,
                             name=f"conv_{i + 2}")(y, use_running_average=not train)
        if self.stride == 1 and cin == self.features:
            y = x + y
        return y


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------
class MobileNetV2(ModelBase):
    """MobileNet v2: stem → 17 inverted residuals → 1x1 head conv → global average pool → Dropout → Linear.

    Attributes:
      width: width multiplier (torchvision ``width_mult``; 0.5, 0.75, 1.0, 1.4 registered).
      output_stride: 32 (classification), 16 or 8 (dilated, for dense prediction).
      num_classes: classes; 0 returns the pooled head features ``(N, 1280)`` (``1280 * width`` if width > 1).
      drop_rate: dropout before the classifier (torchvision's 0.2).
      features_only: return the maps at strides 2, 4, 8, 16, 32 selected by ``out_indices``.
    """

    width: float = 1.0
    output_stride: int = 32
    drop_rate: float = 0.2

    @property
    def model_name(self) -> str:
        return f"mobilenet_v2_{width_tag(self.width)}"

    def check_family_fields(self) -> None:
        if not self.width > 0:
            raise ValueError(f"{self.model_name}: width must be > 0, got {self.width!r}")
        if self.output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"{self.model_name}: output_stride must be one of {OUTPUT_STRIDES}, "
                             f"got {self.output_stride!r}")

    def feature_levels(self):
        return level_channels(self.width), tuple(min(s, self.output_stride) for s in (2, 4, 8, 16, 32))

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        """Args: x: ``(N, H, W, in_chans)``; train: batch statistics and dropout. Returns float32 logits."""
        self.check_input(x)
        cba = dict(act="relu6", conv_name="0", bn_name="1", dtype=self.dtype, param_dtype=self.param_dtype)
        x = layers.ConvBnAct(round_channels(STEM_CHANNELS, self.width), 3, 2, 1, name="features_0", **cba)(x, train)
        specs = block_specs(self.width, self.output_stride)
        feats = []
        for k, b in enumerate(specs):
            x = InvertedResidual(b.out_channels, b.expand_ratio, b.stride, b.dilation, self.dtype,
                                 self.param_dtype, name=f"features_{b.index}")(x, train)
            if k + 1 == len(specs) or specs[k + 1].level != b.level:
                feats.append(x)
        if self.features_only:
            return self.select_features(feats)
        x = layers.ConvBnAct(head_channels(self.width), 1, 1, 0, name=f"features_{len(specs) + 1}", **cba)(x, train)
        return layers.classifier_head(x, self.num_classes, self.drop_rate, train, name="classifier_1",
                                      dtype=self.dtype, param_dtype=self.param_dtype,
                                      kernel_init=layers.normal_init(0.01), bias_init=nn.initializers.zeros)


# ----------------------------------------------------------------------------------------------------------
# Pretrained weights (data: lightjax.pretrained registers each row; fields in docs/pretrained.md)
# ----------------------------------------------------------------------------------------------------------
from lightjax.models._pretrained_defaults import TIMM, TIMM_URL, TV, TV_URL  # noqa: E402

PRETRAINED_CFGS: Dict[str, Dict[str, Any]] = {
    "mobilenet_v2_100.tv_in1k": dict(TV, url=TV_URL + "mobilenet_v2-b0353104.pth", sha256="b0353104", resize_size=256,
                                     top1=71.878, top5=90.286, source="torchvision MobileNet_V2_Weights.IMAGENET1K_V1"),
    "mobilenet_v2_100.tv2_in1k": dict(TV, url=TV_URL + "mobilenet_v2-7ebf99e0.pth", sha256="7ebf99e0", resize_size=232,
                                      top1=72.154, top5=90.822,
                                      source="torchvision MobileNet_V2_Weights.IMAGENET1K_V2"),
    "mobilenet_v2_050.lamb_in1k": dict(TIMM, hf_hub_id="timm/mobilenetv2_050.lamb_in1k", sha256="3d30d450",
                                       url=TIMM_URL + "v0.1-weights/mobilenetv2_050-3d30d450.pth",
                                       top1=65.928, top5=86.114, source="timm mobilenetv2_050.lamb_in1k"),
    "mobilenet_v2_100.ra_in1k": dict(TIMM, hf_hub_id="timm/mobilenetv2_100.ra_in1k", sha256="b33bc2c4",
                                     url=TIMM_URL + "v0.1-weights/mobilenetv2_100_ra-b33bc2c4.pth",
                                     top1=72.910, top5=91.000, source="timm mobilenetv2_100.ra_in1k"),
    "mobilenet_v2_140.ra_in1k": dict(TIMM, hf_hub_id="timm/mobilenetv2_140.ra_in1k", sha256="21a4e913",
                                     url=TIMM_URL + "v0.1-weights/mobilenetv2_140_ra-21a4e913.pth",
                                     top1=76.528, top5=93.008, source="timm mobilenetv2_140.ra_in1k"),
}


# ----------------------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------------------
@variant(MobileNetV2, input_size=224, info={"reference": "torchvision mobilenet_v2 / timm mobilenetv2_100"},
         width=1.0)
def mobilenet_v2_100(**kwargs):
    """MobileNet v2 1.0 (torchvision ``mobilenet_v2``, timm ``mobilenetv2_100``), 3,504,872 params."""


@variant(MobileNetV2, input_size=224, info={"reference": "torchvision mobilenet_v2(width_mult=0.5) / timm "
                                            "mobilenetv2_050"}, width=0.5)
def mobilenet_v2_050(**kwargs):
    """MobileNet v2 0.5 (torchvision ``mobilenet_v2(width_mult=0.5)``, timm ``mobilenetv2_050``), 1,968,680 params."""


@variant(MobileNetV2, input_size=224, info={"reference": "torchvision mobilenet_v2(width_mult=0.75) / timm "
                                            "mobilenetv2_075"}, width=0.75)
def mobilenet_v2_075(**kwargs):
    """MobileNet v2 0.75 (torchvision ``mobilenet_v2(width_mult=0.75)``, timm ``mobilenetv2_075``), 2,636,424 params."""


@variant(MobileNetV2, input_size=224, info={"reference": "torchvision mobilenet_v2(width_mult=1.4) / timm "
                                            "mobilenetv2_140"}, width=1.4)
def mobilenet_v2_140(**kwargs):
    """MobileNet v2 1.4 (torchvision ``mobilenet_v2(width_mult=1.4)``, timm ``mobilenetv2_140``), 6,108,776 params."""
