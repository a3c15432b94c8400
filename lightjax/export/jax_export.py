"""``jax.export`` artifacts of a model's eval forward with a symbolic batch, and their loader.

```python
from lightjax import export
exp = export.export_model("mobilenet_v2_100", variables)            # jax.export.Exported, input (b, 224, 224, 3)
export.save(exp, "mobilenet_v2_100.jaxexport")                    # bytes on disk
# command line: python -m lightjax.export mobilenet_v2_100 weights.msgpack mobilenet_v2_100.jaxexport
```

The weights are baked into the artifact as constants, so loading it needs **only jax** (not lightjax, not
flax)::

    import jax, numpy as np
    exp = jax.export.deserialize(open("mobilenet_v2_100.jaxexport", "rb").read())
    logits = exp.call(np.zeros((8, 224, 224, 3), np.float32))     # any batch size

:func:`load` does the same and checks the input first, with an error that names the expected layout.

Formulation: lightjax picks CPU-specific formulations of depthwise/pointwise convolutions, pools and shuffles
when JAX's default backend is the CPU (:mod:`lightjax.ops.backend`). An artifact lowered for CUDA or TPU is
traced with the ``"xla"`` formulation (``lax.conv_general_dilated``, ``reduce_window``), the right one on
accelerators; a CPU-only artifact keeps the backend default. ``conv_impl=`` overrides that.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from lightjax._atomic import atomic_write  # noqa: F401  (lightjax.export.atomic_write)
from lightjax.models import registry
from lightjax.ops import backend
from lightjax.ops.geometry import to_pairs

KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


class InputShapeError(ValueError):
    """The array given to a loaded artifact does not have the shape/dtype it was exported for."""


def _normalise_platforms(platforms: Union[str, Sequence[str], None]) -> Tuple[str, ...]:
    if platforms is None:
        return (jax.default_backend(),)
    if isinstance(platforms, str):
        platforms = [p for p in platforms.replace(" ", "").split(",") if p]
    out = tuple(p.lower() for p in platforms)
    bad = [p for p in out if p not in KNOWN_PLATFORMS]
    if bad or not out:
        raise ValueError(f"export: unknown platform(s) {bad or platforms!r}; choose from {KNOWN_PLATFORMS}")
    return out


def export_model(
    name: str,
    variables: Mapping[str, Any],
    *,
    batch: Union[str, int] = "b",
    input_size: Union[int, Tuple[int, int], None] = None,
    platforms: Union[str, Sequence[str], None] = ("cpu",),
    dtype: Any = jnp.float32,
    precision: Optional[str] = None,
    conv_impl: Optional[str] = None,
    **model_kwargs: Any,
) -> jax_export.Exported:
    """Exports the eval forward (``model.apply(variables, x, train=False)``) of a registered model.

    Args:
      name: registered model name (``lightjax.models.list_models()``).
      variables: ``{'params', 'batch_stats'}`` for that model (and these ``model_kwargs``); baked in as constants.
      batch: name of the symbolic batch dimension (``"b"``), or an int for a fixed batch.
      input_size: spatial size ``H`` (= ``W``) or ``(H, W)``; default the model's native size. It is fixed in the
        artifact (pooling sizes depend on it).
      platforms: platforms to lower for (subset of ``cpu``, ``cuda``, ``rocm``, ``tpu``; a comma-separated string
        works too); ``None`` means JAX's default backend. Several platforms make one multi-platform artifact.
      dtype: input dtype of the artifact (the model computes in its own ``dtype`` field).
      precision: ``jax.default_matmul_precision`` while tracing (e.g. ``"highest"`` for full float32 convs on
        GPU/TPU, which otherwise may use TF32/bf16 passes).
      conv_impl: force a formulation (``"xla"``, ``"cpu"``, ``"export"``: :func:`lightjax.ops.backend.formulation`); default: ``"xla"``
        when any accelerator platform is requested, otherwise the backend default.
      **model_kwargs: ``create_model`` fields (``num_classes``, ``in_chans``, ...).

    Returns:
      a ``jax.export.Exported``; ``.serialize()`` gives the bytes, ``.in_avals`` the input signature.
    """
    model = registry.create_model(name, **model_kwargs)
    plats = _normalise_platforms(platforms)
    if input_size is None:
        input_size = registry.model_info(name)["input_size"]
    h, w = to_pairs(input_size)
    in_chans = getattr(model, "in_chans", 3)
    if isinstance(batch, str):
        if not batch.isidentifier():
            raise ValueError(f"export: batch must be a dimension name like 'b' or an int, got {batch!r}")
        shape = jax_export.symbolic_shape(f"{batch}, {h}, {w}, {in_chans}")
    elif isinstance(batch, int) and batch > 0:
        shape = (batch, h, w, in_chans)
    else:
        raise ValueError(f"export: batch must be a dimension name like 'b' or a positive int, got {batch!r}")
    _check_variables(name, model, variables, (h, w, in_chans))

    # Weights are closed over (not arguments): with hoist_constants_as_args=False, which jax.export uses, they
    # become constants of the StableHLO module, so the artifact carries them and needs nothing else.
    variables = jax.tree_util.tree_map(jnp.asarray, dict(variables))

    def forward(x: jax.Array) -> Any:
        return model.apply(variables, x, train=False)

    forward.__name__ = f"lightjax_{name}"  # recorded as Exported.fun_name: the artifact names its model
    impl = conv_impl if conv_impl is not None else ("xla" if any(p != "cpu" for p in plats) else None)
    spec = jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
    prec = jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()
    with backend.formulation(impl), prec:
        return jax_export.export(jax.jit(forward), platforms=plats)(spec)


def _check_variables(name: str, model: Any, variables: Mapping[str, Any], hwc: Tuple[int, int, int]) -> None:
    """Compares ``variables`` with the model's own variable shapes, naming every mismatch at once."""
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError(f"export {name}: variables must be a mapping with a 'params' collection, got {type(variables).__name__}")
    want = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *hwc), jnp.float32), train=False))
    want_flat = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(dict(want))}
    got_flat = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_leaves_with_path(dict(variables))}
    problems = [f"missing {k} {s}" for k, s in want_flat.items() if k not in got_flat]
    problems += [f"unexpected {k}" for k in got_flat if k not in want_flat]
    problems += [f"shape {k}: model {s}, given {got_flat[k]}" for k, s in want_flat.items()
                 if k in got_flat and tuple(got_flat[k]) != tuple(s)]
    if problems:
        raise ValueError(
            f"export {name}: the variables do not fit create_model({name!r}, **{model_kwargs_repr(model)}) "
            f"({len(problems)} problem(s); a different num_classes/in_chans must be passed as a model kwarg):\n  "
            + "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
        )


def model_kwargs_repr(model: Any) -> str:
    """``{'num_classes': ..., 'in_chans': ...}`` of a model, for error messages."""
    return repr({k: getattr(model, k) for k in ("num_classes", "in_chans") if hasattr(model, k)})


def serialize(exported: jax_export.Exported) -> bytes:
    """The artifact's bytes (``Exported.serialize()``; needs the ``flatbuffers`` package)."""
    return bytes(exported.serialize())


def save(exported: jax_export.Exported, path: str) -> int:
    """Writes the serialized artifact to ``path`` atomically; returns the number of bytes written."""
    data = serialize(exported)
    atomic_write(path, data)
    return len(data)


def export_to_file(name: str, variables: Mapping[str, Any], path: str, **kwargs: Any) -> jax_export.Exported:
    """:func:`export_model` then :func:`save`; returns the ``Exported``."""
    exp = export_model(name, variables, **kwargs)
    save(exp, path)
    return exp



# ----------------------------------------------------------------------------------------------------------
# Loading (jax only: nothing below needs lightjax's models or flax).
# ----------------------------------------------------------------------------------------------------------
class LoadedModel:
    """A deserialized artifact that checks its input before calling it.

    ``jax.export`` itself raises ``ValueError("Shape mismatch for args[0].shape[1] ...")``; this wrapper says
    which model the artifact holds, the layout it expects (NHWC) and hints at an NCHW mix-up.
    """

    def __init__(self, exported: jax_export.Exported):
        self.exported = exported
        (self.in_aval,) = exported.in_avals
        self.name = exported.fun_name

    @property
    def input_shape(self) -> Tuple[Any, ...]:
        """Input shape, symbolic batch included (e.g. ``(b, 224, 224, 3)``)."""
        return tuple(self.in_aval.shape)

    @property
    def platforms(self) -> Tuple[str, ...]:
        return tuple(self.exported.platforms)

    def check_input(self, x: Any) -> None:
        """Raises :class:`InputShapeError` unless ``x`` fits the exported signature."""
        shape = tuple(np.shape(x))
        want = self.input_shape
        desc = f"{self.name}: expected an NHWC array of shape ({', '.join(map(str, want))}) {self.in_aval.dtype}"
        if len(shape) != len(want):
            raise InputShapeError(f"{desc}, got rank {len(shape)} shape {shape}")
        fixed = [(i, d) for i, d in enumerate(want) if isinstance(d, int)]
        if any(shape[i] != d for i, d in fixed):
            hint = ""
            if len(shape) == 4 and shape[1] == want[3] and shape[3] != want[3]:
                hint = " (this looks like NCHW: transpose with x.transpose(0, 2, 3, 1))"
            raise InputShapeError(f"{desc}, got shape {shape}{hint}")
        dt = getattr(x, "dtype", None)
        if dt is not None and not np.issubdtype(np.dtype(dt), np.floating):
            raise InputShapeError(f"{desc}, got dtype {dt}")

    def __call__(self, x: Any) -> Any:
        self.check_input(x)
        return self.exported.call(jnp.asarray(x, self.in_aval.dtype))


def load(path_or_bytes: Union[str, bytes, bytearray]) -> LoadedModel:
    """Deserializes an artifact (a path, or the bytes) into a callable :class:`LoadedModel`."""
    data = path_or_bytes
    if isinstance(path_or_bytes, str):
        with open(path_or_bytes, "rb") as f:
            data = f.read()
    try:
        exp = jax_export.deserialize(bytearray(data))
    except Exception as e:  # flatbuffers raises assorted errors on foreign bytes
        raise ValueError(f"not a jax.export artifact ({type(e).__name__}: {e})") from e
    return LoadedModel(exp)


