"""Constants shared by the families' pretrained tables (``PRETRAINED_CFGS`` in each model file).

Data only: no imports from the weights layer. A row is ``dict(TV, url=..., sha256=..., ...)`` or
``dict(TIMM, hf_hub_id=..., ...)``; :mod:`lightjax.pretrained` registers every row with
:func:`lightjax.pretrained.register_pretrained`, which validates each field.
"""

from __future__ import annotations

from typing import Any, Dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Inception / TF-slim normalisation (x / 127.5 - 1): timm's ``ra4`` MobileNets and every Xception.
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
#: Alibaba MIIL's ImageNet-21k recipe feeds x / 255 unnormalised.
MIIL_MEAN = (0.0, 0.0, 0.0)
MIIL_STD = (1.0, 1.0, 1.0)

#: torchvision's file host; each file name ends with the first hex digits of its sha256 (torch.hub's rule).
TV_URL = "https://download.pytorch.org/models/"
#: timm's older GitHub release files (timm now prefers its Hugging Face hub repos ``timm/<arch>.<tag>``).
TIMM_URL = "https://github.com/rwightman/pytorch-image-models/releases/download/"

#: torchvision ``ImageClassification`` eval transform: shorter side to ``resize_size`` (bilinear, antialiased),
#: centre crop 224, ImageNet mean/std. Published figures: each Weights enum's ``meta["_metrics"]``.
TV: Dict[str, Any] = dict(
    layout="torchvision", num_classes=1000, crop_size=224, interpolation="bilinear", mean=IMAGENET_MEAN,
    std=IMAGENET_STD, crop_mode="center", label_set="imagenet-1k", license="bsd-3-clause",
)
#: timm's eval transform: shorter side to ``floor(crop_size / crop_pct)``, the cfg's interpolation, centre crop.
#: Published figures: timm's ``results/results-imagenet.csv`` (pytorch-image-models aa4b585, 2026-08-08).
TIMM: Dict[str, Any] = dict(
    layout="timm", num_classes=1000, crop_size=224, crop_pct=0.875, interpolation="bicubic", mean=IMAGENET_MEAN,
    std=IMAGENET_STD, crop_mode="center", label_set="imagenet-1k", license="apache-2.0",
)
#: timm's Xceptions: 299 px, Inception normalisation.
TIMM_XCEPTION: Dict[str, Any] = dict(TIMM, crop_size=299, mean=INCEPTION_MEAN, std=INCEPTION_STD)
