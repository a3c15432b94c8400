"""Key tables: MobileNet v1 (the seed's ``MobileNet`` and timm ``mobilenetv1_*``).

| seed                     | timm                                | Flax                  | kind |
|--------------------------|-------------------------------------|-----------------------|------|
| model.0.0                | conv_stem                           | model_0/0             | conv |
| model.0.1                | bn1                                 | model_0/1             | bn   |
| model.{i}.0 (i = 1..13)  | blocks.{stage}.{j}.conv_dw          | model_{i}/0           | conv |
| model.{i}.1              | blocks.{stage}.{j}.bn1              | model_{i}/1           | bn   |
| model.{i}.3              | blocks.{stage}.{j}.conv_pw          | model_{i}/3           | conv |
| model.{i}.4              | blocks.{stage}.{j}.bn2              | model_{i}/4           | bn   |
| fc                       | classifier                          | fc                    | linear (head) |

timm checkpoints were trained with ReLU6: build the model with ``act="relu6"`` (the keys cannot tell).
"""

from __future__ import annotations

from typing import List

from lightjax.convert.core import Row, register_layout
from lightjax.models.mobilenet_v1 import block_specs

_MODELS = ["mobilenet_v1_*"]


def _has_head(model) -> bool:
    return bool(model.num_classes) and not model.features_only


@register_layout("mobilenet_v1", "seed", _MODELS, primary=True,
                 notes="the seed article's MobileNet (model.I.J.*, fc.*); ReLU (act='relu')")
def seed_rows(model_name: str, model) -> List[Row]:
    rows = [Row("model.0.0", ("model_0", "0"), "conv"), Row("model.0.1", ("model_0", "1"), "bn")]
    for idx, *_ in block_specs(model.width):
        for j, kind in (("0", "conv"), ("1", "bn"), ("3", "conv"), ("4", "bn")):
            rows.append(Row(f"model.{idx}.{j}", (f"model_{idx}", j), kind))
    if _has_head(model):
        rows.append(Row("fc", ("fc",), "linear", head=True))
    return rows


@register_layout("mobilenet_v1", "timm", _MODELS,
                 notes="timm mobilenetv1_100 (conv_stem, blocks.S.J.conv_dw/bn1/conv_pw/bn2, classifier); "
                       "needs act='relu6'", requires={"act": "relu6"})
def timm_rows(model_name: str, model) -> List[Row]:
    rows = [Row("conv_stem", ("model_0", "0"), "conv"), Row("bn1", ("model_0", "1"), "bn")]
    for idx, stage, j, *_ in block_specs(model.width):
        p = f"blocks.{stage}.{j}"
        rows += [Row(f"{p}.conv_dw", (f"model_{idx}", "0"), "conv"), Row(f"{p}.bn1", (f"model_{idx}", "1"), "bn"),
                 Row(f"{p}.conv_pw", (f"model_{idx}", "3"), "conv"), Row(f"{p}.bn2", (f"model_{idx}", "4"), "bn")]
    if _has_head(model):
        rows.append(Row("classifier", ("fc",), "linear", head=True))
    return rows
