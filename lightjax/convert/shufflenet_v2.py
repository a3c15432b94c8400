"""Key table: ShuffleNet v2 (torchvision ``shufflenet_v2_x0_5 / x1_0 / x1_5 / x2_0``).

| PyTorch                                   | Flax                               | kind   |
|-------------------------------------------|------------------------------------|--------|
| conv1.0 / conv1.1                         | conv1_0 / conv1_1                  | conv / bn |
| stage{s}.{i}.branch1.{0,2} / .{1,3}       | stage{s}_{i}/branch1_{j}           | conv / bn (stride-2 units only) |
| stage{s}.{i}.branch2.{0,3,5} / .{1,4,6}   | stage{s}_{i}/branch2_{j}           | conv / bn |
| conv5.0 / conv5.1                         | conv5_0 / conv5_1                  | conv / bn |
| fc                                        | fc                                 | linear (head) |

(Kept apart from ``lightjax/convert/shufflenet.py``, which holds the ShuffleNet v1 tables.)
"""

from __future__ import annotations

from typing import List

from lightjax.convert.core import Row, register_layout
from lightjax.models.shufflenet_v2 import STAGE_REPEATS

_BRANCH1 = ((0, "conv"), (1, "bn"), (2, "conv"), (3, "bn"))
_BRANCH2 = ((0, "conv"), (1, "bn"), (3, "conv"), (4, "bn"), (5, "conv"), (6, "bn"))


@register_layout("shufflenet_v2", "torchvision", ["shufflenet_v2_*"], primary=True,
                 notes="torchvision shufflenet_v2_x0_5/x1_0/x1_5/x2_0")
def torchvision_rows(model_name: str, model) -> List[Row]:
    rows = [Row("conv1.0", ("conv1_0",), "conv"), Row("conv1.1", ("conv1_1",), "bn")]
    for s, repeats in enumerate(STAGE_REPEATS, start=2):
        for i in range(repeats):
            unit_t, unit_f = f"stage{s}.{i}", f"stage{s}_{i}"
            branches = (("branch1", _BRANCH1), ("branch2", _BRANCH2)) if i == 0 else (("branch2", _BRANCH2),)
            for branch, entries in branches:
                rows += [Row(f"{unit_t}.{branch}.{j}", (unit_f, f"{branch}_{j}"), kind) for j, kind in entries]
    rows += [Row("conv5.0", ("conv5_0",), "conv"), Row("conv5.1", ("conv5_1",), "bn")]
    if model.num_classes and not model.features_only:
        rows.append(Row("fc", ("fc",), "linear", head=True))
    return rows
