"""Key tables: Xception (timm ``legacy_xception``), aligned Xception 41/65/71 (timm), the seed's AlignedXception.

timm ``legacy_xception`` → ``xception`` (layout ``timm``):

| PyTorch                                   | Flax                                  | kind |
|-------------------------------------------|---------------------------------------|------|
| conv1 / conv2                             | conv1 / conv2                         | conv |
| bn1 / bn2 / bn3 / bn4                     | bn1 / bn2 / bn3 / bn4                 | bn   |
| block{i}.rep.{j}.conv1 / .pointwise       | block{i}/rep_{j}/conv1 / pointwise    | conv |
| block{i}.rep.{j} (BatchNorm2d)            | block{i}/rep_{j}                      | bn   |
| block{i}.skip / block{i}.skipbn           | block{i}/skip / block{i}/skipbn       | conv / bn |
| conv3.conv1, conv3.pointwise, conv4.*     | conv3/conv1, conv3/pointwise, conv4/* | conv |
| fc                                        | fc                                    | linear (head) |

timm ``xception41/65/71`` → same names (layout ``timm``):

| PyTorch                                           | Flax                                        | kind |
|---------------------------------------------------|---------------------------------------------|------|
| stem.{i}.conv / stem.{i}.bn                       | stem_{i}/conv / stem_{i}/bn                 | conv / bn |
| blocks.{i}.stack.conv{k}.conv_dw / .conv_pw       | blocks_{i}/stack/conv{k}/conv_dw / conv_pw  | conv |
| blocks.{i}.stack.conv{k}.bn_dw / .bn_pw           | blocks_{i}/stack/conv{k}/bn_dw / bn_pw      | bn   |
| blocks.{i}.shortcut.conv / .bn                    | blocks_{i}/shortcut/conv / bn               | conv / bn |
| head.fc                                           | head/fc                                     | linear (head) |

The seed's ``AlignedXception`` → ``aligned_xception`` (layout ``seed``):

| PyTorch                                          | Flax                                         | kind |
|--------------------------------------------------|----------------------------------------------|------|
| conv1 / conv2, bn1 / bn2                         | conv1 / conv2, bn1 / bn2                     | conv / bn |
| block{i}.rep.{j}.conv1 / .pointwise / .bn        | block{i}/rep_{j}/conv1 / pointwise / bn      | conv / bn |
| block{i}.rep.{j} (BatchNorm2d)                   | block{i}/rep_{j}                             | bn   |
| block{i}.skip / block{i}.skipbn                  | block{i}/skip / block{i}/skipbn              | conv / bn |
| conv{3,4,5}.conv1 / .bn / .pointwise, bn{3,4,5}  | conv{3,4,5}/conv1 / bn / pointwise, bn{3,4,5} | conv / bn |
| fc (lightjax's optional head, num_classes > 0)   | fc                                           | linear (head) |

Plus :func:`aligned_from_original`: the seed's ``_load_pretrained_model`` (original Xception → AlignedXception).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import jax
import numpy as np

from lightjax.convert.core import ConversionError, Row, register_layout, to_numpy
from lightjax.convert.files import read_checkpoint
from lightjax.models import aligned_xception as ax
from lightjax.models import registry
from lightjax.models.xception import LEGACY_BLOCKS, LEGACY_EXIT, aligned_plan, legacy_rep


def _has_head(model) -> bool:
    return bool(model.num_classes) and not model.features_only


@register_layout("xception", "timm", ["xception"], primary=True,
                 notes="timm legacy_xception (Cadene/tstandley port of the Keras Xception weights)")
def legacy_rows(model_name: str, model) -> List[Row]:
    """Rows for ``xception`` from :data:`LEGACY_BLOCKS` (rep indices as timm's ``Block`` numbers them)."""
    rows = [Row("conv1", ("conv1",), "conv"), Row("bn1", ("bn1",), "bn"),
            Row("conv2", ("conv2",), "conv"), Row("bn2", ("bn2",), "bn")]
    for i, (cin, cout, reps, stride, swr, grow) in enumerate(LEGACY_BLOCKS):
        b = f"block{i + 1}"
        if cout != cin or stride != 1:
            rows += [Row(f"{b}.skip", (b, "skip"), "conv"), Row(f"{b}.skipbn", (b, "skipbn"), "bn")]
        for j, entry in enumerate(legacy_rep(cin, cout, reps, stride, swr, grow)):
            if entry[0] == "sep":
                rows += [Row(f"{b}.rep.{j}.{c}", (b, f"rep_{j}", c), "conv") for c in ("conv1", "pointwise")]
            elif entry[0] == "bn":
                rows.append(Row(f"{b}.rep.{j}", (b, f"rep_{j}"), "bn"))
    for conv_name, bn_name, _, _ in LEGACY_EXIT:
        rows += [Row(f"{conv_name}.{c}", (conv_name, c), "conv") for c in ("conv1", "pointwise")]
        rows.append(Row(bn_name, (bn_name,), "bn"))
    if _has_head(model):
        rows.append(Row("fc", ("fc",), "linear", head=True))
    return rows


@register_layout("xception", "timm", ["xception41", "xception65", "xception71"], primary=True,
                 notes="timm xception41/65/71 (XceptionAligned, TF DeepLab weights)")
def aligned_rows(model_name: str, model) -> List[Row]:
    """Rows for ``xception41/65/71`` from :func:`aligned_plan` (shortcuts only where timm builds one)."""
    rows = []
    for i in range(2):
        rows += [Row(f"stem.{i}.conv", (f"stem_{i}", "conv"), "conv"), Row(f"stem.{i}.bn", (f"stem_{i}", "bn"), "bn")]
    for i, (cin, outs, stride, _, no_skip, _) in enumerate(aligned_plan(model.arch, model.output_stride)["blocks"]):
        b, fb = f"blocks.{i}", f"blocks_{i}"
        if not no_skip and (outs[-1] != cin or stride != 1):
            rows += [Row(f"{b}.shortcut.conv", (fb, "shortcut", "conv"), "conv"),
                     Row(f"{b}.shortcut.bn", (fb, "shortcut", "bn"), "bn")]
        for k in range(1, 4):
            for sub, kind in (("conv_dw", "conv"), ("bn_dw", "bn"), ("conv_pw", "conv"), ("bn_pw", "bn")):
                rows.append(Row(f"{b}.stack.conv{k}.{sub}", (fb, "stack", f"conv{k}", sub), kind))
    if _has_head(model):
        rows.append(Row("head.fc", ("head", "fc"), "linear", head=True))
    return rows


@register_layout("aligned_xception", "seed", ["aligned_xception"], primary=True,
                 notes="the seed's AlignedXception (jfzhang95 pytorch-deeplab-xception) with nn.BatchNorm2d")
def seed_rows(model_name: str, model) -> List[Row]:
    """Rows for ``aligned_xception`` from :func:`~lightjax.models.aligned_xception.seed_rep`."""
    rows = [Row("conv1", ("conv1",), "conv"), Row("bn1", ("bn1",), "bn"),
            Row("conv2", ("conv2",), "conv"), Row("bn2", ("bn2",), "bn")]

    def sep(prefix: str, path: Tuple[str, ...]) -> List[Row]:
        return [Row(f"{prefix}.conv1", path + ("conv1",), "conv"), Row(f"{prefix}.bn", path + ("bn",), "bn"),
                Row(f"{prefix}.pointwise", path + ("pointwise",), "conv")]

    for i, (a, b_, reps, s, d, swr, gf, last) in enumerate(ax.seed_blocks(model.output_stride)):
        b = f"block{i + 1}"
        if b_ != a or s != 1:
            rows += [Row(f"{b}.skip", (b, "skip"), "conv"), Row(f"{b}.skipbn", (b, "skipbn"), "bn")]
        for j, entry in enumerate(ax.seed_rep(a, b_, reps, s, d, swr, gf, last)):
            if entry[0] == "sep":
                rows += sep(f"{b}.rep.{j}", (b, f"rep_{j}"))
            elif entry[0] == "bn":
                rows.append(Row(f"{b}.rep.{j}", (b, f"rep_{j}"), "bn"))
    for conv_name, bn_name, _, _ in ax.SEED_EXIT:
        rows += sep(conv_name, (conv_name,))
        rows.append(Row(bn_name, (bn_name,), "bn"))
    if _has_head(model):
        rows.append(Row("fc", ("fc",), "linear", head=True))
    return rows


# ------------------------------------------------------------------------------------------------------------
# The seed's _load_pretrained_model: original (Cadene / timm legacy) Xception → AlignedXception
# ------------------------------------------------------------------------------------------------------------
#: Middle blocks that receive copies of the original ``block11`` (the original has 8 middle blocks, the
#: aligned model 16).
_BLOCK11_COPIES = tuple(f"block{i}" for i in range(12, 20))


def seed_pretrained_mapping(original_keys, aligned_keys) -> Dict[str, str]:
    """The seed's ``_load_pretrained_model`` key logic: ``{aligned_key: original_key}``.

    Mirrors the seed line by line: an original key is used only if the *same name* exists in the aligned
    state_dict (checked before renaming); then ``block11.*`` → ``block11..block19.*``, ``block12.*`` →
    ``block20.*``, ``bn3.*`` → ``bn3.*`` and ``bn4.*``, ``conv4.*`` → ``conv5.*``, ``bn4.*`` → ``bn5.*``,
    anything else to itself. Consequences: the original ``block12.skip``/``skipbn`` and ``fc`` are dropped
    (aligned ``block12`` has no skip, there is no ``fc``); the aligned separable convs' inner ``bn``,
    ``block20``'s skip and third separable conv, blocks 1-3's strided separable convs, ``conv4`` and ``bn5``...
    keep the aligned model's own initialisation.
    """
    aligned_keys = set(aligned_keys)
    out: Dict[str, str] = {}
    for k in original_keys:
        if k not in aligned_keys:
            continue
        if k.startswith("block11"):
            targets = [k] + [k.replace("block11", b) for b in _BLOCK11_COPIES]
        elif k.startswith("block12"):
            targets = [k.replace("block12", "block20")]
        elif k.startswith("bn3"):
            targets = [k, k.replace("bn3", "bn4")]
        elif k.startswith("conv4"):
            targets = [k.replace("conv4", "conv5")]
        elif k.startswith("bn4"):
            targets = [k.replace("bn4", "bn5")]
        else:
            targets = [k]
        for t in targets:
            out[t] = k  # later keys win, as in the seed's dict assignment
    return out


def aligned_from_original(
    state_dict: Union[str, Mapping[str, Any]],
    output_stride: int = 16,
    *,
    variables: Optional[Mapping[str, Any]] = None,
    rng: Optional[jax.Array] = None,
    return_mapping: bool = False,
    **model_kwargs: Any,
):
    """Initialises ``aligned_xception`` from original Xception weights exactly as the seed's
    ``AlignedXception._load_pretrained_model`` does (see :func:`seed_pretrained_mapping`).

    Args:
      state_dict: the original Xception state_dict or a checkpoint path: Cadene's ``xception-b5690688.pth``
        (pointwise weights stored 2-D ``(out, in)``; the seed unsqueezes them to ``(out, in, 1, 1)``) or timm
        ``legacy_xception`` (pointwise already 4-D: taken as is. The seed's literal code would unsqueeze those
        to 6-D and fail in ``load_state_dict``; this is the one deliberate difference).
      output_stride: 16 or 8 (the mapping is the same; the model's dilations differ).
      variables: the aligned model's own variables that unmapped entries keep (the seed keeps its
        ``_init_weight`` values); default: ``model.init(rng)``.
      rng: key for that init (default ``jax.random.key(0)``).
      return_mapping: also return ``{aligned_torch_key: original_key}``.
      **model_kwargs: other ``create_model`` fields (``num_classes`` ...).

    Returns:
      ``variables`` (and the mapping with ``return_mapping=True``).

    Raises:
      ConversionError: a mapped original tensor does not have the aligned model's shape (the seed's
        ``load_state_dict`` would raise too), or the original has none of the expected keys.
    """
    from lightjax import convert  # local: the package imports this module
    from lightjax.convert.core import expand_rows, torch_shape

    model_kwargs = {**model_kwargs, "output_stride": output_stride}
    model = registry.create_model("aligned_xception", **model_kwargs)
    # The aligned model's state_dict keys and torch shapes (the seed's self.state_dict()), without computing.
    shapes = convert.variable_shapes("aligned_xception", model)
    expected = {}
    for leaf in expand_rows(seed_rows("aligned_xception", model), shapes):
        node = shapes[leaf.collection]
        for p in leaf.flax_path:
            node = node[p]
        expected[leaf.torch_key] = torch_shape(tuple(node.shape), leaf.transform)
        if leaf.torch_key.endswith(".running_var"):
            expected[leaf.torch_key[: -len("running_var")] + "num_batches_tracked"] = ()
    original = read_checkpoint(state_dict)
    mapping = seed_pretrained_mapping(original.keys(), expected.keys())
    if not any(k.startswith("block") for k in mapping.values()):
        raise ConversionError(
            f"aligned_from_original: the state_dict has no original Xception block keys "
            f"(first keys: {sorted(original)[:6]}); expected e.g. 'block1.rep.0.conv1.weight'")
    problems, values = [], {}
    for target, src in mapping.items():
        v = to_numpy(original[src])
        if "pointwise" in src and v.ndim == 2:
            v = v[:, :, None, None]  # the seed's v.unsqueeze(-1).unsqueeze(-1) for Cadene's 2-D pointwise
        if tuple(v.shape) != tuple(expected[target]):
            problems.append(f"{src} -> {target}: shape {tuple(v.shape)}, aligned model expects {expected[target]}")
            continue
        values[target] = v
    if problems:
        raise ConversionError("aligned_from_original: shape mismatches:\n  " + "\n  ".join(problems))
    if variables is None:
        variables = registry.init_variables(model, rng if rng is not None else jax.random.key(0),
                                            (1, 32, 32, model.in_chans))
    merged: Dict[str, np.ndarray] = dict(convert.to_torch("aligned_xception", variables, **model_kwargs))
    merged.update(values)  # state_dict.update(model_dict)
    out = convert.from_torch("aligned_xception", merged, **model_kwargs)
    return (out, mapping) if return_mapping else out
