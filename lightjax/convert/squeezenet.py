"""Key table: SqueezeNet (torchvision ``squeezenet1_0/1_1`` == the seed's ``SqueezeNet``).

| PyTorch                              | Flax                                 | kind   |
|--------------------------------------|--------------------------------------|--------|
| features.{i}.weight/bias (stem conv) | features_{i}/kernel, bias            | conv   |
| features.{i}.{squeeze,expand1x1,expand3x3}.weight/bias | features_{i}/{same}/... | conv   |
| classifier.1.weight/bias             | classifier_1/kernel, bias            | conv (head) |
"""

from __future__ import annotations

from typing import List

from lightjax.convert.core import Row, register_layout
from lightjax.models.squeezenet import ARCH


@register_layout("squeezenet", "torchvision", ["squeezenet1_0", "squeezenet1_1"], primary=True,
                 notes="torchvision squeezenet1_0/1_1 and the seed's SqueezeNet (identical keys)")
def torchvision_rows(model_name: str, model) -> List[Row]:
    rows = []
    for i, entry in enumerate(ARCH[model.version]):
        if entry[0] == "conv":
            rows.append(Row(f"features.{i}", (f"features_{i}",), "conv"))
        elif entry[0] == "fire":
            for sub in ("squeeze", "expand1x1", "expand3x3"):
                rows.append(Row(f"features.{i}.{sub}", (f"features_{i}", sub), "conv"))
    if model.num_classes and not model.features_only:
        rows.append(Row("classifier.1", ("classifier_1",), "conv", head=True))
    return rows
