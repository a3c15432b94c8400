"""Input pipeline: ``tfds.data_source`` (array_record) + grain, no TensorFlow.

Every process reads only its part of each global batch. The global order of examples is a function of the
seed alone (grain ``shuffle`` → ``repeat`` with a new shuffle each epoch), cut into global batches; global
batch ``b`` is split into ``P`` consecutive per-process slices, process ``p`` taking slice ``p`` (its
``shard_index`` from grain's ``ShardByJaxProcess``). So a run sees the same global batches whatever the
number of processes or devices, which is what makes 1 process and 2 processes give the same parameters.

Augmentation draws its randomness from grain's per-example RNG (seeded from the config seed and the example's
position), so it too is independent of the topology and is restored exactly with the iterator state.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, Iterator, Optional, Tuple

import grain.python as grain
import ml_collections
import numpy as np
from PIL import Image

# ----------------------------------------------------------------------------------------------------------
# Image ops (numpy/PIL, HWC uint8 in, float32 out).
# ----------------------------------------------------------------------------------------------------------


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of an HWC uint8 image (antialiased when shrinking, as torchvision's PIL path)."""
    if img.shape[0] == h and img.shape[1] == w:
        return img
    chans = [Image.fromarray(img[..., c]).resize((w, h), Image.BILINEAR) for c in range(img.shape[-1])]
    return np.stack([np.asarray(c) for c in chans], axis=-1)


def random_resized_crop(
    img: np.ndarray, size: int, rng: np.random.Generator, scale: Tuple[float, float], ratio: Tuple[float, float]
) -> np.ndarray:
    """torchvision ``RandomResizedCrop``: area fraction in ``scale``, log-uniform aspect ``ratio``, 10 tries,
    then a centre crop clamped to ``ratio``."""
    height, width = img.shape[:2]
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
            return _resize(img[i : i + h, j : j + w], size, size)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    i, j = (height - h) // 2, (width - w) // 2
    return _resize(img[i : i + h, j : j + w], size, size)


def pad_crop(img: np.ndarray, size: int, pad: int, rng: np.random.Generator) -> np.ndarray:
    """CIFAR ``RandomCrop(size, padding=pad)`` (zero padding) after resizing to ``size``."""
    img = _resize(img, size, size)
    if pad <= 0:
        return img
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
    i, j = rng.integers(0, 2 * pad + 1, size=2)
    return padded[i : i + size, j : j + size]


def resize_center_crop(img: np.ndarray, size: int, crop_pct: float) -> np.ndarray:
    """Eval transform: resize the shorter side to ``size / crop_pct``, centre crop ``size``."""
    height, width = img.shape[:2]
    short = int(math.floor(size / crop_pct))
    if height <= width:
        nh, nw = short, max(short, int(round(width * short / height)))
    else:
        nw, nh = short, max(short, int(round(height * short / width)))
    img = _resize(img, nh, nw)
    i, j = (nh - size) // 2, (nw - size) // 2
    return img[i : i + size, j : j + size]


def _match_channels(img: np.ndarray, in_chans: int) -> np.ndarray:
    if img.ndim == 2:
        img = img[..., None]
    c = img.shape[-1]
    if c == in_chans:
        return img
    if c == 1:  # grey → RGB by replication (e.g. digits into an ImageNet-pretrained model)
        return np.repeat(img, in_chans, axis=-1)
    if in_chans == 1:  # RGB → grey (ITU-R 601 luma, as PIL's "L")
        return np.round(img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[
            ..., None
        ].astype(np.uint8)
    raise ValueError(f"data: cannot map {c}-channel images to model.in_chans={in_chans}")


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Per-example transform; picklable (grain worker processes) and configured from ``config.data``."""

    train: bool
    image_size: int
    in_chans: int
    augment: str  # "imagenet" | "cifar" | "none"
    crop_scale: Tuple[float, float]
    crop_ratio: Tuple[float, float]
    pad: int
    flip: bool
    eval_crop_pct: float
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    image_key: str
    label_key: str

    def __call__(self, example: Dict[str, Any], rng: Optional[np.random.Generator]) -> Dict[str, np.ndarray]:
        img = _match_channels(np.asarray(example[self.image_key]), self.in_chans)
        if self.train and self.augment == "imagenet":
            img = random_resized_crop(img, self.image_size, rng, self.crop_scale, self.crop_ratio)
        elif self.train and self.augment == "cifar":
            img = pad_crop(img, self.image_size, self.pad, rng)
        else:
            img = resize_center_crop(img, self.image_size, self.eval_crop_pct)
        if self.train and self.flip and rng.random() < 0.5:
            img = img[:, ::-1]
        mean = np.asarray(self.mean, np.float32) * 255.0
        std = np.asarray(self.std, np.float32) * 255.0
        x = (img.astype(np.float32) - mean) / std
        return {"image": x, "label": np.int32(example[self.label_key])}


class _TrainMap(grain.RandomMapTransform):
    def __init__(self, fn: Preprocess):
        self.fn = fn

    def random_map(self, element, rng: np.random.Generator):
        return self.fn(element, rng)


def make_preprocess(config: ml_collections.ConfigDict, train: bool) -> Preprocess:
    d = config.data
    return Preprocess(
        train=train,
        image_size=int(d.image_size),
        in_chans=int(config.model.in_chans),
        augment=d.augment,
        crop_scale=tuple(d.crop_scale),
        crop_ratio=tuple(d.crop_ratio),
        pad=int(d.pad),
        flip=bool(d.flip),
        eval_crop_pct=float(d.eval_crop_pct),
        mean=tuple(d.mean),
        std=tuple(d.std),
        image_key=d.image_key,
        label_key=d.label_key,
    )


# ----------------------------------------------------------------------------------------------------------
# Sources and pipelines.
# ----------------------------------------------------------------------------------------------------------


def data_source(config: ml_collections.ConfigDict, split: str):
    """``tfds.data_source`` for ``config.data.dataset``; builds the project's own datasets on first use."""
    import tensorflow_datasets as tfds

    d = config.data
    data_dir = os.path.expanduser(d.data_dir) if d.data_dir else None
    if d.dataset == "lightjax_digits":
        from train import digits

        digits.prepare(data_dir)  # no-op when the array_record files exist
    return tfds.data_source(d.dataset, split=split, data_dir=data_dir)


def process_shard() -> Tuple[int, int]:
    """(index, count) of this process among the data-loading processes."""
    opts = grain.ShardByJaxProcess(drop_remainder=True)
    return opts.shard_index, opts.shard_count


def _split_global_batches(ds: grain.MapDataset, global_batch: int, shard: Tuple[int, int]) -> grain.MapDataset:
    """Batches ``ds`` per process so that process ``p`` gets slice ``p`` of every global batch."""
    index, count = shard
    local = global_batch // count
    return ds.batch(local, drop_remainder=True)[index::count]


def train_dataset(config: ml_collections.ConfigDict, source=None, shard: Optional[Tuple[int, int]] = None):
    """Infinite, shuffled (new order each epoch), augmented per-process batches as a grain ``IterDataset``.

    Returns ``(iter_dataset, num_train_examples)``; ``iter(iter_dataset)`` is checkpointable
    (``get_state``/``set_state``).
    """
    source = source if source is not None else data_source(config, config.data.train_split)
    shard = shard or process_shard()
    n = len(source)
    ds = grain.MapDataset.source(source).seed(config.seed).shuffle().repeat(None)
    ds = ds.random_map(_TrainMap(make_preprocess(config, train=True)))
    ds = _split_global_batches(ds, config.batch_size, shard)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.data.read_threads, prefetch_buffer_size=
                                                 max(config.data.read_threads * 2, 1)))
    if config.data.worker_count > 0:
        it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.worker_count))
    return it_ds, n


class _EvalMap(grain.MapTransform):
    def __init__(self, fn: Preprocess, source, n: int):
        self.fn, self.source, self.n = fn, source, n

    def map(self, i):
        # Padding examples (i >= n) repeat example 0 with mask 0 so that every global batch is full.
        out = self.fn(self.source[int(i) if i < self.n else 0], None)
        out["mask"] = np.float32(i < self.n)
        return out


def eval_batches(config: ml_collections.ConfigDict, source=None, shard: Optional[Tuple[int, int]] = None,
                 limit: Optional[int] = None) -> Tuple[Iterator[Dict[str, np.ndarray]], int, int]:
    """Per-process eval batches over the whole split, padded to full global batches with ``mask`` 0.

    Returns ``(iterator, num_examples, num_global_batches)``.
    """
    source = source if source is not None else data_source(config, config.data.eval_split)
    shard = shard or process_shard()
    n = len(source) if not limit else min(limit, len(source))
    gb = config.eval_batch_size or config.batch_size
    steps = max(1, math.ceil(n / gb))
    ds = grain.MapDataset.range(steps * gb).map(_EvalMap(make_preprocess(config, train=False), source, n))
    ds = _split_global_batches(ds, gb, shard)
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=config.data.read_threads,
                                                   prefetch_buffer_size=max(config.data.read_threads * 2, 1))))
    return it, n, steps
