"""Class names shipped with lightjax, and turning logits into readable top-k predictions.

The ImageNet-1k names are a data file inside the package (``lightjax/data/imagenet1k_classes.txt``, one name
a line, index order), generated once from torchvision's ``ResNet50_Weights.IMAGENET1K_V1.meta["categories"]``
(the list every torchvision ImageNet-1k weight carries); their WordNet ids (``imagenet1k_wnids.txt``, the
sorted synsets whose order *is* the class index, as in ImageNet's own folders) from timm's
``timm/data/_info/imagenet_synsets.txt``. Nothing is downloaded.

```python
from lightjax import labels
labels.decode_predictions(logits, top=5)   # [[(class_index, "tabby", 0.62), ...], ...] per image
```
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import List, Optional, Sequence, Tuple

import numpy as np

# Label-set name (PretrainedCfg.label_set) -> data file inside lightjax/data/. A new label set is one row.
LABEL_FILES = {
    "imagenet-1k": "imagenet1k_classes.txt",
}
WNID_FILES = {
    "imagenet-1k": "imagenet1k_wnids.txt",
}
_EXPECTED_LEN = {"imagenet-1k": 1000}

Prediction = Tuple[int, str, float]


@functools.lru_cache(maxsize=None)
def _read_label_file(name: str) -> Tuple[str, ...]:
    text = resources.files("lightjax").joinpath("data", name).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def imagenet1k_classes() -> List[str]:
    """The 1000 ImageNet-1k class names in class-index order (torchvision's ``categories``).

    Returns:
      A new list (the cached tuple is not handed out, so callers may modify their copy).
    """
    return list(label_names("imagenet-1k"))  # type: ignore[arg-type]


def imagenet1k_wnids() -> List[str]:
    """The 1000 ImageNet-1k WordNet ids (``n01440764`` ...) in class-index order (sorted)."""
    return list(_checked("imagenet-1k", WNID_FILES))


def _checked(label_set: str, files: dict) -> Tuple[str, ...]:
    names = _read_label_file(files[label_set])
    want = _EXPECTED_LEN.get(label_set)
    if want is not None and len(names) != want:  # a damaged install must not give shifted labels
        raise RuntimeError(f"lightjax/data/{files[label_set]} holds {len(names)} lines, expected {want}; "
                           "reinstall lightjax")
    return names


def label_names(label_set: Optional[str]) -> Optional[List[str]]:
    """The class names of a label set (``PretrainedCfg.label_set``).

    Args:
      label_set: ``"imagenet-1k"``; None or a set lightjax does not ship names for gives None.

    Returns:
      The names in class-index order, or None.
    """
    if label_set is None or label_set not in LABEL_FILES:
        return None
    return list(_checked(label_set, LABEL_FILES))


def label_wnids(label_set: Optional[str]) -> Optional[List[str]]:
    """WordNet ids of a label set in class-index order, or None where lightjax ships none."""
    if label_set is None or label_set not in WNID_FILES:
        return None
    return list(_checked(label_set, WNID_FILES))


def _softmax64(logits: np.ndarray) -> np.ndarray:
    # float64 so that the small probabilities of a 1000-way softmax keep their digits.
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def decode_predictions(logits, top: int = 5, labels: Optional[Sequence[str]] = None) -> List[List[Prediction]]:
    """Top-k classes of each image, most probable first.

    Args:
      logits: ``(N, C)`` or ``(C,)`` array (numpy or jax), raw model outputs; softmax is applied here in float64.
      top: how many classes per image (clamped to C).
      labels: C class names; None gives the ImageNet-1k names when C == 1000, else ``str(index)``.

    Returns:
      One list per image of ``(class_index, label, probability)``.
    """
    x = np.asarray(logits, dtype=np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[-1] == 0:
        raise ValueError(f"decode_predictions: expected logits of shape (N, C) or (C,), got {np.shape(logits)}")
    if not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"decode_predictions: top={top!r} must be a positive integer")
    c = x.shape[-1]
    if labels is None:
        names: Sequence[str] = imagenet1k_classes() if c == 1000 else [str(i) for i in range(c)]
    else:
        names = list(labels)
        if len(names) != c:
            raise ValueError(f"decode_predictions: {len(names)} labels given for logits with {c} classes "
                             f"(shape {x.shape}); pass labels=None or the model's own label list")
    probs = _softmax64(x)
    k = min(int(top), c)
    # Stable sort on -p: equal probabilities keep the lower class index first (deterministic output).
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [[(int(i), str(names[i]), float(p[i])) for i in row] for p, row in zip(probs, order)]


__all__ = ["LABEL_FILES", "WNID_FILES", "decode_predictions", "imagenet1k_classes", "imagenet1k_wnids", "label_names",
           "label_wnids"]
