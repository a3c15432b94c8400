"""``lightjax_digits``: scikit-learn's bundled handwritten digits as a tfds dataset (array_record, no download).

scikit-learn ships the UCI "Optical Recognition of Handwritten Digits" test set: 1,797 real 8x8 grey images
(pixel values 0..16) of the digits 0-9. This builder writes them as array_record files into the tfds data dir on
first use, so the default training config reads them through exactly the same path (``tfds.data_source`` +
grain) as ImageNet or CIFAR; later runs reuse the files.

Splits are a fixed, stratified 80/20 partition (``random_state=0``): ``train`` 1,437 images, ``test`` 360
held-out images. Images are stored at their native 8x8, scaled to 0..255 ``uint8`` with one channel; the input
pipeline resizes them (e.g. to 32x32) and replicates channels if the model wants 3.

The image feature is a plain ``Tensor`` rather than ``tfds.features.Image``: encoding PNGs in tfds needs
TensorFlow, which this project does not depend on.
"""

from __future__ import annotations

from typing import Dict, Iterator, Tuple

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

NAME = "lightjax_digits"
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def _split_indices() -> Dict[str, np.ndarray]:
    """Fixed stratified train/test partition of the 1,797 images (indices into ``load_digits()``)."""
    from sklearn.datasets import load_digits  # local: only needed when (re)building
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    train, test = train_test_split(
        np.arange(len(y)), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    return {"train": np.sort(train), "test": np.sort(test)}


class LightjaxDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 1,797 8x8 handwritten digits; ``train`` (1,437) / ``test`` (360), stratified."""

    VERSION = tfds.core.Version("1.0.0")

    # tfds locates a builder's source through ``importlib_resources`` (not installed here, and not needed:
    # this builder has no checksums file); give it the path directly.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(__file__)
    RELEASE_NOTES = {"1.0.0": "sklearn.datasets.load_digits, stratified 80/20 split (random_state=0)."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                    "index": np.int64,  # row in sklearn.datasets.load_digits()
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
        )

    def _split_generators(self, dl_manager):  # noqa: D401  (tfds hook)
        del dl_manager  # nothing to download: scikit-learn ships the data
        return {split: self._generate_examples(idx) for split, idx in _split_indices().items()}

    def _generate_examples(self, indices: np.ndarray) -> Iterator[Tuple[int, dict]]:
        from sklearn.datasets import load_digits

        d = load_digits()
        for i in indices:
            # 0..16 → 0..255 so that the usual /255 normalisation applies.
            img = np.round(d.images[i] * (255.0 / 16.0)).astype(np.uint8)[..., None]
            yield int(i), {"image": img, "label": int(d.target[i]), "index": int(i)}


def prepare(data_dir: str) -> None:
    """Builds the array_record files under ``data_dir`` unless they are already there."""
    LightjaxDigits(data_dir=data_dir, file_format="array_record").download_and_prepare()
