"""Which formulation computes a convolution, pool, shuffle or activation: one explicit value, and the XLA
compile options that go with the CPU one.

Formulations (``FORMULATIONS``):

``"xla"``
    ``lax.conv_general_dilated`` with ``feature_group_count``, ``lax.reduce_window`` pools, reshape-transpose
    shuffles: the right choice on GPU/TPU, and the reference every other formulation is tested against
    (forward and gradients, ``tests/test_ops.py``).
``"cpu"`` (the default when ``jax.default_backend() == "cpu"``)
    The formulations XLA:CPU is fast at (shifted multiply-adds, matrix products, gathers, fused window
    loops, with custom VJPs): see each op module's docstring and ``docs/benchmarks.md``.
``"export"``
    The ``"xla"`` formulation, except that pooling, the channel shuffle, global average pooling and the hard
    activations are named primitives (:mod:`lightjax.ops.export`) that an exporter lowers to a runtime's
    native operators (ONNX ``MaxPool``/``AveragePool``/``GlobalAveragePool``/``HardSwish``, shuffle as
    ``Reshape`` + ``Transpose``). Values equal the ``"xla"`` formulation's.

The choice is made at trace time by :func:`formulation` (a context manager); outside one, the environment
variable ``LIGHTJAX_CONV_IMPL`` (one of the names above) sets the default, else the default backend does.
``jax.jit`` caches traces by function and argument types, not by formulation: a function traced under one
formulation keeps it when called again inside another (jit it again, or trace inside the ``with``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import warnings
from typing import Any, Dict, Iterator, Optional, Tuple

import jax
import jax.numpy as jnp

FORMULATIONS = ("xla", "cpu", "export")
#: The environment variable that sets the default formulation.
ENV_VAR = "LIGHTJAX_CONV_IMPL"

_ACTIVE: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("lightjax_formulation", default=None)


def _check(name: str, where: str) -> str:
    if name not in FORMULATIONS:
        raise ValueError(f"unknown formulation {where}={name!r}; known: {FORMULATIONS}")
    return name


def default_formulation() -> str:
    """The formulation used outside :func:`formulation`: ``$LIGHTJAX_CONV_IMPL``, else ``"cpu"`` on a CPU
    default backend and ``"xla"`` elsewhere."""
    env = os.environ.get(ENV_VAR)
    if env:
        return _check(env, ENV_VAR)
    return "cpu" if jax.default_backend() == "cpu" else "xla"


def current_formulation() -> str:
    """The formulation ops trace with now: the innermost :func:`formulation`, else the default."""
    return _ACTIVE.get() or default_formulation()


@contextlib.contextmanager
def formulation(name: Optional[str]) -> Iterator[str]:
    """Traces the ops inside the block with formulation ``name`` (``None``: the default).

    Args:
      name: ``"xla"``, ``"cpu"``, ``"export"`` or ``None``.

    Yields:
      The formulation in effect inside the block.

    Example::

        with ops.formulation("export"):
            jaxpr = jax.make_jaxpr(lambda x: model.apply(variables, x))(x)
    """
    if name is not None:
        _check(name, "formulation")
    token = _ACTIVE.set(name)
    try:
        yield current_formulation()
    finally:
        _ACTIVE.reset(token)


def conv_impl() -> str:
    """Alias of :func:`current_formulation` (the name earlier releases used)."""
    return current_formulation()


def set_conv_impl(impl: Optional[str]) -> None:
    """Deprecated: use ``with lightjax.ops.formulation(impl):``. Sets the formulation for the rest of the
    current context (thread), ``None`` restores the default."""
    warnings.warn("lightjax.ops.set_conv_impl is deprecated: use `with lightjax.ops.formulation(name):`",
                  DeprecationWarning, stacklevel=2)
    if impl is not None and impl not in FORMULATIONS:
        raise ValueError(f"unknown conv impl {impl!r}; known: {FORMULATIONS}")
    _ACTIVE.set(impl)


def is_cpu() -> bool:
    """Whether the CPU formulations run (the ops' dispatch test)."""
    return current_formulation() == "cpu"


def is_export() -> bool:
    """Whether the export primitives run (pools, shuffle, global pool, hard activations)."""
    return current_formulation() == "export"


# ----------------------------------------------------------------------------------------------------------
# XLA compile options.
# ----------------------------------------------------------------------------------------------------------
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

#: XLA options for compiling a model's *initialisation* on CPU: LLVM optimisation level 0. An init program is
#: one random-number kernel per parameter shape that runs once; XLA:CPU spent most of its compile optimising
#: them (MobileNetV2 init 12.5-16.3 s at the default level vs 6.5-7.7 s at 0, ShuffleNetV1 g3 9.0-10.1 vs
#: 5.3-5.9 s). Values are the same to the last bit in ~96% of entries and within 2e-7 relative in the rest.
_CPU_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


@functools.lru_cache(maxsize=None)
def _options_accepted(backend: str, items: Tuple[Tuple[str, Any], ...]) -> bool:
    # A jaxlib that renamed the option or its values rejects it at compile time: check once, on a tiny program.
    try:
        probe = jax.device_put(jnp.zeros((1,), jnp.float32), jax.local_devices(backend=backend)[0])
        jax.jit(lambda v: v + 1).lower(probe).compile(compiler_options=dict(items))
        return True
    except Exception:  # noqa: BLE001 -- any rejection means "do not use these options"
        return False


def compiler_options(backend: Optional[str] = None) -> Dict[str, Any]:
    """XLA compile options that lightjax recommends for its models on ``backend`` (default: JAX's default).

    Pass them to ``jax.jit(..., compiler_options=lightjax.compiler_options())`` (``train/`` and the benchmark
    do). On XLA:CPU they keep XLA's YNNPACK fusions for reductions but send dense k x k convolutions and
    matrix products to XLA's Eigen kernels: convolution forwards ran up to 2x faster here (SqueezeNet 1.1
    inference +22% in a same-process A/B), the 1x1 products of ShuffleNet's sizes 1.1-1.7x (inference of the
    six 224 px flagships +3 to +15% in same-process A/Bs, training within the noise, XLA compile of the train
    step shorter); and they let LLVM vectorise fused loops 512 bits wide (SqueezeNet inference -15%,
    MobileNets -4 to -6%). Returns ``{}`` on other backends or when the installed jaxlib rejects the options;
    an option ``XLA_FLAGS`` already sets is left out (the user's choice wins). Results are identical to
    float32 rounding either way.

    Args:
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"`` or ``None`` for ``jax.default_backend()``.

    Returns:
      A dict for ``jax.jit(compiler_options=...)`` / ``Lowered.compile(compiler_options=...)``.
    """
    return _cpu_options(backend, _CPU_COMPILER_OPTIONS)


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
