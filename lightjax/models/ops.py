"""Low-level array ops shared by every family: the ONE place that decides how a convolution is computed.

Every convolution in lightjax (dense, grouped, depthwise, pointwise) goes through :func:`conv2d`, every
channel shuffle through :func:`channel_shuffle` (or ``conv2d(shuffle_in=...)``), every pooling through
:func:`max_pool2d` / :func:`avg_pool2d`. Parameters are always stored in Flax's layout (kernel
``(kh, kw, in/groups, out)``), whatever formulation runs, so checkpoints do not depend on the backend.

Formulations (picked per backend by :func:`conv_impl`):

``"xla"``
    ``lax.conv_general_dilated`` with ``feature_group_count``: the right choice on GPU/TPU, and the reference
    every other formulation is tested against (forward and gradients, ``tests/test_ops.py``).
``"cpu"`` (default when ``jax.default_backend() == "cpu"``)
    XLA:CPU runs ``feature_group_count`` convolutions 40-120x slower than PyTorch and 1x1 convolutions 2-4x
    slower than the same matrix product, so on CPU:

    * pointwise (1x1, groups 1): one matrix product on ``(N*H*W, C)`` with a custom VJP whose weight gradient
      contracts the flattened ``N*H*W`` axis directly (autodiff made XLA transpose whole activations);
    * depthwise (``groups == C_in``): ``kh*kw`` shifted multiply-adds on the padded NHWC input (for inference
      with stride 1 and C a multiple of 8, on rows of ``W*C``: one long slice per tap), with a custom
      VJP: input gradient as shifted multiply-adds of the output gradient (one polyphase component per
      stride phase, no zero-dilated gradient), weight gradient as ONE variadic reduction over W' for all
      taps (one pass over x and dy, 3x faster than a reduction per tap) then a small sum;
    * grouped 1x1 (ShuffleNet, groups <= 8): forward as one matrix product per group on channel slices for
      large group blocks, else one dense product with a block-diagonal weight built from the grouped kernel
      (``SPLIT_GROUPS_MIN_BLOCK``); backward (custom VJP) always one ``dx`` and one ``dW`` product per group;
    * a 1x1 convolution of a channel concatenation (:func:`conv2d_concat`, SqueezeNet's fire outputs): one
      product per part, summed, instead of materialising the concatenation; a grouped 1x1 whose input parts
      line up with its groups runs one product per part, and :func:`conv2d_parts` returns a per-group
      product's output as one part per group (ShuffleNet v1 keeps its activations as g parts, see
      :func:`regroup`);
    * dense k x k: ``lax.conv`` forward, or for an input with few channels (RGB stems) ``kh*kw*C_in``
      broadcast multiply-adds in one fused loop (inference) / im2col + one matrix product (under
      differentiation); backward as im2col of the ``kh*kw`` shifted slices + two matrix products (custom
      VJP); grouped k x k stays on ``lax.conv``;
    * channel shuffle: a gather with a constant permutation, the inverse gather as its VJP; a shuffle that feeds
      a 1x1 convolution (``conv2d(..., shuffle_in=g)``) is read as per-group strided slices (megvii's order) or
      folded into the block-diagonal weight's rows instead;
    * global average pooling: a batched product with a constant ``1/(H*W)`` row (a reduction let XLA fuse the
      classifier's product into YNNPACK's slower reduction kernel);
    * max / average pooling: the ``kh*kw`` windows (unit-stride slices of the stride phases, like the
      depthwise taps) combined in one fused loop (5x faster than
      ``reduce_window`` here), max-pool gradient to the first maximum of each window (PyTorch's rule).

    On every backend, train-mode BatchNorm (:func:`batch_norm_train`) has the textbook gradient as a custom VJP
    (two reductions and one elementwise pass, fewer than autodiff of the two-pass statistics).

    Everything is plain ``jnp``/``lax`` (plus ``jax.custom_vjp``), so ``jit``, ``grad`` and SPMD sharding
    of the batch work as with ``lax.conv``. Low-precision inputs (bfloat16/float16) are accumulated in float32
    and cast back to the input dtype, like ``lax.conv`` on CPU.

The environment variable ``LIGHTJAX_CONV_IMPL`` (``"xla"`` / ``"cpu"``) or :func:`set_conv_impl` overrides the
choice; it is read at trace time, so it applies to functions traced after it is set.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Padding = Union[int, Tuple[int, int], Sequence[Tuple[int, int]]]

_CONV_IMPL_OVERRIDE: Optional[str] = None
_KNOWN_IMPLS = ("xla", "cpu")
#: Dense (groups == 1) k x k convolutions with at most this many input channels (RGB stems) run their forward
#: as broadcast multiply-adds on CPU.
FEW_CHANNELS_MAX_CIN = 4
#: Grouped 1x1 convolutions with at most this many groups run as one dense dot with a block-diagonal weight.
MAX_BLOCK_DIAGONAL_GROUPS = 8
#: Grouped 1x1 (CPU) forward: a group block of at least ``C_in/g * C_out/g`` weights runs as one matrix product
#: per group (slices in, concatenation out), a smaller one as ONE product with the block-diagonal weight, whose
#: g-fold FLOPs cost less there than g narrow products (ShuffleNet v1 g3, batch 32, Eigen dots, forward ms
#: block-diagonal / per group: 28², 80x20 block 5.6 / 11.2, 20x80 3.9 / 6.4; 14², 160x40 6.9 / 4.6, 40x160
#: 5.5 / 4.6; 7², 320x80 6.7 / 3.4). The backward is per group at every size (28² 80x20: forward+backward
#: 26.2 ms block-diagonal vs 19.9 per group).
SPLIT_GROUPS_MIN_BLOCK = 6400


def set_conv_impl(impl: Optional[str]) -> None:
    """Forces a convolution formulation (``None`` restores the per-backend default).

    Args:
      impl: one of ``"xla"``, ``"cpu"``, or ``None``.
    """
    global _CONV_IMPL_OVERRIDE
    if impl is not None and impl not in _KNOWN_IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}; known: {_KNOWN_IMPLS}")
    _CONV_IMPL_OVERRIDE = impl


def conv_impl() -> str:
    """Returns the formulation used for convolutions and shuffles: override, env, else per default backend."""
    impl = _CONV_IMPL_OVERRIDE or os.environ.get("LIGHTJAX_CONV_IMPL")
    if impl:
        if impl not in _KNOWN_IMPLS:
            raise ValueError(f"LIGHTJAX_CONV_IMPL={impl!r} is not one of {_KNOWN_IMPLS}")
        return impl
    return "cpu" if jax.default_backend() == "cpu" else "xla"


#: XLA:CPU compile options for lightjax models (see :func:`compiler_options`): of XLA's default YNNPACK library
#: fusions only the reductions (BatchNorm statistics, weight-gradient sums: training fell to ~0.5x without
#: them), so dense k x k convolutions AND matrix products run on XLA's Eigen kernels (SqueezeNet's 3x3 expand
#: forward 1.0-2x faster; grouped and pointwise 1x1 products 1.1-1.7x faster at ShuffleNet's sizes).
#:
#: ``xla_cpu_prefer_vector_width=512``: LLVM otherwise vectorises XLA's fused loops 8 floats wide (AVX2 width)
#: even on AVX-512 CPUs; the multiply-add fusions (RGB stems, depthwise taps) are instruction-bound. SqueezeNet
#: 1.1's stem + pool 14.5 -> 9.1 ms; whole forwards, three compiled copies in one process (medians of 10):
#: SqueezeNet 86.4 / 85.7 -> 73.6 ms, MobileNetV1 122.8 / 123.5 -> 117.8, V2 105.4 / 105.9 -> 99.1, V3-large
#: 83.5 / 83.1 -> 80.1, ShuffleNets and Xception65 within 1%; SqueezeNet train step 313 / 311 -> 301 ms. Element-
#: wise results are bitwise the same (SqueezeNet stem + pool); XLA's vectorised reductions sum in another order
#: (default digits job: loss 0.5378 -> 0.5430, top-1 96.1 -> 97.8%). CPUs without AVX-512 keep what they have.
_CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE",
    "xla_cpu_prefer_vector_width": 512,
}


@functools.lru_cache(maxsize=None)
def _options_accepted(backend: str, items: Tuple[Tuple[str, str], ...]) -> bool:
    # A jaxlib that renamed the option or its values rejects it at compile time: check once, on a tiny program.
    try:
        probe = jax.device_put(jnp.zeros((1,), jnp.float32), jax.local_devices(backend=backend)[0])
        jax.jit(lambda v: v + 1).lower(probe).compile(compiler_options=dict(items))
        return True
    except Exception:  # noqa: BLE001 -- any rejection means "do not use these options"
        return False


def compiler_options(backend: Optional[str] = None) -> Dict[str, Any]:
    """XLA compile options that lightjax recommends for its models on ``backend`` (default: JAX's default).

    Pass them to ``jax.jit(..., compiler_options=lightjax.compiler_options())`` (``train/`` and
    ``lightjax.bench`` do). On XLA:CPU they keep XLA's YNNPACK fusions for reductions but send dense k x k
    convolutions and matrix products to XLA's Eigen kernels: convolution forwards ran up to 2x faster here
    (SqueezeNet 1.1 inference +22% in a same-process A/B), the 1x1 products of ShuffleNet's sizes 1.1-1.7x
    (inference of the six 224 px flagships +3 to +15% in same-process A/Bs, training within the noise, XLA
    compile of the train step shorter); and they let LLVM vectorise fused loops 512 bits wide (SqueezeNet
    inference -15%, MobileNets -4 to -6%). Returns ``{}`` on other backends or when the installed jaxlib
    rejects the options; an option ``XLA_FLAGS`` already sets is left out (the user's choice wins). Results are
    identical to float32 rounding either way.

    Args:
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"`` or ``None`` for ``jax.default_backend()``.

    Returns:
      A dict for ``jax.jit(compiler_options=...)`` / ``Lowered.compile(compiler_options=...)``.
    """
    return _cpu_options(backend, _CPU_COMPILER_OPTIONS)


#: XLA options for compiling a model's *initialisation* on CPU: LLVM optimisation level 0. An init program is
#: one random-number kernel per parameter shape that runs once; XLA:CPU spent most of its compile optimising
#: them (MobileNetV2 init 12.5-16.3 s at the default level vs 6.5-7.7 s at 0, ShuffleNetV1 g3 9.0-10.1 vs
#: 5.3-5.9 s). Values are the same to the last bit in ~96% of entries and within 2e-7 relative in the rest.
_CPU_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def init_compiler_options(backend: Optional[str] = None) -> Dict[str, Any]:
    """XLA compile options for a jitted ``model.init`` (see :func:`lightjax.models.init_variables`).

    Returns ``{"xla_backend_optimization_level": 0}`` on CPU (the user's ``XLA_FLAGS`` setting of that level
    wins; ``{}`` if the installed jaxlib rejects it) and ``{}`` elsewhere.
    """
    return _cpu_options(backend, _CPU_INIT_COMPILER_OPTIONS)


def _cpu_options(backend: Optional[str], options: Dict[str, Any]) -> Dict[str, Any]:
    # ``options`` on XLA:CPU, less any that XLA_FLAGS already sets (the user's choice wins); {} on other backends
    # or when the installed jaxlib rejects them.
    backend = backend or jax.default_backend()
    flags = os.environ.get("XLA_FLAGS", "")
    if backend != "cpu":
        return {}
    items = tuple(sorted((k, v) for k, v in options.items() if k not in flags))
    return dict(items) if items and _options_accepted(backend, items) else {}


def to_pairs(value: Union[int, Sequence[int]], n: int = 2) -> Tuple[int, ...]:
    """Normalises an int or a sequence to an ``n``-tuple (torch's ``_pair``)."""
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"expected {n} values, got {value}")
    return value


def padding_pairs(padding: Padding) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """Torch-style padding (int, (ph, pw) or ((top, bottom), (left, right))) to explicit low/high pairs.

    Explicit symmetric padding is what PyTorch does; Flax's ``'SAME'`` puts the odd pad on the high side,
    which shifts every stride-2 layer by one pixel relative to a PyTorch checkpoint.
    """
    if isinstance(padding, str):
        raise ValueError(f"string padding {padding!r} is not supported: give explicit (torch-style) padding")
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    padding = tuple(padding)
    if len(padding) == 2 and all(isinstance(p, int) for p in padding):
        return ((padding[0], padding[0]), (padding[1], padding[1]))
    if len(padding) == 2 and all(len(p) == 2 for p in padding):
        return tuple((int(a), int(b)) for a, b in padding)  # type: ignore[return-value]
    raise ValueError(f"cannot interpret padding {padding!r}")


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    stride: Union[int, Sequence[int]] = 1,
    padding: Padding = 0,
    dilation: Union[int, Sequence[int]] = 1,
    groups: int = 1,
    precision=None,
    shuffle_in: int = 0,
) -> jax.Array:
    """2-D convolution in NHWC with a Flax HWIO kernel, PyTorch semantics (explicit padding, groups).

    Args:
      x: ``(N, H, W, C_in)``.
      kernel: ``(kh, kw, C_in // groups, C_out)``.
      stride, padding, dilation: as in ``torch.nn.Conv2d``.
      groups: ``feature_group_count``; ``groups == C_in`` is a depthwise convolution.
      precision: passed to XLA.
      shuffle_in: if > 0, the convolution reads ``channel_shuffle(x, shuffle_in)``. Where the formulation is a
        matrix product (1x1 on CPU) the permutation is folded into the weight's rows instead of moving the
        activation (ShuffleNet's shuffle then costs nothing); elsewhere the shuffle runs first.

    Returns:
      ``(N, H', W', C_out)``.
    """
    if x.ndim != 4:
        raise ValueError(f"conv2d expects NHWC input of rank 4, got shape {x.shape}")
    cin = x.shape[-1]
    if cin != kernel.shape[2] * groups:
        raise ValueError(
            f"conv2d: input has {cin} channels but the kernel {kernel.shape} with groups={groups} "
            f"expects {kernel.shape[2] * groups}"
        )
    stride, pads, dilation = to_pairs(stride), padding_pairs(padding), to_pairs(dilation)
    for size, (lo, hi), k, d in zip(x.shape[1:3], pads, kernel.shape[:2], dilation):
        if size + lo + hi < d * (k - 1) + 1:
            raise ValueError(f"conv2d: input {x.shape} padded by {pads} is smaller than the kernel {kernel.shape}")
    impl = conv_impl()
    in_perm = None
    if shuffle_in:
        if impl == "cpu" and _conv_cpu_is_matmul(kernel.shape, groups, cin):
            in_perm = shuffle_permutation(cin, shuffle_in)
        else:
            x = channel_shuffle(x, shuffle_in)
    if impl == "cpu":
        return _conv_cpu(x, kernel, stride, pads, dilation, groups, precision, in_perm)
    return _conv_xla(x, kernel, stride, pads, dilation, groups, precision)


def conv2d_concat(parts: Sequence[jax.Array], kernel: jax.Array, **kwargs) -> jax.Array:
    """``conv2d(concatenate(parts, axis=-1), kernel, **kwargs)`` without materialising the concatenation
    where that is cheaper.

    On CPU a 1x1 convolution (groups 1, no shuffle) of channel parts is the sum of one matrix product per
    part with the matching rows of the kernel: SqueezeNet's fire outputs are two halves (expand 1x1 / 3x3)
    whose concatenation cost more than the next squeeze convolution (55², 128 channels, batch 32: 12.7 ms).
    Elsewhere the parts are concatenated first.

    Args:
      parts: NHWC arrays with equal ``(N, H, W)``; their channels add up to the kernel's input channels.
      kernel, kwargs: as for :func:`conv2d`.
    """
    parts = list(parts)
    if len(parts) == 1:
        return conv2d(parts[0], kernel, **kwargs)
    groups = kwargs.get("groups", 1)
    if _parts_per_group(parts, kernel, kwargs):
        return jnp.concatenate(_grouped_pointwise_of_parts(regroup(parts, [kernel.shape[2]] * groups), kernel,
                                                           kwargs.get("precision")), axis=-1)
    split = (conv_impl() == "cpu" and kernel.shape[:2] == (1, 1) and groups == 1
             and not kwargs.get("shuffle_in", 0) and padding_pairs(kwargs.get("padding", 0)) == ((0, 0), (0, 0)))
    if not split:
        return conv2d(jnp.concatenate(parts, axis=-1), kernel, **kwargs)
    widths = np.cumsum([0] + [p.shape[-1] for p in parts])
    if widths[-1] != kernel.shape[2]:
        raise ValueError(f"conv2d_concat: parts with {widths[-1]} channels in all, kernel {kernel.shape}")
    out = None
    for p, lo, hi in zip(parts, widths[:-1], widths[1:]):
        y = conv2d(p, kernel[:, :, lo:hi, :], **kwargs)
        out = y if out is None else out + y
    return out


def conv2d_parts(x: Union[jax.Array, Sequence[jax.Array]], kernel: jax.Array, **kwargs) -> List[jax.Array]:
    """:func:`conv2d` (of an array, or of channel parts as :func:`conv2d_concat`) returning its output as a
    list of channel parts, read as their concatenation.

    On CPU a grouped 1x1 that runs as one product per group returns one part per group, so the per-group
    outputs are never concatenated, and a consumer that splits them by group again (the next grouped 1x1,
    a per-group residual) reads them as they are. ShuffleNet v1 keeps its activations as such parts: with
    the concatenation XLA:CPU fused each unit's residual sum into the channel slices of the next unit's
    grouped product and recomputed the whole chain of sums for every slice (ShuffleNet v1 g3 inference
    ~100 ms per batch of 32 vs ~75 ms for its units compiled one by one). Elsewhere one part.

    Args:
      x, kernel, kwargs: as for :func:`conv2d` / :func:`conv2d_concat`.

    Returns:
      Channel parts of the ``(N, H', W', C_out)`` output.
    """
    parts = list(x) if isinstance(x, (list, tuple)) else [x]
    groups, shuffle = kwargs.get("groups", 1), kwargs.get("shuffle_in", 0)
    if _parts_per_group(parts, kernel, kwargs):
        return _grouped_pointwise_of_parts(regroup(parts, [kernel.shape[2]] * groups), kernel, kwargs.get("precision"))
    one = len(parts) == 1
    cin = sum(p.shape[-1] for p in parts)
    if not (one and conv_impl() == "cpu" and groups > 1 and _conv_cpu_is_matmul(kernel.shape, groups, cin)
            and to_pairs(kwargs.get("stride", 1)) == (1, 1)
            and padding_pairs(kwargs.get("padding", 0)) == ((0, 0), (0, 0)) and cin == kernel.shape[2] * groups):
        return [conv2d_concat(parts, kernel, **kwargs)]
    layout = _group_layout(cin, groups, shuffle_permutation(cin, shuffle) if shuffle else None)
    if layout is None:  # a permutation the per-group slices cannot express: one block-diagonal product
        return [conv2d(parts[0], kernel, **kwargs)]
    x = parts[0]
    n, h, w, _ = x.shape
    out_dtype = jnp.result_type(x.dtype, kernel.dtype)
    acc = _acc_dtype(out_dtype)
    ys = _grouped_pointwise_parts(x.reshape(n * h * w, cin).astype(acc), kernel.reshape(kernel.shape[2], -1).astype(acc),
                                  groups, layout, kwargs.get("precision"))
    return [y.reshape(n, h, w, -1).astype(out_dtype) for y in ys]


def _parts_per_group(parts, kernel, kwargs) -> bool:
    # A CPU grouped 1x1 (stride 1, no padding or shuffle) of several channel parts: the parts are cut at the
    # group boundaries (``regroup``: nothing moves where they already line up), then one product per group.
    groups = kwargs.get("groups", 1)
    return (len(parts) > 1 and groups > 1 and conv_impl() == "cpu" and kernel.shape[:2] == (1, 1)
            and not kwargs.get("shuffle_in", 0) and to_pairs(kwargs.get("stride", 1)) == (1, 1)
            and padding_pairs(kwargs.get("padding", 0)) == ((0, 0), (0, 0))
            and sum(p.shape[-1] for p in parts) == kernel.shape[2] * groups
            and groups <= MAX_BLOCK_DIAGONAL_GROUPS)


def _grouped_pointwise_of_parts(parts, kernel, precision):
    """Grouped 1x1, group ``h`` reading ``parts[h]``: one product per group (each with its own VJP)."""
    cin_g, cout = kernel.shape[2], kernel.shape[3]
    n = cout // len(parts)
    out = []
    for h, p in enumerate(parts):
        out_dtype = jnp.result_type(p.dtype, kernel.dtype)
        acc = _acc_dtype(out_dtype)
        b, hh, ww, _ = p.shape
        w = kernel.reshape(cin_g, cout)[:, h * n:(h + 1) * n].astype(acc)
        y = _pointwise(p.reshape(b * hh * ww, cin_g).astype(acc), w, precision)
        out.append(y.reshape(b, hh, ww, n).astype(out_dtype))
    return out


def regroup(parts: Sequence[jax.Array], widths: Sequence[int]) -> List[jax.Array]:
    """Channel parts re-cut to the given channel ``widths`` (same concatenation): parts that already line up
    are passed through, others are sliced and/or concatenated only where a boundary requires it.

    Args:
      parts: NHWC arrays read as their concatenation along channels (an array is one part).
      widths: channel counts of the parts wanted; they must add up to the total.

    Returns:
      ``len(widths)`` arrays.
    """
    parts = [parts] if hasattr(parts, "shape") else list(parts)
    have = [p.shape[-1] for p in parts]
    widths = [int(w) for w in widths]
    if have == widths:
        return parts
    if sum(have) != sum(widths) or min(widths, default=1) <= 0:
        raise ValueError(f"regroup: parts of {have} channels cannot be cut into {widths}")
    out, i, off = [], 0, 0
    for need in widths:
        pieces = []
        while need:
            p = parts[i]
            take = min(p.shape[-1] - off, need)
            pieces.append(p if take == p.shape[-1] else p[..., off:off + take])
            need, off = need - take, off + take
            if off == p.shape[-1]:
                i, off = i + 1, 0
        out.append(pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=-1))
    return out


def concat_parts(parts: Union[jax.Array, Sequence[jax.Array]]) -> jax.Array:
    """The array that channel parts stand for (an array is returned as it is)."""
    if hasattr(parts, "shape"):
        return parts
    parts = list(parts)
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def _conv_xla(x, kernel, stride, padding, dilation, groups, precision):
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=stride,
        padding=padding,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
        precision=precision,
    )


# ----------------------------------------------------------------------------------------------------------
# CPU formulations.
# ----------------------------------------------------------------------------------------------------------
def _acc_dtype(dtype) -> jnp.dtype:
    """Accumulation dtype: float32 for bfloat16/float16, the dtype itself for float32/float64."""
    return jnp.promote_types(dtype, jnp.float32)


def _out_size(size: int, k: int, s: int, pad: Tuple[int, int], d: int) -> int:
    return (size + pad[0] + pad[1] - d * (k - 1) - 1) // s + 1


def _conv_cpu_is_matmul(kernel_shape, groups, cin) -> bool:
    """Whether the CPU formulation of this convolution is one matrix product on ``(N*H*W, C_in)``."""
    kh, kw, cin_g, _ = kernel_shape
    depthwise = groups == cin and cin_g == 1
    return kh == kw == 1 and not depthwise and groups <= MAX_BLOCK_DIAGONAL_GROUPS


def _conv_cpu(x, kernel, stride, pads, dilation, groups, precision, in_perm=None):
    kh, kw, cin_g, cout = kernel.shape
    cin = x.shape[-1]
    out_dtype = jnp.result_type(x.dtype, kernel.dtype)
    acc = _acc_dtype(out_dtype)
    if groups == cin and cin_g == 1:
        mult = cout // cin
        if mult > 1:  # depthwise multiplier: output channel o reads input channel o // mult
            x = jnp.repeat(x, mult, axis=-1)
        k = kernel.reshape(kh, kw, cout).astype(acc)
        y = _depthwise(x.astype(acc), k, stride, pads, dilation)
        return y.astype(out_dtype)
    if _conv_cpu_is_matmul(kernel.shape, groups, cin):
        # 1x1: pad (rare), subsample for stride, then a matrix product; dilation is irrelevant.
        if any(p for pair in pads for p in pair):
            x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
        if stride != (1, 1):
            x = x[:, :: stride[0], :: stride[1], :]
        n, h, w, _ = x.shape
        x2 = x.reshape(n * h * w, cin).astype(acc)
        layout = _group_layout(cin, groups, in_perm) if groups > 1 else None
        if layout is not None:
            split = cin_g * (cout // groups) >= SPLIT_GROUPS_MIN_BLOCK
            y = _grouped_pointwise(x2, kernel.reshape(cin_g, cout).astype(acc), groups, layout, split, precision)
            return y.reshape(n, h, w, cout).astype(out_dtype)
        if groups == 1:
            w2 = kernel.reshape(cin, cout).astype(acc)
            if in_perm is not None:  # x[..., perm] @ W == x @ W[argsort(perm)]: permute the weight
                w2 = jnp.take(w2, np.argsort(in_perm), axis=0)
        else:
            w2 = _block_diagonal(kernel.reshape(cin_g, cout).astype(acc), groups, in_perm)
        y = _pointwise(x2, w2, precision)
        return y.reshape(n, h, w, cout).astype(out_dtype)
    if groups == 1:
        few = cin <= FEW_CHANNELS_MAX_CIN  # the multiply-add forward accumulates in float32 like im2col did
        dt = acc if few else out_dtype
        y = _dense_conv(x.astype(dt), kernel.astype(dt), tuple(stride), tuple(tuple(p) for p in pads),
                        tuple(dilation), precision)
        return y.astype(out_dtype)
    return _conv_xla(x, kernel, stride, pads, dilation, groups, precision)


def _block_diagonal(w: jax.Array, groups: int, in_perm=None) -> jax.Array:
    """Grouped 1x1 kernel ``(C_in/g, C_out)`` to the dense ``(C_in, C_out)`` block-diagonal matrix.

    With ``in_perm`` the rows are reordered so that ``x @ dense == x[..., in_perm] @ block_diagonal``: the
    (small) weight absorbs the input permutation instead of the activation being gathered.
    """
    cin_g, cout = w.shape
    cout_g = cout // groups
    blocks = w.reshape(cin_g, groups, cout_g)  # output channel o = group * cout_g + j
    eye = jnp.eye(groups, dtype=w.dtype)
    # dense[g, i, h, j] = blocks[i, h, j] * (g == h)
    dense = (eye[:, None, :, None] * blocks[None, :, :, :]).reshape(groups * cin_g, cout)
    if in_perm is not None:
        dense = jnp.take(dense, np.argsort(in_perm), axis=0)
    return dense


_DOT_NN = (((1,), (0,)), ((), ()))
_DOT_NT = (((1,), (1,)), ((), ()))
_DOT_TN = (((0,), (0,)), ((), ()))  # contract the flattened N*H*W axis of both operands


def _group_layout(cin: int, groups: int, in_perm) -> Optional[str]:
    """Where group ``h`` of a grouped 1x1 finds its input channels in the (unpermuted) activation.

    ``"blocks"``: channels ``[h*k, (h+1)*k)`` (no shuffle folded in); ``"interleaved"``: channels ``h, h+g,
    h+2g, ...`` (megvii's shuffle folded in); ``None``: any other permutation (the caller keeps the
    block-diagonal product, whose weight rows absorb any permutation). ``k = C_in / g``.
    """
    if in_perm is None:
        return "blocks"
    perm = np.asarray(in_perm)  # perm[h*k:(h+1)*k] = activation channels read by group h
    if np.array_equal(perm, np.arange(cin)):
        return "blocks"
    if np.array_equal(perm, _layout_perm(cin, groups, "interleaved")):
        return "interleaved"
    return None


def _layout_perm(cin: int, groups: int, layout: str) -> Optional[np.ndarray]:
    """The input permutation a :func:`_group_layout` stands for (``None`` for ``"blocks"``)."""
    return None if layout == "blocks" else np.arange(cin).reshape(cin // groups, groups).T.reshape(-1)


def _group_split(x2, groups, layout):
    k = x2.shape[1] // groups
    if layout == "blocks":
        return [x2[:, h * k:(h + 1) * k] for h in range(groups)]
    return [x2[:, h::groups] for h in range(groups)]


def _group_merge(parts, layout):
    """Inverse of :func:`_group_split`."""
    if layout == "blocks":
        return jnp.concatenate(parts, axis=1)
    return jnp.stack(parts, axis=-1).reshape(parts[0].shape[0], -1)  # [m, j, h] -> channel j*g + h


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _grouped_pointwise(x2, w2, groups, layout, split, precision=None):
    """Grouped 1x1 on ``x2 (M, C_in)`` with the grouped kernel ``w2 (C_in/g, C_out)`` -> ``(M, C_out)``.

    Forward: one product per group if ``split``, else one product with the block-diagonal weight (rows
    reordered for the interleaved layout). Backward: always per group (``dx`` and ``dW`` of g narrow products
    beat the g-fold dense ones at every ShuffleNet v1 size measured, see ``SPLIT_GROUPS_MIN_BLOCK``).
    """
    cin_g = w2.shape[0]
    if split:
        return jnp.concatenate(_grouped_pointwise_parts(x2, w2, groups, layout, precision), axis=1)
    return lax.dot_general(x2, _block_diagonal(w2, groups, _layout_perm(cin_g * groups, groups, layout)), _DOT_NN,
                           precision=precision)


def _grouped_pointwise_fwd(x2, w2, groups, layout, split, precision=None):
    return _grouped_pointwise(x2, w2, groups, layout, split, precision), (x2, w2)


def _grouped_pointwise_bwd(groups, layout, split, precision, res, dy):
    n = res[1].shape[1] // groups
    return _grouped_pointwise_grads(res, [dy[:, h * n:(h + 1) * n] for h in range(groups)], groups, layout, precision)


def _grouped_pointwise_grads(res, dys, groups, layout, precision):
    # dx and dW of a grouped 1x1 from the per-group output gradients: one product each per group.
    x2, w2 = res
    n = w2.shape[1] // groups
    xs = _group_split(x2, groups, layout)
    dx = _group_merge([lax.dot_general(d, w2[:, h * n:(h + 1) * n], _DOT_NT, precision=precision)
                       for h, d in enumerate(dys)], layout)
    dw = jnp.concatenate([lax.dot_general(xh, d, _DOT_TN, precision=precision) for xh, d in zip(xs, dys)], axis=1)
    return dx, dw


_grouped_pointwise.defvjp(_grouped_pointwise_fwd, _grouped_pointwise_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _grouped_pointwise_parts(x2, w2, groups, layout, precision=None):
    """:func:`_grouped_pointwise` with ``split``, returning the g per-group products ``(M, C_out/g)`` as a tuple."""
    n = w2.shape[1] // groups
    return tuple(lax.dot_general(xh, w2[:, h * n:(h + 1) * n], _DOT_NN, precision=precision)
                 for h, xh in enumerate(_group_split(x2, groups, layout)))


def _grouped_pointwise_parts_fwd(x2, w2, groups, layout, precision=None):
    return _grouped_pointwise_parts(x2, w2, groups, layout, precision), (x2, w2)


def _grouped_pointwise_parts_bwd(groups, layout, precision, res, dys):
    return _grouped_pointwise_grads(res, list(dys), groups, layout, precision)


_grouped_pointwise_parts.defvjp(_grouped_pointwise_parts_fwd, _grouped_pointwise_parts_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pointwise(x2, w2, precision=None):
    return lax.dot_general(x2, w2, _DOT_NN, precision=precision)


def _pointwise_fwd(x2, w2, precision=None):
    return _pointwise(x2, w2, precision), (x2, w2)


def _pointwise_bwd(precision, res, dy):
    x2, w2 = res
    dx = lax.dot_general(dy, w2, _DOT_NT, precision=precision)
    # Contract the flattened N*H*W axis of both operands directly: (C_in, C_out), no activation transpose.
    dw = lax.dot_general(x2, dy, _DOT_TN, precision=precision)
    return dx, dw


_pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def _taps(size, k, s, pad, d):
    """Output size and, per tap, the start of its strided window in the padded input."""
    out = _out_size(size, k, s, pad, d)
    return out, [i * d for i in range(k)]


def _window(xp, hs, ws, ho, wo, stride):
    n, _, _, c = xp.shape
    return lax.slice(
        xp, (0, hs, ws, 0), (n, hs + (ho - 1) * stride[0] + 1, ws + (wo - 1) * stride[1] + 1, c), (1, *stride, 1)
    )


def _tap_windows(x, kh, kw, stride, pads, dilation, pad_value=0):
    """The ``kh*kw`` shifted (strided) windows of ``x`` that a k x k convolution or pooling reads, by tap.

    Returns ``(windows, hstarts, wstarts)``; ``windows(hs, ws)`` is the (N, Ho, Wo, C) slice for the tap whose
    window starts at ``(hs, ws)`` in the input padded with ``pad_value``.
    """
    ho, hstarts = _taps(x.shape[1], kh, stride[0], pads[0], dilation[0])
    wo, wstarts = _taps(x.shape[2], kw, stride[1], pads[1], dilation[1])
    sh, sw = stride
    if sh == 1 and sw == 1:
        xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=pad_value)
        return (lambda hs, ws: _window(xp, hs, ws, ho, wo, stride)), hstarts, wstarts
    # Polyphase: pad to a multiple of the stride and view as (N, H/sh, sh, W/sw, sw, C); every tap is then
    # a unit-stride slice of one phase (strided slices in the fusion ran ~3x slower on XLA:CPU).
    n, h, w, c = x.shape
    hq = max(-(-(h + pads[0][0] + pads[0][1]) // sh), hstarts[-1] // sh + ho)
    wq = max(-(-(w + pads[1][0] + pads[1][1]) // sw), wstarts[-1] // sw + wo)
    xp = jnp.pad(x, ((0, 0), (pads[0][0], hq * sh - h - pads[0][0]), (pads[1][0], wq * sw - w - pads[1][0]), (0, 0)),
                 constant_values=pad_value)
    xr = xp.reshape(n, hq, sh, wq, sw, c)

    def windows(hs, ws):
        a, b = hs // sh, ws // sw
        return lax.slice(xr, (0, a, hs % sh, b, ws % sw, 0), (n, a + ho, hs % sh + 1, b + wo, ws % sw + 1, c)
                         ).reshape(n, ho, wo, c)

    return windows, hstarts, wstarts


def _depthwise_fwd_math(x, k, stride, pads, dilation, rows=False):
    kh, kw, c = k.shape
    if rows and DW_ROWS_MERGED and tuple(stride) == (1, 1) and c % DW_ROWS_CHANNEL_MULTIPLE == 0:
        return _depthwise_fwd_rows(x, k, pads, dilation)
    windows, hstarts, wstarts = _tap_windows(x, kh, kw, stride, pads, dilation)
    y = None
    for i, hs in enumerate(hstarts):
        for j, ws in enumerate(wstarts):
            t = windows(hs, ws) * k[i, j]
            y = t if y is None else y + t
    return y


#: Inference (not differentiated) stride-1 depthwise over rows of ``W*C`` (:func:`_depthwise_fwd_rows`) when C is
#: a multiple of this (a 32-byte AVX vector of float32). Whole forwards in one process, 16 -> 8 (medians of 12):
#: MobileNetV3-large (72/120/184/200 channels join) 86.8/87.7 -> 84.7 ms and 85.7/89.1 -> 85.0, Xception65 (728)
#: 632 -> 628 ms, ShuffleNet v2 (only its 232 joins) 59.3 -> 59.2. With C = 58/116 the tiled kernel row
#: straddles vectors: ShuffleNet v2 with those on rows ran 17% slower. ``DW_ROWS_MERGED`` is a switch for A/Bs.
DW_ROWS_CHANNEL_MULTIPLE = 8
DW_ROWS_MERGED = True


def _depthwise_fwd_rows(x, k, pads, dilation):
    """Stride-1 depthwise taps on the padded input viewed as ``(N, H, W*C)``: a shift along W is an offset of
    whole channel groups, so every tap is one slice with a long contiguous minor axis (the kernel row tiled
    along it) instead of a (W, C) window whose minor axis is C. XLA:CPU vectorises that loop better: with the
    following BatchNorm + ReLU6, batch 32, ms: 112²x32 7.14 -> 5.55, 56²x128 7.39 -> 6.15, 28²x256 3.70 -> 3.08,
    14²x512 2.17 -> 1.57, 7²x1024 1.97 -> 1.33; batch 8, 19²x728 1.35 -> 1.41. Whole forward, batch 32, both
    variants in one process (median of 15): MobileNetV1 141.1 -> 130.3 ms, V2 124.9 -> 113.0, V3-large 101.3 ->
    95.8, ShuffleNet v1 g3 85.3-93.5 -> 87.4-91.7 (neutral)."""
    n, h, w, c = x.shape
    kh, kw, _ = k.shape
    ho, hstarts = _taps(h, kh, 1, pads[0], dilation[0])
    wo, wstarts = _taps(w, kw, 1, pads[1], dilation[1])
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    rows = xp.reshape(n, xp.shape[1], xp.shape[2] * c)
    y = None
    for i, hs in enumerate(hstarts):
        for j, ws in enumerate(wstarts):
            t = lax.slice(rows, (0, hs, ws * c), (n, hs + ho, (ws + wo) * c)) * jnp.tile(k[i, j], wo)
            y = t if y is None else y + t
    return y.reshape(n, ho, wo, c)


def _few_channel_conv_math(x, kernel, stride, pads, dilation):
    """Dense k x k convolution of an input with few channels (an RGB stem) as ``kh*kw*C_in`` broadcast
    multiply-adds in one fused loop: each term is one input channel of one shifted window times a row of the
    kernel. 1.8-3.8x faster here than im2col + dot (whose (N*Ho*Wo, kh*kw*3) matrix is mostly memory traffic)
    and 1.3-13x faster than XLA's convolution (batch 32 stems, 3 -> 16..64 channels, docs/benchmarks.md)."""
    kh, kw, cin, _ = kernel.shape
    windows, hstarts, wstarts = _tap_windows(x, kh, kw, stride, pads, dilation)
    y = None
    for i, hs in enumerate(hstarts):
        for j, ws in enumerate(wstarts):
            win = windows(hs, ws)
            for c in range(cin):
                t = win[..., c:c + 1] * kernel[i, j, c]
                y = t if y is None else y + t
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _depthwise(x, k, stride, pads, dilation):
    # Not differentiated (inference): the row formulation where it is faster. Under differentiation the
    # forward keeps the (N, H, W, C) windows: with rows, whole MobileNetV1/V2 train steps ran 12-13% slower.
    return _depthwise_fwd_math(x, k, stride, pads, dilation, rows=True)


def _depthwise_fwd(x, k, stride, pads, dilation):
    return _depthwise_fwd_math(x, k, stride, pads, dilation), (x, k)


def _phase_taps(size, out, k, s, pad_lo, d):
    """Polyphase plan of the input gradient along one axis.

    Input position ``u = q * s + p`` receives ``k[i] * dy[q - o]`` from every tap ``i`` with
    ``(p + pad_lo - i * d) % s == 0``, where ``o = (i * d - p - pad_lo) // s``. Returns
    ``(Q, [(p, [(i, o), ...]) ...], lo, hi)`` with ``Q = ceil(size / s)`` rows per phase and the zero
    padding ``(lo, hi)`` of ``dy`` that makes every read in range.
    """
    q = -(-size // s)
    phases, offs = [], []
    for p in range(s):
        taps = [(i, (i * d - p - pad_lo) // s) for i in range(k) if (p + pad_lo - i * d) % s == 0]
        phases.append((p, taps))
        offs += [o for _, o in taps]
    lo = max([0] + offs)
    hi = max([0] + [q - 1 - o - (out - 1) for o in offs])
    return q, phases, lo, hi


def _window_transpose(term, x_shape, out_hw, kh, kw, stride, pads, dilation, dtype):
    """Transpose of reading the ``kh*kw`` tap windows of an input of ``x_shape`` (the input gradient of a
    depthwise convolution or a pooling), one polyphase component per stride phase, no zero-dilated array.

    ``term(i, j, read)`` returns tap ``(i, j)``'s contribution on the phase grid; ``read(a, fill=0)`` reads an
    array ``a`` on the output grid (N, Ho, Wo, C) at the offset that tap needs, ``fill`` beyond its edges.
    """
    n, h, w, c = x_shape
    ho, wo = out_hw
    qh, ph_plan, hlo, hhi = _phase_taps(h, ho, kh, stride[0], pads[0][0], dilation[0])
    qw, pw_plan, wlo, whi = _phase_taps(w, wo, kw, stride[1], pads[1][0], dilation[1])

    def reader(oi, oj):
        def read(a, fill=0):
            ap = jnp.pad(a, ((0, 0), (hlo, hhi), (wlo, whi), (0, 0)), constant_values=fill)
            return lax.slice(ap, (0, hlo - oi, wlo - oj, 0), (n, hlo - oi + qh, wlo - oj + qw, c))
        return read

    rows = []
    for _, htaps in ph_plan:
        cols = []
        for _, wtaps in pw_plan:
            acc = None
            for i, oi in htaps:
                for j, oj in wtaps:
                    t = term(i, j, reader(oi, oj))
                    acc = t if acc is None else acc + t
            cols.append(jnp.zeros((n, qh, qw, c), dtype) if acc is None else acc)
        rows.append(cols)
    sh, sw = stride
    if sh == 1 and sw == 1:
        dx = rows[0][0]
    else:
        dx = jnp.stack([jnp.stack(cols, axis=3) for cols in rows], axis=2)  # (n, qh, sh, qw, sw, c)
        dx = dx.reshape(n, qh * sh, qw * sw, c)
    return dx[:, :h, :w, :]


def _depthwise_dx(dy, k, x_shape, stride, pads, dilation):
    kh, kw, _ = k.shape
    return _window_transpose(lambda i, j, read: read(dy) * k[i, j], x_shape, dy.shape[1:3], kh, kw, stride, pads,
                             dilation, dy.dtype)


def _depthwise_dk(x, dy, k_shape, stride, pads, dilation):
    """Weight gradient: for each tap, sum over (N, H', W') of window * dy.

    All taps go through ONE variadic ``lax.reduce`` over the W' axis (one pass over ``x`` and ``dy``; per-tap
    ``jnp.sum`` over (N, H', W') made XLA:CPU read both once per tap, 3x slower), then a small sum over
    (N, H'). Summing rows first is also more accurate than one long accumulation.
    """
    kh, kw, _ = k_shape
    ho, wo = dy.shape[1:3]
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    prods = tuple(
        _window(xp, i * dilation[0], j * dilation[1], ho, wo, stride) * dy for i in range(kh) for j in range(kw)
    )
    zero = jnp.zeros((), dy.dtype)
    rows = lax.reduce(prods, (zero,) * len(prods), lambda a, b: tuple(p + q for p, q in zip(a, b)), (2,))
    return jnp.sum(jnp.stack(rows), axis=(1, 2)).reshape(k_shape)


def _depthwise_bwd(stride, pads, dilation, res, dy):
    x, k = res
    # Materialise dy once: otherwise XLA fuses the producer of dy (e.g. BatchNorm's backward, reading 4-5
    # activations) into both the input-gradient and the 9-output weight-gradient fusion, which then read all
    # of those activations (A/B, train step: MobileNetV2 batch 32 1.71-2.04 s vs 2.15 s; Xception65 batch 4
    # 4.66 s vs 5.25 s). Same for x, whose producer (BatchNorm + ReLU) was recomputed per tap inside the
    # weight-gradient reduction (Xception65 batch 8: 0.83 vs 0.76 / 0.78 img/s in two same-process A/Bs;
    # MobileNetV2 batch 32 14.36 vs 14.45, noise). The barrier is an identity: values do not change.
    x, dy = lax.optimization_barrier((x, dy))
    dx = _depthwise_dx(dy, k, x.shape, stride, pads, dilation)
    dk = _depthwise_dk(x, dy, k.shape, stride, pads, dilation)
    return dx, dk


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def _im2col(x, kh, kw, stride, pads, dilation):
    """The ``kh*kw`` shifted windows of ``x`` side by side: (N*Ho*Wo, kh*kw*C), plus (Ho, Wo)."""
    ho, hstarts = _taps(x.shape[1], kh, stride[0], pads[0], dilation[0])
    wo, wstarts = _taps(x.shape[2], kw, stride[1], pads[1], dilation[1])
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    cols = jnp.concatenate([_window(xp, hs, ws, ho, wo, stride) for hs in hstarts for ws in wstarts], axis=-1)
    return cols.reshape(x.shape[0] * ho * wo, kh * kw * x.shape[-1]), (ho, wo)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _dense_conv(x, kernel, stride, pads, dilation, precision):
    """Dense k x k convolution. Inference forward: broadcast multiply-adds when the input has few channels
    (stems, :func:`_few_channel_conv_math`), else XLA's convolution (as fast as im2col + dot here, without the
    k*k-times larger matrix). Under differentiation (:func:`_dense_conv_fwd`) a few-channel input goes through
    im2col + one dot instead. Gradients through im2col + two dots (1.5x faster training on SqueezeNet 1.1 than
    XLA's convolution backward with its default YNNPACK kernels). Only ``x`` is saved; the columns are rebuilt
    in the backward pass."""
    if x.shape[-1] <= FEW_CHANNELS_MAX_CIN:
        return _few_channel_conv_math(x, kernel, stride, pads, dilation)
    return _conv_xla(x, kernel, stride, pads, dilation, 1, precision)


def _dense_conv_fwd(x, kernel, stride, pads, dilation, precision):
    if x.shape[-1] <= FEW_CHANNELS_MAX_CIN:
        # Training: XLA treats the multiply-add chain as cheap and duplicates it into each consumer of the stem
        # output (the saved activation, BatchNorm statistics, the pool, the ReLU mask in the backward): SqueezeNet's
        # stem cost ~270 ms per step that way vs ~130 ms through im2col + dot, whose product is computed once.
        kh, kw, cin, cout = kernel.shape
        cols, (ho, wo) = _im2col(x, kh, kw, stride, pads, dilation)
        y = lax.dot_general(cols, kernel.reshape(kh * kw * cin, cout), _DOT_NN, precision=precision)
        return y.reshape(x.shape[0], ho, wo, cout), (x, kernel)
    return _dense_conv(x, kernel, stride, pads, dilation, precision), (x, kernel)


def _dense_conv_bwd(stride, pads, dilation, precision, res, dy):
    x, kernel = res
    kh, kw, cin, cout = kernel.shape
    acc = _acc_dtype(dy.dtype)  # bfloat16 gradients accumulate in float32, like the forward
    cols, cols_transpose = jax.vjp(lambda t: _im2col(t, kh, kw, stride, pads, dilation)[0], x.astype(acc))
    w2 = kernel.reshape(kh * kw * cin, cout).astype(acc)
    # The columns times the kernel is a pointwise product: reuse its backward (dW contracts N*Ho*Wo directly).
    dcols, dw = _pointwise_bwd(precision, (cols, w2), dy.reshape(-1, cout).astype(acc))
    (dx,) = cols_transpose(dcols)
    return dx.astype(x.dtype), dw.reshape(kernel.shape).astype(kernel.dtype)


_dense_conv.defvjp(_dense_conv_fwd, _dense_conv_bwd)


# ----------------------------------------------------------------------------------------------------------
# Channel shuffle.
# ----------------------------------------------------------------------------------------------------------
def shuffle_permutation(channels: int, groups: int) -> np.ndarray:
    """``perm`` such that ``channel_shuffle(x, groups) == x[..., perm]``."""
    return np.arange(channels).reshape(groups, channels // groups).T.reshape(-1)


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
    """Channel shuffle of the seed / torchvision: ``(N, g, C/g, H, W) -> swap -> (N, C, H, W)``, in NHWC.

    Channel ``i * (C // g) + j`` moves to position ``j * g + i``.

    Args:
      x: ``(N, H, W, C)`` with ``C`` divisible by ``groups``.
      groups: number of groups.
    """
    n, h, w, c = x.shape
    if c % groups:
        raise ValueError(f"channel_shuffle: {c} channels are not divisible by groups={groups}")
    if conv_impl() == "cpu":
        # A gather with a constant permutation (and the inverse gather as its VJP: autodiff of a gather is a
        # scatter-add) measured ~1.5x faster than reshape-transpose-reshape on XLA:CPU, and faster than torch.
        return _permute_channels(x, tuple(int(i) for i in shuffle_permutation(c, groups)))
    return x.reshape(n, h, w, groups, c // groups).swapaxes(-1, -2).reshape(n, h, w, c)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _permute_channels(x, perm):
    return jnp.take(x, np.asarray(perm), axis=-1, unique_indices=True, indices_are_sorted=False, mode="clip")


def _permute_channels_fwd(x, perm):
    return _permute_channels(x, perm), None


def _permute_channels_bwd(perm, _, dy):
    inv = tuple(int(i) for i in np.argsort(np.asarray(perm)))
    return (_permute_channels(dy, inv),)


_permute_channels.defvjp(_permute_channels_fwd, _permute_channels_bwd)


def pool_output_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool, dilation: int = 1) -> int:
    """PyTorch's pooling output size, including its ceil-mode rule (last window must start in the input)."""
    eff = dilation * (kernel - 1) + 1
    num = size + 2 * pad - eff
    if ceil_mode:
        out = -(-num // stride) + 1
        if (out - 1) * stride >= size + pad:
            out -= 1
    else:
        out = num // stride + 1
    return out


def _pool_padding(shape, kernel, stride, pad, ceil_mode):
    pads = []
    for size, k, s, p in zip(shape, kernel, stride, pad):
        out = pool_output_size(size, k, s, p, ceil_mode)
        high = max((out - 1) * s + k - size - p, 0)
        pads.append((p, high))
    return pads


def _pool_plan(x_shape, kernel_size, stride, padding, ceil_mode):
    k = to_pairs(kernel_size)
    s = to_pairs(stride if stride is not None else kernel_size)
    p = to_pairs(padding)
    return k, s, p, _pool_padding(x_shape[1:3], k, s, p, ceil_mode)


def _pool_window_sum_or_max(x, k, s, pads, combine, pad_value):
    """Combines the ``kh*kw`` windows of a pooling, read like a convolution's taps (:func:`_tap_windows`:
    unit-stride slices of the stride phases). Padding to a multiple of the stride also keeps XLA from fusing
    the producer into the window loop, which recomputed it for every overlapping tap (SqueezeNet's stem,
    computed as multiply-adds, inside its 3x3/2 pool: 73 ms instead of 29 + 8)."""
    windows, hstarts, wstarts = _tap_windows(x, k[0], k[1], s, pads, (1, 1), pad_value=pad_value)
    out = None
    for hs in hstarts:
        for ws in wstarts:
            t = windows(hs, ws)
            out = t if out is None else combine(out, t)
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_taps(x, k, s, pads):
    return _pool_window_sum_or_max(x, k, s, pads, jnp.maximum, -jnp.inf)


def _max_pool_taps_fwd(x, k, s, pads):
    out = _max_pool_taps(x, k, s, pads)
    return out, (x, out)


def _max_pool_taps_bwd(k, s, pads, res, dy):
    """The whole gradient of a window goes to its FIRST maximum in scan order, as PyTorch's (and XLA's
    select-and-scatter) max-pool gradient does; ``jnp.maximum`` autodiff would split ties (zeros after a ReLU).

    One pass finds each window's first maximal tap (int8 index), then the gradient is scattered back like the
    depthwise input gradient (:func:`_window_transpose`): 9 masked, zero-dilated pads of ``dy`` summed in one
    loop took SqueezeNet's 3x3/2 pool backward 207 ms per step, 10x PyTorch's.
    """
    x, out = res
    windows, hstarts, wstarts = _tap_windows(x, k[0], k[1], s, pads, (1, 1), pad_value=-jnp.inf)
    ntaps = len(hstarts) * len(wstarts)
    first = jnp.full(out.shape, ntaps, jnp.int8 if ntaps < 127 else jnp.int32)
    for t, (hs, ws) in enumerate((hs, ws) for hs in hstarts for ws in wstarts):
        first = jnp.where((first == ntaps) & (windows(hs, ws) == out), jnp.asarray(t, first.dtype), first)
    zero = jnp.zeros((), dy.dtype)

    def term(i, j, read):
        return jnp.where(read(first, fill=-1) == i * k[1] + j, read(dy), zero)

    return (_window_transpose(term, x.shape, out.shape[1:3], k[0], k[1], s, pads, (1, 1), dy.dtype),)


_max_pool_taps.defvjp(_max_pool_taps_fwd, _max_pool_taps_bwd)


def max_pool2d(
    x: jax.Array,
    kernel_size: Union[int, Sequence[int]],
    stride: Optional[Union[int, Sequence[int]]] = None,
    padding: Union[int, Sequence[int]] = 0,
    ceil_mode: bool = False,
) -> jax.Array:
    """``torch.nn.MaxPool2d`` in NHWC (padding with -inf, torch's ceil-mode output size).

    On CPU the window maximum is taken over the ``kh*kw`` windows in one fused loop (5x faster than
    XLA:CPU's ``reduce_window`` for SqueezeNet's 3x3/2 pool on 111x111x64), with a custom VJP that gives each
    window's gradient to its first maximum, like PyTorch; elsewhere ``lax.reduce_window``.
    """
    k, s, _, pads = _pool_plan(x.shape, kernel_size, stride, padding, ceil_mode)
    if conv_impl() == "cpu":
        return _max_pool_taps(x, k, s, tuple(tuple(p) for p in pads))
    init = np.array(-np.inf, dtype=x.dtype)  # numpy, not jnp: a traced init makes reduce_window non-differentiable
    return lax.reduce_window(x, init, lax.max, (1, *k, 1), (1, *s, 1), ((0, 0), *pads, (0, 0)))


def avg_pool2d(
    x: jax.Array,
    kernel_size: Union[int, Sequence[int]],
    stride: Optional[Union[int, Sequence[int]]] = None,
    padding: Union[int, Sequence[int]] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> jax.Array:
    """``torch.nn.AvgPool2d`` in NHWC (torch defaults: ``count_include_pad=True``).

    The window sum is a sum of the ``kh*kw`` windows on CPU (see :func:`max_pool2d`), ``lax.reduce_window``
    elsewhere.
    """
    k, s, p, pads = _pool_plan(x.shape, kernel_size, stride, padding, ceil_mode)
    window = (1, *k, 1)
    strides = (1, *s, 1)
    full = ((0, 0), *pads, (0, 0))
    if conv_impl() == "cpu":
        summed = _pool_window_sum_or_max(x, k, s, pads, jnp.add, 0)
    else:
        summed = lax.reduce_window(x, np.array(0, x.dtype), lax.add, window, strides, full)
    if count_include_pad and not ceil_mode:
        return summed / (k[0] * k[1])
    # Divisor = number of elements inside the (symmetrically) padded input; ceil-mode overhang never counts.
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    if count_include_pad:
        ones = jnp.pad(ones, ((0, 0), (p[0], p[0]), (p[1], p[1]), (0, 0)), constant_values=1)
        full = ((0, 0), (0, pads[0][1] - p[0]), (0, pads[1][1] - p[1]), (0, 0))
    counts = lax.reduce_window(ones, np.array(0, x.dtype), lax.add, window, strides, full)
    return summed / counts


def global_avg_pool(x: jax.Array, keepdims: bool = False) -> jax.Array:
    """``AdaptiveAvgPool2d((1, 1))``: a mean over H and W, accumulated in float32 (float64 stays float64).

    On CPU the mean is a batched product with a constant ``1/(H*W)`` row: as a reduction, XLA:CPU fused the
    classifier's matrix product into its YNNPACK reduction kernel, which ran it slower than Eigen (SqueezeNet
    head, batch 32: 52.5 -> 44.0 ms forward, 156 -> 134 ms with gradients; MobileNetV2 head 10.4 -> 9.0).
    """
    n, h, w, c = x.shape
    acc = _acc_dtype(x.dtype)
    if conv_impl() == "cpu":
        row = jnp.full((n, 1, h * w), 1.0 / (h * w), acc)
        y = lax.dot_general(row, x.reshape(n, h * w, c).astype(acc), (((2,), (1,)), ((0,), (0,))))
        y = y.reshape(n, 1, 1, c) if keepdims else y.reshape(n, c)
    else:
        y = jnp.mean(x, axis=(1, 2), keepdims=keepdims, dtype=acc)
    return y.astype(x.dtype)


def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
                     ) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """Train-mode batch normalisation over every axis but the last, with its analytic gradient.

    Args:
      x: ``(..., C)`` in the accumulation dtype (float32, or float64 under x64).
      scale, bias: ``(C,)`` in ``x``'s dtype (ones / zeros where the layer has none).
      epsilon: added to the variance.
    Returns:
      ``(y, mean, var)``: ``y = (x - mean) / sqrt(var + epsilon) * scale + bias`` with the batch mean and the
      biased (two-pass) batch variance, both ``(C,)``.

    The custom VJP is the textbook gradient, ``dx = scale / (n * sigma) * (n * dy - sum(dy) - xhat *
    sum(dy * xhat))``: two reductions and one elementwise pass. Autodiff of the two-pass statistics also
    reduced the mean's gradient through the variance (zero in exact arithmetic) and split ``dx`` over more
    fusions: BatchNorm + ReLU6 forward and backward at 32x56x56x128, 17.9 -> 12.3 ms on XLA:CPU (25 -> 17
    reductions in the program). Cotangents of ``mean`` and ``var`` are honoured, so differentiating through
    the batch statistics stays exact.
    """
    return _batch_norm_train(x, scale, bias, epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm_train(x, scale, bias, epsilon):
    return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_train_fwd(x, scale, bias, epsilon):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    var = jnp.mean(jnp.square(x - mean), axis=axes)  # two-pass
    inv = lax.rsqrt(var + epsilon)
    mul = inv * scale
    return (x * mul + (bias - mean * mul), mean, var), (x, mean, inv, scale)


def _batch_norm_train_bwd(epsilon, res, cts):
    x, mean, inv, scale = res
    dy, dmean, dvar = cts
    axes = tuple(range(x.ndim - 1))
    n = x.size // x.shape[-1]
    xc = x - mean
    xhat = xc * inv
    dbias = jnp.sum(dy, axis=axes)
    dscale = jnp.sum(dy * xhat, axis=axes)
    dx = (scale * inv / n) * (n * dy - dbias - xhat * dscale) + (dmean + 2.0 * dvar * xc) / n
    return dx, dscale, dbias


_batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)
