"""Key tables: MobileNet v2 (torchvision ``mobilenet_v2`` and timm ``mobilenetv2_050/075/100/140``).

| torchvision                         | timm                              | Flax                       | kind |
|-------------------------------------|-----------------------------------|----------------------------|------|
| features.0.0 / features.0.1         | conv_stem / bn1                   | features_0/0, features_0/1 | conv, bn |
| features.1.conv.0.0 / .conv.0.1     | blocks.0.0.conv_dw / bn1          | features_1/conv_0/0, /1    | conv, bn |
| features.1.conv.1 / .conv.2         | blocks.0.0.conv_pw / bn2          | features_1/conv_1, conv_2  | conv, bn |
| features.{i}.conv.0.0 / .conv.0.1   | blocks.{s}.{j}.conv_pw / bn1      | features_{i}/conv_0/0, /1  | conv, bn |
| features.{i}.conv.1.0 / .conv.1.1   | blocks.{s}.{j}.conv_dw / bn2      | features_{i}/conv_1/0, /1  | conv, bn |
| features.{i}.conv.2 / .conv.3       | blocks.{s}.{j}.conv_pwl / bn3     | features_{i}/conv_2, conv_3| conv, bn |
| features.18.0 / features.18.1       | conv_head / bn2                   | features_18/0, /1          | conv, bn |
| classifier.1                        | classifier                        | classifier_1               | linear (head) |

timm's ``mobilenetv2_*`` at widths 0.5, 0.75, 1.0 and 1.4 build exactly torchvision's network (same channel
rounding, same head width, ReLU6, eps 1e-5), so both layouts apply to every registered width. timm's
``mobilenetv2_110d`` / ``mobilenetv2_120d`` (depth multiplier, fixed stem/head) are different networks and are
not registered. With ``features_only`` neither the head conv nor the classifier exist (timm's
``features_only`` models have neither).
"""

from __future__ import annotations

from typing import List

from lightjax.convert.core import Row, register_layout
from lightjax.models.mobilenet_v2 import block_specs

_MODELS = ["mobilenet_v2_*"]


def _specs(model):
    return block_specs(model.width, model.output_stride)


@register_layout("mobilenet_v2", "torchvision", _MODELS, primary=True,
                 notes="torchvision mobilenet_v2(width_mult=...) (features.N.conv.*, classifier.1)")
def torchvision_rows(model_name: str, model) -> List[Row]:
    rows = [Row("features.0.0", ("features_0", "0"), "conv"), Row("features.0.1", ("features_0", "1"), "bn")]
    specs = _specs(model)
    for b in specs:
        p, f = f"features.{b.index}.conv", f"features_{b.index}"
        i = 0
        if b.expand_ratio != 1:
            rows += [Row(f"{p}.0.0", (f, "conv_0", "0"), "conv"), Row(f"{p}.0.1", (f, "conv_0", "1"), "bn")]
            i = 1
        rows += [Row(f"{p}.{i}.0", (f, f"conv_{i}", "0"), "conv"), Row(f"{p}.{i}.1", (f, f"conv_{i}", "1"), "bn"),
                 Row(f"{p}.{i + 1}", (f, f"conv_{i + 1}"), "conv"), Row(f"{p}.{i + 2}", (f, f"conv_{i + 2}"), "bn")]
    if not model.features_only:
        h = len(specs) + 1
        rows += [Row(f"features.{h}.0", (f"features_{h}", "0"), "conv"),
                 Row(f"features.{h}.1", (f"features_{h}", "1"), "bn")]
        if model.num_classes:
            rows.append(Row("classifier.1", ("classifier_1",), "linear", head=True))
    return rows


@register_layout("mobilenet_v2", "timm", _MODELS,
                 notes="timm mobilenetv2_050/075/100/140 (conv_stem, blocks.S.J.*, conv_head, classifier)")
def timm_rows(model_name: str, model) -> List[Row]:
    rows = [Row("conv_stem", ("features_0", "0"), "conv"), Row("bn1", ("features_0", "1"), "bn")]
    specs = _specs(model)
    for b in specs:
        p, f = f"blocks.{b.stage}.{b.pos}", f"features_{b.index}"
        if b.expand_ratio == 1:  # timm DepthwiseSeparableConv (no expansion)
            rows += [Row(f"{p}.conv_dw", (f, "conv_0", "0"), "conv"), Row(f"{p}.bn1", (f, "conv_0", "1"), "bn"),
                     Row(f"{p}.conv_pw", (f, "conv_1"), "conv"), Row(f"{p}.bn2", (f, "conv_2"), "bn")]
        else:
            rows += [Row(f"{p}.conv_pw", (f, "conv_0", "0"), "conv"), Row(f"{p}.bn1", (f, "conv_0", "1"), "bn"),
                     Row(f"{p}.conv_dw", (f, "conv_1", "0"), "conv"), Row(f"{p}.bn2", (f, "conv_1", "1"), "bn"),
                     Row(f"{p}.conv_pwl", (f, "conv_2"), "conv"), Row(f"{p}.bn3", (f, "conv_3"), "bn")]
    if not model.features_only:
        h = len(specs) + 1
        rows += [Row("conv_head", (f"features_{h}", "0"), "conv"), Row("bn2", (f"features_{h}", "1"), "bn")]
        if model.num_classes:
            rows.append(Row("classifier", ("classifier_1",), "linear", head=True))
    return rows
