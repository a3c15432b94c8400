"""Xception (Chollet) and the aligned Xception 41 / 65 / 71 of DeepLab, as ported by timm.

Papers:
  * "Xception: Deep Learning with Depthwise Separable Convolutions", François Chollet, CVPR 2017
    (https://arxiv.org/abs/1610.02357).
  * "Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation" (DeepLabv3+),
    Chen et al., ECCV 2018 (https://arxiv.org/abs/1802.02611): the "modified aligned" Xception.

Reference code:
  * ``xception``: timm ``legacy_xception`` (``timm/models/xception.py``; Cadene/tstandley port of the Keras
    weights; 299x299, 22,855,952 params). Stem convs are unpadded; strided blocks end with
    ``MaxPool2d(3, 2, 1)``; a block's first ReLU is *not* in place, so the shortcut sees the raw input.
  * ``xception41/65/71``: timm ``xception_aligned.py`` (TF DeepLab weights): every separable conv is
    depthwise conv → BN → pointwise conv → BN (eps 1e-3), strided blocks stride their third separable conv,
    ``output_stride`` 8/16 replaces strides with dilation exactly as timm's constructor does.

Flax paths mirror the PyTorch keys (index segments joined to their parent with ``_``):
  * legacy: ``block3.rep.4.pointwise.weight`` ↔ ``params/block3/rep_4/pointwise/kernel``,
    ``block3.rep.5.running_var`` ↔ ``batch_stats/block3/rep_5/var``, ``block3.skipbn`` ↔ ``block3/skipbn``,
    ``conv3.conv1`` ↔ ``conv3/conv1``, ``fc`` ↔ ``fc``.
  * aligned: ``stem.0.conv`` ↔ ``stem_0/conv``, ``blocks.11.stack.conv3.bn_pw`` ↔
    ``blocks_11/stack/conv3/bn_pw``, ``blocks.0.shortcut.conv`` ↔ ``blocks_0/shortcut/conv``,
    ``head.fc`` ↔ ``head/fc``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

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
#: timm ``legacy_xception``: ``block{i+1}`` = (in, out, reps, stride, start_with_relu, grow_first).
LEGACY_BLOCKS: Tuple[Tuple[int, int, int, int, bool, bool], ...] = (
    (64, 128, 2, 2, False, True),  # entry flow
    (128, 256, 2, 2, True, True),
    (256, 728, 2, 2, True, True),
    *((728, 728, 3, 1, True, True),) * 8,  # middle flow: block4..block11
    (728, 1024, 2, 2, True, False),  # exit flow: block12
)
#: Exit separable convs after block12: (name, bn name, in, out).
LEGACY_EXIT: Tuple[Tuple[str, str, int, int], ...] = (("conv3", "bn3", 1024, 1536), ("conv4", "bn4", 1536, 2048))
#: timm ``feature_info``: after act2, the ReLU starting block2 / block3 / block12 (= relu of the previous
#: block's output), and act4. Blocks run before each tap: 0 (stem), 1, 2, 11, 12 (all).
LEGACY_FEATURES = {"channels": (64, 128, 256, 728, 2048), "strides": (2, 4, 8, 16, 32), "after_block": (1, 2, 11)}


def _ablk(in_chs: int, out_chs: Union[int, Tuple[int, int, int]], stride: int, *, no_skip: bool = False,
          start_with_relu: bool = True) -> Tuple[int, Tuple[int, int, int], int, bool, bool]:
    """One aligned block: (in, (out1, out2, out3), stride, no_skip, start_with_relu), timm's dict as a tuple."""
    out = (out_chs,) * 3 if isinstance(out_chs, int) else tuple(out_chs)
    return (in_chs, out, stride, no_skip, start_with_relu)


_ALIGNED_EXIT = (
    _ablk(728, (728, 1024, 1024), 2),
    _ablk(1024, (1536, 1536, 2048), 1, no_skip=True, start_with_relu=False),
)
#: timm ``xception41/65/71`` ``block_cfg`` (``blocks.N`` is entry N).
ALIGNED_BLOCKS: Dict[str, Tuple[Tuple[int, Tuple[int, int, int], int, bool, bool], ...]] = {
    "xception41": (
        _ablk(64, 128, 2), _ablk(128, 256, 2), _ablk(256, 728, 2),
        *(_ablk(728, 728, 1),) * 8,
        *_ALIGNED_EXIT,
    ),
    "xception65": (
        _ablk(64, 128, 2), _ablk(128, 256, 2), _ablk(256, 728, 2),
        *(_ablk(728, 728, 1),) * 16,
        *_ALIGNED_EXIT,
    ),
    "xception71": (
        _ablk(64, 128, 2), _ablk(128, 256, 1), _ablk(256, 256, 2), _ablk(256, 728, 1), _ablk(728, 728, 2),
        *(_ablk(728, 728, 1),) * 16,
        *_ALIGNED_EXIT,
    ),
}
ALIGNED_BN_EPS = 1e-3  # timm: partial(nn.BatchNorm2d, eps=.001, momentum=.1)


def legacy_rep(in_chs: int, out_chs: int, reps: int, stride: int, start_with_relu: bool,
               grow_first: bool) -> List[Tuple]:
    """Entries of a legacy ``Block.rep`` Sequential, in torch order (entry i is ``rep.i``).

    ``("relu",)`` | ``("sep", in, out)`` | ``("bn", channels)`` | ``("pool", stride)`` — exactly as timm builds
    it (including dropping the leading ReLU when ``start_with_relu`` is False, which shifts every index).
    """
    rep: List[Tuple] = []
    for i in range(reps):
        if grow_first:
            inc, outc = (in_chs if i == 0 else out_chs), out_chs
        else:
            inc, outc = in_chs, (in_chs if i < reps - 1 else out_chs)
        rep += [("relu",), ("sep", inc, outc), ("bn", outc)]
    if not start_with_relu:
        rep = rep[1:]
    if stride != 1:
        rep.append(("pool", stride))
    return rep


def aligned_plan(arch: str, output_stride: int) -> Dict[str, Any]:
    """timm ``XceptionAligned.__init__``'s loop: per-block stride/dilation and the feature taps.

    Returns ``{"blocks": [(in, outs, stride, dilation, no_skip, start_with_relu), ...], "channels": ...,
    "strides": ..., "taps": block indices whose ``stack.act3`` is a feature tap (the last level is the
    final block output)}``. A block whose stride would exceed ``output_stride`` keeps its own dilation and
    loses its stride; every later block is dilated by that stride (timm assigns the dilation *before*
    updating it).
    """
    if arch not in ALIGNED_BLOCKS:
        raise ValueError(f"aligned Xception arch must be one of {sorted(ALIGNED_BLOCKS)}, got {arch!r}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"{arch}: output_stride must be 8, 16 or 32, got {output_stride!r}")
    cur_dilation, cur_stride = 1, 2
    blocks, channels, strides, taps = [], [], [], []
    for i, (in_chs, outs, stride, no_skip, start_with_relu) in enumerate(ALIGNED_BLOCKS[arch]):
        dilation = cur_dilation
        if stride > 1:
            channels.append(outs[-2])
            strides.append(cur_stride)
            taps.append(i)
            if cur_stride * stride > output_stride:
                cur_dilation *= stride
                stride = 1
            else:
                cur_stride *= stride
        blocks.append((in_chs, outs, stride, dilation, no_skip, start_with_relu))
    channels.append(blocks[-1][1][-1])
    strides.append(cur_stride)
    return {"blocks": blocks, "channels": tuple(channels), "strides": tuple(strides), "taps": tuple(taps)}


timm_padding = layers.torch_padding  # timm ``get_padding`` (static, symmetric)


# ----------------------------------------------------------------------------------------------------------
# Blocks: legacy (Chollet / Cadene)
# ----------------------------------------------------------------------------------------------------------
class LegacySeparableConv2d(nn.Module):
    """timm legacy ``SeparableConv2d``: depthwise ``conv1`` (padding 1) → ``pointwise`` 1x1, no BN inside."""

    features: int
    kernel_size: int = 3
    padding: int = 1
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                  kernel_init=layers.kaiming_normal_fan_out)
        x = layers.Conv2d(c, self.kernel_size, 1, self.padding, groups=c, name="conv1", **kw)(x)
        return layers.Conv2d(self.features, 1, name="pointwise", **kw)(x)


class LegacyBlock(nn.Module):
    """timm legacy ``Block``: ``rep`` (ReLU → sep → BN, ...; MaxPool(3, s, 1) if strided) + skip (1x1 conv + BN
    when the shape changes). The leading ReLU is not in place: the shortcut reads the un-activated input."""

    in_chs: int
    out_chs: int
    reps: int
    stride: int = 1
    start_with_relu: bool = True
    grow_first: bool = True
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inp: jax.Array, train: bool = False) -> jax.Array:
        bn = lambda name: layers.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype,  # noqa: E731
                                           param_dtype=self.param_dtype, name=name)
        x = inp
        for i, entry in enumerate(legacy_rep(self.in_chs, self.out_chs, self.reps, self.stride,
                                             self.start_with_relu, self.grow_first)):
            if entry[0] == "relu":
                x = nn.relu(x)
            elif entry[0] == "sep":
                x = LegacySeparableConv2d(entry[2], dtype=self.dtype, param_dtype=self.param_dtype,
                                          name=f"rep_{i}")(x)
            elif entry[0] == "bn":
                x = bn(f"rep_{i}")(x, use_running_average=not train)
            else:  # torch MaxPool2d(3, stride, 1), floor mode
                x = ops.max_pool2d(x, 3, entry[1], 1)
        if self.out_chs != self.in_chs or self.stride != 1:
            skip = layers.Conv2d(self.out_chs, 1, self.stride, 0, use_bias=False, dtype=self.dtype,
                                 param_dtype=self.param_dtype, kernel_init=layers.kaiming_normal_fan_out,
                                 name="skip")(inp)
            skip = bn("skipbn")(skip, use_running_average=not train)
        else:
            skip = inp
        return x + skip


# ----------------------------------------------------------------------------------------------------------
# Blocks: aligned (timm xception_aligned)
# ----------------------------------------------------------------------------------------------------------
class AlignedSeparableConv2d(nn.Module):
    """timm aligned ``SeparableConv2d``: ``conv_dw`` → ``bn_dw`` → act → ``conv_pw`` → ``bn_pw`` → act.

    ``act=False`` is timm's ``act_layer=None`` (blocks that start with a ReLU put no activation inside).
    """

    features: int
    stride: int = 1
    dilation: int = 1
    act: bool = False
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c = x.shape[-1]
        bn = lambda name: layers.BatchNorm(momentum=0.9, epsilon=ALIGNED_BN_EPS, dtype=self.dtype,  # noqa: E731
                                           param_dtype=self.param_dtype, name=name)
        act = nn.relu if self.act else layers.identity
        pad = timm_padding(3, self.stride, self.dilation)
        # timm creates these with torch's default init (kaiming_uniform(a=sqrt(5))).
        x = layers.Conv2d(c, 3, self.stride, pad, self.dilation, groups=c, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="conv_dw")(x)
        x = act(bn("bn_dw")(x, use_running_average=not train))
        x = layers.Conv2d(self.features, 1, dtype=self.dtype, param_dtype=self.param_dtype, name="conv_pw")(x)
        return act(bn("bn_pw")(x, use_running_average=not train))


class XceptionStack(nn.Module):
    """timm ``XceptionModule.stack``: 3 separable convs ``conv1..conv3`` (the 3rd strided), each preceded by a
    ReLU when ``start_with_relu`` (timm's ``act1`` is not in place, so the block input stays raw for the
    shortcut). Returns ``(out, tap)``; ``tap`` is the input of ``conv3`` (timm's ``stack.act3`` feature tap)."""

    out_chs: Tuple[int, int, int]
    stride: int = 1
    dilation: int = 1
    start_with_relu: bool = True
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> Tuple[jax.Array, jax.Array]:
        tap = x
        for i in range(3):
            if self.start_with_relu:
                x = nn.relu(x)
            if i == 2:
                tap = x
            x = AlignedSeparableConv2d(self.out_chs[i], self.stride if i == 2 else 1, self.dilation,
                                       act=not self.start_with_relu, dtype=self.dtype,
                                       param_dtype=self.param_dtype, name=f"conv{i + 1}")(x, train)
        return x, tap


class XceptionModule(nn.Module):
    """timm ``XceptionModule``: ``stack`` + residual (``shortcut`` = 1x1 conv + BN when the shape changes,
    identity otherwise, none when ``no_skip``). Returns ``(out, tap)`` (see :class:`XceptionStack`)."""

    in_chs: int
    out_chs: Tuple[int, int, int]
    stride: int = 1
    dilation: int = 1
    no_skip: bool = False
    start_with_relu: bool = True
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inp: jax.Array, train: bool = False) -> Tuple[jax.Array, jax.Array]:
        x, tap = XceptionStack(self.out_chs, self.stride, self.dilation, self.start_with_relu, dtype=self.dtype,
                               param_dtype=self.param_dtype, name="stack")(inp, train)
        if self.no_skip:
            return x, tap
        skip = inp
        if self.out_chs[-1] != self.in_chs or self.stride != 1:
            skip = conv_bn(self.out_chs[-1], 1, self.stride, None, "shortcut", self.dtype, self.param_dtype)(inp, train)
        return x + skip, tap


def conv_bn(features: int, kernel: int, stride: int, act: Optional[str], name: str, dtype, param_dtype
            ) -> layers.ConvBnAct:
    """timm ``ConvNormAct(in, out, kernel, stride)`` of the aligned Xceptions (children ``conv`` and ``bn``,
    BN eps 1e-3, torch's default conv init, timm's static padding): the stem (ReLU) and the shortcut (no act)."""
    return layers.ConvBnAct(features, kernel, stride, timm_padding(kernel, stride), act=act, conv_name="conv",
                            bn_name="bn", bn_eps=ALIGNED_BN_EPS, dtype=dtype, param_dtype=param_dtype,
                            kernel_init=layers.torch_default_init, name=name)


class _Head(nn.Module):
    """timm's ``ClassifierHead`` as its own module (``head.fc`` in the aligned Xceptions' keys); the legacy
    Xception calls :func:`layers.classifier_head` directly (``fc``)."""

    num_classes: int
    drop_rate: float = 0.0
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return layers.classifier_head(x, self.num_classes, self.drop_rate, train, name="fc", dtype=self.dtype,
                                      param_dtype=self.param_dtype)


# ----------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------
class Xception(ModelBase):
    """Xception (Chollet 2017), timm ``legacy_xception`` layout and numerics.

    Attributes:
      num_classes: classes; 0 returns the pooled 2048-d features.
      drop_rate: dropout before ``fc`` (timm default 0).
      features_only: return the maps of ``feature_info`` (strides 2, 4, 8, 16, 32 as timm's feature_info:
        act2, ReLU(block1), ReLU(block2), ReLU(block11), act4) selected by ``out_indices``.
    """

    @property
    def model_name(self) -> str:
        return "xception"

    def feature_levels(self):
        return LEGACY_FEATURES["channels"], LEGACY_FEATURES["strides"]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        """Args: x: ``(N, H, W, in_chans)``; train: batch statistics and dropout. Returns ``(N, num_classes)``."""
        self.check_input(x)
        ckw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                   kernel_init=layers.kaiming_normal_fan_out)
        bn = lambda name: layers.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=self.dtype,  # noqa: E731
                                           param_dtype=self.param_dtype, name=name)
        # Stem: both 3x3 convs are unpadded in the Keras/Cadene model.
        x = nn.relu(bn("bn1")(layers.Conv2d(32, 3, 2, 0, name="conv1", **ckw)(x), use_running_average=not train))
        x = nn.relu(bn("bn2")(layers.Conv2d(64, 3, 1, 0, name="conv2", **ckw)(x), use_running_average=not train))
        feats = [x]
        for i, (cin, cout, reps, stride, swr, grow) in enumerate(LEGACY_BLOCKS):
            x = LegacyBlock(cin, cout, reps, stride, swr, grow, dtype=self.dtype, param_dtype=self.param_dtype,
                            name=f"block{i + 1}")(x, train)
            if i + 1 in LEGACY_FEATURES["after_block"]:
                # timm hooks the ReLU that starts the next block, i.e. relu(block output).
                feats.append(nn.relu(x))
        for conv_name, bn_name, _, cout in LEGACY_EXIT:
            x = LegacySeparableConv2d(cout, dtype=self.dtype, param_dtype=self.param_dtype, name=conv_name)(x)
            x = nn.relu(bn(bn_name)(x, use_running_average=not train))
        feats.append(x)
        if self.features_only:
            return self.select_features(feats)
        return layers.classifier_head(x, self.num_classes, self.drop_rate, train, name="fc", dtype=self.dtype,
                                      param_dtype=self.param_dtype)


class XceptionAligned(ModelBase):
    """Modified aligned Xception (DeepLab), timm ``XceptionAligned`` (non pre-activation) layout and numerics.

    Attributes:
      arch: ``"xception41"``, ``"xception65"`` or ``"xception71"`` (the block table).
      output_stride: 32 (classification), 16 or 8 (later strides become dilations, as in timm).
      num_classes: classes; 0 returns the pooled 2048-d features.
      drop_rate: dropout before ``head.fc`` (timm default 0).
      features_only: the maps of timm's ``feature_info`` (the input of each strided block's third separable
        conv, then the final block output) selected by ``out_indices``.
    """

    arch: str = "xception41"
    output_stride: int = 32

    @property
    def model_name(self) -> str:
        return str(self.arch)

    def feature_levels(self):
        plan = aligned_plan(self.arch, self.output_stride)  # validates arch and output_stride
        return plan["channels"], plan["strides"]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        """Args: x: ``(N, H, W, in_chans)``; train: batch statistics and dropout. Returns ``(N, num_classes)``."""
        self.check_input(x)
        plan = aligned_plan(self.arch, self.output_stride)
        for i, feats in enumerate((32, 64)):
            # stem.i = ConvNormAct(3x3, stride 2 then 1): torch default conv init, BN eps 1e-3, ReLU.
            x = conv_bn(feats, 3, 2 if i == 0 else 1, "relu", f"stem_{i}", self.dtype, self.param_dtype)(x, train)
        feats_out = []
        for i, (cin, outs, stride, dilation, no_skip, swr) in enumerate(plan["blocks"]):
            x, tap = XceptionModule(cin, outs, stride, dilation, no_skip, swr, dtype=self.dtype,
                                    param_dtype=self.param_dtype, name=f"blocks_{i}")(x, train)
            if i in plan["taps"]:
                feats_out.append(tap)
        feats_out.append(x)
        if self.features_only:
            return self.select_features(feats_out)
        if self.num_classes == 0:  # timm's head has no parameters then, so no ``head`` module either
            return layers.classifier_head(x, 0, 0.0, train, name="fc")
        return _Head(self.num_classes, self.drop_rate, self.dtype, self.param_dtype, name="head")(x, train)


# ----------------------------------------------------------------------------------------------------------
# Pretrained weights (data: lightjax.pretrained registers each row; fields in docs/pretrained.md)
# ----------------------------------------------------------------------------------------------------------
from lightjax.models._pretrained_defaults import TIMM_URL, TIMM_XCEPTION  # noqa: E402

PRETRAINED_CFGS: Dict[str, Dict[str, Any]] = {
    # timm's legacy_xception (Cadene's port of the Keras weights) has no hub repo: its GitHub release file only.
    "xception.tf_in1k": dict(TIMM_XCEPTION, url=TIMM_URL + "v0.1-cadene/xception-43020ad28.pth", sha256="43020ad28",
                             crop_pct=0.8975, top1=79.058, top5=94.396, source="timm legacy_xception.tf_in1k"),
    "xception41.tf_in1k": dict(TIMM_XCEPTION, hf_hub_id="timm/xception41.tf_in1k", crop_pct=0.903, top1=78.550,
                               top5=94.282, source="timm xception41.tf_in1k"),
    "xception65.tf_in1k": dict(TIMM_XCEPTION, hf_hub_id="timm/xception65.tf_in1k", crop_pct=0.903, top1=79.558,
                               top5=94.656, source="timm xception65.tf_in1k"),
    "xception65.ra3_in1k": dict(TIMM_XCEPTION, hf_hub_id="timm/xception65.ra3_in1k", crop_pct=0.94, top1=83.186,
                                top5=96.596, source="timm xception65.ra3_in1k"),
    "xception71.tf_in1k": dict(TIMM_XCEPTION, hf_hub_id="timm/xception71.tf_in1k", crop_pct=0.903, top1=79.920,
                               top5=94.908, source="timm xception71.tf_in1k"),
}


# ----------------------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------------------
@variant(Xception, input_size=299, info={"reference": "timm legacy_xception"})
def xception(**kwargs):
    """Xception (Chollet 2017), timm ``legacy_xception`` (22,855,952 params, 299x299)."""


@variant(XceptionAligned, input_size=299, info={"reference": "timm xception41"}, arch="xception41")
def xception41(**kwargs):
    """Modified aligned Xception-41, timm ``xception41`` (26,969,560 params)."""


@variant(XceptionAligned, input_size=299, info={"reference": "timm xception65"}, arch="xception65")
def xception65(**kwargs):
    """Modified aligned Xception-65, timm ``xception65`` (39,916,312 params)."""


@variant(XceptionAligned, input_size=299, info={"reference": "timm xception71"}, arch="xception71")
def xception71(**kwargs):
    """Modified aligned Xception-71, timm ``xception71`` (42,338,736 params)."""
