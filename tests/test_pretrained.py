"""The pretrained tag table (lightjax.pretrained): every entry against torchvision's Weights enums and timm's
pretrained cfgs (metadata only, offline), the API, the default-tag rule, validation, the README section."""

from __future__ import annotations

import ast
import contextlib
import io
import logging
import math
import os
import pickle
import re

import jax
import numpy as np
import pytest

import lightjax.models as lm
from lightjax import convert, hub
from lightjax import pretrained as lp
from weights_server import WeightsServer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The built-in table (tags other test modules register in this process are left out).
BUILTIN = [t for t in lp.list_pretrained() if t in lp._BUILTIN]
#: lightjax name -> torchvision builder (torchvision.models.get_model_weights) / timm architecture.
TV_BUILDERS = {"squeezenet1_0": "squeezenet1_0", "squeezenet1_1": "squeezenet1_1", "mobilenet_v2_100": "mobilenet_v2",
               "mobilenet_v3_large_100": "mobilenet_v3_large", "mobilenet_v3_small_100": "mobilenet_v3_small",
               "shufflenet_v2_x0_5": "shufflenet_v2_x0_5", "shufflenet_v2_x1_0": "shufflenet_v2_x1_0",
               "shufflenet_v2_x1_5": "shufflenet_v2_x1_5", "shufflenet_v2_x2_0": "shufflenet_v2_x2_0"}
TIMM_ARCHS = {"mobilenet_v1_100": "mobilenetv1_100", "mobilenet_v2_050": "mobilenetv2_050",
              "mobilenet_v2_075": "mobilenetv2_075", "mobilenet_v2_100": "mobilenetv2_100",
              "mobilenet_v2_140": "mobilenetv2_140", "mobilenet_v3_large_100": "mobilenetv3_large_100",
              "mobilenet_v3_small_100": "mobilenetv3_small_100", "xception": "legacy_xception",
              "xception41": "xception41", "xception65": "xception65", "xception71": "xception71"}
TV_TAGS = {"IMAGENET1K_V1": "tv_in1k", "IMAGENET1K_V2": "tv2_in1k"}


def _cfgs(prefix: str):
    return [lp.pretrained_cfg(t) for t in BUILTIN if (lp.pretrained_cfg(t).source or "").startswith(prefix)]


def _suffix_hash(url: str) -> str:
    """torch.hub's rule: the hex after the last '-' of the file name is the sha256 prefix."""
    return re.search(r"-([a-f0-9]+)\.[a-z]+$", url.rsplit("/", 1)[-1]).group(1)


def test_torchvision_entries_match_weights_enums(torchvision):
    cfgs = _cfgs("torchvision ")
    assert len(cfgs) == 11
    for cfg in cfgs:
        enum_name, member = cfg.source.split()[1].split(".")
        w = getattr(torchvision.models, enum_name)[member]
        assert w in list(torchvision.models.get_model_weights(TV_BUILDERS[cfg.model])), cfg.tag
        assert cfg.name == TV_TAGS[member]
        t = w.transforms()
        got = (cfg.url, cfg.sha256, cfg.resize_size, cfg.crop_pct, cfg.crop_size, cfg.interpolation, cfg.mean,
               cfg.std, cfg.num_classes, cfg.top1, cfg.top5, cfg.layout, cfg.label_set, cfg.crop_mode)
        want = (w.url, _suffix_hash(w.url), t.resize_size[0], None, t.crop_size[0], t.interpolation.value,
                tuple(t.mean), tuple(t.std), len(w.meta["categories"]), w.meta["_metrics"]["ImageNet-1K"]["acc@1"],
                w.meta["_metrics"]["ImageNet-1K"]["acc@5"], "torchvision", "imagenet-1k", "center")
        assert got == want, cfg.tag
        assert t.antialias is True  # what PIL resizing does (transforms.eval_transform)


def test_timm_entries_match_pretrained_cfgs(timm):
    from timm.models import get_pretrained_cfg

    cfgs = _cfgs("timm ")
    assert len(cfgs) == 14
    for cfg in cfgs:
        timm_tag = cfg.source.split()[1]
        arch, name = timm_tag.split(".")
        assert TIMM_ARCHS[cfg.model] == arch and cfg.name == name, cfg.tag
        ref = get_pretrained_cfg(timm_tag).to_dict()
        assert cfg.hf_hub_id == (ref.get("hf_hub_id") or None), cfg.tag
        assert cfg.url == (ref.get("url") or None), cfg.tag
        if cfg.url:
            assert cfg.sha256 == _suffix_hash(cfg.url), cfg.tag
        got = (cfg.crop_size, cfg.crop_pct, cfg.resize_size, cfg.interpolation, cfg.mean, cfg.std, cfg.num_classes,
               cfg.crop_mode, cfg.license, cfg.test_crop_size, cfg.test_crop_pct, cfg.layout)
        want = (ref["input_size"][1], ref["crop_pct"], None, ref["interpolation"], tuple(ref["mean"]),
                tuple(ref["std"]), ref["num_classes"], ref["crop_mode"], ref["license"],
                ref["test_input_size"][1] if ref.get("test_input_size") else None, ref.get("test_crop_pct"), "timm")
        assert got == want, cfg.tag
        # Published figures (timm's results tables; not shipped with timm, so not checked here): in1k tags
        # have them, the 21k-class tag none.
        if cfg.num_classes == 1000:
            assert cfg.top1 is not None and cfg.top5 is not None and 50 < cfg.top1 < cfg.top5 <= 100
        else:
            assert cfg.top1 is None and cfg.label_set != "imagenet-1k"


def test_every_published_checkpoint_of_a_registered_model_has_a_tag(torchvision, timm):
    for model, builder in TV_BUILDERS.items():
        for w in torchvision.models.get_model_weights(builder):
            assert f"{model}.{TV_TAGS[w.name]}" in BUILTIN
    for model, arch in TIMM_ARCHS.items():
        for timm_tag in timm.list_pretrained(arch + ".*"):
            assert f"{model}.{timm_tag.split('.')[1]}" in BUILTIN, timm_tag
    # ... and nothing else (each entry is one of those).
    assert len(BUILTIN) == len(_cfgs("torchvision ")) + len(_cfgs("timm "))


def test_entries_carry_the_settings_their_layout_requires():
    for tag in BUILTIN:
        cfg = lp.pretrained_cfg(tag)
        lay = [x for x in convert.layouts_for(cfg.model) if x.name == cfg.layout]
        assert len(lay) == 1, tag
        assert {k: cfg.model_kwargs[k] for k in lay[0].requires} == lay[0].requires, tag
        model = lm.create_model(cfg.model, num_classes=cfg.num_classes, **cfg.model_kwargs)
        assert all(getattr(model, k) == v for k, v in cfg.model_kwargs.items())
        assert cfg.crop_size == lm.model_info(cfg.model)["input_size"]
    assert lp.pretrained_cfg("mobilenet_v1_100.ra4_e3600_r224_in1k").model_kwargs == {"act": "relu6"}
    assert lp.pretrained_cfg("mobilenet_v3_large_100.ra_in1k").model_kwargs == {"bn_eps": 1e-5}
    assert lp.pretrained_cfg("mobilenet_v3_large_100.tv2_in1k").model_kwargs == {}


def test_default_tag_is_the_best_published_imagenet_top1():
    models = {lp.pretrained_cfg(t).model for t in BUILTIN}
    for m in models:
        cands = [lp.pretrained_cfg(t) for t in lp.list_pretrained(m)]
        ranked = [c for c in cands if c.num_classes == 1000 and c.label_set == "imagenet-1k" and c.top1 is not None]
        best = max(c.top1 for c in ranked)
        assert lp.pretrained_cfg(m).top1 == best and lp.default_tag(m) in [c.tag for c in ranked]
    assert lp.default_tag("mobilenet_v2_100") == "mobilenet_v2_100.ra_in1k"         # timm 72.91 > tv2 72.15
    assert lp.default_tag("mobilenet_v3_small_100") == "mobilenet_v3_small_100.tv_in1k"  # 67.668 > 67.636
    assert lp.default_tag("xception65") == "xception65.ra3_in1k"


def test_list_and_lookup():
    tags = lm.list_pretrained("mobilenet_v3*")
    assert tags == sorted(tags) and "mobilenet_v3_large_100.ra_in1k" in tags and "mobilenet_v3_large_100.tv2_in1k" in tags
    assert all(t.startswith("mobilenet_v3_") for t in tags)
    builtin = lambda tags: [t for t in tags if t in BUILTIN]  # noqa: E731
    assert builtin(lm.list_pretrained("mobilenet_v2_100")) == ["mobilenet_v2_100.ra_in1k", "mobilenet_v2_100.tv2_in1k",
                                                               "mobilenet_v2_100.tv_in1k"]
    assert lm.list_pretrained("*.tv2_in1k") == ["mobilenet_v2_100.tv2_in1k", "mobilenet_v3_large_100.tv2_in1k"]
    assert lm.pretrained_cfg("squeezenet1_1") is lm.pretrained_cfg("squeezenet1_1.tv_in1k")
    with pytest.raises(ValueError, match=r"Did you mean: mobilenet_v3_large_100\.ra_in1k.*list_pretrained"):
        lm.pretrained_cfg("mobilenet_v3_large_100.ra_in1")
    with pytest.raises(ValueError, match="no pretrained weights are registered for 'shufflenet_v1_g3'"):
        lm.pretrained_cfg("shufflenet_v1_g3")
    with pytest.raises(ValueError, match="unknown model 'mobilenet_v9'"):
        lm.pretrained_cfg("mobilenet_v9.x")
    with pytest.raises(ValueError, match="pretrained=True"):
        lm.load_model("mobilenet_v3_large_100")


def test_cfg_is_frozen_picklable_hashable_with_properties():
    cfg = lm.pretrained_cfg("xception65.tf_in1k")
    with pytest.raises(Exception):
        cfg.crop_size = 1  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(cfg)) == cfg and hash(cfg) == hash(pickle.loads(pickle.dumps(cfg)))
    assert cfg.resize_shorter == math.floor(299 / 0.903) == 331
    assert lm.pretrained_cfg("xception.tf_in1k").resize_shorter == 333
    assert lm.pretrained_cfg("mobilenet_v2_100.tv2_in1k").resize_shorter == 232
    names = cfg.label_names
    assert len(names) == 1000 and names[281] == "tabby"
    assert lm.pretrained_cfg("mobilenet_v3_large_100.miil_in21k").label_names is None


_GOOD = dict(url="https://host/path/pets-3f2a9c1d.pth", sha256="3f2a9c1d", num_classes=37, resize_size=256,
             crop_size=224, interpolation="bilinear", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.mark.parametrize("change,field", [
    (dict(colour="red"), "colour"),
    (dict(interpolation="lanczos"), "interpolation"),
    (dict(url=None), "source"),
    (dict(sha256="xyz123"), "sha256"),
    (dict(crop_pct=0.9), "resize_size"),
    (dict(resize_size=None), "crop_pct"),
    (dict(mean=(0.5, 0.5)), "mean"),
    (dict(std=(0.5, 0.0, 0.5)), "std"),
    (dict(num_classes=-1), "num_classes"),
    (dict(layout="megvii"), "layout"),
    (dict(model_kwargs={"width": 2.0}), "model_kwargs"),
    (dict(hf_hub_id="no-slash"), "hf_hub_id"),
    (dict(url="host/pets.pth"), "url"),
    (dict(top1=101.0), "top1"),
])
def test_register_pretrained_refuses_bad_fields_by_name(change, field):
    with pytest.raises(ValueError, match=field):
        lm.register_pretrained("mobilenet_v3_small_100.acme_pets", **{**_GOOD, **change})
    assert "mobilenet_v3_small_100.acme_pets" not in lm.list_pretrained()


@pytest.mark.parametrize("tag,match", [("mobilenet_v3_small_100", "exactly one dot"),
                                       ("mobilenet_v9.pets", "not registered"), ("squeezenet1_1.a-b", "after the dot")])
def test_register_pretrained_refuses_bad_tags(tag, match):
    with pytest.raises(ValueError, match=match):
        lm.register_pretrained(tag, **_GOOD)


def test_register_pretrained_issue_example_and_layout_settings():
    cfg = lm.register_pretrained("mobilenet_v3_small_100.acme_pets", url="https://host/path/pets-3f2a9c1d.pth",
                                 sha256="3f2a9c1d", num_classes=37, resize_size=256, crop_size=224,
                                 interpolation="bilinear", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    try:
        assert lm.pretrained_cfg("mobilenet_v3_small_100.acme_pets") is cfg and cfg.layout == "torchvision"
        assert lp.default_tag("mobilenet_v3_small_100") == "mobilenet_v3_small_100.tv_in1k"  # no published figure
        with pytest.raises(ValueError, match="already registered"):
            lm.register_pretrained("mobilenet_v3_small_100.acme_pets", **_GOOD)
        # A timm layout adds the settings it requires; a conflicting value is refused.
        timm_cfg = lm.register_pretrained("mobilenet_v1_100.acme", hf_hub_id="acme/mnv1", layout="timm", crop_pct=0.9)
        assert timm_cfg.model_kwargs == {"act": "relu6"} and timm_cfg.filename == "model.safetensors"
        with pytest.raises(ValueError, match="act='relu6'"):
            lm.register_pretrained("mobilenet_v1_100.acme2", hf_hub_id="acme/mnv1", layout="timm", crop_pct=0.9,
                                   model_kwargs={"act": "relu"})
    finally:
        lp.unregister_pretrained("mobilenet_v3_small_100.acme_pets")
        lp.unregister_pretrained("mobilenet_v1_100.acme")


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LIGHTJAX_PROGRESS", "0")
    monkeypatch.delenv("LIGHTJAX_WEIGHTS_MIRROR", raising=False)
    return tmp_path


def test_load_model_new_head_features_and_explicit_checkpoint(torch, torchvision, cache_env, caplog, monkeypatch):
    # SqueezeNet: the cheapest head re-initialisation to compile (the converter jits the model's init).
    tm = torchvision.models.squeezenet1_1()
    path = cache_env / "own.pth"
    torch.save(tm.state_dict(), path)
    lm.register_pretrained("squeezenet1_1.test_own", file=str(path), resize_size=256)
    try:
        model, tagged = lm.load_model("squeezenet1_1.test_own")
        assert model.num_classes == 1000 and tagged["params"]["classifier_1"]["kernel"].shape == (1, 1, 512, 1000)
        with caplog.at_level(logging.WARNING):
            model7, v7 = lm.load_model("squeezenet1_1.test_own", num_classes=7)
        assert model7.num_classes == 7 and v7["params"]["classifier_1"]["kernel"].shape == (1, 1, 512, 7)
        assert "re-initialised" in caplog.text
        for name in tagged["params"]:
            if name != "classifier_1":  # the body is the tag's, unchanged
                jax.tree_util.tree_map(np.testing.assert_array_equal, tagged["params"][name], v7["params"][name])
        model0, v0 = lm.load_model("squeezenet1_1.test_own", num_classes=0)
        assert model0.num_classes == 0 and "classifier_1" not in v0["params"]
        # checkpoint= keeps today's behaviour (the file given); with a tag, the tag's layout and settings.
        m2, v2 = lm.load_model("squeezenet1_1", str(path))
        jax.tree_util.tree_map(np.testing.assert_array_equal, v2, tagged)
        m3, _ = lm.load_model("squeezenet1_1.test_own", tm.state_dict())
        assert m3 == m2
        # A registered file without published figures does not take the default from the published tag;
        # pretrained=True loads whatever the default is.
        assert lp.default_tag("squeezenet1_1") == "squeezenet1_1.tv_in1k"
        monkeypatch.setattr(lp, "default_tag", lambda m: "squeezenet1_1.test_own")
        m4, v4 = lm.load_model("squeezenet1_1", pretrained=True)
        assert m4 == model
        jax.tree_util.tree_map(np.testing.assert_array_equal, v4, tagged)
        mf, vf = lm.load_model("squeezenet1_1.test_own", features_only=True)
        assert mf.features_only and "classifier_1" not in vf["params"]
    finally:
        lp.unregister_pretrained("squeezenet1_1.test_own")


def _readme_section() -> str:
    text = open(os.path.join(REPO, "README.md")).read()
    begin, end = text.index("<!-- pretrained:begin -->"), text.index("<!-- pretrained:end -->")
    assert text.index("## Models") < begin < end and text.count("<!-- pretrained:begin -->") == 1
    return text[begin:end]


def test_readme_tag_table_is_the_generated_one():
    section = _readme_section()
    table = lp.markdown_table()
    assert table in section, "README.md's tag table is stale: paste `python -m lightjax.pretrained --markdown`"
    assert all(f"`{t}`" in table for t in BUILTIN) and table.count("\n") == len(BUILTIN) + 2


def test_readme_example_runs_against_a_loopback_mirror(timm, torch, cache_env, monkeypatch, tmp_path):
    # The README's python block, as written, in a directory holding cat.jpg (scikit-image's chelsea). The hub
    # file of its timm tag is served by a loopback mirror: a timm module with random weights and BN statistics.
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image
    from parity import randomize_
    from pretrained_helpers import safetensors_bytes
    from timm.data import create_transform, resolve_data_config

    code = re.search(r"```python\n(.*?)```", _readme_section(), re.S).group(1)
    tag = re.search(r'load_model\("([^"]+)"\)', code).group(1)
    cfg = lp.pretrained_cfg(tag)
    arch = cfg.source.split()[1].split(".")[0]
    tm = timm.create_model(arch, pretrained=False)
    randomize_(tm)
    tm.eval()
    work = tmp_path / "work"
    work.mkdir()
    Image.fromarray(skimage_data.chelsea()).save(work / "cat.jpg")
    with WeightsServer() as srv:
        srv.files[f"/{cfg.hf_hub_id}/{cfg.filename}"] = safetensors_bytes(tm.state_dict())
        monkeypatch.setenv("LIGHTJAX_WEIGHTS_MIRROR", srv.url)
        monkeypatch.chdir(work)
        out = io.StringIO()
        with contextlib.redirect_stdout(out), jax.default_matmul_precision("highest"):
            exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
        assert len(srv.requests) == 1
    printed = ast.literal_eval(out.getvalue().strip())
    # timm's own transform and module on the same photo.
    tf = create_transform(**resolve_data_config({}, model=tm))
    with torch.no_grad():
        probs = torch.softmax(tm(tf(Image.open(work / "cat.jpg").convert("RGB"))[None]).double(), -1)[0].numpy()
    top = np.argsort(-probs)[:5]
    assert [p[0] for p in printed[0]] == top.tolist()
    np.testing.assert_allclose([p[2] for p in printed[0]], probs[top], rtol=1e-4)
    assert [p[1] for p in printed[0]] == [cfg.label_names[i] for i in top]
    assert os.listdir(hub.cache_dir())  # the weights and the converted variables are cached
