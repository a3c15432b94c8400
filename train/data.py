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

from lightjax import transforms

# ----------------------------------------------------------------------------------------------------------
# Per-example transforms. Every resize, crop and normalisation is lightjax.transforms' (the one resize
# implementation, pixel-exact with torchvision/timm); this file only wires them to the config.
# ----------------------------------------------------------------------------------------------------------


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
    interpolation: str  # PIL filter of the training resizes
    mean: Tuple[float, ...]  # training normalisation
    std: Tuple[float, ...]
    eval_tf: transforms.EvalTransform  # resize shorter side, centre crop, normalise (its own mean/std)
    image_key: str
    label_key: str

    def __call__(self, example: Dict[str, Any], rng: Optional[np.random.Generator]) -> Dict[str, np.ndarray]:
        img = _match_channels(np.asarray(example[self.image_key]), self.in_chans)
        if self.train and self.augment == "imagenet":
            img = transforms.random_resized_crop(img, self.image_size, rng, self.crop_scale, self.crop_ratio,
                                                 self.interpolation)
        elif self.train and self.augment == "cifar":
            img = transforms.pad_crop(img, self.image_size, self.pad, rng, self.interpolation)
        else:  # eval, and augment="none" training: the eval resize + centre crop, on the model's channels
            img = self.eval_tf.crop(img)
            if not self.train:
                return {"image": transforms.normalize(img, self.eval_tf.mean, self.eval_tf.std),
                        "label": np.int32(example[self.label_key])}
        if self.flip:
            img = transforms.random_hflip(img, rng)
        return {"image": transforms.normalize(img, self.mean, self.std), "label": np.int32(example[self.label_key])}


class _TrainMap(grain.RandomMapTransform):
    def __init__(self, fn: Preprocess):
        self.fn = fn

    def random_map(self, element, rng: np.random.Generator):
        return self.fn(element, rng)


def resolve_transform(config: ml_collections.ConfigDict) -> Dict[str, Any]:
    """The normalisation and eval-transform settings a run uses.

    With ``data.eval_transform="auto"`` and ``model.init_from`` a pretrained tag, the tag's own transform
    (resize rule as its crop_pct, interpolation, mean/std) is used for evaluation at ``data.image_size`` and
    its mean/std for training, so a fine-tune sees the statistics its weights were trained with. Otherwise the
    ``data.*`` fields.

    Returns:
      dict with ``mean``, ``std`` (training), ``eval`` (an :class:`lightjax.transforms.EvalTransform`) and
      ``source`` (a one-line description for the log).
    """
    from train import checks

    d = config.data
    size = int(d.image_size)
    cfg = checks.pretrained_tag_cfg(config) if d.eval_transform == "auto" else None
    if cfg is None:
        resize = {"resize_size": int(d.eval_resize_size)} if d.eval_resize_size > 0 else \
            {"crop_pct": float(d.eval_crop_pct)}
        tf = transforms.eval_transform(crop_size=size, interpolation=d.interpolation, mean=tuple(d.mean),
                                       std=tuple(d.std), **resize)
        return {"mean": tuple(d.mean), "std": tuple(d.std), "eval": tf, "source": "config.data"}
    # The tag's rule at the tag's size is exact; at another image_size it keeps the tag's crop fraction.
    if size == cfg.crop_size:
        resize = {"resize_size": int(cfg.resize_shorter)}
    else:
        resize = {"crop_pct": cfg.crop_pct if cfg.crop_pct else cfg.crop_size / cfg.resize_size}
    tf = transforms.eval_transform(crop_size=size, interpolation=cfg.interpolation, mean=tuple(cfg.mean),
                                   std=tuple(cfg.std), **resize)
    return {"mean": tuple(cfg.mean), "std": tuple(cfg.std), "eval": tf, "source": f"pretrained tag {cfg.tag}"}


def make_preprocess(config: ml_collections.ConfigDict, train: bool) -> Preprocess:
    d = config.data
    resolved = resolve_transform(config)
    return Preprocess(
        train=train,
        image_size=int(d.image_size),
        in_chans=int(config.model.in_chans),
        augment=d.augment,
        crop_scale=tuple(d.crop_scale),
        crop_ratio=tuple(d.crop_ratio),
        pad=int(d.pad),
        flip=bool(d.flip),
        interpolation=d.interpolation,
        mean=resolved["mean"],
        std=resolved["std"],
        eval_tf=resolved["eval"],
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
