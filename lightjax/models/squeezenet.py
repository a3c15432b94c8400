"""SqueezeNet 1.0 / 1.1.

Paper: "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB model size",
Iandola et al., 2016 (https://arxiv.org/abs/1602.07360). 1.1 is from the SqueezeNet repository (same accuracy,
2.4x less computation). Reference code: the seed article == torchvision ``squeezenet1_0/1_1``.

Flax paths mirror the PyTorch keys: ``features.3.squeeze.weight`` ↔ ``params/features_3/squeeze/kernel``,
``classifier.1.weight`` ↔ ``params/classifier_1/kernel``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from lightjax import ops
from lightjax.models import layers
from lightjax.models.base import ModelBase
from lightjax.models.registry import variant

# ----------------------------------------------------------------------------------------------------------
# Architecture: the ``features`` Sequential, entry i is torch's ``features.i``.
#   ("conv", out, kernel, stride) | ("relu",) | ("pool",)  MaxPool2d(3, 2, ceil_mode=True)
#   ("fire", squeeze, expand1x1, expand3x3)
# ----------------------------------------------------------------------------------------------------------
ARCH = {
    "1_0": (
        ("conv", 96, 7, 2), ("relu",), ("pool",),
        ("fire", 16, 64, 64), ("fire", 16, 64, 64), ("fire", 32, 128, 128), ("pool",),
        ("fire", 32, 128, 128), ("fire", 48, 192, 192), ("fire", 48, 192, 192), ("fire", 64, 256, 256), ("pool",),
        ("fire", 64, 256, 256),
    ),
    "1_1": (
        ("conv", 64, 3, 2), ("relu",), ("pool",),
        ("fire", 16, 64, 64), ("fire", 16, 64, 64), ("pool",),
        ("fire", 32, 128, 128), ("fire", 32, 128, 128), ("pool",),
        ("fire", 48, 192, 192), ("fire", 48, 192, 192), ("fire", 64, 256, 256), ("fire", 64, 256, 256),
    ),
}


def _level_channels(arch) -> Tuple[int, ...]:
    """Channels at the end of each stride level (before every pool, and at the end)."""
    chans, c = [], 0
    for entry in arch:
        if entry[0] == "conv":
            c = entry[1]
        elif entry[0] == "fire":
            c = entry[2] + entry[3]
        elif entry[0] == "pool":
            chans.append(c)
    return tuple(chans + [c])


# ----------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------
class Fire(nn.Module):
    """squeeze 1x1 → ReLU → (expand 1x1 → ReLU ‖ expand 3x3 (pad 1) → ReLU), concatenated on channels.

    Returns the two halves as a tuple, the channel concatenation torch computes: pooling and ReLU are per
    channel and the next squeeze convolution reads the parts directly (``layers.Conv2d`` accepts channel parts,
    ``ops.conv2d_concat``), so the concatenation is only built where a whole tensor is needed (``_cat``).
    Accepts a tensor or such a tuple.
    """

    squeeze_planes: int
    expand1x1_planes: int
    expand3x3_planes: int
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Union[jax.Array, Tuple[jax.Array, ...]]) -> Tuple[jax.Array, jax.Array]:
        conv = lambda f, k, p, name: layers.Conv2d(  # noqa: E731
            f, k, padding=p, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=layers.kaiming_uniform, bias_init=nn.initializers.zeros, name=name)
        x = nn.relu(conv(self.squeeze_planes, 1, 0, "squeeze")(x))
        return (nn.relu(conv(self.expand1x1_planes, 1, 0, "expand1x1")(x)),
                nn.relu(conv(self.expand3x3_planes, 3, 1, "expand3x3")(x)))


def _cat(x: Union[jax.Array, Tuple[jax.Array, ...]]) -> jax.Array:
    """A fire output's channel parts as the one tensor torch has."""
    return jnp.concatenate(x, axis=-1) if isinstance(x, tuple) else x


def _per_part(fn, x: Union[jax.Array, Tuple[jax.Array, ...]]):
    """``fn`` (a per-channel op: pooling, dropout) applied to each channel part, or to a whole tensor."""
    return tuple(fn(p) for p in x) if isinstance(x, tuple) else fn(x)


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------
class SqueezeNet(ModelBase):
    """SqueezeNet; head = Dropout → 1x1 conv → ReLU → global average pool (logits are ≥ 0, as in torch).

    Attributes:
      version: ``"1_0"`` or ``"1_1"``.
      num_classes: classes; 0 returns the pooled 512-d features.
      features_only: return the maps at strides 2, 4, 8, 16 selected by ``out_indices``.
    """

    version: str = "1_0"
    drop_rate: float = 0.5
    out_indices: Sequence[int] = (0, 1, 2, 3)

    @property
    def model_name(self) -> str:
        return f"squeezenet{self.version}"

    def check_family_fields(self) -> None:
        if self.version not in ARCH:
            raise ValueError(f"SqueezeNet version must be one of {sorted(ARCH)}, got {self.version!r}")

    def feature_levels(self):
        return _level_channels(ARCH[self.version]), (2, 4, 8, 16)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False):
        """Args: x: ``(N, H, W, in_chans)``; train: dropout on. Returns logits ``(N, num_classes)``."""
        self.check_input(x)
        feats = []
        for i, entry in enumerate(ARCH[self.version]):
            kind = entry[0]
            if kind == "conv":
                _, out, k, s = entry
                x = layers.Conv2d(out, k, s, 0, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                                  kernel_init=layers.kaiming_uniform, bias_init=nn.initializers.zeros,
                                  name=f"features_{i}")(x)
            elif kind == "relu":
                x = nn.relu(x)
            elif kind == "pool":
                feats.append(_cat(x))
                x = _per_part(lambda p: ops.max_pool2d(p, 3, 2, ceil_mode=True), x)
            else:
                _, sq, e1, e3 = entry
                x = Fire(sq, e1, e3, self.dtype, self.param_dtype, name=f"features_{i}")(x)
        if self.features_only:
            return self.select_features(feats + [_cat(x)])
        if self.num_classes == 0:
            return ops.global_avg_pool(_cat(x)).astype(jnp.float32)
        # Dropout per part: one Bernoulli mask per element either way (the draws differ from torch's anyway).
        x = _per_part(nn.Dropout(self.drop_rate, deterministic=not train), x)
        x = layers.Conv2d(self.num_classes, 1, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                          kernel_init=layers.normal_init(0.01), bias_init=nn.initializers.zeros,
                          name="classifier_1")(x)
        x = nn.relu(x)
        return ops.global_avg_pool(x).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------------
# Pretrained weights (data: lightjax.pretrained registers each row; fields in docs/pretrained.md)
# ----------------------------------------------------------------------------------------------------------
from lightjax.models._pretrained_defaults import TV, TV_URL  # noqa: E402

PRETRAINED_CFGS: Dict[str, Dict[str, Any]] = {
    "squeezenet1_0.tv_in1k": dict(TV, url=TV_URL + "squeezenet1_0-b66bff10.pth", sha256="b66bff10", resize_size=256,
                                  top1=58.092, top5=80.42, source="torchvision SqueezeNet1_0_Weights.IMAGENET1K_V1"),
    "squeezenet1_1.tv_in1k": dict(TV, url=TV_URL + "squeezenet1_1-b8a52dc0.pth", sha256="b8a52dc0", resize_size=256,
                                  top1=58.178, top5=80.624, source="torchvision SqueezeNet1_1_Weights.IMAGENET1K_V1"),
}


# ----------------------------------------------------------------------------------------------------------
# Variants
# ----------------------------------------------------------------------------------------------------------
@variant(SqueezeNet, input_size=224, info={"reference": "torchvision squeezenet1_0"}, version="1_0")
def squeezenet1_0(**kwargs):
    """SqueezeNet 1.0 (torchvision ``squeezenet1_0``, 1,248,424 params)."""


@variant(SqueezeNet, input_size=224, info={"reference": "torchvision squeezenet1_1"}, version="1_1")
def squeezenet1_1(**kwargs):
    """SqueezeNet 1.1 (torchvision ``squeezenet1_1``, 1,235,496 params)."""
