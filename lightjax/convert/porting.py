"""PyTorch state_dict <-> lightjax variables: :func:`from_torch`, :func:`to_torch`, :func:`detect_layout`.

Built on the engine (:mod:`lightjax.convert.core`: key tables, layouts, leaf transforms) and the checkpoint
files (:mod:`lightjax.convert.files`). Strict by default: one error lists every missing key, unexpected key and
shape mismatch; ``strict=False`` lets only the classifier differ (re-initialised, or dropped for a headless
model) and reports it.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from lightjax.convert.core import (ConversionError, IGNORED_SUFFIXES, Layout, Report, check_table_covers, expand_rows,
                                   flax_to_torch_array, get_path, layouts_for, pick_layout, set_path, to_numpy,
                                   torch_shape, torch_to_flax_array)
from lightjax.convert.files import read_checkpoint
from lightjax.models import registry

log = logging.getLogger("lightjax.convert")


def variable_shapes(model_name: str, model=None, **model_kwargs) -> Dict[str, Any]:
    """Shape/dtype tree of ``model.init`` (no computation), at the model's native input size."""
    model = model or registry.create_model(model_name, **model_kwargs)
    size = registry.model_info(model_name)["input_size"]
    in_chans = getattr(model, "in_chans", 3)
    x = jax.ShapeDtypeStruct((1, size, size, in_chans), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype), train=False))
    return jax.tree_util.tree_map(lambda s: s, dict(shapes))


def from_torch(
    model_name: str,
    checkpoint: Any,
    *,
    strict: bool = True,
    layout: Optional[str] = None,
    return_report: bool = False,
    rng: Optional[jax.Array] = None,
    **model_kwargs: Any,
):
    """Converts a PyTorch state_dict into lightjax variables ``{'params', 'batch_stats'}``.

    Args:
      model_name: registered lightjax name.
      checkpoint: path (``.pth/.pt/.bin/.ckpt`` read with ``torch.load(weights_only=True)``, ``.safetensors``
        read without torch) or a mapping of arrays/tensors. ``state_dict``/``model`` nesting and a
        ``module.`` prefix are unwrapped.
      strict: when True (default) every key must match in name and shape. ``strict=False`` lets the
        classifier alone differ (e.g. a new ``num_classes``): it is re-initialised and reported.
      layout: force a key layout (``"torchvision"``, ``"timm"``, ``"seed"``); detected from the keys otherwise.
      return_report: also return a :class:`Report`.
      rng: key for re-initialising a replaced head.
      **model_kwargs: ``create_model`` fields (``num_classes``, ``in_chans``, ``output_stride``...).

    Returns:
      ``variables`` (numpy-backed jax arrays), or ``(variables, report)`` with ``return_report=True``.

    Raises:
      ConversionError: listing every missing key, unexpected key and shape mismatch at once.
      CheckpointReadError: unreadable or unsafe files.
    """
    sd = read_checkpoint(checkpoint)
    model = registry.create_model(model_name, **model_kwargs)
    shapes = variable_shapes(model_name, model)
    lay, leaves = pick_layout(model_name, model, sd.keys(), shapes, layout)
    check_table_covers(leaves, shapes, f"{lay.family}/{lay.name}")
    conflicts = {k: v for k, v in lay.requires.items() if getattr(model, k) != v}
    if conflicts:
        # Same keys and shapes, different computation (e.g. ReLU vs ReLU6): loading would be silently wrong.
        wanted = ", ".join(f"{k}={v!r}" for k, v in conflicts.items())
        raise ConversionError(
            f"{model_name}: a {lay.name} checkpoint needs the model built with {wanted} (got "
            f"{', '.join(f'{k}={getattr(model, k)!r}' for k in conflicts)}); pass {wanted} to from_torch and "
            f"create_model, or use lightjax.models.load_model, which does both"
        )

    expected = {leaf.torch_key: leaf for leaf in leaves}
    missing, mismatched, head_problems = [], [], []
    out: Dict[str, Dict] = {"params": {}, "batch_stats": {}}
    for key, leaf in expected.items():
        want_flax = tuple(_get_shape(shapes, leaf))
        want = torch_shape(want_flax, leaf.transform)
        if key not in sd:
            (head_problems if leaf.head else missing).append(f"missing {key} (expected shape {want})")
            continue
        arr = to_numpy(sd[key])
        if tuple(arr.shape) != want:
            msg = f"shape mismatch {key}: expected {want}, got {tuple(arr.shape)}"
            (head_problems if leaf.head else mismatched).append(msg)
            continue
        value = torch_to_flax_array(arr, leaf.transform).astype(_dtype_of(shapes, leaf))
        set_path(out[leaf.collection], leaf.flax_path, value)
    ignored = [k for k in sd if k.endswith(IGNORED_SUFFIXES)]
    unexpected = sorted(k for k in sd if k not in expected and k not in ignored)
    head_keys = {leaf.torch_key.rsplit(".", 1)[0] for leaf in leaves if leaf.head}
    if not head_keys:
        # A headless model (num_classes=0 / features_only): the checkpoint's classifier is what a model with
        # the default head would have, and strict=False may drop it.
        full_kwargs = {k: v for k, v in model_kwargs.items() if k not in ("num_classes", "features_only", "out_indices")}
        full = registry.create_model(model_name, **full_kwargs)
        full_leaves = expand_rows(lay.rows(model_name, full), variable_shapes(model_name, full))
        dropped_heads = {leaf.torch_key.rsplit(".", 1)[0] for leaf in full_leaves if leaf.head}
    else:
        dropped_heads = set()
    head_like = head_keys | dropped_heads
    unexpected_head = [k for k in unexpected if k.rsplit(".", 1)[0] in head_like or _is_head_like(k, head_like)]
    unexpected_body = [k for k in unexpected if k not in unexpected_head]

    problems = missing + mismatched + [f"unexpected {k}" for k in unexpected_body]
    if strict:
        problems += head_problems + [f"unexpected {k}" for k in unexpected_head]
    if problems:
        hint = "" if strict or not (missing or mismatched) else " (strict=False only lets the classifier differ)"
        raise ConversionError(
            f"{model_name} <- {lay.name} checkpoint: {len(problems)} problem(s){hint}:\n  " + "\n  ".join(problems)
        )

    report = Report(model=model_name, layout=f"{lay.family}/{lay.name}", mapped=len(expected) - len(head_problems),
                    ignored=ignored)
    if unexpected_head and not head_keys:
        report.head_dropped = sorted(dropped_heads)
        log.warning("%s: checkpoint classifier %s not used (model has no head)", model_name, sorted(dropped_heads))
    elif head_problems or unexpected_head:
        # strict=False: the classifier is re-initialised the way the model initialises it.
        head_leaves = [leaf for leaf in leaves if leaf.head]

        def fresh_head(k):
            # Only the head leaves leave the function, so XLA drops the body's initialisers and the forward
            # pass that model.init runs: a compile of seconds instead of a whole model's.
            init_vars = model.init(k, jnp.zeros((1, 64, 64, getattr(model, "in_chans", 3))), train=False)
            return [get_path(init_vars[leaf.collection], leaf.flax_path) for leaf in head_leaves]

        fresh = jax.jit(fresh_head)(rng if rng is not None else jax.random.key(0))
        for leaf, value in zip(head_leaves, fresh):
            set_path(out[leaf.collection], leaf.flax_path, np.asarray(value))
        report.head_reinitialised = sorted(head_keys)
        log.warning("%s: classifier %s re-initialised (%s)", model_name, sorted(head_keys), "; ".join(head_problems))
    variables = jax.tree_util.tree_map(jnp.asarray, out)
    if not variables["batch_stats"]:
        variables.pop("batch_stats")
    return (variables, report) if return_report else variables


def detect_layout(model_name: str, checkpoint: Any, layout: Optional[str] = None, **model_kwargs: Any) -> Layout:
    """The key layout (torchvision / timm / seed ...) a checkpoint is in, detected from its keys."""
    sd = read_checkpoint(checkpoint)
    model = registry.create_model(model_name, **model_kwargs)
    return pick_layout(model_name, model, sd.keys(), variable_shapes(model_name, model), layout)[0]


def to_torch(model_name: str, variables: Any, *, layout: Optional[str] = None, **model_kwargs: Any) -> Dict[str, np.ndarray]:
    """Converts lightjax variables to a PyTorch state_dict of numpy arrays (``torch.from_numpy`` each value,
    or ``{k: torch.as_tensor(v)}``, then ``load_state_dict(strict=True)``).

    Args:
      model_name: registered lightjax name.
      variables: ``{'params', 'batch_stats'}``.
      layout: which PyTorch layout to write (default: the family's primary, e.g. torchvision).
      **model_kwargs: ``create_model`` fields the variables were made with.

    Returns:
      ``dict[str, np.ndarray]``; BatchNorm ``num_batches_tracked`` is written as 0 (Flax does not track it;
      it only matters for PyTorch's cumulative-average mode, which none of these models use).
    """
    model = registry.create_model(model_name, **model_kwargs)
    shapes = variable_shapes(model_name, model)
    candidates = layouts_for(model_name)
    if layout is not None:
        candidates = [c for c in candidates if c.name == layout]
        if not candidates:
            raise ConversionError(f"{model_name}: unknown layout {layout!r}; known: {[c.name for c in layouts_for(model_name)]}")
    if not candidates:
        raise ConversionError(f"no PyTorch key layout is registered for {model_name!r}")
    lay = candidates[0]
    leaves = expand_rows(lay.rows(model_name, model), shapes)
    check_table_covers(leaves, shapes, f"{lay.family}/{lay.name}")
    sd: Dict[str, np.ndarray] = {}
    problems = []
    for leaf in leaves:
        value = get_path(variables.get(leaf.collection, {}), leaf.flax_path)
        want = tuple(_get_shape(shapes, leaf))
        if value is None:
            problems.append(f"missing {leaf.collection}/{'/'.join(leaf.flax_path)}")
            continue
        value = to_numpy(value)
        if tuple(value.shape) != want:
            problems.append(f"shape mismatch {leaf.collection}/{'/'.join(leaf.flax_path)}: expected {want}, got {value.shape}")
            continue
        sd[leaf.torch_key] = flax_to_torch_array(value, leaf.transform)
        if leaf.collection == "batch_stats" and leaf.torch_key.endswith(".running_var"):
            sd[leaf.torch_key[: -len("running_var")] + "num_batches_tracked"] = np.array(0, dtype=np.int64)
    if problems:
        raise ConversionError(f"{model_name} -> {lay.name}: variables do not fit the model:\n  " + "\n  ".join(problems))
    return sd


def _get_shape(shapes, leaf):
    return get_path(shapes[leaf.collection], leaf.flax_path).shape


def _dtype_of(shapes, leaf):
    return get_path(shapes[leaf.collection], leaf.flax_path).dtype


def _is_head_like(key: str, head_prefixes) -> bool:
    return any(key.startswith(p + ".") for p in head_prefixes)
