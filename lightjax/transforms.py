"""Image transforms, pixel-exact with torchvision and timm: eval (resize, centre crop, normalise) and training.

```python
from lightjax import transforms
tf = transforms.eval_transform(cfg)                 # a PretrainedCfg, or the fields as keywords
x = tf(PIL.Image.open("cat.jpg"))[None]             # float32 (1, 224, 224, 3), NHWC
```

What "exact" means here, step by step (each the same call or the same arithmetic as the reference):

- **Loading**: any PIL image or HW/HWC uint8 array (grey, RGB, RGBA, palette...) becomes RGB with PIL's
  ``.convert("RGB")``, as torchvision's ``ImageFolder`` loader and timm's dataset readers do.
- **Resize** (torchvision ``Resize(int)``): the shorter side to ``S``, the longer to ``int(S * long / short)``
  (truncated), with one ``PIL.Image.resize(..., resample)`` call on the whole image (PIL antialiases
  bilinear/bicubic when shrinking, which is what torchvision and timm get for PIL input). ``S`` is
  ``resize_size`` (torchvision weights) or ``floor(crop_size / crop_pct)`` (timm). An image already of
  that size is not resampled, as in torchvision.
- **Centre crop** (torchvision ``CenterCrop``): offsets ``int(round((h - crop) / 2.0))`` (Python's round:
  halves go to even), zero padding first if the image is smaller than the crop.
- **ToTensor + Normalize**: ``x / 255`` then ``(x - mean) / std``, each in float32, in torch's order, so
  the arrays are bitwise equal to torchvision's/timm's tensors (transposed to HWC).

No torch, no jax: numpy and PIL only, and every transform object is picklable (grain worker processes).
The training transforms (random resized crop, pad + crop, flip) use the same :func:`resize`, so there is
exactly one resampling implementation in lightjax.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

# Interpolation name (PretrainedCfg.interpolation, timm's strings) -> PIL filter. torchvision maps its
# InterpolationMode onto the same PIL filters for PIL input.
INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875  # timm's default; at 224 px it gives torchvision's default resize of 256 too
CROP_MODES = ("center",)

ImageLike = Union[Image.Image, np.ndarray]


# ----------------------------------------------------------------------------------------------------------
# Pixels in: PIL images and uint8 arrays.
# ----------------------------------------------------------------------------------------------------------


def _check_array(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise TypeError(f"transforms: expected a uint8 image array, got dtype {arr.dtype} (shape {arr.shape}); "
                        "convert float images in [0, 1] with (x * 255).round().astype(np.uint8)")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or 0 in arr.shape:
        raise ValueError(f"transforms: expected an HW, HWC (C = 1, 3 or 4) uint8 image, got shape {arr.shape}")
    return arr


def to_pil(img: ImageLike) -> Image.Image:
    """A PIL image of ``img`` (an HW/HWC uint8 array or a PIL image, returned as is)."""
    if isinstance(img, Image.Image):
        return img
    if not isinstance(img, np.ndarray):
        raise TypeError(f"transforms: expected a PIL image or a numpy uint8 array, got {type(img).__name__}")
    return Image.fromarray(np.ascontiguousarray(_check_array(img)))


def to_rgb(img: ImageLike) -> np.ndarray:
    """HWC uint8 RGB array of any PIL image or uint8 array, through PIL's ``convert("RGB")``.

    That is what torchvision's and timm's loaders do: grey is replicated, RGBA drops alpha (no compositing),
    palette and CMYK images are mapped by PIL.
    """
    pil = to_pil(img)
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    return np.asarray(pil)


# ----------------------------------------------------------------------------------------------------------
# The one resize, crops, normalisation (HWC uint8 arrays, C = 1 or 3).
# ----------------------------------------------------------------------------------------------------------


def pil_filter(interpolation: str) -> int:
    """PIL resampling filter of an interpolation name, with an error that lists the names."""
    try:
        return INTERPOLATIONS[interpolation]
    except (KeyError, TypeError):
        raise ValueError(f"transforms: interpolation={interpolation!r} is not one of {sorted(INTERPOLATIONS)}") \
            from None


def resize(img: np.ndarray, size: Tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """Resizes an HWC (or HW) uint8 array to ``size = (height, width)`` with one PIL call on all channels.

    Args:
      img: uint8 array, HW or HWC with 1, 3 or 4 channels.
      size: (height, width) of the output.
      interpolation: a key of :data:`INTERPOLATIONS`.

    Returns:
      uint8 array of shape (height, width[, C]) (the input itself when it already has that size).
    """
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"transforms.resize: output size {size} must be positive")
    resample = pil_filter(interpolation)
    if img.shape[0] == h and img.shape[1] == w:
        return img  # torchvision's Resize returns such an image untouched, without resampling
    squeeze = img.ndim == 3 and img.shape[-1] == 1
    out = np.asarray(to_pil(img).resize((w, h), resample))
    return out[..., None] if squeeze else out


def resize_shorter_size(height: int, width: int, shorter: int) -> Tuple[int, int]:
    """(height, width) after torchvision's ``Resize(shorter)``: long side ``int(shorter * long / short)``."""
    if shorter <= 0:
        raise ValueError(f"transforms: resize size {shorter} must be positive")
    if width <= height:
        return int(shorter * height / width), shorter
    return shorter, int(shorter * width / height)


def resize_shorter(img: np.ndarray, shorter: int, interpolation: str = "bilinear") -> np.ndarray:
    """torchvision ``Resize(shorter)``: shorter side to ``shorter``, aspect ratio kept (long side truncated)."""
    return resize(img, resize_shorter_size(img.shape[0], img.shape[1], shorter), interpolation)


def center_crop(img: np.ndarray, size: Union[int, Tuple[int, int]]) -> np.ndarray:
    """torchvision ``CenterCrop``: zero-pads when smaller (pad split floor/ceil), offsets ``int(round(d / 2))``."""
    ch, cw = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    h, w = img.shape[:2]
    if ch > h or cw > w:
        top, left = max(ch - h, 0) // 2, max(cw - w, 0) // 2
        pads = [(top, max(ch - h, 0) - top), (left, max(cw - w, 0) - left)] + [(0, 0)] * (img.ndim - 2)
        img = np.pad(img, pads)
        h, w = img.shape[:2]
    i = int(round((h - ch) / 2.0))
    j = int(round((w - cw) / 2.0))
    return img[i : i + ch, j : j + cw]


def normalize(img: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``ToTensor`` + ``Normalize`` in float32, torch's order: ``(img / 255 - mean) / std``; HWC float32 out."""
    x = img.astype(np.float32) / np.float32(255.0)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def shorter_side(crop_size: int, resize_size: Optional[int] = None, crop_pct: Optional[float] = None) -> int:
    """The eval resize target: ``resize_size`` (torchvision) or ``floor(crop_size / crop_pct)`` (timm)."""
    if resize_size is not None and crop_pct is not None:
        raise ValueError(f"transforms: give resize_size ({resize_size}) or crop_pct ({crop_pct}), not both")
    if resize_size is not None:
        if int(resize_size) <= 0:
            raise ValueError(f"transforms: resize_size={resize_size} must be a positive integer")
        return int(resize_size)
    pct = DEFAULT_CROP_PCT if crop_pct is None else float(crop_pct)
    if not pct > 0:
        raise ValueError(f"transforms: crop_pct={crop_pct} must be > 0")
    return int(math.floor(crop_size / pct))


# ----------------------------------------------------------------------------------------------------------
# Eval transform.
# ----------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """Resize the shorter side, centre crop, normalise: PIL image or uint8 array -> float32 HWC RGB array.

    Build it with :func:`eval_transform`. Frozen and made of plain values, so it pickles.
    """

    crop_size: int
    resize_shorter: int
    interpolation: str = "bilinear"
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    crop_mode: str = "center"

    def __call__(self, img: ImageLike) -> np.ndarray:
        return self.apply_uint8(to_rgb(img))

    def crop(self, img: np.ndarray) -> np.ndarray:
        """Resize + centre crop only (uint8 in, uint8 out, any channel count)."""
        return center_crop(resize_shorter(img, self.resize_shorter, self.interpolation), self.crop_size)

    def apply_uint8(self, img: np.ndarray) -> np.ndarray:
        """The transform of an HWC uint8 array as it is (no RGB conversion: grey models keep 1 channel)."""
        return normalize(self.crop(img), self.mean, self.std)


def _field(cfg: Any, fields: dict, name: str, default: Any = None) -> Any:
    if name in fields:
        return fields[name]
    return getattr(cfg, name, default) if cfg is not None else default


_FIELDS = ("crop_size", "resize_size", "crop_pct", "interpolation", "mean", "std", "crop_mode")


def eval_transform(cfg: Any = None, **fields: Any) -> EvalTransform:
    """The evaluation transform of a pretrained tag, as torchvision's ``weights.transforms()`` / timm's
    ``create_transform(**resolve_data_config(...))`` compute it.

    Args:
      cfg: a :class:`lightjax.pretrained.PretrainedCfg` (or anything with its attributes), or None.
      **fields: override or replace the cfg's values: ``crop_size`` (int, required without cfg),
        ``resize_size`` (shorter side, torchvision) or ``crop_pct`` (shorter side ``floor(crop_size /
        crop_pct)``, timm; 0.875 when neither is given), ``interpolation`` ("bilinear" default, "bicubic",
        "nearest", ...), ``mean``/``std`` (default ImageNet), ``crop_mode`` ("center").

    Returns:
      An :class:`EvalTransform`: PIL image or HW/HWC uint8 array -> float32 (crop, crop, 3) array.
    """
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise TypeError(f"eval_transform: unknown field(s) {unknown}; known: {list(_FIELDS)}")
    crop_size = _field(cfg, fields, "crop_size")
    if isinstance(crop_size, (tuple, list)):
        if len(crop_size) != 2 or crop_size[0] != crop_size[1]:
            raise ValueError(f"eval_transform: crop_size={crop_size!r}: only square crops are supported")
        crop_size = crop_size[0]
    if not isinstance(crop_size, (int, np.integer)) or isinstance(crop_size, bool) or crop_size <= 0:
        raise ValueError(f"eval_transform: crop_size={crop_size!r} must be a positive integer"
                         + (" (pass crop_size= or a PretrainedCfg)" if cfg is None else ""))
    # A keyword resize_size/crop_pct replaces the cfg's rule rather than clashing with it.
    resize_size, crop_pct = _field(cfg, fields, "resize_size"), _field(cfg, fields, "crop_pct")
    if "crop_pct" in fields and "resize_size" not in fields:
        resize_size = None
    if "resize_size" in fields and "crop_pct" not in fields:
        crop_pct = None
    interpolation = _field(cfg, fields, "interpolation", "bilinear") or "bilinear"
    pil_filter(interpolation)  # validates the name now rather than at the first image
    mean = tuple(float(v) for v in (_field(cfg, fields, "mean", IMAGENET_MEAN) or IMAGENET_MEAN))
    std = tuple(float(v) for v in (_field(cfg, fields, "std", IMAGENET_STD) or IMAGENET_STD))
    if len(mean) not in (1, 3) or len(std) not in (1, 3):
        raise ValueError(f"eval_transform: mean={mean} / std={std} must have 1 or 3 values")
    if any(s <= 0 for s in std):
        raise ValueError(f"eval_transform: std={std} must be positive")
    crop_mode = _field(cfg, fields, "crop_mode", "center") or "center"
    if crop_mode not in CROP_MODES:
        raise ValueError(f"eval_transform: crop_mode={crop_mode!r} is not supported (only {list(CROP_MODES)})")
    return EvalTransform(crop_size=int(crop_size), resize_shorter=shorter_side(int(crop_size), resize_size, crop_pct),
                         interpolation=str(interpolation), mean=mean, std=std, crop_mode=crop_mode)


# ----------------------------------------------------------------------------------------------------------
# Training transforms (numpy Generator randomness: grain's per-example RNG).
# ----------------------------------------------------------------------------------------------------------


def random_resized_crop_params(height: int, width: int, rng: np.random.Generator, scale: Tuple[float, float],
                               ratio: Tuple[float, float]) -> Tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params``: area fraction in ``scale``, log-uniform aspect in
    ``ratio``, 10 tries, then a centre crop clamped to ``ratio``. Returns (top, left, height, width)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(rng.integers(0, height - h + 1))
            j = int(rng.integers(0, width - w + 1))
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(img: np.ndarray, size: int, rng: np.random.Generator, scale: Tuple[float, float],
                        ratio: Tuple[float, float], interpolation: str = "bilinear") -> np.ndarray:
    """torchvision ``RandomResizedCrop(size, scale, ratio)`` of an HWC uint8 array (crop, then :func:`resize`)."""
    i, j, h, w = random_resized_crop_params(img.shape[0], img.shape[1], rng, scale, ratio)
    return resize(img[i : i + h, j : j + w], (size, size), interpolation)


def pad_crop(img: np.ndarray, size: int, pad: int, rng: np.random.Generator,
             interpolation: str = "bilinear") -> np.ndarray:
    """CIFAR ``RandomCrop(size, padding=pad)`` (zero padding) after resizing to ``size`` x ``size``."""
    img = resize(img, (size, size), interpolation)
    if pad <= 0:
        return img
    padded = np.pad(img, ((pad, pad), (pad, pad)) + ((0, 0),) * (img.ndim - 2))
    i, j = rng.integers(0, 2 * pad + 1, size=2)
    return padded[i : i + size, j : j + size]


def random_hflip(img: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """``RandomHorizontalFlip(p)``: one ``rng.random()`` draw per call."""
    return img[:, ::-1] if rng.random() < p else img


__all__ = [
    "DEFAULT_CROP_PCT", "EvalTransform", "IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "center_crop",
    "eval_transform", "normalize", "pad_crop", "pil_filter", "random_hflip", "random_resized_crop",
    "random_resized_crop_params", "resize", "resize_shorter", "resize_shorter_size", "shorter_side", "to_pil",
    "to_rgb",
]
