"""The seed's ``AlignedXception``: the DeepLabv3+ backbone of jfzhang95's pytorch-deeplab-xception.

Paper: "Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation" (DeepLabv3+),
Chen, Zhu, Papandreou, Schroff, Adam, ECCV 2018 (https://arxiv.org/abs/1802.02611), on Xception (Chollet,
https://arxiv.org/abs/1610.02357). Reference code: the seed article (``../shared/seeds/000_0158f158d2ed03f3.txt``,
section 1.4), with ``BatchNorm=nn.BatchNorm2d`` (eps 1e-5, momentum 0.1); re-indented in
``tests/seed_xception.py``.

Architecture (exactly the seed): ``SeparableConv2d`` = ``fixed_padding`` (dilation-aware; symmetric for odd
kernels) → depthwise ``conv1`` → ``bn`` → ``pointwise``; ``Block`` = ``rep`` (ReLU → sep → BN, ...) + ``skip``/
``skipbn``; entry blocks 1-3, middle blocks 4-19 (728 ch, 3 reps), exit ``block20`` then ``conv3``/``bn3`` ..
``conv5``/``bn5`` (1536, 1536, 2048). ``output_stride`` 16: block3 stride 2, middle dilation 1, exit (1, 2);
8: block3 stride 1, middle dilation 2, exit (2, 4). The extra separable conv of a strided or ``is_last`` block
always has dilation 1 (the seed passes no dilation to it).

One quirk reproduced on purpose: the seed's ``Block`` appends its one ``nn.ReLU(inplace=True)`` as ``rep[0]``,
so when ``start_with_relu`` (blocks 3-20) that ReLU overwrites the block *input*, and the skip path (conv or
identity) reads ``relu(input)``. (Cadene's and timm's Xception replace ``rep[0]`` by a non-in-place ReLU; the
seed does not.) Here: ``out = rep'(relu(x)) + skip(relu(x))``.

Outputs (``num_classes`` semantics, a lightjax decision):
  * ``num_classes=0`` (default): ``(features, low_level_features)`` as the seed returns them, NHWC:
    ``(N, H/os, W/os, 2048)`` and ``(N, H/4, W/4, 128)``.
  * ``num_classes>0``: logits ``(N, num_classes)`` from a head the seed does not have: global average pool of
    ``features`` → Dropout(``drop_rate``) → Linear ``fc`` (torch default init; key ``fc.weight``/``fc.bias``).
  * ``features_only``: ``[stem (s2, 64), low_level (s4, 128), relu(block2) (s8, 256), features (s=os, 2048)]``.

Flax paths mirror the seed's keys: ``block1.rep.0.conv1.weight`` ↔ ``params/block1/rep_0/conv1/kernel``,
``block1.rep.0.bn.running_var`` ↔ ``batch_stats/block1/rep_0/bn/var``, ``block1.rep.1.weight`` ↔
``params/block1/rep_1/scale``, ``block1.skipbn`` ↔ ``block1/skipbn``, ``conv3.pointwise`` ↔ ``conv3/pointwise``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lightjax.models import layers
from lightjax.models.base import ModelBase
from lightjax.models.registry import variant

# ----------------------------------------------------------------------------------------------------------
# Architecture tables
# ----------------------------------------------------------------------------------------------------------
#: ``output_stride`` → (entry_block3_stride, middle_block_dilation, exit_block_dilations), as in the seed.
OUTPUT_STRIDES: Dict[int, Tuple[int, int, Tuple[int, int]]] = {16: (2, 1, (1, 2)), 8: (1, 2, (2, 4))}

#: ``block{i}``: (inplanes, planes, reps, stride, dilation, start_with_relu, grow_first, is_last).
#: ``stride``/``dilation`` may name the output-stride dependent value: "entry3" (block3 stride), "middle",
#: "exit0" (block20's dilation).
SEED_BLOCKS: Tuple[Tuple[int, int, int, Any, Any, bool, bool, bool], ...] = (
    (64, 128, 2, 2, 1, False, True, False),  # block1
    (128, 256, 2, 2, 1, False, True, False),  # block2
    (256, 728, 2, "entry3", 1, True, True, True),  # block3
    *((728, 728, 3, 1, "middle", True, True, False),) * 16,  # block4..block19
    (728, 1024, 2, 1, "exit0", True, False, True),  # block20
)
#: Exit separable convs: (conv name, bn name, in, out); dilation = exit_block_dilations[1].
SEED_EXIT: Tuple[Tuple[str, str, int, int], ...] = (
    ("conv3", "bn3", 1024, 1536), ("conv4", "bn4", 1536, 1536), ("conv5", "bn5", 1536, 2048),
)
BN_EPS = 1e-5  # BatchNorm=nn.BatchNorm2d (torch defaults: eps 1e-5, momentum 0.1)


def check_output_stride(output_stride: int) -> None:
    """The seed raises NotImplementedError for anything but 8 or 16; here it is a ValueError naming the value."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"aligned_xception: output_stride must be 8 or 16, got {output_stride!r}")


def seed_blocks(output_stride: int) -> List[Tuple[int, int, int, int, int, bool, bool, bool]]:
    """``SEED_BLOCKS`` with the output-stride dependent strides/dilations resolved (index i is ``block{i+1}``)."""
    check_output_stride(output_stride)
    entry3, middle, exits = OUTPUT_STRIDES[output_stride]
    named = {"entry3": entry3, "middle": middle, "exit0": exits[0]}
    return [(a, b, r, named.get(s, s), named.get(d, d), swr, gf, last)
            for a, b, r, s, d, swr, gf, last in SEED_BLOCKS]


def seed_rep(inplanes: int, planes: int, reps: int, stride: int = 1, dilation: int = 1, start_with_relu: bool = True,
             grow_first: bool = True, is_last: bool = False) -> List[Tuple]:
    """Entries of the seed ``Block.rep`` in torch order (entry i is ``rep.i``):
    ``("relu",)`` | ``("sep", in, out, stride, dilation)`` | ``("bn", channels)``.

    Mirrors the seed line by line, including the dilation-1 strided / ``is_last`` separable convs and the
    index shift of dropping ``rep[0]`` when not ``start_with_relu``.
    """
    rep: List[Tuple] = []
    filters = inplanes
    if grow_first:
        rep += [("relu",), ("sep", inplanes, planes, 1, dilation), ("bn", planes)]
        filters = planes
    for _ in range(reps - 1):
        rep += [("relu",), ("sep", filters, filters, 1, dilation), ("bn", filters)]
    if not grow_first:
        rep += [("relu",), ("sep", inplanes, planes, 1, dilation), ("bn", planes)]
    if stride != 1:
        rep += [("relu",), ("sep", planes, planes, 2, 1), ("bn", planes)]
    if stride == 1 and is_last:
        rep += [("relu",), ("sep", planes, planes, 1, 1), ("bn", planes)]
    if not start_with_relu:
        rep = rep[1:]
    return rep


def fixed_padding(kernel_size: int, dilation: int) -> Tuple[int, int]:
    """The seed's ``fixed_padding`` as (begin, end): total = effective kernel - 1, begin = total // 2."""
    effective = kernel_size + (kernel_size - 1) * (dilation - 1)
    total = effective - 1
    return total // 2, total - total // 2


# ----------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------
def _bn(name: str, dtype, param_dtype) -> layers.BatchNorm:
    return layers.BatchNorm(momentum=0.9, epsilon=BN_EPS, dtype=dtype, param_dtype=param_dtype, name=name)


class SeedSeparableConv2d(nn.Module):
    """Seed ``SeparableConv2d``: fixed padding → depthwise ``conv1`` (stride, dilation) → ``bn`` → ``pointwise``."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    dilation: int = 1
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        beg, end = fixed_padding(self.kernel_size, self.dilation)
        # The seed pads with F.pad before an unpadded conv; explicit (beg, end) conv padding is the same sum.
        kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                  kernel_init=layers.kaiming_normal_fan_out)  # _init_weight: normal(0, sqrt(2 / (k*k*out)))
        x = layers.Conv2d(c, self.kernel_size, self.stride, ((beg, end), (beg, end)), self.dilation, groups=c,
                          name="conv1", **kw)(x)
        x = _bn("bn", self.dtype, self.param_dtype)(x, use_running_average=not train)
        return layers.Conv2d(self.features, 1, name="pointwise", **kw)(x)


class SeedBlock(nn.Module):
    """Seed ``Block``: ``rep`` + (``skip`` 1x1 conv → ``skipbn`` when the shape changes, else identity).

    With ``start_with_relu`` the seed's in-place ``rep[0]`` ReLU also rewrites the input the skip path reads.
    """

    inplanes: int
    planes: int
    reps: int
    stride: int = 1
    dilation: int = 1
    start_with_relu: bool = True
    grow_first: bool = True
    is_last: bool = False
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inp: jax.Array, train: bool = False) -> jax.Array:
        rep = seed_rep(self.inplanes, self.planes, self.reps, self.stride, self.dilation, self.start_with_relu,
                       self.grow_first, self.is_last)
        if rep[0][0] == "relu":
            inp = nn.relu(inp)  # nn.ReLU(inplace=True) as rep[0]: the skip path sees the activated input
            start = 1
        else:
            start = 0
        x = inp
        for i in range(start, len(rep)):
            entry = rep[i]
            if entry[0] == "relu":
                x = nn.relu(x)
            elif entry[0] == "sep":
                _, _, out, stride, dilation = entry
                x = SeedSeparableConv2d(out, 3, stride, dilation, dtype=self.dtype, param_dtype=self.param_dtype,
                                        name=f"rep_{i}")(x, train)
            else:
                x = _bn(f"rep_{i}", self.dtype, self.param_dtype)(x, use_running_average=not train)
        if self.planes != self.inplanes or self.stride != 1:
            skip = layers.Conv2d(self.planes, 1, self.stride, 0, use_bias=False, dtype=self.dtype,
                                 param_dtype=self.param_dtype, kernel_init=layers.kaiming_normal_fan_out,
                                 name="skip")(inp)
            skip = _bn("skipbn", self.dtype, self.param_dtype)(skip, use_running_average=not train)
        else:
            skip = inp
        return x + skip


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------
class AlignedXception(ModelBase):
    """The seed's DeepLabv3+ ``AlignedXception`` (``BatchNorm=nn.BatchNorm2d``).

    Attributes:
      output_stride: 16 or 8 (anything else: ValueError).
      num_classes: 0 (default) returns ``(features, low_level_features)`` like the seed; > 0 adds a pooled
        ``fc`` head (not in the seed) and returns logits.
      drop_rate: dropout before ``fc`` (only with ``num_classes > 0``).
      features_only: the maps of ``feature_info`` (strides 2, 4, 8, output_stride) selected by ``out_indices``.
    """

    output_stride: int = 16
    num_classes: int = 0
    out_indices: Sequence[int] = (0, 1, 2, 3)

    @property
    def model_name(self) -> str:
        return "aligned_xception"

    def check_family_fields(self) -> None:
        check_output_stride(self.output_stride)

    def feature_levels(self):
        return (64, 128, 256, 2048), (2, 4, 8, self.output_stride)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        """Args: x: ``(N, H, W, in_chans)``; train: batch statistics (and dropout of the optional head).

        Returns ``(features, low_level_features)`` (num_classes=0), logits, or the feature list.
        """
        self.check_input(x)
        _, _, exit_dilations = OUTPUT_STRIDES[self.output_stride]
        dt, pdt = self.dtype, self.param_dtype
        ckw = dict(use_bias=False, dtype=dt, param_dtype=pdt, kernel_init=layers.kaiming_normal_fan_out)
        not_train = not train
        # Entry flow
        x = layers.Conv2d(32, 3, 2, 1, name="conv1", **ckw)(x)
        x = nn.relu(_bn("bn1", dt, pdt)(x, use_running_average=not_train))
        x = layers.Conv2d(64, 3, 1, 1, name="conv2", **ckw)(x)
        x = nn.relu(_bn("bn2", dt, pdt)(x, use_running_average=not_train))
        feats = [x]
        for i, (a, b, reps, s, d, swr, gf, last) in enumerate(seed_blocks(self.output_stride)):
            x = SeedBlock(a, b, reps, s, d, swr, gf, last, dtype=dt, param_dtype=pdt, name=f"block{i + 1}")(x, train)
            if i == 0:
                x = nn.relu(x)  # "add relu here": low_level_feat
                feats.append(x)
            elif i == 1:
                # block3's in-place rep[0] ReLU turns block2's output into relu(block2 output).
                feats.append(nn.relu(x))
        # Exit flow (block20 done above)
        x = nn.relu(x)
        for conv_name, bn_name, _, cout in SEED_EXIT:
            x = SeedSeparableConv2d(cout, 3, 1, exit_dilations[1], dtype=dt, param_dtype=pdt, name=conv_name)(x, train)
            x = nn.relu(_bn(bn_name, dt, pdt)(x, use_running_average=not_train))
        feats.append(x)
        if self.features_only:
            return self.select_features(feats)
        if self.num_classes == 0:
            return x, feats[1]
        return layers.classifier_head(x, self.num_classes, self.drop_rate, train, name="fc", dtype=dt, param_dtype=pdt)


# ----------------------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------------------
@variant(AlignedXception, input_size=512, info={"reference": "seed AlignedXception (DeepLabv3+ backbone)"})
def aligned_xception(**kwargs):
    """The seed's DeepLabv3+ AlignedXception backbone (output_stride 16 by default; returns (features, low_level))."""
