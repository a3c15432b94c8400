"""Key table: MobileNet v3 (torchvision ``mobilenet_v3_large`` / ``mobilenet_v3_small``).

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
