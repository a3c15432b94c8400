"""Shared layers: the torch-compatible building blocks every family is made of.

Everything here matches PyTorch numerics (explicit symmetric padding, ceil-mode pooling, BatchNorm with
PyTorch's unbiased running variance) and stores parameters under Flax's usual names (``kernel``, ``bias``,
``scale``; ``mean``/``var`` in ``batch_stats``), so a PyTorch checkpoint maps to a Flax tree by name.

Modules take ``dtype`` (computation) and ``param_dtype`` (storage, float32 by default) like ``flax.linen``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lightjax import ops

Dtype = Any
Initializer = Callable[..., jax.Array]

# ----------------------------------------------------------------------------------------------------------
# Initialisers, named after what PyTorch calls them.
# ----------------------------------------------------------------------------------------------------------
#: ``nn.Conv2d`` / ``nn.Linear`` default: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_init: Initializer = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
#: ``init.kaiming_uniform_(w)`` (a=0, fan_in, gain sqrt(2)).
kaiming_uniform: Initializer = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")
#: ``init.kaiming_normal_(w, mode="fan_out")`` (torchvision MobileNet, timm).
kaiming_normal_fan_out: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
#: ``init.kaiming_normal_(w, mode="fan_in")``.
kaiming_normal_fan_in: Initializer = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def normal_init(std: float) -> Initializer:
    """``init.normal_(w, 0, std)``."""
    return nn.initializers.normal(stddev=std)


def torch_bias_init(fan_in: int) -> Initializer:
    """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / max(fan_in, 1) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


# ----------------------------------------------------------------------------------------------------------
# Activations (PyTorch definitions).
# ----------------------------------------------------------------------------------------------------------
# Defined in lightjax.ops.act, which also gives the export formulation its HardSwish/HardSigmoid primitives.
relu6 = ops.relu6
hard_sigmoid = ops.hard_sigmoid
hard_swish = ops.hard_swish


def identity(x: jax.Array) -> jax.Array:
    return x


ACTIVATIONS = {
    "relu": nn.relu,
    "relu6": relu6,
    "hard_swish": hard_swish,
    "hardswish": hard_swish,
    "hard_sigmoid": hard_sigmoid,
    "sigmoid": nn.sigmoid,
    "swish": nn.swish,
    "silu": nn.swish,
    "identity": identity,
    None: identity,
}


def get_act(act: Union[str, Callable, None]) -> Callable:
    """Activation by name (``'relu'``, ``'relu6'``, ``'hard_swish'``, ...) or passthrough of a callable."""
    if callable(act):
        return act
    try:
        return ACTIVATIONS[act]
    except KeyError:
        raise ValueError(f"unknown activation {act!r}; known: {sorted(k for k in ACTIVATIONS if k)}") from None


# ----------------------------------------------------------------------------------------------------------
# Core layers.
# ----------------------------------------------------------------------------------------------------------
class BatchNorm(nn.Module):
    """BatchNorm over the last axis with PyTorch's running-statistics rule.

    PyTorch folds the *unbiased* batch variance (x n/(n-1)) into ``running_var``; ``flax.linen.BatchNorm``
    folds the biased one and cannot be told otherwise, so ported models would drift in train mode. Batch
    statistics are computed in float32 (two-pass) whatever ``dtype`` is. Under ``jit`` with a sharded batch
    the means are over the global batch, i.e. synchronised across devices.

    Attributes:
      momentum: Flax convention, ``1 - torch_momentum`` (0.9 for torch's default 0.1).
      epsilon: the reference's epsilon (1e-5 torch default, 1e-3 for torchvision MobileNetV3 / timm aligned
        Xception).
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    use_scale: bool = True
    use_bias: bool = True
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    scale_init: Initializer = nn.initializers.ones
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Union[jax.Array, Sequence[jax.Array]],
                 use_running_average: bool = True) -> Union[jax.Array, List[jax.Array]]:
        """Args: x: ``(..., C)``, or a list of channel parts (see ``ops.conv2d_parts``), normalised as their
        concatenation and returned as parts."""
        parts = list(x) if isinstance(x, (list, tuple)) else None
        xs = parts if parts is not None else [x]
        features = sum(p.shape[-1] for p in xs)
        # Running statistics are float32 (float64 with float64 parameters) and keep the dtype they were stored
        # with: an update that changed it would change the train state's types after the first step, and
        # ``jit`` would trace and compile the train step a second time.
        stats_dtype = jnp.promote_types(self.param_dtype, jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), stats_dtype))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), stats_dtype))
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype) if self.use_scale else None
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype) if self.use_bias else None
        xs_acc = [p.astype(jnp.promote_types(p.dtype, jnp.float32)) for p in xs]  # float32, or float64 under x64
        if use_running_average:
            mul = jax.lax.rsqrt(ra_var.value + self.epsilon)
            if scale is not None:
                mul = mul * scale
            shift = -ra_mean.value * mul
            if bias is not None:
                shift = shift + bias
            out = [p * k + b for p, k, b in zip(xs_acc, split_like(mul, xs), split_like(shift, xs))]
        else:
            # Per channel part: the statistics are per channel, so parts never mix (ops.batch_norm_train has
            # the analytic gradient).
            acc = xs_acc[0].dtype
            k = jnp.ones((features,), acc) if scale is None else scale.astype(acc)
            b = jnp.zeros((features,), acc) if bias is None else bias.astype(acc)
            results = [ops.batch_norm_train(p, kp, bp, self.epsilon)
                       for p, kp, bp in zip(xs_acc, split_like(k, xs), split_like(b, xs))]
            out = [r[0] for r in results]
            if not self.is_initializing():
                mean, var = (jnp.concatenate(s) if len(s) > 1 else s[0] for s in zip(*[r[1:] for r in results]))
                n = xs[0].size // xs[0].shape[-1]
                unbiased = var * (n / max(n - 1, 1))
                m = self.momentum
                for ra, stat in ((ra_mean, mean), (ra_var, unbiased)):
                    ra.value = (m * ra.value + (1.0 - m) * jax.lax.stop_gradient(stat)).astype(ra.value.dtype)
        out = [o.astype(self.dtype or p.dtype) for o, p in zip(out, xs)]
        return out if parts is not None else out[0]


class Conv2d(nn.Module):
    """``torch.nn.Conv2d`` in NHWC: explicit (symmetric) padding, groups, dilation, optional bias.

    The kernel is stored as ``(kh, kw, in_channels // groups, features)``; how it is computed (XLA grouped
    conv or a backend-specific formulation) is decided in :mod:`lightjax.ops`.
    """

    features: int
    kernel_size: Union[int, Tuple[int, int]] = 1
    stride: Union[int, Tuple[int, int]] = 1
    padding: ops.Padding = 0
    dilation: Union[int, Tuple[int, int]] = 1
    groups: int = 1
    use_bias: bool = False
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = torch_default_init
    bias_init: Optional[Initializer] = None
    #: > 0: read ``channel_shuffle(x, shuffle_in)`` (folded into the weight on CPU 1x1, see ``ops.conv2d``).
    shuffle_in: int = 0
    #: return the output as a list of channel parts (one per group where the product runs per group on CPU,
    #: see ``ops.conv2d_parts``; otherwise one part).
    output_parts: bool = False

    @nn.compact
    def __call__(self, x: Union[jax.Array, Sequence[jax.Array]]) -> Union[jax.Array, List[jax.Array]]:
        """Args: x: ``(N, H, W, C_in)``, or a sequence of channel parts read as their concatenation
        (see ``ops.conv2d_concat``). Returns ``(N, H', W', features)`` (a list of channel parts with
        ``output_parts``)."""
        parts = list(x) if isinstance(x, (list, tuple)) else None
        cin = sum(p.shape[-1] for p in parts) if parts is not None else x.shape[-1]
        if cin % self.groups or self.features % self.groups:
            raise ValueError(
                f"{self.name or 'Conv2d'}: channels in={cin}, out={self.features} not divisible by groups={self.groups}"
            )
        kh, kw = ops.to_pairs(self.kernel_size)
        kernel = self.param("kernel", self.kernel_init, (kh, kw, cin // self.groups, self.features), self.param_dtype)
        bias = None
        if self.use_bias:
            bias_init = self.bias_init or torch_bias_init(kh * kw * cin // self.groups)
            bias = self.param("bias", bias_init, (self.features,), self.param_dtype)
        kw = dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
                  shuffle_in=self.shuffle_in)
        if parts is not None:
            *parts, kernel, bias = nn.dtypes.promote_dtype(*parts, kernel, bias, dtype=self.dtype)
            x = parts
        else:
            x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        if self.output_parts:
            ys = ops.conv2d_parts(x, kernel, **kw)
            if bias is not None:
                ys = [y + b for y, b in zip(ys, split_like(bias, ys))]
            return ys
        y = ops.conv2d_concat(x, kernel, **kw) if parts is not None else ops.conv2d(x, kernel, **kw)
        if bias is not None:
            y = y + bias
        return y


def split_like(v: jax.Array, parts: Sequence[jax.Array]) -> List[jax.Array]:
    """A per-channel vector ``(C,)`` cut like the channel parts ``parts``."""
    if len(parts) == 1:
        return [v]
    bounds = np.cumsum([0] + [p.shape[-1] for p in parts])
    return [v[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


class Linear(nn.Module):
    """``torch.nn.Linear`` (kernel stored transposed, ``(in, out)``), torch's default init unless given."""

    features: int
    use_bias: bool = True
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = torch_default_init
    bias_init: Optional[Initializer] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (fan_in, self.features), self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init or torch_bias_init(fan_in), (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jnp.dot(x, kernel)
        if bias is not None:
            y = y + bias
        return y


class ConvBnAct(nn.Module):
    """Conv2d → BatchNorm → activation, as torchvision's ``Conv2dNormActivation`` (children ``0``, ``1``).

    ``conv_name`` / ``bn_name`` give the submodule names so that the Flax path mirrors the PyTorch one
    (``features.0.0.weight`` ↔ ``features_0/0/kernel``; timm: ``conv`` / ``bn``).
    """

    features: int
    kernel_size: Union[int, Tuple[int, int]] = 3
    stride: Union[int, Tuple[int, int]] = 1
    padding: Optional[ops.Padding] = None  # None: (k - 1) // 2 * dilation, torchvision's rule
    dilation: int = 1
    groups: int = 1
    act: Union[str, Callable, None] = "relu"
    conv_name: str = "0"
    bn_name: str = "1"
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = kaiming_normal_fan_out

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        k = ops.to_pairs(self.kernel_size)
        pad = self.padding
        if pad is None:
            pad = (torch_padding(k[0], 1, self.dilation), torch_padding(k[1], 1, self.dilation))
        x = Conv2d(
            self.features, k, self.stride, pad, self.dilation, self.groups, use_bias=False,
            dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=self.kernel_init, name=self.conv_name,
        )(x)
        x = BatchNorm(
            momentum=self.bn_momentum, epsilon=self.bn_eps, dtype=self.dtype, param_dtype=self.param_dtype,
            name=self.bn_name,
        )(x, use_running_average=not train)
        return get_act(self.act)(x)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation as torchvision's ``SqueezeExcitation``: pool → fc1 → act → fc2 → gate → scale.

    ``fc1``/``fc2`` are 1x1 convolutions with bias (names as in torchvision and timm ``conv_reduce``/
    ``conv_expand`` via ``names``).
    """

    squeeze_channels: int
    act: Union[str, Callable] = "relu"
    gate: Union[str, Callable] = "hard_sigmoid"
    names: Tuple[str, str] = ("fc1", "fc2")
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = torch_default_init
    #: None: PyTorch's default bias init (torchvision MobileNetV3 re-initialises both biases to zero).
    bias_init: Optional[Initializer] = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        s = ops.global_avg_pool(x, keepdims=True)
        conv = functools.partial(Conv2d, kernel_size=1, use_bias=True, dtype=self.dtype, param_dtype=self.param_dtype,
                                 kernel_init=self.kernel_init, bias_init=self.bias_init)
        s = conv(self.squeeze_channels, name=self.names[0])(s)
        s = get_act(self.act)(s)
        s = conv(c, name=self.names[1])(s)
        return x * get_act(self.gate)(s)


# ----------------------------------------------------------------------------------------------------------
# Helpers every model uses (input checks, feature selection, heads).
# ----------------------------------------------------------------------------------------------------------
def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """torchvision/timm ``_make_divisible``: round to a multiple of ``divisor``, never below 90% of ``v``."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def round_channels(channels: float, width: float, divisor: int = 8) -> int:
    """Channels at width multiplier ``width``: torchvision's ``_make_divisible(c * width_mult, 8)`` (MobileNet
    v2, v3's ``adjust_channels``) == timm's ``round_channels`` (MobileNet v1/v2/v3)."""
    return make_divisible(channels * width, divisor)


def torch_padding(kernel_size: int, stride: int = 1, dilation: int = 1) -> int:
    """Symmetric padding that keeps ``ceil(size / stride)`` outputs for odd kernels: timm's ``get_padding``,
    ``((stride - 1) + dilation * (kernel_size - 1)) // 2`` (torchvision's ``(k - 1) // 2 * dilation`` at
    stride 1)."""
    return ((stride - 1) + dilation * (kernel_size - 1)) // 2


def classifier_head(x: jax.Array, num_classes: int, drop_rate: float, train: bool, *, name: str,
                    dtype: Optional[Dtype] = None, param_dtype: Dtype = jnp.float32, use_bias: bool = True,
                    kernel_init: Initializer = torch_default_init, bias_init: Optional[Initializer] = None
                    ) -> jax.Array:
    """Global average pool → Dropout → :class:`Linear` ``name``, as float32 logits (timm's ``ClassifierHead``);
    ``num_classes == 0`` returns the pooled features ``(N, C)``. Call it inside a compact ``__call__``: the
    Linear is a child of the calling module, so its path is ``<module>/<name>``.

    Args:
      x: ``(N, H, W, C)`` final feature map.
      num_classes: classifier outputs (0: none).
      drop_rate: dropout rate (rng ``"dropout"``; no draw when 0 or not ``train``).
      train: dropout on.
      name: the Linear's name (the PyTorch module name: ``fc``, ``classifier_1``, ...).
      dtype, param_dtype, use_bias, kernel_init, bias_init: as for :class:`Linear`.
    """
    x = ops.global_avg_pool(x)
    if num_classes == 0:
        return x.astype(jnp.float32)
    x = nn.Dropout(drop_rate, deterministic=not train)(x)
    x = Linear(num_classes, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init,
               bias_init=bias_init, name=name)(x)
    return x.astype(jnp.float32)


def check_input(x: jax.Array, in_chans: int, model: str) -> None:
    """Raises a clear error unless ``x`` is NHWC with ``in_chans`` channels."""
    if not hasattr(x, "ndim") or x.ndim != 4:
        shape = getattr(x, "shape", None)
        raise ValueError(
            f"{model}: expected an NHWC batch of shape (N, H, W, {in_chans}), got shape {shape}"
        )
    if x.shape[-1] != in_chans:
        hint = ""
        if x.shape[1] == in_chans:
            hint = " (this looks like NCHW: transpose with x.transpose(0, 2, 3, 1))"
        raise ValueError(
            f"{model}: expected an NHWC batch of shape (N, H, W, {in_chans}), got shape {tuple(x.shape)}{hint}"
        )


def check_out_indices(out_indices: Sequence[int], num_levels: int, model: str) -> Tuple[int, ...]:
    """Validates ``out_indices`` against the model's feature levels."""
    out = tuple(int(i) for i in out_indices)
    bad = [i for i in out if not -num_levels <= i < num_levels]
    if bad:
        raise ValueError(
            f"{model}: out_indices {bad} out of range; this model has {num_levels} feature levels (0..{num_levels - 1})"
        )
    return tuple(i % num_levels for i in out)


def select_features(feats: Sequence[jax.Array], out_indices: Sequence[int], model: str) -> list:
    """Returns ``[feats[i] for i in out_indices]`` after validating the indices."""
    return [feats[i] for i in check_out_indices(out_indices, len(feats), model)]


def feature_info(channels: Sequence[int], strides: Sequence[int], out_indices: Sequence[int], model: str) -> list:
    """``[{'stride': s, 'channels': c, 'index': i}, ...]`` for the selected levels."""
    idx = check_out_indices(out_indices, len(channels), model)
    return [{"index": i, "stride": strides[i], "channels": channels[i]} for i in idx]
