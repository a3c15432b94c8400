"""lightjax.transforms against torchvision's and timm's own transforms, on real photographs.

Every comparison is bitwise (``assert_array_equal``): the transform is the same PIL call and the same float32
arithmetic in the same order, so there is no tolerance to state. The photos are those scikit-learn and
scikit-image ship (no download), plus crops of odd sizes chosen so that the long side is truncated (not
rounded) and the centre-crop offset is a half (Python's round-half-to-even), a grey image, an RGBA PNG and a
palette PNG.
"""

from __future__ import annotations

import io
import math
import pickle

import numpy as np
import pytest
from conftest import require

from lightjax import transforms

# (tag, what it covers). timm's transform is built from its pretrained cfg (metadata only, no model).
TIMM_TAGS = [
    "mobilenetv3_large_100.ra_in1k",  # bicubic, crop_pct 0.875, ImageNet mean/std
    "mobilenetv3_large_100.ra4_e3600_r224_in1k",  # bicubic 0.95, 0.5/0.5
    "mobilenetv3_large_100.miil_in21k_ft_in1k",  # bilinear 0.875, mean 0 / std 1
    "xception65.tf_in1k",  # 299 px, 0.903 -> 331
    "legacy_xception.tf_in1k",  # 299 px, 0.8975 -> 333
]
TV_WEIGHTS = [("MobileNet_V3_Large_Weights", "IMAGENET1K_V1"),  # resize 256
              ("MobileNet_V3_Large_Weights", "IMAGENET1K_V2"),  # resize 232
              ("ShuffleNet_V2_X1_5_Weights", "IMAGENET1K_V1")]  # resize 232, another family's record


@pytest.fixture(scope="module")
def photos():
    """name -> PIL image: real photographs in several sizes and modes."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    skdata = require("skimage.data")
    arrays = {
        "china": load_sample_image("china.jpg"),  # 427x640
        "flower": load_sample_image("flower.jpg"),
        "astronaut": skdata.astronaut(),  # 512x512
        "coffee": skdata.coffee(),  # 400x600
        "chelsea": skdata.chelsea(),  # 300x451
    }
    arrays["odd_301x457"] = arrays["coffee"][17:318, 40:497]  # 256 * 457 / 301 = 388.7 -> 388 (truncated)
    arrays["tall_512x233"] = arrays["astronaut"][:, 100:333]  # portrait
    arrays["small_97x61"] = arrays["chelsea"][101:198, 200:261]  # smaller than every crop: upsampling
    imgs = {k: Image.fromarray(v) for k, v in arrays.items()}
    imgs["grey"] = imgs["china"].convert("L")
    buf = io.BytesIO()  # RGBA PNG with a varying alpha (convert("RGB") must drop it, not composite)
    rgba = np.dstack([arrays["chelsea"], (np.arange(451)[None, :] % 256).repeat(300, 0).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    imgs["rgba_png"] = Image.open(io.BytesIO(buf.getvalue()))
    buf = io.BytesIO()
    imgs["coffee"].quantize(64).save(buf, format="PNG")
    imgs["palette_png"] = Image.open(io.BytesIO(buf.getvalue()))
    return imgs


def _ours(tf, img):
    return tf(img)


def _reference(ref, img):
    # torchvision's and timm's loaders open every image with .convert("RGB").
    return ref(img.convert("RGB")).numpy().transpose(1, 2, 0)


def test_photos_exercise_the_rounding_rules(photos):
    """The inputs reach the cases a wrong rule would get wrong: a truncated long side, and centre-crop offsets
    of x.5 that round down (x even) and up (x odd) under round-half-to-even."""
    truncated, half_down, half_up = 0, 0, 0
    for img in photos.values():
        short, long = min(img.size), max(img.size)
        for s, crop in ((256, 224), (232, 224), (331, 299), (333, 299), (235, 224)):
            exact = s * long / short
            truncated += int(exact) != round(exact)
            for side in (s, int(exact)):
                if (side - crop) % 2 == 1:
                    half_down += (side - crop) // 2 % 2 == 0
                    half_up += (side - crop) // 2 % 2 == 1
    assert truncated >= 3 and half_down >= 3 and half_up >= 3, (truncated, half_down, half_up)


@pytest.mark.parametrize("enum_name,member", TV_WEIGHTS)
def test_matches_torchvision_weights_transforms(torchvision, photos, enum_name, member):
    weights = getattr(torchvision.models, enum_name)[member]
    ref = weights.transforms()
    tf = transforms.eval_transform(crop_size=ref.crop_size[0], resize_size=ref.resize_size[0],
                                   interpolation=ref.interpolation.value, mean=ref.mean, std=ref.std)
    assert tf.resize_shorter == ref.resize_size[0]
    for name, img in photos.items():
        out = _ours(tf, img)
        assert out.dtype == np.float32 and out.shape == (224, 224, 3), name
        np.testing.assert_array_equal(out, _reference(ref, img), err_msg=f"{weights} on {name}")


@pytest.mark.parametrize("tag", TIMM_TAGS)
def test_matches_timm_create_transform(timm, photos, tag):
    pc = timm.models.get_pretrained_cfg(tag).to_dict()
    dc = timm.data.resolve_data_config({}, pretrained_cfg=pc)
    ref = timm.data.create_transform(**dc)
    tf = transforms.eval_transform(crop_size=dc["input_size"][1], crop_pct=dc["crop_pct"],
                                   interpolation=dc["interpolation"], mean=dc["mean"], std=dc["std"],
                                   crop_mode=dc["crop_mode"])
    assert tf.resize_shorter == math.floor(dc["input_size"][1] / dc["crop_pct"])
    for name, img in photos.items():
        np.testing.assert_array_equal(_ours(tf, img), _reference(ref, img), err_msg=f"{tag} on {name}")


def test_nearest_and_default_rule_match_torchvision(torchvision, photos):
    T = torchvision.transforms
    for interp, mode in (("nearest", T.InterpolationMode.NEAREST), ("bilinear", T.InterpolationMode.BILINEAR)):
        tf = transforms.eval_transform(crop_size=97, interpolation=interp)  # default crop_pct 0.875 -> 110
        ref = T.Compose([T.Resize(110, interpolation=mode), T.CenterCrop(97), T.ToTensor(),
                         T.Normalize(transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)])
        for name in ("china", "odd_301x457", "grey", "small_97x61"):
            np.testing.assert_array_equal(_ours(tf, photos[name]), _reference(ref, photos[name]), err_msg=name)


def test_pretrained_cfg_gives_the_libraries_transform(timm, torchvision, photos):
    """eval_transform(cfg) with lightjax's own tag table: the same pixels as the library the weights are from."""
    from lightjax import pretrained

    cases = [("mobilenet_v3_large_100.ra_in1k", "mobilenetv3_large_100.ra_in1k"),
             ("xception65.tf_in1k", "xception65.tf_in1k")]
    for ours_tag, timm_tag in cases:
        dc = timm.data.resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(timm_tag).to_dict())
        ref = timm.data.create_transform(**dc)
        tf = transforms.eval_transform(pretrained.pretrained_cfg(ours_tag))
        np.testing.assert_array_equal(_ours(tf, photos["coffee"]), _reference(ref, photos["coffee"]))
    ref = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V2.transforms()
    tf = transforms.eval_transform(pretrained.pretrained_cfg("mobilenet_v3_large_100.tv2_in1k"))
    np.testing.assert_array_equal(_ours(tf, photos["chelsea"]), _reference(ref, photos["chelsea"]))


def test_input_types_agree(photos):
    """PIL image, HWC uint8, HW uint8 (grey), HWC with one channel and RGBA arrays give the same pixels."""
    tf = transforms.eval_transform(crop_size=64, resize_size=73, interpolation="bicubic")
    img = photos["chelsea"]
    arr = np.asarray(img)
    np.testing.assert_array_equal(tf(arr), tf(img))
    grey = np.asarray(photos["grey"])
    np.testing.assert_array_equal(tf(grey), tf(grey[..., None]))
    np.testing.assert_array_equal(tf(grey), tf(photos["grey"]))
    np.testing.assert_array_equal(tf(np.dstack([arr, np.full(arr.shape[:2], 7, np.uint8)])), tf(arr))
    assert not np.shares_memory(tf(arr), arr)


def test_center_crop_matches_torchvision(torchvision):
    """Half offsets (round half to even) and crops larger than the image (zero padding split floor/ceil)."""
    F = torchvision.transforms.functional
    from PIL import Image

    rng = np.random.default_rng(0)
    for h, w, crop in ((257, 259, 224), (259, 257, 224), (258, 300, 224), (100, 61, 97), (60, 225, 224),
                       (225, 225, 224)):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = np.asarray(F.center_crop(Image.fromarray(arr), [crop]))
        np.testing.assert_array_equal(transforms.center_crop(arr, crop), ref, err_msg=f"{h}x{w} -> {crop}")


def test_resize_rule_matches_torchvision(torchvision):
    from torchvision.transforms.functional import _compute_resized_output_size

    for h in range(40, 500, 37):
        for w in range(41, 700, 53):
            for s in (64, 73, 232, 256, 331):
                assert transforms.resize_shorter_size(h, w, s) == tuple(_compute_resized_output_size((h, w), [s]))


def test_training_crops_match_torchvision(torchvision, photos):
    """random_resized_crop / pad_crop / flip: torchvision's functional ops at the parameters our rng drew."""
    F = torchvision.transforms.functional
    from PIL import Image

    img = np.asarray(photos["odd_301x457"])
    for seed in range(4):
        i, j, h, w = transforms.random_resized_crop_params(301, 457, np.random.default_rng(seed), (0.08, 1.0),
                                                           (3 / 4, 4 / 3))
        ours = transforms.random_resized_crop(img, 64, np.random.default_rng(seed), (0.08, 1.0), (3 / 4, 4 / 3),
                                              "bicubic")
        ref = F.resized_crop(Image.fromarray(img), i, j, h, w, [64, 64],
                             interpolation=torchvision.transforms.InterpolationMode.BICUBIC)
        np.testing.assert_array_equal(ours, np.asarray(ref))
        pi, pj = np.random.default_rng(seed).integers(0, 9, size=2)
        ref = F.crop(F.pad(F.resize(Image.fromarray(img), [48, 48]), 4), int(pi), int(pj), 48, 48)
        np.testing.assert_array_equal(transforms.pad_crop(img, 48, 4, np.random.default_rng(seed)), np.asarray(ref))
    # The fallback (10 failed tries): a centre crop clamped to the ratio range, as torchvision's get_params.
    wide = np.zeros((10, 200, 3), np.uint8)
    assert transforms.random_resized_crop_params(10, 200, np.random.default_rng(0), (0.9, 1.0), (3 / 4, 4 / 3)) == \
        (0, (200 - 13) // 2, 10, 13)
    flipped = transforms.random_hflip(img, np.random.default_rng(1), p=1.0)
    np.testing.assert_array_equal(flipped, np.asarray(F.hflip(Image.fromarray(img))))
    assert transforms.resize(wide, (10, 200)) is wide  # same size: untouched, as torchvision's Resize


def test_transform_pickles_and_reprs(photos):
    tf = transforms.eval_transform(crop_size=64, crop_pct=0.9, interpolation="bicubic", mean=(0.5,) * 3,
                                   std=(0.5,) * 3)
    tf2 = pickle.loads(pickle.dumps(tf))
    assert tf2 == tf
    np.testing.assert_array_equal(tf2(photos["china"]), tf(photos["china"]))
    assert "resize_shorter=71" in repr(tf)


class _Cfg:  # anything with PretrainedCfg's attributes
    crop_size, resize_size, crop_pct = 224, 256, None
    interpolation, mean, std, crop_mode = "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "center"


def test_cfg_and_keyword_overrides():
    tf = transforms.eval_transform(_Cfg())
    assert (tf.crop_size, tf.resize_shorter, tf.interpolation, tf.mean) == (224, 256, "bicubic", (0.5, 0.5, 0.5))
    assert transforms.eval_transform(_Cfg(), crop_pct=0.95).resize_shorter == 235  # replaces resize_size
    assert transforms.eval_transform(_Cfg(), crop_size=64, resize_size=73).resize_shorter == 73
    assert transforms.eval_transform(crop_size=224).resize_shorter == 256  # timm's default crop_pct 0.875


def test_errors_name_the_problem():
    with pytest.raises(TypeError, match=r"uint8.*float32"):
        transforms.eval_transform(crop_size=32)(np.zeros((40, 40, 3), np.float32))
    with pytest.raises(ValueError, match=r"shape \(40, 40, 2\)"):
        transforms.eval_transform(crop_size=32)(np.zeros((40, 40, 2), np.uint8))
    with pytest.raises(ValueError, match=r"interpolation='cubic'.*bicubic"):
        transforms.eval_transform(crop_size=32, interpolation="cubic")
    with pytest.raises(ValueError, match=r"resize_size \(40\) or crop_pct \(0.9\), not both"):
        transforms.eval_transform(crop_size=32, resize_size=40, crop_pct=0.9)
    with pytest.raises(ValueError, match=r"crop_size=None.*crop_size="):
        transforms.eval_transform()
    with pytest.raises(TypeError, match=r"unknown field.*'size'"):
        transforms.eval_transform(crop_size=32, size=3)
    with pytest.raises(ValueError, match=r"crop_mode='squash'"):
        transforms.eval_transform(crop_size=32, crop_mode="squash")
    with pytest.raises(TypeError, match=r"PIL image or a numpy uint8 array, got list"):
        transforms.eval_transform(crop_size=32)([[1, 2]])
