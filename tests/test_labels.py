"""lightjax.labels: the shipped ImageNet-1k names and wnids against torchvision's and timm's own lists, and
decode_predictions against torch's softmax + topk."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lightjax import labels


def test_imagenet1k_names_are_torchvision_categories(torchvision):
    names = labels.imagenet1k_classes()
    assert names == list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    # Every torchvision ImageNet-1k weight of a lightjax family carries the same list.
    for w in (torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V2,
              torchvision.models.ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1,
              torchvision.models.SqueezeNet1_1_Weights.IMAGENET1K_V1):
        assert names == list(w.meta["categories"]), w
    assert labels.label_names("imagenet-1k") == names
    names.append("x")  # callers get their own copy
    assert len(labels.imagenet1k_classes()) == 1000


def test_imagenet1k_wnids_are_timms_synsets_in_class_order(timm):
    with open(os.path.join(os.path.dirname(timm.__file__), "data", "_info", "imagenet_synsets.txt")) as f:
        ref = f.read().split()
    wnids = labels.imagenet1k_wnids()
    assert wnids == ref and wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert labels.label_wnids("imagenet-1k") == wnids
    # The names and the wnids describe the same classes: timm's lemma of each wnid contains torchvision's name
    # for the ones where torchvision kept the first lemma (most of them; it renamed duplicates like "crane").
    lemmas = {}
    with open(os.path.join(os.path.dirname(timm.__file__), "data", "_info", "imagenet_synset_to_lemma.txt")) as f:
        for line in f:
            w, lemma = line.rstrip("\n").split("\t", 1)
            lemmas[w] = lemma
    same = sum(lemmas[w].split(",")[0].strip().lower() == n.lower() for w, n in zip(wnids, labels.imagenet1k_classes()))
    assert same > 900, same


def test_unknown_label_sets_give_none():
    assert labels.label_names(None) is None
    assert labels.label_names("imagenet-21k-miil") is None
    assert labels.label_wnids(None) is None


def test_decode_predictions_matches_torch(torch):
    rng = np.random.default_rng(0)
    logits = (3.0 * rng.standard_normal((3, 1000))).astype(np.float32)  # O(1) logits: distinct top-5
    out = labels.decode_predictions(logits, top=5)
    p = torch.softmax(torch.from_numpy(logits).double(), dim=-1)
    vals, idx = p.topk(5, dim=-1)
    names = labels.imagenet1k_classes()
    for row, v, i in zip(out, vals.numpy(), idx.numpy()):
        assert [r[0] for r in row] == list(i)
        assert [r[1] for r in row] == [names[j] for j in i]
        np.testing.assert_allclose([r[2] for r in row], v, rtol=1e-12)
    # One image as a 1-D vector, jax arrays, top larger than C, unnamed classes.
    import jax.numpy as jnp

    assert labels.decode_predictions(jnp.asarray(logits[0]), top=2) == [out[0][:2]]  # (C,): one image
    small = labels.decode_predictions(logits[:, :3], top=10)
    assert [len(r) for r in small] == [3, 3, 3] and {r[1] for r in small[0]} == {"0", "1", "2"}
    custom = labels.decode_predictions(logits[:1, :3], labels=["cat", "dog", "fox"], top=1)[0][0]
    assert custom[1] == ["cat", "dog", "fox"][int(np.argmax(logits[0, :3]))]


def test_decode_predictions_errors():
    with pytest.raises(ValueError, match=r"2 labels given for logits with 3 classes"):
        labels.decode_predictions(np.zeros((1, 3)), labels=["a", "b"])
    with pytest.raises(ValueError, match=r"shape \(N, C\) or \(C,\), got \(1, 2, 3\)"):
        labels.decode_predictions(np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match=r"top=0"):
        labels.decode_predictions(np.zeros((1, 3)), top=0)


def test_data_files_are_package_data():
    """The class files are read through importlib.resources and declared in pyproject's package data."""
    from importlib import resources

    for name in list(labels.LABEL_FILES.values()) + list(labels.WNID_FILES.values()):
        assert resources.files("lightjax").joinpath("data", name).is_file(), name
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    import tomllib

    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        pkg_data = tomllib.load(f)["tool"]["setuptools"]["package-data"]["lightjax"]
    assert "data/*.txt" in pkg_data
