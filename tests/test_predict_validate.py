"""``python -m lightjax.predict`` and ``python -m lightjax.validate`` end to end, on real photographs.

The model is torchvision's own SqueezeNet 1.1 with random weights (its classifier scaled so the logits are
O(1): distinct top-5 probabilities), saved with ``torch.save`` and registered as a local tag; the expected
labels, probabilities and accuracies come from torchvision's module on torchvision's transform
(``ImageClassification``, the class behind every ``weights.transforms()``). At 64 px (resize 73) the forward
compiles in a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CROP, RESIZE = 64, 73
TAG = "squeezenet1_1.test_cli"


def _photos() -> dict:
    """name -> PIL image (RGB JPEG photos, a grey PNG, an RGBA PNG, odd sizes)."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    skdata = require("skimage.data")
    china, flower = load_sample_image("china.jpg"), load_sample_image("flower.jpg")
    imgs = {
        "china.jpg": Image.fromarray(china),
        "flower_grey.png": Image.fromarray(flower).convert("L"),
        "chelsea_rgba.png": Image.fromarray(np.dstack([skdata.chelsea(), np.full((300, 451), 200, np.uint8)])),
        "coffee_301x457.jpg": Image.fromarray(skdata.coffee()[17:318, 40:497]),
        "astronaut.jpg": Image.fromarray(skdata.astronaut()),
        "china_crop.png": Image.fromarray(china[50:250, 100:523]),
        "flower_crop.jpg": Image.fromarray(flower[:300, 300:]),
        "astronaut_tall.png": Image.fromarray(skdata.astronaut()[:, 150:350]),
        "coffee.jpg": Image.fromarray(skdata.coffee()),
    }
    return imgs


def _save(img, path: str) -> str:
    img.save(path, quality=92) if path.endswith(".jpg") else img.save(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A torchvision SqueezeNet checkpoint (1000 and 10 classes), photo files, and torchvision's reference."""
    torch = require("torch")
    torchvision = require("torchvision")
    from PIL import Image

    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("cli")
    files = {n: _save(img, str(base / n)) for n, img in _photos().items()}
    ref_tf = torchvision.transforms._presets.ImageClassification(crop_size=CROP, resize_size=RESIZE)

    def batch(paths):  # what torchvision's loaders do: open, convert("RGB"), transform
        return torch.stack([ref_tf(Image.open(p).convert("RGB")) for p in paths])

    models = {}
    for n in (1000, 10):
        m = torchvision.models.squeezenet1_1(num_classes=n).eval()
        with torch.no_grad():
            std = float(m(batch([files["china.jpg"]])).std())
            m.classifier[1].weight.mul_(3.0 / std)  # O(1) logits
        path = str(base / f"squeezenet1_1_{n}.pth")
        torch.save(m.state_dict(), path)
        models[n] = (m, path)
    return {"base": base, "files": files, "models": models, "batch": batch, "torch": torch}


@pytest.fixture
def tag(setup, monkeypatch, tmp_path):
    from lightjax import pretrained

    monkeypatch.setenv("LIGHTJAX_CACHE", str(tmp_path / "cache"))  # the converted-variables cache
    cfg = pretrained.register_pretrained(TAG, file=setup["models"][1000][1], crop_size=CROP, resize_size=RESIZE,
                                         interpolation="bilinear", top1=12.5, top5=30.25, source="test checkpoint",
                                         overwrite=True)
    yield cfg
    pretrained.unregister_pretrained(TAG)


def _reference_probs(setup, paths, n=1000) -> np.ndarray:
    torch = setup["torch"]
    with torch.no_grad():
        return torch.softmax(setup["models"][n][0](setup["batch"](paths)).double(), -1).numpy()


_ROW = re.compile(r"^\s+([\d.]+)%\s+#(\d+)\s+(.+)$")


def _parse_predict(text: str) -> dict:
    out, cur = {}, None
    for line in text.splitlines():
        m = _ROW.match(line)
        if m:
            out[cur].append((int(m.group(2)), m.group(3), float(m.group(1)) / 100.0))
        elif line.strip():
            cur = line.split("  (")[0]
            out[cur] = []
    return out


def test_predict_tag_on_real_photos(setup, tag, capsys):
    from lightjax import labels, predict

    names = ["china.jpg", "flower_grey.png", "chelsea_rgba.png", "coffee_301x457.jpg"]
    paths = [setup["files"][n] for n in names]
    # Batch 3 for 4 images: the last batch is padded, and must not change its image's result.
    assert predict.main(["--model", TAG, "--batch-size", "3", "--no-progress", *paths]) == 0
    text = capsys.readouterr().out
    got = _parse_predict(text)
    assert list(got) == paths, text
    probs = _reference_probs(setup, paths)
    classes = labels.imagenet1k_classes()
    for path, p in zip(paths, probs):
        top = np.argsort(-p)[:5]
        assert [g[0] for g in got[path]] == list(top), (path, text)
        assert [g[1] for g in got[path]] == [classes[i] for i in top]
        np.testing.assert_allclose([g[2] for g in got[path]], p[top], atol=2e-6)  # printed to 1e-7
        assert p[top[0]] > 2 * p[top[4]]  # the check can tell classes apart
    assert "(640x427 RGB)" in text and "(640x427 L)" in text and "(451x300 RGBA)" in text

    # The same file through --checkpoint with the transform spelled out: the same table, also as JSON.
    ckpt = setup["models"][1000][1]
    assert predict.main(["--model", "squeezenet1_1", "--checkpoint", ckpt, "--crop-size", str(CROP),
                         "--resize-size", str(RESIZE), "--json", "--top", "3", *paths[:2]]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in doc["results"]] == paths[:2]
    for r in doc["results"]:
        assert [(t["index"], t["label"]) for t in r["top"]] == [g[:2] for g in got[r["image"]][:3]]


def _image_folder(root: str, setup, name_of, probs, order) -> tuple:
    """Three class directories holding the photos round-robin; returns (expected top-1 %, top-5 %)."""
    files = list(setup["files"].values())
    os.makedirs(root)
    for c in order:
        os.makedirs(os.path.join(root, name_of(c)))
    hits1 = hits5 = 0
    for k, (path, p) in enumerate(zip(files, probs)):
        c = order[k % len(order)]
        shutil.copy(path, os.path.join(root, name_of(c), os.path.basename(path)))
        top = np.argsort(-p)[:5]
        hits1 += int(top[0] == c)
        hits5 += int(c in top)
    return 100.0 * hits1 / len(files), 100.0 * hits5 / len(files)


def test_validate_image_folder_of_real_photos(setup, tag, tmp_path, capsys):
    from lightjax import labels, validate

    files = list(setup["files"].values())
    probs = _reference_probs(setup, files)
    tops = [list(np.argsort(-p)[:5]) for p in probs]
    # Classes a model we control predicts: image 0's top-1, image 1's 2nd choice, image 2's top-1.
    order = list(dict.fromkeys([tops[0][0], tops[1][1], tops[2][0], tops[3][3]]))
    assert len(order) >= 3
    classes = labels.imagenet1k_classes()
    top1, top5 = _image_folder(str(tmp_path / "by_label"), setup, lambda c: classes[c], probs, order)
    assert 0 < top1 < top5 < 100, (top1, top5)  # a figure a wrong mapping or top-k would change

    results = str(tmp_path / "out" / "results.json")
    assert validate.main(["--model", TAG, "--data", str(tmp_path / "by_label"), "--batch-size", "4",
                          "--workers", "2", "--no-progress", "--results-file", results]) == 0
    out = capsys.readouterr()
    res = json.load(open(results))
    assert res["num_images"] == len(files) and res["class_mapping"] == "label names"
    assert res["top1"] == pytest.approx(top1) and res["top5"] == pytest.approx(top5), (res, top1, top5)
    assert f"Acc@1 {top1:.3f}" in out.out and f"Acc@5 {top5:.3f}" in out.out and "img/s" in out.out
    assert "published: top-1 12.500 / top-5 30.250 (test checkpoint" in out.out
    assert res["published_top1"] == 12.5

    # Directories named by WordNet id, the file given with --checkpoint and the transform as options.
    wnids = labels.imagenet1k_wnids()
    _image_folder(str(tmp_path / "by_wnid"), setup, lambda c: wnids[c], probs, order)
    assert validate.main(["--model", "squeezenet1_1", "--checkpoint", setup["models"][1000][1], "--crop-size",
                          str(CROP), "--resize-size", str(RESIZE), "--data", str(tmp_path / "by_wnid"),
                          "--batch-size", "4", "--no-progress", "--results-file", results]) == 0
    res = json.load(open(results))
    assert res["class_mapping"] == "WordNet ids"
    assert (res["top1"], res["top5"]) == (pytest.approx(top1), pytest.approx(top5))
    assert "published" not in capsys.readouterr().out


def test_validate_prepared_tfds_dataset(setup, tmp_path, capsys):
    """tfds path: the project's digits dataset (labels 0-9 map by class index) against a 10-class head."""
    import tensorflow_datasets as tfds
    from PIL import Image

    from lightjax import validate
    from train import digits

    data_dir = str(tmp_path / "tfds")
    digits.prepare(data_dir)
    n = 24
    src = tfds.data_source("lightjax_digits", split="test", data_dir=data_dir)
    torch = setup["torch"]
    ref_tf = require("torchvision").transforms._presets.ImageClassification(crop_size=CROP, resize_size=RESIZE)
    x = torch.stack([ref_tf(Image.fromarray(src[i]["image"][..., 0]).convert("RGB")) for i in range(n)])
    y = np.array([int(src[i]["label"]) for i in range(n)])
    with torch.no_grad():
        logits = setup["models"][10][0](x).numpy()
    top = np.argsort(-logits, -1)[:, :5]
    top1, top5 = 100.0 * np.mean(top[:, 0] == y), 100.0 * np.mean(np.any(top == y[:, None], -1))
    results = str(tmp_path / "r.json")
    assert validate.main(["--model", "squeezenet1_1", "--checkpoint", setup["models"][10][1], "--num-classes",
                          "10", "--crop-size", str(CROP), "--resize-size", str(RESIZE), "--data", "lightjax_digits",
                          "--data-dir", data_dir, "--split", "test", "--limit", str(n), "--batch-size", "8",
                          "--no-progress", "--results-file", results]) == 0
    res = json.load(open(results))
    assert res["num_images"] == n and res["class_mapping"] == "class indices"
    assert (res["top1"], res["top5"]) == (pytest.approx(top1), pytest.approx(top5))
    capsys.readouterr()


def test_map_classes_rules():
    from lightjax.predict import CLIError
    from lightjax.validate import map_classes

    names = ["cat", "dog", "fox"]
    assert map_classes(["2", "0", "10"], 11, None, None) == ([2, 0, 10], "class indices")  # numeric, not sorted
    assert map_classes(["fox", "cat"], 3, names, None) == ([2, 0], "label names")
    assert map_classes(["n2", "n1"], 3, None, ["n0", "n1", "n2"]) == ([2, 1], "WordNet ids")
    assert map_classes(["a", "b", "c"], 3, names, None)[1].startswith("sorted order")
    with pytest.raises(CLIError, match=r"\['wolf'\] match no class index.*exactly 3 classes"):
        map_classes(["cat", "wolf"], 3, names, None)


def test_cli_errors_exit_2(setup, tag, tmp_path, capsys):
    from lightjax import predict, validate

    photo = setup["files"]["china.jpg"]
    cases = [
        (predict.main, ["--model", "mobilenet_v9", photo], r"unknown model 'mobilenet_v9'.*did you mean"),
        (predict.main, ["--model", "squeezenet1_1.nope", photo], r"unknown pretrained tag.*squeezenet1_1\.test_cli"),
        (predict.main, ["--model", TAG, str(tmp_path / "missing.jpg")], r"no such image file: .*missing\.jpg"),
        (predict.main, ["--model", "squeezenet1_1", "--checkpoint", str(tmp_path / "x.pth"), photo],
         r"--checkpoint .*x\.pth: no such file"),
        (predict.main, ["--model", TAG, "--interpolation", "cubic", photo], r"interpolation='cubic'"),
        (validate.main, ["--model", TAG, "--data", "no_such_tfds_dataset", "--data-dir", str(tmp_path)],
         r"no prepared tfds dataset in .*tfds build"),
    ]
    with open(str(tmp_path / "bad.jpg"), "w") as f:
        f.write("not an image")
    cases.append((predict.main, ["--model", TAG, str(tmp_path / "bad.jpg")], r"bad\.jpg: not a readable image"))
    folder = tmp_path / "folder"
    for c in ("wolf", "tabby"):
        os.makedirs(folder / c)
        shutil.copy(photo, folder / c / "a.JPG")  # extension matched case-insensitively, as torchvision
    cases.append((validate.main, ["--model", TAG, "--data", str(folder)], r"\['wolf'\] match no class"))
    for main, argv, pattern in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert re.search(pattern, err), (argv, err)
        assert "Traceback" not in err


@pytest.mark.parametrize("module", ["lightjax.predict", "lightjax.validate"])
def test_help_runs_without_jax(module):
    """--help is instant: the CLIs import jax, torch and the models only after parsing."""
    code = (f"import sys, runpy; sys.argv = ['{module}', '--help']\n"
            f"try:\n    runpy.run_module('{module}', run_name='__main__')\nexcept SystemExit as e:\n"
            f"    assert e.code == 0, e.code\n"
            f"assert 'jax' not in sys.modules and 'torch' not in sys.modules, 'heavy import'\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "--model" in p.stdout and "--checkpoint" in p.stdout and "--crop-pct" in p.stdout
