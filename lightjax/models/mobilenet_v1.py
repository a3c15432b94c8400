"""MobileNet v1.

Paper: "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications", Howard et al.,
2017 (https://arxiv.org/abs/1704.04861). Reference code: the seed article's ``MobileNet`` (conv_bn stem +
13 ``conv_dw`` depthwise-separable blocks, ReLU, AvgPool2d(7), Linear(1024, 1000)) and timm
``mobilenetv1_100`` (same layers and shapes, but ReLU6; see below).

Flax paths mirror the seed's keys: ``model.0.0.weight`` (stem conv) ↔ ``params/model_0/0/kernel``,
``model.0.1.*`` (stem BN) ↔ ``model_0/1``; in block ``i`` (1..13) ``model.i.0`` (depthwise 3x3) ↔
``model_i/0``, ``model.i.1`` (BN) ↔ ``model_i/1``, ``model.i.3`` (pointwise 1x1) ↔ ``model_i/3``, ``model.i.4``
(BN) ↔ ``model_i/4``; ``fc.*`` ↔ ``fc``.

Seed vs timm ``mobilenetv1_100`` (both 4,231,976 parameters, identical parameter shapes):
  * activation: the seed (and the paper) use ReLU, timm uses ReLU6. This is the model field ``act``:
    ``"relu"`` (default, the seed) or ``"relu6"`` (pass ``act="relu6"`` to ``create_model`` *and*
    ``convert.from_torch`` for timm checkpoints: the weights load either way, only the numerics tell).
  * pooling: the seed's ``AvgPool2d(7)`` + ``view(-1, 1024)`` only works at 224 px, where it equals the
    global average pool timm (and lightjax) use at every size.
  * init: the seed uses PyTorch's defaults (kept here); timm uses its TF-style init. Only training from
    scratch sees this.
  * timm's default ``drop_rate`` is 0 as the seed has no dropout; ``drop_rate`` defaults to 0 here.

Width multiplier: channels are ``make_divisible(c * width, 8)`` (timm's ``round_channels``; the paper /
TF-slim use ``max(int(c * width), 8)``). For the registered widths 1.0, 0.75, 0.5 and 0.25 every channel count
is a multiple of 8 under both rules, so the two agree exactly (e.g. 0.25: 8, 16, 32, 64, 128, 256).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lightjax.models import layers
from lightjax.models.base import ModelBase, width_tag as _width_tag
from lightjax.models.registry import variant

# ----------------------------------------------------------------------------------------------------------
# Architecture. Stem: conv_bn(3, 32, stride 2). Then stages of depthwise-separable blocks as timm's arch_def
# (out_channels, repeats, first_stride); flattened in order they are the seed's model.1 .. model.13.
# ----------------------------------------------------------------------------------------------------------
STEM_CHANNELS = 32
STAGES: Tuple[Tuple[int, int, int], ...] = (
    (64, 1, 1),
    (128, 2, 2),
    (256, 2, 2),
    (512, 6, 2),
    (1024, 2, 2),
)
FEATURE_STRIDES = (2, 4, 8, 16, 32)


round_channels = layers.round_channels  # timm's rule (see the module docstring)


def block_specs(width: float = 1.0) -> List[Tuple[int, int, int, int, int, int]]:
    """``(seed_index, stage, index_in_stage, in_channels, out_channels, stride)`` of the 13 blocks."""
    cin = round_channels(STEM_CHANNELS, width)
    specs, idx = [], 1
    for stage, (c, n, s) in enumerate(STAGES):
        cout = round_channels(c, width)
        for j in range(n):
            specs.append((idx, stage, j, cin, cout, s if j == 0 else 1))
            cin, idx = cout, idx + 1
    return specs


def level_channels(width: float = 1.0) -> Tuple[int, ...]:
    """Channels at the end of each stride level (each stage of ``STAGES`` ends one level)."""
    return tuple(round_channels(c, width) for c, _, _ in STAGES)


# ----------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------
class DepthwiseSeparable(nn.Module):
    """The seed's ``conv_dw``: depthwise 3x3 (pad 1) → BN → act → pointwise 1x1 → BN → act; no residual.

    Children carry the seed's Sequential indices: ``0`` dw conv, ``1`` BN, ``3`` pw conv, ``4`` BN
    (2 and 5 are the parameter-free ReLUs).
    """

    features: int
    stride: int = 1
    act: str = "relu"
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        cin = x.shape[-1]
        act = layers.get_act(self.act)
        common = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                      kernel_init=layers.torch_default_init)
        bn = lambda name: layers.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype,  # noqa: E731
                                           param_dtype=self.param_dtype, name=name)
        x = layers.Conv2d(cin, 3, self.stride, 1, groups=cin, name="0", **common)(x)
        x = act(bn("1")(x, use_running_average=not train))
        x = layers.Conv2d(self.features, 1, 1, 0, name="3", **common)(x)
        return act(bn("4")(x, use_running_average=not train))


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------
class MobileNetV1(ModelBase):
    """MobileNet v1: stem → 13 depthwise-separable blocks → global average pool → (Dropout) → Linear ``fc``.

    Attributes:
      width: width multiplier (1.0, 0.75, 0.5, 0.25 registered).
      act: ``"relu"`` (seed / paper) or ``"relu6"`` (timm ``mobilenetv1_*`` checkpoints).
      num_classes: classes; 0 returns the pooled features ``(N, round(1024 * width))``.
      drop_rate: dropout before ``fc`` (0: the seed and timm have none).
      features_only: return the maps at strides 2, 4, 8, 16, 32 selected by ``out_indices``.
    """

    width: float = 1.0
    act: str = "relu"

    @property
    def model_name(self) -> str:
        return f"mobilenet_v1_{_width_tag(self.width)}"

    def feature_levels(self):
        return level_channels(self.width), FEATURE_STRIDES

    def check_family_fields(self) -> None:
        if not self.width > 0:
            raise ValueError(f"{self.model_name}: width must be > 0, got {self.width!r}")
        if self.act not in ("relu", "relu6"):
            raise ValueError(f"{self.model_name}: act must be 'relu' (seed) or 'relu6' (timm), got {self.act!r}")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        """Args: x: ``(N, H, W, in_chans)``; train: batch statistics and dropout. Returns float32 logits."""
        self.check_input(x)
        x = layers.ConvBnAct(round_channels(STEM_CHANNELS, self.width), 3, 2, 1, act=self.act,
                             conv_name="0", bn_name="1", dtype=self.dtype, param_dtype=self.param_dtype,
                             kernel_init=layers.torch_default_init, name="model_0")(x, train)
        specs = block_specs(self.width)
        feats = []
        for k, (idx, stage, _, _, cout, stride) in enumerate(specs):
            x = DepthwiseSeparable(cout, stride, self.act, self.dtype, self.param_dtype, name=f"model_{idx}")(x, train)
            if k + 1 == len(specs) or specs[k + 1][1] != stage:  # last block of a stage ends a stride level
                feats.append(x)
        if self.features_only:
            return self.select_features(feats)
        # The global mean == the seed's AvgPool2d(7) at 224 px.
        return layers.classifier_head(x, self.num_classes, self.drop_rate, train, name="fc", dtype=self.dtype,
                                      param_dtype=self.param_dtype)


# ----------------------------------------------------------------------------------------------------------
# Pretrained weights (data: lightjax.pretrained registers each row; fields in docs/pretrained.md)
# ----------------------------------------------------------------------------------------------------------
from lightjax.models._pretrained_defaults import INCEPTION_MEAN, INCEPTION_STD, TIMM  # noqa: E402

PRETRAINED_CFGS: Dict[str, Dict[str, Any]] = {
    # timm's MobileNetV1 uses ReLU6 (its key layout requires act="relu6").
    "mobilenet_v1_100.ra4_e3600_r224_in1k": dict(
        TIMM, hf_hub_id="timm/mobilenetv1_100.ra4_e3600_r224_in1k", model_kwargs={"act": "relu6"}, mean=INCEPTION_MEAN,
        std=INCEPTION_STD, test_crop_size=256, test_crop_pct=0.95, top1=75.388, top5=92.310, test_top1=76.088,
        test_top5=93.006, source="timm mobilenetv1_100.ra4_e3600_r224_in1k"),
}


# ----------------------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------------------
_INFO = "seed MobileNet (== timm mobilenetv1_100 with act='relu6')"


@variant(MobileNetV1, input_size=224, info={"reference": _INFO}, width=1.0)
def mobilenet_v1_100(**kwargs):
    """MobileNet v1 1.0 (seed ``MobileNet``; timm ``mobilenetv1_100`` with ``act='relu6'``), 4,231,976 params."""


@variant(MobileNetV1, input_size=224, info={"reference": "paper, width 0.75"}, width=0.75)
def mobilenet_v1_075(**kwargs):
    """MobileNet v1 0.75 (paper: 2.6M params; 2,585,560 as built here and by timm's generator)."""


@variant(MobileNetV1, input_size=224, info={"reference": "paper, width 0.5"}, width=0.5)
def mobilenet_v1_050(**kwargs):
    """MobileNet v1 0.5 (paper: 1.3M params; 1,331,592 as built here and by timm's generator)."""


@variant(MobileNetV1, input_size=224, info={"reference": "paper, width 0.25"}, width=0.25)
def mobilenet_v1_025(**kwargs):
    """MobileNet v1 0.25 (paper: 0.5M params; 470,072 as built here and by timm's generator)."""
