"""Model registry: ``register_model``, ``list_models``, ``create_model``, ``init_variables``.

It imports no loading code: weights resolution (``load_model``, pretrained tags) is :mod:`lightjax.pretrained`,
which stands on the models and :mod:`lightjax.convert`.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lightjax import ops
from lightjax.models.base import COMMON_FIELDS

_MODELS: Dict[str, Callable[..., nn.Module]] = {}
_FAMILY: Dict[str, str] = {}
_INFO: Dict[str, Dict[str, Any]] = {}
#: Every model accepts these (:class:`lightjax.models.base.ModelBase`); families add their own (e.g.
#: ``output_stride``, ``width``).
COMMON_KWARGS = COMMON_FIELDS


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: registers a variant factory under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} registered twice")
    _MODELS[name] = fn
    _FAMILY[name] = fn.__module__.rsplit(".", 1)[-1]
    return fn


def list_models(pattern: Optional[str] = None) -> List[str]:
    """Sorted registered names, optionally filtered by a shell-style pattern (``"mobilenet*"``)."""
    names = sorted(_MODELS)
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def model_family(name: str) -> str:
    """The family module a registered name lives in (``'squeezenet'``, ``'mobilenet_v2'``, ...)."""
    _check_name(name)
    return _FAMILY[name]


def _check_name(name: str) -> None:
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} See lightjax.models.list_models().")


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds a registered model.

    Args:
      name: a name from :func:`list_models`.
      **kwargs: module fields: ``num_classes`` (0 = no head, pooled features), ``in_chans``, ``dtype``
        (computation), ``param_dtype``, ``drop_rate``, ``features_only``, ``out_indices`` and the family's
        own (``output_stride``, ``width``...).

    Returns:
      An unbound ``flax.linen.Module``; ``model.init(key, x, train=False)`` gives ``{'params', 'batch_stats'}``.
    """
    _check_name(name)
    fn = _MODELS[name]
    try:
        model = fn(**kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e) and "got multiple values" not in str(e):
            raise
        allowed = _allowed_kwargs(fn)
        unknown = sorted(k for k in kwargs if allowed is not None and k not in allowed)
        raise TypeError(
            f"create_model({name!r}): unsupported argument(s) {unknown or list(kwargs)}; "
            f"accepted: {sorted(allowed) if allowed else '?'}"
        ) from e
    return model


def _allowed_kwargs(fn: Callable[..., nn.Module]) -> Optional[Tuple[str, ...]]:
    cls = getattr(fn, "model_cls", None)
    if cls is None:
        return None
    fixed = getattr(fn, "fixed_kwargs", ())
    return tuple(f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name") and f.name not in fixed)


def model_info(name: str) -> Dict[str, Any]:
    """Metadata of a registered variant: ``input_size`` (native H = W), ``family``, and what the factory
    declared (e.g. ``reference`` for the source of its published figures)."""
    _check_name(name)
    return {"family": _FAMILY[name], **_INFO.get(name, {})}


def variant(cls: type, *, input_size: int = 224, info: Optional[Dict[str, Any]] = None, **fixed: Any) -> Callable[[Callable], Callable]:
    """Decorator that turns ``def name(**kwargs): ...`` into a factory ``cls(**fixed, **kwargs)``.

    Keeps the architecture as data: a variant is its name plus the fields that define it. Overriding a
    defining field (e.g. ``version`` of ``squeezenet1_0``) is refused.

    Args:
      cls: the family's Module class.
      input_size: native input resolution (metadata for tables, summaries and conversion probes).
      info: extra metadata returned by :func:`model_info`.
      **fixed: the fields that define the variant.
    """

    def deco(fn: Callable) -> Callable[..., nn.Module]:
        def factory(**kwargs: Any) -> nn.Module:
            clash = sorted(set(kwargs) & set(fixed))
            if clash:
                raise TypeError(f"{fn.__name__}: {clash} define this variant and cannot be overridden")
            return cls(**fixed, **kwargs)

        factory.__name__ = fn.__name__
        factory.__qualname__ = fn.__qualname__
        factory.__module__ = fn.__module__
        factory.__doc__ = fn.__doc__
        factory.model_cls = cls  # type: ignore[attr-defined]
        factory.fixed_kwargs = tuple(fixed)  # type: ignore[attr-defined]
        register_model(factory)
        _INFO[fn.__name__] = {"input_size": input_size, **(info or {})}
        return factory

    return deco


def init_variables(model: nn.Module, rng: Any, input_shape: Sequence[int], dtype: Any = None) -> Dict[str, Any]:
    """``model.init(rng, zeros(input_shape), train=False)``, jitted and compiled the fast way for an init.

    Eager ``model.init`` compiles every primitive separately (~3x slower on CPU); a plain ``jax.jit`` of it
    spends most of XLA:CPU's time optimising one random-number kernel per parameter shape that runs once.
    This compiles it with :func:`lightjax.ops.init_compiler_options` (MobileNetV2: 6.5-7.7 s instead of
    12.5-16.3 s). Only the variables leave the program, so XLA drops the forward pass that ``init`` traces.

    Args:
      model: a module from :func:`create_model`.
      rng: a PRNG key (``jax.random.key``) for the ``params`` stream.
      input_shape: NHWC shape of the example input, e.g. ``(1, 224, 224, 3)``.
      dtype: the example input's dtype (default float32).

    Returns:
      The variables, ``{'params': ..., 'batch_stats': ...}`` (no ``batch_stats`` for models without BatchNorm).
    """
    shape, dtype = tuple(int(d) for d in input_shape), jnp.dtype(dtype or jnp.float32)
    if len(shape) != 4:
        raise ValueError(f"init_variables: input_shape must be NHWC (4 dims), got {shape}")
    init = jax.jit(lambda k: model.init(k, jnp.zeros(shape, dtype), train=False),
                   compiler_options=ops.init_compiler_options())
    return init(rng)
