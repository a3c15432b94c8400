"""Key tables: ShuffleNet v1 (the seed's CIFAR code and megvii's official ImageNet code).

ShuffleNet v2's tables live in ``lightjax/convert/shufflenet_v2.py``.

Seed (``ShuffleNetG2`` / ``ShuffleNetG3``; models ``shufflenet_v1_g*_cifar``):

| PyTorch                                   | Flax                                | kind   |
|-------------------------------------------|-------------------------------------|--------|
| conv1 / bn1                               | conv1 / bn1                         | conv / bn |
| layer{s}.{i}.{conv1,conv2,conv3}          | layer{s}_{i}/{conv1,conv2,conv3}    | conv   |
| layer{s}.{i}.{bn1,bn2,bn3}                | layer{s}_{i}/{bn1,bn2,bn3}          | bn     |
| linear                                    | linear                              | linear (head) |

megvii (``megvii-model/ShuffleNet-Series`` ``ShuffleNetV1``; models ``shufflenet_v1_g{1,2,3,4,8}``; published
weights exist for g=3 and g=8 at 0.5x/1.0x/1.5x/2.0x):

| PyTorch                                   | Flax                                | kind   |
|-------------------------------------------|-------------------------------------|--------|
| first_conv.0 / first_conv.1               | first_conv_0 / first_conv_1         | conv / bn |
| features.{i}.branch_main_1.{0,3}          | features_{i}/branch_main_1_{0,3}    | conv   |
| features.{i}.branch_main_1.{1,4}          | features_{i}/branch_main_1_{1,4}    | bn     |
| features.{i}.branch_main_2.0 / .1         | features_{i}/branch_main_2_0 / _1   | conv / bn |
| classifier.0 (no bias)                    | classifier_0                        | linear (head) |

megvii's checkpoints were trained with megvii's channel-shuffle order, so the megvii table only applies to models
built with ``shuffle_order="megvii"`` (the default).
"""

from __future__ import annotations

from typing import List

from lightjax.convert.core import ConversionError, Row, register_layout
from lightjax.models.shufflenet_v1 import cifar_units, imagenet_units


def _has_head(model) -> bool:
    return bool(model.num_classes) and not model.features_only


@register_layout("shufflenet_v1", "seed", ["shufflenet_v1_g*_cifar"], primary=True,
                 notes="the seed article's ShuffleNetG2 / ShuffleNetG3 (CIFAR-10)")
def seed_rows(model_name: str, model) -> List[Row]:
    rows = [Row("conv1", ("conv1",), "conv"), Row("bn1", ("bn1",), "bn")]
    for s, stage in enumerate(cifar_units(model.groups)):
        for i in range(len(stage)):
            prefix, path = f"layer{s + 1}.{i}", f"layer{s + 1}_{i}"
            for j in (1, 2, 3):
                rows.append(Row(f"{prefix}.conv{j}", (path, f"conv{j}"), "conv"))
                rows.append(Row(f"{prefix}.bn{j}", (path, f"bn{j}"), "bn"))
    if _has_head(model):
        rows.append(Row("linear", ("linear",), "linear", head=True))
    return rows


@register_layout("shufflenet_v1", "megvii",
                 ["shufflenet_v1_g1", "shufflenet_v1_g2", "shufflenet_v1_g3", "shufflenet_v1_g4", "shufflenet_v1_g8"],
                 primary=True, notes="megvii-model/ShuffleNet-Series ShuffleNetV1 (network.py / blocks.py)")
def megvii_rows(model_name: str, model) -> List[Row]:
    if model.shuffle_order != "megvii":
        # The weights would load but compute something else: megvii's shuffle is the inverse permutation.
        raise ConversionError(
            f"{model_name}: the megvii layout needs shuffle_order='megvii' (megvii's checkpoints use its "
            f"channel-shuffle order), got shuffle_order={model.shuffle_order!r}"
        )
    rows = [Row("first_conv.0", ("first_conv_0",), "conv"), Row("first_conv.1", ("first_conv_1",), "bn")]
    n = sum(len(stage) for stage in imagenet_units(model.groups, model.width))
    for i in range(n):
        prefix, path = f"features.{i}", f"features_{i}"
        for torch_sub, kind in (("branch_main_1.0", "conv"), ("branch_main_1.1", "bn"), ("branch_main_1.3", "conv"),
                                ("branch_main_1.4", "bn"), ("branch_main_2.0", "conv"), ("branch_main_2.1", "bn")):
            rows.append(Row(f"{prefix}.{torch_sub}", (path, torch_sub.replace(".", "_")), kind))
    if _has_head(model):
        rows.append(Row("classifier.0", ("classifier_0",), "linear", head=True))
    return rows
