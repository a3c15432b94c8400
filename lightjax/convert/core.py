"""The conversion engine: key tables, checkpoint reading, strict matching, PyTorch ↔ Flax transforms.

A *layout* is one way a PyTorch implementation names a model's parameters (torchvision, timm, the seed's
code). Each family registers its layouts in its own module (``lightjax/convert/<family>.py``) as a function
returning the explicit key table: a list of :class:`Row`, one per parameterised PyTorch module, each giving
the PyTorch module prefix, the Flax module path and the kind of module (which fixes the leaf names and the
array transform). Nothing is ever mapped by order.

| kind     | PyTorch leaf                                         | Flax leaf                          | transform       |
|----------|------------------------------------------------------|------------------------------------|-----------------|
| conv     | weight (O, I/g, kh, kw), bias                        | params kernel (kh, kw, I/g, O), bias | transpose(2,3,1,0) |
| linear   | weight (O, I), bias                                  | params kernel (I, O), bias          | .T              |
| conv1x1_linear | weight (O, I, 1, 1), bias (a 1x1 conv, e.g. timm's ``conv_head``) | params kernel (I, O) of a Flax Linear, bias | [:, :, 0, 0].T |
| bn       | weight, bias, running_mean, running_var, num_batches_tracked | params scale, bias; batch_stats mean, var | copy (counter dropped) |
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

FlaxPath = Tuple[str, ...]


class ConversionError(ValueError):
    """A checkpoint does not fit the model (missing / unexpected keys, shape mismatches, unknown layout)."""


class CheckpointReadError(ValueError):
    """A file could not be read as a checkpoint (wrong format, truncated, unsafe pickle)."""


@dataclasses.dataclass(frozen=True)
class Row:
    """One parameterised PyTorch module ↔ one Flax module.

    Attributes:
      torch: module prefix in the state_dict (``"features.3.squeeze"``).
      flax: module path in the Flax tree (``("features_3", "squeeze")``).
      kind: ``"conv"``, ``"linear"``, ``"conv1x1_linear"`` (a 1x1 conv stored as a Flax Linear) or ``"bn"``.
      head: True for the classifier (the only part ``strict=False`` may replace).
    """

    torch: str
    flax: FlaxPath
    kind: str
    head: bool = False


@dataclasses.dataclass(frozen=True)
class Leaf:
    torch_key: str
    collection: str
    flax_path: FlaxPath
    transform: str  # "conv", "linear", "copy"
    head: bool


_LEAVES = {
    "conv": (("weight", "params", "kernel", "conv"), ("bias", "params", "bias", "copy")),
    "linear": (("weight", "params", "kernel", "linear"), ("bias", "params", "bias", "copy")),
    # A 1x1 conv on a pooled (N, 1, 1, C) map is a Linear: timm's MobileNetV3 ``conv_head`` vs torchvision's
    # ``classifier.0``; the Flax model keeps one Linear and this kind maps the conv's 4-d weight onto it.
    "conv1x1_linear": (("weight", "params", "kernel", "conv1x1_linear"), ("bias", "params", "bias", "copy")),
    "bn": (
        ("weight", "params", "scale", "copy"),
        ("bias", "params", "bias", "copy"),
        ("running_mean", "batch_stats", "mean", "copy"),
        ("running_var", "batch_stats", "var", "copy"),
    ),
}
#: Buffers PyTorch keeps that have no Flax counterpart (accepted on import, written as 0 on export).
IGNORED_SUFFIXES = (".num_batches_tracked",)


@dataclasses.dataclass
class Layout:
    """A named key layout of one family (e.g. ``torchvision``, ``timm``, ``seed``)."""

    family: str
    name: str
    models: Tuple[str, ...]  # shell patterns of lightjax names it applies to
    rows: Callable[[str, Any], List[Row]]  # (model_name, model) -> rows
    primary: bool = False
    notes: str = ""
    #: Model fields a checkpoint in this layout needs (e.g. timm MobileNetV1 uses ReLU6: {"act": "relu6"}).
    requires: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def applies(self, model_name: str) -> bool:
        return any(fnmatch.fnmatch(model_name, p) for p in self.models)


_LAYOUTS: List[Layout] = []


def register_layout(
    family: str,
    name: str,
    models: Sequence[str],
    primary: bool = False,
    notes: str = "",
    requires: Optional[Dict[str, Any]] = None,
) -> Callable[[Callable[[str, Any], List[Row]]], Callable[[str, Any], List[Row]]]:
    """Decorator registering a key-table function for the models matching ``models``.

    ``primary`` marks the layout :func:`to_torch` writes by default. ``requires`` lists model fields that
    checkpoints in this layout need (:func:`lightjax.convert.from_torch` refuses a model that differs).
    """

    def deco(fn):
        _LAYOUTS.append(Layout(family, name, tuple(models), fn, primary, notes, dict(requires or {})))
        return fn

    return deco


def layouts_for(model_name: str) -> List[Layout]:
    """Layouts that apply to ``model_name``, primary first."""
    found = [lay for lay in _LAYOUTS if lay.applies(model_name)]
    return sorted(found, key=lambda lay: not lay.primary)


# ------------------------------------------------------------------------------------------------------------
# Key tables → leaves
# ------------------------------------------------------------------------------------------------------------
def expand_rows(rows: Iterable[Row], flax_shapes: Mapping[str, Any]) -> List[Leaf]:
    """Expands module rows into leaves, keeping only the leaves the Flax tree has (e.g. conv bias)."""
    leaves = []
    for row in rows:
        if row.kind not in _LEAVES:
            raise ValueError(f"unknown row kind {row.kind!r} in {row}")
        for t_leaf, coll, f_leaf, transform in _LEAVES[row.kind]:
            path = row.flax + (f_leaf,)
            if get_path(flax_shapes.get(coll, {}), path) is None:
                if t_leaf == "bias" and row.kind in ("conv", "linear", "conv1x1_linear"):
                    continue  # bias-free conv/linear
                raise ValueError(
                    f"key table error: {row.torch}.{t_leaf} maps to {coll}/{'/'.join(path)}, which the Flax model lacks"
                )
            leaves.append(Leaf(f"{row.torch}.{t_leaf}", coll, path, transform, row.head))
    return leaves


def get_path(tree: Mapping[str, Any], path: FlaxPath):
    """The node at ``path`` of a nested mapping, or None."""
    node: Any = tree
    for p in path:
        if not isinstance(node, Mapping) or p not in node:
            return None
        node = node[p]
    return node


def set_path(tree: Dict[str, Any], path: FlaxPath, value) -> None:
    """Sets the node at ``path``, creating the intermediate mappings."""
    node = tree
    for p in path[:-1]:
        node = node.setdefault(p, {})
    node[path[-1]] = value


def flatten_tree(tree: Mapping[str, Any], prefix: FlaxPath = ()) -> Dict[FlaxPath, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten_tree(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def check_table_covers(leaves: Sequence[Leaf], flax_shapes: Mapping[str, Any], layout: str) -> None:
    """Every Flax leaf must be the target of exactly one PyTorch key (a key table bug otherwise)."""
    targets: Dict[Tuple[str, FlaxPath], str] = {}
    for leaf in leaves:
        key = (leaf.collection, leaf.flax_path)
        if key in targets:
            raise ValueError(f"key table {layout}: {leaf.torch_key} and {targets[key]} both map to {key}")
        targets[key] = leaf.torch_key
    missing = []
    for coll in ("params", "batch_stats"):
        for path in flatten_tree(flax_shapes.get(coll, {})):
            if (coll, path) not in targets:
                missing.append(f"{coll}/{'/'.join(path)}")
    if missing:
        raise ValueError(f"key table {layout} leaves Flax leaves unmapped: {missing[:10]}{' ...' if len(missing) > 10 else ''}")


# ------------------------------------------------------------------------------------------------------------
# Array transforms
# ------------------------------------------------------------------------------------------------------------
def torch_to_flax_array(value: np.ndarray, transform: str) -> np.ndarray:
    if transform == "conv":
        return np.ascontiguousarray(np.transpose(value, (2, 3, 1, 0)))
    if transform == "linear":
        return np.ascontiguousarray(value.T)
    if transform == "conv1x1_linear":
        return np.ascontiguousarray(value[:, :, 0, 0].T)
    return value


def flax_to_torch_array(value: np.ndarray, transform: str) -> np.ndarray:
    if transform == "conv":
        return np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1)))
    if transform == "linear":
        return np.ascontiguousarray(value.T)
    if transform == "conv1x1_linear":
        return np.ascontiguousarray(value.T[:, :, None, None])
    return value


def torch_shape(flax_shape: Tuple[int, ...], transform: str) -> Tuple[int, ...]:
    if transform == "conv":
        kh, kw, i, o = flax_shape
        return (o, i, kh, kw)
    if transform == "linear":
        return tuple(reversed(flax_shape))
    if transform == "conv1x1_linear":
        i, o = flax_shape
        return (o, i, 1, 1)
    return tuple(flax_shape)


def to_numpy(value: Any) -> np.ndarray:
    """A torch tensor, jax array or numpy array → numpy (float32 for low-precision floats)."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) in ("torch.bfloat16", "torch.float16"):
            value = value.float()
        return value.numpy()
    arr = np.asarray(value)
    if arr.dtype.kind == "V" or str(arr.dtype) == "bfloat16":
        arr = arr.astype(np.float32)
    return arr


# ------------------------------------------------------------------------------------------------------------
# Matching
# ------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Report:
    """What a conversion did: printed by the CLI, returned by ``from_torch(..., return_report=True)``."""

    model: str
    layout: str
    mapped: int = 0
    ignored: List[str] = dataclasses.field(default_factory=list)
    head_reinitialised: List[str] = dataclasses.field(default_factory=list)
    head_dropped: List[str] = dataclasses.field(default_factory=list)
    max_abs_diff: Optional[float] = None

    def summary(self) -> str:
        lines = [
            f"model: {self.model}",
            f"layout: {self.layout}",
            f"keys mapped: {self.mapped}",
            f"buffers ignored: {len(self.ignored)} (num_batches_tracked)",
        ]
        if self.head_reinitialised:
            lines.append(f"head re-initialised (strict=False): {', '.join(self.head_reinitialised)}")
        elif self.head_dropped:
            lines.append(f"head dropped (model has no classifier, strict=False): {', '.join(self.head_dropped)}")
        else:
            lines.append("head: loaded from the checkpoint")
        if self.max_abs_diff is not None:
            lines.append(f"max |logits_torch - logits_jax| on a probe input: {self.max_abs_diff:.3e}")
        return "\n".join(lines)


def pick_layout(model_name: str, model: Any, sd_keys: Iterable[str], flax_shapes, layout: Optional[str] = None):
    """Chooses the layout whose key table overlaps the state_dict most (or the named one)."""
    candidates = layouts_for(model_name)
    if not candidates:
        raise ConversionError(f"no PyTorch key layout is registered for {model_name!r}")
    if layout is not None:
        named = [c for c in candidates if c.name == layout]
        if not named:
            raise ConversionError(f"{model_name}: unknown layout {layout!r}; known: {[c.name for c in candidates]}")
        candidates = named
    keys = set(k for k in sd_keys if not k.endswith(IGNORED_SUFFIXES))
    best, best_leaves, best_score = None, None, -1
    for cand in candidates:
        leaves = expand_rows(cand.rows(model_name, model), flax_shapes)
        score = len(keys & {leaf.torch_key for leaf in leaves})
        if score > best_score:
            best, best_leaves, best_score = cand, leaves, score
    if best_score == 0 and keys:
        sample = sorted(keys)[:6]
        raise ConversionError(
            f"{model_name}: the checkpoint's keys match none of the known layouts "
            f"({', '.join(c.name for c in candidates)}); first keys: {sample}"
        )
    return best, best_leaves
