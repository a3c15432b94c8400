"""MobileNet v3 (Large / Small), torchvision's definition.

Paper: "Searching for MobileNetV3", Howard, Sandler, Chu, Chen, Chen, Tan, Wang, Zhu, Pang, Vasudevan, Le,
Adam, 2019 (https://arxiv.org/abs/1905.02244). Reference code: torchvision ``mobilenet_v3_large`` /
``mobilenet_v3_small`` (``torchvision/models/mobilenetv3.py``), including its ``dilated=True`` option
(stride 16, used by torchvision's LR-ASPP / DeepLabv3 heads), generalised here to ``output_stride`` 8/16/32.

Flax paths mirror the PyTorch keys (index segments joined to their parent with ``_``):

| PyTorch                                   | Flax                                   |
|-------------------------------------------|----------------------------------------|
| ``features.0.0.weight`` / ``features.0.1`` | ``features_0/0/kernel`` / ``features_0/1`` |
| ``features.4.block.0.0.weight``           | ``features_4/block_0/0/kernel``        |
| ``features.4.block.2.fc1.weight``         | ``features_4/block_2/fc1/kernel``      |
| ``features.16.0.weight``                  | ``features_16/0/kernel``               |
| ``classifier.0.weight`` / ``classifier.3`` | ``classifier_0/kernel`` / ``classifier_3`` |
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lightjax import ops
from lightjax.models import layers
from lightjax.models.base import ModelBase, width_tag
from lightjax.models.registry import variant


# ----------------------------------------------------------------------------------------------------------
# Architecture (torchvision ``_mobilenet_v3_conf``, Tables 1 and 2 of the paper), at width 1.0.
# One row per ``InvertedResidual``: (kernel, expanded, out, use_se, activation, stride, dilation).
# activation: "RE" = ReLU, "HS" = Hardswish. The dilation column is torchvision's (1 unless ``dilated``);
# ``output_stride`` multiplies it (see :func:`block_configs`).
# ----------------------------------------------------------------------------------------------------------
class Bneck(NamedTuple):
    kernel: int
    expanded: int
    out: int
    use_se: bool
    activation: str
    stride: int
    dilation: int


ARCH: Dict[str, Dict[str, Any]] = {
    "large": {
        "stem": 16,
        "blocks": (
            Bneck(3, 16, 16, False, "RE", 1, 1),
            Bneck(3, 64, 24, False, "RE", 2, 1),  # C1
            Bneck(3, 72, 24, False, "RE", 1, 1),
            Bneck(5, 72, 40, True, "RE", 2, 1),  # C2
            Bneck(5, 120, 40, True, "RE", 1, 1),
            Bneck(5, 120, 40, True, "RE", 1, 1),
            Bneck(3, 240, 80, False, "HS", 2, 1),  # C3
            Bneck(3, 200, 80, False, "HS", 1, 1),
            Bneck(3, 184, 80, False, "HS", 1, 1),
            Bneck(3, 184, 80, False, "HS", 1, 1),
            Bneck(3, 480, 112, True, "HS", 1, 1),
            Bneck(3, 672, 112, True, "HS", 1, 1),
            Bneck(5, 672, 160, True, "HS", 2, 1),  # C4
            Bneck(5, 960, 160, True, "HS", 1, 1),
            Bneck(5, 960, 160, True, "HS", 1, 1),
        ),
        "last_channel": 1280,  # C5: classifier hidden width
    },
    "small": {
        "stem": 16,
        "blocks": (
            Bneck(3, 16, 16, True, "RE", 2, 1),  # C1
            Bneck(3, 72, 24, False, "RE", 2, 1),  # C2
            Bneck(3, 88, 24, False, "RE", 1, 1),
            Bneck(5, 96, 40, True, "HS", 2, 1),  # C3
            Bneck(5, 240, 40, True, "HS", 1, 1),
            Bneck(5, 240, 40, True, "HS", 1, 1),
            Bneck(5, 120, 48, True, "HS", 1, 1),
            Bneck(5, 144, 48, True, "HS", 1, 1),
            Bneck(5, 288, 96, True, "HS", 2, 1),  # C4
            Bneck(5, 576, 96, True, "HS", 1, 1),
            Bneck(5, 576, 96, True, "HS", 1, 1),
        ),
        "last_channel": 1024,
    },
}
#: torchvision's BatchNorm for MobileNetV3: eps 1e-3, torch momentum 0.01 (Flax 0.99).
BN_EPS = 1e-3
BN_MOMENTUM = 1.0 - 0.01
_ACT = {"RE": "relu", "HS": "hard_swish"}


class BlockConfig(NamedTuple):
    """One ``InvertedResidual`` with its channels adjusted to the width and its stride/dilation resolved."""

    in_ch: int
    kernel: int
    expanded: int
    out: int
    use_se: bool
    activation: str
    stride: int  # the table's stride (decides the residual, as torchvision's ``cnf.stride``)
    conv_stride: int  # stride the depthwise conv actually uses
    dilation: int


_adjust = layers.round_channels  # torchvision ``InvertedResidualConfig.adjust_channels``


def check_arch(arch: str, output_stride: int, model: str = "MobileNetV3") -> None:
    """Raises a clear error for an unknown ``arch`` or an unsupported ``output_stride``."""
    if arch not in ARCH:
        raise ValueError(f"{model}: arch must be one of {sorted(ARCH)}, got {arch!r}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"{model}: output_stride must be 8, 16 or 32, got {output_stride!r}")


def block_configs(arch: str, width: float = 1.0, output_stride: int = 32) -> List[BlockConfig]:
    """The ``InvertedResidual`` settings of ``features.1 ..``, as torchvision builds them.

    ``output_stride`` < 32 turns every stride-2 block that would exceed it into stride 1 and doubles the
    dilation from that block on (the block itself included). That is exactly torchvision's ``dilated=True``
    for ``output_stride=16`` (last stage: stride 1, dilation 2) and its natural extension to 8.
    """
    check_arch(arch, output_stride)
    cfgs = []
    in_ch = _adjust(ARCH[arch]["stem"], width)
    current, extra_dilation = 2, 1  # after the stride-2 stem
    for b in ARCH[arch]["blocks"]:
        conv_stride = b.stride
        if b.stride > 1 and current * b.stride > output_stride:
            extra_dilation *= b.stride
            conv_stride = 1
        else:
            current *= b.stride
        dilation = b.dilation * extra_dilation
        if dilation > 1:
            conv_stride = 1  # torchvision: ``stride = 1 if cnf.dilation > 1 else cnf.stride``
        out = _adjust(b.out, width)
        cfgs.append(BlockConfig(in_ch, b.kernel, _adjust(b.expanded, width), out, b.use_se, b.activation,
                                b.stride, conv_stride, dilation))
        in_ch = out
    return cfgs


def se_channels(expanded: int) -> int:
    """torchvision: ``_make_divisible(expanded // 4, 8)``."""
    return layers.make_divisible(expanded // 4, 8)


def last_conv_channels(arch: str, width: float = 1.0) -> int:
    """``features[-1]``: 6 x the last block's output channels."""
    return 6 * _adjust(ARCH[arch]["blocks"][-1].out, width)


def classifier_hidden(arch: str, width: float = 1.0) -> int:
    """Width of ``classifier.0`` (torchvision ``last_channel``: 1280 large, 1024 small, at width 1.0)."""
    return _adjust(ARCH[arch]["last_channel"], width)


def level_layout(arch: str, width: float = 1.0, output_stride: int = 32) -> Tuple[List[int], List[int], List[int]]:
    """Feature levels: (index into ``features`` whose output ends a level, channels, actual stride).

    A level ends right before every block the table gives stride 2, and at ``features[-1]`` (the 1x1 conv to
    6x channels), like timm's ``features_only`` for these networks: nominal strides 2, 4, 8, 16, 32, capped at
    ``output_stride`` when dilation replaces the striding.
    """
    cfgs = block_configs(arch, width, output_stride)
    idx, chans, strides = [], [], []
    ch, stride = _adjust(ARCH[arch]["stem"], width), 2
    for i, c in enumerate(cfgs):  # block i is features.(i + 1)
        if c.stride > 1:
            idx.append(i)
            chans.append(ch)
            strides.append(stride)
        stride *= c.conv_stride
        ch = c.out
    idx.append(len(cfgs) + 1)
    chans.append(last_conv_channels(arch, width))
    strides.append(stride)
    return idx, chans, strides


# ----------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------
class InvertedResidual(nn.Module):
    """torchvision ``InvertedResidual``: ``block`` = [expand 1x1] → depthwise kxk → [SE] → project 1x1;
    residual when the table stride is 1 and in == out channels. Children of ``block`` are numbered as in
    torch (the expand conv is absent when ``expanded == in``, shifting the indices)."""

    cfg: BlockConfig
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32
    bn_eps: float = BN_EPS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = self.cfg
        if x.shape[-1] != c.in_ch:
            raise ValueError(f"{self.name}: expected {c.in_ch} input channels, got {x.shape[-1]}")
        act = _ACT[c.activation]
        cba = dict(bn_momentum=BN_MOMENTUM, bn_eps=self.bn_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                   kernel_init=layers.kaiming_normal_fan_out)
        i = 0
        y = x
        if c.expanded != c.in_ch:
            y = layers.ConvBnAct(c.expanded, 1, act=act, name=f"block_{i}", **cba)(y, train)
            i += 1
        y = layers.ConvBnAct(c.expanded, c.kernel, c.conv_stride, dilation=c.dilation, groups=c.expanded,
                             act=act, name=f"block_{i}", **cba)(y, train)
        i += 1
        if c.use_se:
            # torchvision SqueezeExcitation(expanded, squeeze, scale_activation=Hardsigmoid); MobileNetV3
            # re-initialises fc1/fc2 like every conv (kaiming-normal fan-out weights, zero biases).
            y = layers.SqueezeExcite(se_channels(c.expanded), "relu", "hard_sigmoid", dtype=self.dtype,
                                     param_dtype=self.param_dtype, kernel_init=layers.kaiming_normal_fan_out,
                                     bias_init=nn.initializers.zeros, name=f"block_{i}")(y)
            i += 1
        y = layers.ConvBnAct(c.out, 1, act=None, name=f"block_{i}", **cba)(y, train)
        if c.stride == 1 and c.in_ch == c.out:
            y = y + x
        return y


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------
class MobileNetV3(ModelBase):
    """MobileNetV3 as torchvision builds it: ``features`` (stem, inverted residuals, 1x1 conv to 6x) →
    global average pool → classifier Linear → Hardswish → Dropout → Linear.

    Attributes:
      arch: ``"large"`` or ``"small"``.
      width: channel multiplier (torchvision ``width_mult``); the registered variants use 1.0.
      num_classes: classes; 0 drops the last Linear and returns the ``classifier.0`` → Hardswish features
        (1280-d for large, 1024-d for small), as timm's ``num_classes=0`` does.
      drop_rate: dropout before the last Linear (torchvision 0.2).
      output_stride: 32, 16 (torchvision ``dilated=True``) or 8, through dilation.
      features_only: return the maps at the end of each stride level (see :func:`level_layout`).
      bn_eps: BatchNorm epsilon: torchvision's 1e-3 (default); timm's MobileNetV3 weights need 1e-5 (its
        key layout requires it, and ``lightjax.models.load_model`` sets it).
    """

    arch: str = "large"
    width: float = 1.0
    drop_rate: float = 0.2
    output_stride: int = 32
    bn_eps: float = BN_EPS

    @property
    def model_name(self) -> str:
        """Registry-style name for error messages (``mobilenet_v3_large_100``)."""
        return f"mobilenet_v3_{self.arch}_{width_tag(self.width)}"

    def check_family_fields(self) -> None:
        check_arch(self.arch, self.output_stride, self.model_name)
        if not self.width > 0:
            raise ValueError(f"{self.model_name}: width must be positive, got {self.width!r}")
        if not 0 < self.bn_eps < 1:
            raise ValueError(f"{self.model_name}: bn_eps must be in (0, 1), got {self.bn_eps!r}")

    def feature_levels(self):
        _, chans, strides = level_layout(self.arch, self.width, self.output_stride)
        return chans, strides

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        """Args: x: ``(N, H, W, in_chans)``; train: BatchNorm batch statistics and dropout.

        Returns logits ``(N, num_classes)`` float32, or a list of NHWC maps when ``features_only``.
        """
        self.check_input(x)
        cfgs = block_configs(self.arch, self.width, self.output_stride)
        level_idx, _, _ = level_layout(self.arch, self.width, self.output_stride)
        cba = dict(bn_momentum=BN_MOMENTUM, bn_eps=self.bn_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                   kernel_init=layers.kaiming_normal_fan_out)

        feats = []
        x = layers.ConvBnAct(_adjust(ARCH[self.arch]["stem"], self.width), 3, 2, act="hard_swish",
                             name="features_0", **cba)(x, train)
        for i, cfg in enumerate(cfgs):
            if i in level_idx:  # ``features[i]`` ends a level: block i (== features.(i+1)) strides
                feats.append(x)
            x = InvertedResidual(cfg, self.dtype, self.param_dtype, self.bn_eps, name=f"features_{i + 1}")(x, train)
        x = layers.ConvBnAct(last_conv_channels(self.arch, self.width), 1, act="hard_swish",
                             name=f"features_{len(cfgs) + 1}", **cba)(x, train)
        feats.append(x)
        if self.features_only:
            return self.select_features(feats)

        x = ops.global_avg_pool(x)
        lin = dict(dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=layers.normal_init(0.01),
                   bias_init=nn.initializers.zeros)
        x = layers.Linear(classifier_hidden(self.arch, self.width), name="classifier_0", **lin)(x)
        x = layers.hard_swish(x)
        x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
        if self.num_classes == 0:
            return x.astype(jnp.float32)
        x = layers.Linear(self.num_classes, name="classifier_3", **lin)(x)
        return x.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------------
# Pretrained weights (data: lightjax.pretrained registers each row; fields in docs/pretrained.md)
# ----------------------------------------------------------------------------------------------------------
from lightjax.models._pretrained_defaults import (  # noqa: E402
    INCEPTION_MEAN, INCEPTION_STD, MIIL_MEAN, MIIL_STD, TIMM, TIMM_URL, TV, TV_URL)

#: timm's MobileNetV3 BatchNorm keeps PyTorch's eps 1e-5 (torchvision's: 1e-3); its key layout requires it.
_TIMM_MNV3 = dict(TIMM, model_kwargs={"bn_eps": 1e-5})
PRETRAINED_CFGS: Dict[str, Dict[str, Any]] = {
    "mobilenet_v3_large_100.tv_in1k": dict(
        TV, url=TV_URL + "mobilenet_v3_large-8738ca79.pth", sha256="8738ca79", resize_size=256, top1=74.042,
        top5=91.34, source="torchvision MobileNet_V3_Large_Weights.IMAGENET1K_V1"),
    "mobilenet_v3_large_100.tv2_in1k": dict(
        TV, url=TV_URL + "mobilenet_v3_large-5c1a4163.pth", sha256="5c1a4163", resize_size=232, top1=75.274,
        top5=92.566, source="torchvision MobileNet_V3_Large_Weights.IMAGENET1K_V2"),
    "mobilenet_v3_small_100.tv_in1k": dict(
        TV, url=TV_URL + "mobilenet_v3_small-047dcff4.pth", sha256="047dcff4", resize_size=256, top1=67.668,
        top5=87.402, source="torchvision MobileNet_V3_Small_Weights.IMAGENET1K_V1"),
    "mobilenet_v3_large_100.ra_in1k": dict(
        _TIMM_MNV3, hf_hub_id="timm/mobilenetv3_large_100.ra_in1k", sha256="f55367f5",
        url=TIMM_URL + "v0.1-weights/mobilenetv3_large_100_ra-f55367f5.pth", top1=75.784, top5=92.528,
        source="timm mobilenetv3_large_100.ra_in1k"),
    "mobilenet_v3_large_100.ra4_e3600_r224_in1k": dict(
        _TIMM_MNV3, hf_hub_id="timm/mobilenetv3_large_100.ra4_e3600_r224_in1k", crop_pct=0.95, mean=INCEPTION_MEAN,
        std=INCEPTION_STD, test_crop_size=256, test_crop_pct=1.0, top1=76.310, top5=92.842, test_top1=77.182,
        test_top5=93.328, source="timm mobilenetv3_large_100.ra4_e3600_r224_in1k"),
    "mobilenet_v3_large_100.miil_in21k_ft_in1k": dict(
        _TIMM_MNV3, hf_hub_id="timm/mobilenetv3_large_100.miil_in21k_ft_in1k", sha256="66471c13",
        url=TIMM_URL + "v0.1-tresnet/mobilenetv3_large_100_1k_miil_78_0-66471c13.pth", interpolation="bilinear",
        mean=MIIL_MEAN, std=MIIL_STD, top1=77.920, top5=92.894, source="timm mobilenetv3_large_100.miil_in21k_ft_in1k"),
    # ImageNet-21k (winter 2021, MIIL's 11,221 classes): the whole head fits the model (num_classes=11221).
    "mobilenet_v3_large_100.miil_in21k": dict(
        _TIMM_MNV3, hf_hub_id="timm/mobilenetv3_large_100.miil_in21k", sha256="d71cc17b",
        url=TIMM_URL + "v0.1-tresnet/mobilenetv3_large_100_in21k_miil-d71cc17b.pth", interpolation="bilinear",
        mean=MIIL_MEAN, std=MIIL_STD, num_classes=11221, label_set="imagenet-21k-miil",
        source="timm mobilenetv3_large_100.miil_in21k"),
    "mobilenet_v3_small_100.lamb_in1k": dict(
        _TIMM_MNV3, hf_hub_id="timm/mobilenetv3_small_100.lamb_in1k", sha256="266a294c",
        url=TIMM_URL + "v0.1-weights/mobilenetv3_small_100_lamb-266a294c.pth", top1=67.636, top5=87.638,
        source="timm mobilenetv3_small_100.lamb_in1k"),
}


# ----------------------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------------------
@variant(MobileNetV3, input_size=224, info={"reference": "torchvision mobilenet_v3_large"}, arch="large", width=1.0)
def mobilenet_v3_large_100(**kwargs):
    """MobileNetV3-Large 1.0 (torchvision ``mobilenet_v3_large``, 5,483,032 params)."""


@variant(MobileNetV3, input_size=224, info={"reference": "torchvision mobilenet_v3_small"}, arch="small", width=1.0)
def mobilenet_v3_small_100(**kwargs):
    """MobileNetV3-Small 1.0 (torchvision ``mobilenet_v3_small``, 2,542,856 params)."""
