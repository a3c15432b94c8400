"""ShuffleNet v1: ImageNet variants (paper Table 1, megvii's official code) and the seed's CIFAR-10 variants.

Paper: "ShuffleNet: An Extremely Efficient Convolutional Neural Network for Mobile Devices", Zhang, Zhou, Lin,
Sun, 2017 (https://arxiv.org/abs/1707.01083).

Two model classes, because the two reference codes differ in more than channel counts:

* :class:`ShuffleNetV1` (``shufflenet_v1_g{1,2,3,4,8}``, 224 px, 1000 classes) follows megvii's official PyTorch
  code (github.com/megvii-model/ShuffleNet-Series, ``ShuffleNetV1/network.py`` + ``blocks.py``), which matches the
  paper's Fig. 2(b)/(c) unit: 1x1 GConv → BN → ReLU → DWConv 3x3 → BN → shuffle → 1x1 GConv → BN, add + ReLU
  (stride 1) or ``concat(AvgPool3x3/2(x), ReLU(main))`` (stride 2). The shuffle sits after the depthwise conv
  (equivalent to the paper's position up to a relabelling of the depthwise channels), there is no ReLU after the
  depthwise conv, the shortcut comes *first* in the concatenation, and the classifier has no bias.
  Flax paths mirror megvii's keys: ``first_conv.0.weight`` ↔ ``first_conv_0/kernel``,
  ``features.5.branch_main_1.3.weight`` ↔ ``features_5/branch_main_1_3/kernel``,
  ``classifier.0.weight`` ↔ ``classifier_0/kernel``.

  Channel-shuffle order: megvii's code reshapes ``(N, C/g, g, H, W)`` before swapping, the *inverse* of the
  seed/torchvision permutation (``(N, g, C/g, H, W)``). ``shuffle_order="megvii"`` (default, so megvii
  checkpoints load as published) computes it as ``ops.channel_shuffle(x, C // g)``; ``shuffle_order="seed"``
  uses ``ops.channel_shuffle(x, g)``. Both are valid shuffles for training from scratch; a checkpoint only
  works with the order it was trained with (the megvii key table refuses ``"seed"``).

  Channels: Table 1 at 1.0x (g=1: 144/288/576, 2: 200/400/800, 3: 240/480/960, 4: 272/544/1088,
  8: 384/768/1536), bottleneck = stage output // 4 (also in stride-2 units). ``width`` in {0.5, 1.0, 1.5, 2.0}:
  stage channels = ``make_divisible(width * c, 4 * g)`` (so the bottleneck divides by g) and the stem is megvii's
  per-width value (12, 24, 24, 48) rounded up to a multiple of g. This rule reproduces megvii's hard-coded
  tables for g=3 and g=8 (the only published ones) exactly; for g=1/2/4 at widths other than 1.0 it is ours.
  Init follows megvii: stem conv N(0, 0.01), other convs N(0, 1 / (in/groups)), BN weight 1 / bias 1e-4,
  classifier N(0, 0.01).

  Head: megvii uses ``AvgPool2d(7)``, which is the global mean at 224 px (7x7 map) and fails on smaller maps;
  lightjax uses the global mean, identical at 193-224 px and defined at every size.

* :class:`ShuffleNetV1Cifar` (``shufflenet_v1_g{2,3}_cifar``, 32 px, 10 classes) is the seed article's code
  exactly (``ShuffleNetG2`` / ``ShuffleNetG3``): 1x1 stem conv 3→24 + BN + ReLU (stride 1, no max pool), stages
  of 4/8/4 ``Bottleneck`` units (stride-2 unit outputs ``out - in`` channels, mid = that // 4), first pointwise
  ungrouped when ``in_planes == 24``, shuffle after conv1/bn1/ReLU in the seed/torchvision order, ReLU after the
  depthwise BN, ``concat(main, AvgPool2d(3, 2, 1)(x))`` then ReLU, head ``avg_pool2d(4)`` → ``Linear``. PyTorch
  default init (the seed does not initialise). Flax paths mirror the seed's keys: ``layer1.0.conv1.weight`` ↔
  ``layer1_0/conv1/kernel``, ``conv1``/``bn1``/``linear`` at the top.

  Head: the seed's ``avg_pool2d(out, 4)`` is global only on a 4x4 map, i.e. for 25-32 px inputs (the final map is
  ``ceil(H / 8)``). For 33-56 px it averages the top-left 4x4 window only, and from 57 px on its flatten no longer
  fits ``Linear``. lightjax uses the global mean: identical to the seed at 25-32 px, defined everywhere.

Feature levels (``features_only``): ImageNet: stem conv (stride 2), max pool (4), stages 2-4 (8, 16, 32).
CIFAR: stem (stride 1, kept because the CIFAR stem does not downsample), layer1-3 (2, 4, 8).
"""

from __future__ import annotations

import functools
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from lightjax import ops
from lightjax.models import layers
from lightjax.models.base import ModelBase
from lightjax.models.registry import variant

# ----------------------------------------------------------------------------------------------------------
# Architecture tables
# ----------------------------------------------------------------------------------------------------------
#: Units per stage (paper Table 1: stage 2, 3, 4), for both the ImageNet and the CIFAR variants.
STAGE_REPEATS: Tuple[int, ...] = (4, 8, 4)
#: Paper Table 1, output channels of stages 2-4 at 1.0x, per number of groups g.
IMAGENET_CHANNELS: Dict[int, Tuple[int, int, int]] = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
#: megvii's stem width per model size (before rounding up to a multiple of g: g=8 at 0.5x gives 16).
STEM_CHANNELS: Dict[float, int] = {0.5: 12, 1.0: 24, 1.5: 24, 2.0: 48}
#: The seed's CIFAR configs (``ShuffleNetG2``, ``ShuffleNetG3``): stage out_planes; the stem is 24 channels.
CIFAR_CHANNELS: Dict[int, Tuple[int, int, int]] = {2: (200, 400, 800), 3: (240, 480, 960)}
CIFAR_STEM = 24

_BN = functools.partial(layers.BatchNorm, momentum=0.9, epsilon=1e-5)  # torch defaults (momentum 0.1)


class Unit(NamedTuple):
    """One ShuffleNet unit: ``in_ch`` → ``out_ch`` (total, incl. the shortcut on stride 2)."""

    in_ch: int
    out_ch: int
    mid: int  # bottleneck channels
    stride: int
    first_group: bool  # first pointwise conv ungrouped (first unit of stage 2)


def imagenet_channels(groups: int, width: float = 1.0) -> Tuple[int, Tuple[int, int, int]]:
    """``(stem, (stage2, stage3, stage4))`` output channels of the ImageNet model (see the module docstring)."""
    if groups not in IMAGENET_CHANNELS:
        raise ValueError(
            f"ShuffleNetV1: groups must be one of {sorted(IMAGENET_CHANNELS)} (paper Table 1), got {groups!r}")
    if width not in STEM_CHANNELS:
        raise ValueError(f"ShuffleNetV1: width must be one of {sorted(STEM_CHANNELS)} (megvii's sizes), got {width!r}")
    stem = -(-STEM_CHANNELS[width] // groups) * groups
    # Multiples of 4g: the bottleneck (out // 4) and the stride-2 branch (out - in) must divide by g.
    stages = tuple(layers.make_divisible(c * width, 4 * groups) for c in IMAGENET_CHANNELS[groups])
    return stem, stages  # type: ignore[return-value]


def imagenet_units(groups: int, width: float = 1.0) -> List[List[Unit]]:
    """Units per stage, as megvii builds them (mid = stage output // 4, also for stride-2 units)."""
    c, stages = imagenet_channels(groups, width)
    out = []
    for s, (reps, oup) in enumerate(zip(STAGE_REPEATS, stages)):
        units = []
        for i in range(reps):
            units.append(Unit(c, oup, oup // 4, 2 if i == 0 else 1, s == 0 and i == 0))
            c = oup
        out.append(units)
    return out


def cifar_units(groups: int) -> List[List[Unit]]:
    """Units per stage as the seed's ``_make_layer`` builds them (stride-2 unit: out_planes - in_planes)."""
    if groups not in CIFAR_CHANNELS:
        raise ValueError(
            f"ShuffleNetV1Cifar: groups must be one of {sorted(CIFAR_CHANNELS)} (the seed's configs), got {groups!r}")
    c = CIFAR_STEM
    out = []
    for reps, planes in zip(STAGE_REPEATS, CIFAR_CHANNELS[groups]):
        units = []
        for i in range(reps):
            # The seed's Bottleneck(in, out_planes - in) on stride 2: main branch out - in, mid = int(that / 4);
            # out_ch here is the unit's total output (main + shortcut), like the ImageNet table.
            branch = planes - c if i == 0 else planes
            units.append(Unit(c, planes, int(branch / 4), 2 if i == 0 else 1, c == CIFAR_STEM))
            c = planes
        out.append(units)
    return out


def _megvii_conv_init(key, shape, dtype=jnp.float32):
    """megvii: ``normal_(w, 0, 1.0 / w.shape[1])`` with torch's ``w.shape[1] = in / groups`` (Flax shape[2])."""
    return jax.random.normal(key, shape, dtype) / shape[2]


# ----------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------
class ShuffleV1Block(nn.Module):
    """megvii's ``ShuffleV1Block`` (children ``branch_main_1_{0,1,3,4}``, ``branch_main_2_{0,1}``)."""

    unit: Unit
    groups: int
    shuffle_order: str = "megvii"
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Union[jax.Array, Sequence[jax.Array]], train: bool = False) -> List[jax.Array]:
        """Args: x: ``(N, H, W, in_ch)`` or channel parts of it. Returns the output as channel parts: on CPU one
        per group of the last grouped 1x1 (see ``ops.conv2d_parts``), so that the next unit's grouped 1x1 and
        residual read them without slicing a concatenation; ``ops.concat_parts`` gives the array."""
        u, g = self.unit, self.groups
        outputs = u.out_ch - u.in_ch if u.stride == 2 else u.out_ch
        g1 = 1 if u.first_group else g
        x = [x] if hasattr(x, "shape") else list(x)  # channel parts; Conv2d cuts them at its groups on CPU
        conv = functools.partial(layers.Conv2d, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                                 kernel_init=_megvii_conv_init)
        bn = functools.partial(_BN, dtype=self.dtype, param_dtype=self.param_dtype,
                               bias_init=nn.initializers.constant(1e-4))
        ura = not train
        y = conv(u.mid, 1, groups=g1, name="branch_main_1_0")(x)
        y = nn.relu(bn(name="branch_main_1_1")(y, use_running_average=ura))
        y = conv(u.mid, 3, u.stride, 1, groups=u.mid, name="branch_main_1_3")(y)
        y = bn(name="branch_main_1_4")(y, use_running_average=ura)  # no ReLU after the depthwise conv
        # megvii shuffles whenever g > 1, also in the unit whose first conv is ungrouped; the shuffle is handed to
        # the next 1x1 conv, which folds it into its weight where it is computed as a matrix product.
        shuffle = (u.mid // g if self.shuffle_order == "megvii" else g) if g > 1 else 0
        ys = conv(outputs, 1, groups=g, shuffle_in=shuffle, output_parts=True, name="branch_main_2_0")(y)
        ys = bn(name="branch_main_2_1")(ys, use_running_average=ura)
        if u.stride == 1:
            return [nn.relu(a + b) for a, b in zip(ys, ops.regroup(x, [y.shape[-1] for y in ys]))]
        return [ops.avg_pool2d(p, 3, 2, 1) for p in x] + [nn.relu(y) for y in ys]


class Bottleneck(nn.Module):
    """The seed's ``Bottleneck`` (children ``conv1``/``bn1``, ``conv2``/``bn2``, ``conv3``/``bn3``)."""

    unit: Unit
    groups: int
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        u = self.unit
        branch = u.out_ch - u.in_ch if u.stride == 2 else u.out_ch
        g1 = 1 if u.first_group else self.groups  # seed: g = 1 if in_planes == 24 (stage 2's first unit)
        conv = functools.partial(layers.Conv2d, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        bn = functools.partial(_BN, dtype=self.dtype, param_dtype=self.param_dtype)
        ura = not train
        y = nn.relu(bn(name="bn1")(conv(u.mid, 1, groups=g1, name="conv1")(x), use_running_average=ura))
        if g1 > 1:  # the seed's ShuffleBlock(groups=g): identity for g == 1
            y = ops.channel_shuffle(y, g1)
        y = nn.relu(bn(name="bn2")(conv(u.mid, 3, u.stride, 1, groups=u.mid, name="conv2")(y),
                                   use_running_average=ura))
        y = bn(name="bn3")(conv(branch, 1, groups=self.groups, name="conv3")(y), use_running_average=ura)
        if u.stride == 2:
            return nn.relu(jnp.concatenate([y, ops.avg_pool2d(x, 3, 2, 1)], axis=-1))
        return nn.relu(y + x)


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------
class ShuffleNetV1(ModelBase):
    """ShuffleNet v1 for ImageNet (paper Table 1; megvii's code and key names).

    Attributes:
      groups: g in 1, 2, 3, 4, 8.
      width: 0.5, 1.0, 1.5 or 2.0 (the paper's "ShuffleNet s x").
      shuffle_order: ``"megvii"`` (default; megvii checkpoints) or ``"seed"`` (seed/torchvision permutation).
      num_classes: classes; 0 returns the pooled features ``(N, C)``.
      drop_rate: dropout before the classifier (0: megvii has none).
      features_only: return the maps at strides 2, 4, 8, 16, 32 selected by ``out_indices``.
    """

    groups: int = 3
    width: float = 1.0
    shuffle_order: str = "megvii"

    @property
    def model_name(self) -> str:
        return f"shufflenet_v1_g{self.groups}"

    def check_family_fields(self) -> None:
        if self.shuffle_order not in ("megvii", "seed"):
            raise ValueError(f"{self.model_name}: shuffle_order must be 'megvii' or 'seed', got {self.shuffle_order!r}")
        imagenet_channels(self.groups, self.width)  # validates groups / width

    def feature_levels(self):
        stem, stages = imagenet_channels(self.groups, self.width)
        return (stem, stem) + stages, (2, 4, 8, 16, 32)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        """Args: x: ``(N, H, W, in_chans)``; train: batch statistics + dropout. Returns logits ``(N, num_classes)``."""
        stem, _ = imagenet_channels(self.groups, self.width)
        self.check_input(x)
        # megvii's first_conv = Sequential(conv, bn, relu): children first_conv_0 / first_conv_1 at the top level.
        x = layers.Conv2d(stem, 3, 2, 1, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                          kernel_init=layers.normal_init(0.01), name="first_conv_0")(x)
        x = _BN(dtype=self.dtype, param_dtype=self.param_dtype, bias_init=nn.initializers.constant(1e-4),
                name="first_conv_1")(x, use_running_average=not train)
        x = nn.relu(x)
        feats = [x]
        x = ops.max_pool2d(x, 3, 2, 1)
        feats.append(x)
        i = 0
        for stage in imagenet_units(self.groups, self.width):
            for u in stage:
                x = ShuffleV1Block(u, self.groups, self.shuffle_order, self.dtype, self.param_dtype,
                                   name=f"features_{i}")(x, train)
                i += 1
            feats.append(ops.concat_parts(x))
        x = feats[-1]
        if self.features_only:
            return self.select_features(feats)
        return layers.classifier_head(x, self.num_classes, self.drop_rate, train, name="classifier_0",
                                      dtype=self.dtype, param_dtype=self.param_dtype, use_bias=False,
                                      kernel_init=layers.normal_init(0.01))


class ShuffleNetV1Cifar(ModelBase):
    """The seed's CIFAR-10 ShuffleNet (``ShuffleNetG2`` / ``ShuffleNetG3``), with the seed's key names.

    Attributes:
      groups: 2 or 3.
      num_classes: classes (10 in the seed); 0 returns the pooled features ``(N, C)``.
      in_chans: input channels (3 in the seed; e.g. 1 for grey images).
      drop_rate: dropout before ``linear`` (0: the seed has none).
      features_only: return the maps at strides 1 (stem), 2, 4, 8 selected by ``out_indices``.
    """

    groups: int = 3
    num_classes: int = 10
    out_indices: Sequence[int] = (0, 1, 2, 3)

    @property
    def model_name(self) -> str:
        return f"shufflenet_v1_g{self.groups}_cifar"

    def check_family_fields(self) -> None:
        cifar_units(self.groups)  # raises the clear error for an unknown groups

    def feature_levels(self):
        return (CIFAR_STEM,) + CIFAR_CHANNELS[self.groups], (1, 2, 4, 8)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        """Args: x: ``(N, H, W, in_chans)`` (32 px native); train: batch statistics. Returns ``(N, num_classes)``."""
        units = cifar_units(self.groups)
        self.check_input(x)
        x = layers.Conv2d(CIFAR_STEM, 1, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                          name="conv1")(x)
        x = nn.relu(_BN(dtype=self.dtype, param_dtype=self.param_dtype, name="bn1")(x, use_running_average=not train))
        feats = [x]
        for s, stage in enumerate(units):
            for i, u in enumerate(stage):
                x = Bottleneck(u, self.groups, self.dtype, self.param_dtype, name=f"layer{s + 1}_{i}")(x, train)
            feats.append(x)
        if self.features_only:
            return self.select_features(feats)
        # seed: F.avg_pool2d(out, 4) on the 4x4 map of a 32 px input == global mean (see the module docstring).
        return layers.classifier_head(x, self.num_classes, self.drop_rate, train, name="linear", dtype=self.dtype,
                                      param_dtype=self.param_dtype)


# ----------------------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------------------
_MEGVII = "megvii-model/ShuffleNet-Series ShuffleNetV1 (paper Table 1)"


@variant(ShuffleNetV1, input_size=224, info={"reference": _MEGVII}, groups=1)
def shufflenet_v1_g1(**kwargs):
    """ShuffleNet v1 g=1 (paper Table 1: 144/288/576 at 1.0x, 143 MFLOPs)."""


@variant(ShuffleNetV1, input_size=224, info={"reference": _MEGVII}, groups=2)
def shufflenet_v1_g2(**kwargs):
    """ShuffleNet v1 g=2 (paper Table 1: 200/400/800 at 1.0x, 140 MFLOPs)."""


@variant(ShuffleNetV1, input_size=224, info={"reference": _MEGVII}, groups=3)
def shufflenet_v1_g3(**kwargs):
    """ShuffleNet v1 g=3 (paper Table 1: 240/480/960 at 1.0x, 137 MFLOPs; megvii: 1.9M params, 138M)."""


@variant(ShuffleNetV1, input_size=224, info={"reference": _MEGVII}, groups=4)
def shufflenet_v1_g4(**kwargs):
    """ShuffleNet v1 g=4 (paper Table 1: 272/544/1088 at 1.0x, 133 MFLOPs)."""


@variant(ShuffleNetV1, input_size=224, info={"reference": _MEGVII}, groups=8)
def shufflenet_v1_g8(**kwargs):
    """ShuffleNet v1 g=8 (paper Table 1: 384/768/1536 at 1.0x, 137 MFLOPs; megvii: 2.4M params, 138M)."""


@variant(ShuffleNetV1Cifar, input_size=32, info={"reference": "seed ShuffleNetG2 (CIFAR-10)"}, groups=2)
def shufflenet_v1_g2_cifar(**kwargs):
    """The seed's ``ShuffleNetG2``: CIFAR-10, 32 px, stages 200/400/800."""


@variant(ShuffleNetV1Cifar, input_size=32, info={"reference": "seed ShuffleNetG3 (CIFAR-10)"}, groups=3)
def shufflenet_v1_g3_cifar(**kwargs):
    """The seed's ``ShuffleNetG3``: CIFAR-10, 32 px, stages 240/480/960."""
