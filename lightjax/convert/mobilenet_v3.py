"""Key tables: MobileNet v3 (torchvision ``mobilenet_v3_large`` / ``mobilenet_v3_small``; timm
``mobilenetv3_large_100`` / ``mobilenetv3_small_100``, see :func:`timm_rows`).

torchvision (layout ``torchvision``, primary):

| PyTorch                                        | Flax                                  | kind   |
|------------------------------------------------|---------------------------------------|--------|
| features.0.0 / features.0.1 (stem conv, BN)    | features_0/0, features_0/1            | conv/bn |
| features.{i}.block.{j}.0 / .1 (conv, BN)       | features_{i}/block_{j}/0, /1          | conv/bn |
| features.{i}.block.{j}.fc1 / .fc2 (SE)         | features_{i}/block_{j}/fc1, /fc2      | conv   |
| features.{last}.0 / .1 (1x1 conv to 6x)        | features_{last}/0, /1                 | conv/bn |
| classifier.0 (Linear)                          | classifier_0                          | linear |
| classifier.3 (Linear)                          | classifier_3                          | linear (head) |

The ``block`` indices follow torchvision: the expand conv is absent when ``expanded == in_channels``, and
the SE module, when present, sits between the depthwise and the project conv. ``output_stride`` does not
change any key (torchvision's ``dilated=True`` checkpoints load as ``output_stride=16``).

timm (layout ``timm``, requires ``bn_eps=1e-5``: timm's BatchNorm keeps PyTorch's default eps):

| PyTorch                                                   | Flax                                   | kind   |
|-----------------------------------------------------------|----------------------------------------|--------|
| conv_stem / bn1                                           | features_0/0, features_0/1             | conv/bn |
| blocks.S.J.conv_dw / bn1, se.*, conv_pw / bn2 (no expand) | features_i/block_0, [block_1], block_k | conv/bn |
| blocks.S.J.conv_pw / bn1, conv_dw / bn2, se.conv_*, conv_pwl / bn3 | features_i/block_0 .. block_3  | conv/bn |
| blocks.{n}.0.conv / bn1 (1x1 conv to 6x)                  | features_{last}/0, /1                  | conv/bn |
| conv_head (1x1 conv, bias)                                | classifier_0 (Linear)                  | conv1x1_linear |
| classifier                                                | classifier_3                           | linear (head) |
"""

from __future__ import annotations

from typing import List

from lightjax.convert.core import Row, register_layout
from lightjax.models.mobilenet_v3 import block_configs


def _conv_bn(torch_prefix: str, flax_path: tuple) -> List[Row]:
    """A ``Conv2dNormActivation``: children ``0`` (conv) and ``1`` (BN)."""
    return [Row(f"{torch_prefix}.0", flax_path + ("0",), "conv"), Row(f"{torch_prefix}.1", flax_path + ("1",), "bn")]


@register_layout("mobilenet_v3", "torchvision", ["mobilenet_v3_*"], primary=True,
                 notes="torchvision mobilenet_v3_large / mobilenet_v3_small (also dilated=True)")
def torchvision_rows(model_name: str, model) -> List[Row]:
    cfgs = block_configs(model.arch, model.width, model.output_stride)
    rows = _conv_bn("features.0", ("features_0",))
    for i, c in enumerate(cfgs, start=1):
        parts = []
        if c.expanded != c.in_ch:
            parts.append("cba")
        parts.append("cba")  # depthwise
        if c.use_se:
            parts.append("se")
        parts.append("cba")  # project
        for j, part in enumerate(parts):
            tp, fp = f"features.{i}.block.{j}", (f"features_{i}", f"block_{j}")
            if part == "cba":
                rows += _conv_bn(tp, fp)
            else:
                rows += [Row(f"{tp}.fc1", fp + ("fc1",), "conv"), Row(f"{tp}.fc2", fp + ("fc2",), "conv")]
    last = len(cfgs) + 1
    rows += _conv_bn(f"features.{last}", (f"features_{last}",))
    if not model.features_only:
        rows.append(Row("classifier.0", ("classifier_0",), "linear"))
        if model.num_classes:
            rows.append(Row("classifier.3", ("classifier_3",), "linear", head=True))
    return rows


#: timm groups the same inverted residuals into stages (``blocks.<stage>.<index>``): the repeat counts of its
#: ``_gen_mobilenet_v3`` arch_def, without the final ``cn`` stage (the 1x1 conv to 6x, ``blocks.<n>.0``).
TIMM_STAGES = {"large": (1, 2, 3, 4, 2, 3), "small": (1, 2, 3, 2, 3)}


@register_layout("mobilenet_v3", "timm", ["mobilenet_v3_large_100", "mobilenet_v3_small_100"],
                 notes="timm mobilenetv3_large_100 / mobilenetv3_small_100 (conv_stem, blocks.S.J.*, conv_head, "
                       "classifier); BatchNorm eps 1e-5", requires={"bn_eps": 1e-5})
def timm_rows(model_name: str, model) -> List[Row]:
    """timm's ``MobileNetV3``: a ``DepthwiseSeparableConv`` (conv_dw/bn1, se, conv_pw/bn2) where torchvision's
    block has no expand conv, else an ``InvertedResidual`` (conv_pw/bn1, conv_dw/bn2, se, conv_pwl/bn3); SE as
    ``se.conv_reduce``/``se.conv_expand``; the head's 1x1 ``conv_head`` (with bias) is torchvision's
    ``classifier.0`` Linear."""
    cfgs = block_configs(model.arch, model.width, model.output_stride)
    stages = TIMM_STAGES[model.arch]
    if sum(stages) != len(cfgs):  # pragma: no cover - a table edit that forgot the other table
        raise ValueError(f"{model_name}: timm stages {stages} do not cover {len(cfgs)} blocks")
    place = [(s, j) for s, n in enumerate(stages) for j in range(n)]

    def conv_bn(conv: str, bn: str, fp: tuple) -> List[Row]:
        return [Row(conv, fp + ("0",), "conv"), Row(bn, fp + ("1",), "bn")]

    rows = conv_bn("conv_stem", "bn1", ("features_0",))
    for i, (c, (s, j)) in enumerate(zip(cfgs, place), start=1):
        tp, parts = f"blocks.{s}.{j}", []
        if c.expanded != c.in_ch:  # InvertedResidual: expand, depthwise, [SE], project
            parts.append(("conv_pw", "bn1"))
            parts.append(("conv_dw", "bn2"))
            project = ("conv_pwl", "bn3")
        else:  # DepthwiseSeparableConv: depthwise, [SE], project
            parts.append(("conv_dw", "bn1"))
            project = ("conv_pw", "bn2")
        if c.use_se:
            parts.append(("se", None))
        parts.append(project)
        for k, (conv, bn) in enumerate(parts):  # block_k as torchvision numbers the same modules
            fp = (f"features_{i}", f"block_{k}")
            if bn is None:
                rows += [Row(f"{tp}.se.conv_reduce", fp + ("fc1",), "conv"),
                         Row(f"{tp}.se.conv_expand", fp + ("fc2",), "conv")]
            else:
                rows += conv_bn(f"{tp}.{conv}", f"{tp}.{bn}", fp)
    rows += conv_bn(f"blocks.{len(stages)}.0.conv", f"blocks.{len(stages)}.0.bn1", (f"features_{len(cfgs) + 1}",))
    if not model.features_only:
        rows.append(Row("conv_head", ("classifier_0",), "conv1x1_linear"))
        if model.num_classes:
            rows.append(Row("classifier", ("classifier_3",), "linear", head=True))
    return rows
