"""MobileNet v2: parity with torchvision ``mobilenet_v2`` and timm ``mobilenetv2_*``, counts, output_stride."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightjax.models as lm
from lightjax import convert
from lightjax.models import mobilenet_v2 as mv2
from parity import check_parity

WIDTHS = {"mobilenet_v2_100": 1.0, "mobilenet_v2_050": 0.5, "mobilenet_v2_075": 0.75, "mobilenet_v2_140": 1.4}
TIMM = {"mobilenet_v2_100": "mobilenetv2_100", "mobilenet_v2_050": "mobilenetv2_050",
        "mobilenet_v2_075": "mobilenetv2_075", "mobilenet_v2_140": "mobilenetv2_140"}


def _n_params(name: str, **kw) -> int:
    m = lm.create_model(name, **kw)
    v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(v["params"]))


@pytest.mark.parametrize("name", ["mobilenet_v2_100", "mobilenet_v2_075"])
def test_parity_torchvision(name, torch, torchvision):
    tm = torchvision.models.mobilenet_v2(width_mult=WIDTHS[name])
    check_parity(name, tm, sizes=(64, 97), layout="torchvision", jit=True)


def test_parity_timm(torch, timm):
    # timm at another width (0.75): see test_output_stride_parity_timm (features_only, output_stride 16).
    tm = timm.create_model("mobilenetv2_100")
    check_parity("mobilenet_v2_100", tm, sizes=(64, 97), layout="timm", jit=True)
    # Without a layout argument the key table is picked from the checkpoint's keys.
    _, report = convert.from_torch("mobilenet_v2_100", tm.state_dict(), return_report=True)
    assert report.layout == "mobilenet_v2/timm"


def test_native_size_parity(torch, torchvision):
    check_parity("mobilenet_v2_100", torchvision.models.mobilenet_v2(), sizes=(224,), batch=1, train=False,
                 roundtrip=False, jit=True)


@pytest.mark.parametrize("name", sorted(WIDTHS))
def test_param_count(name, torch, torchvision, timm):
    ref = sum(p.numel() for p in torchvision.models.mobilenet_v2(width_mult=WIDTHS[name]).parameters())
    assert sum(p.numel() for p in timm.create_model(TIMM[name]).parameters()) == ref
    assert _n_params(name) == ref
    if name == "mobilenet_v2_100":
        assert ref == 3_504_872  # REFERENCE.md


def test_output_stride_parity_timm(torch, timm):
    # Dilation placement (which block keeps stride, which dilation each depthwise conv gets) vs timm's builder.
    check_parity("mobilenet_v2_100", timm.create_model("mobilenetv2_100", output_stride=8), sizes=(33,),
                 layout="timm", model_kwargs={"output_stride": 8}, train=False, jit=True)
    tm = timm.create_model("mobilenetv2_075", features_only=True, output_stride=16)
    model = lm.create_model("mobilenet_v2_075", features_only=True, output_stride=16)
    assert [f["stride"] for f in model.feature_info] == tm.feature_info.reduction() == [2, 4, 8, 16, 16]
    assert [f["channels"] for f in model.feature_info] == tm.feature_info.channels()
    check_parity("mobilenet_v2_075", tm, sizes=(97,), layout="timm",
                 model_kwargs={"output_stride": 16, "features_only": True}, jit=True)


@pytest.mark.parametrize("output_stride,sizes", [(32, [32, 16, 8, 4, 2]), (16, [32, 16, 8, 4, 4]),
                                                 (8, [32, 16, 8, 8, 8])])
def test_output_stride_spatial_size(output_stride, sizes):
    model = lm.create_model("mobilenet_v2_100", features_only=True, output_stride=output_stride)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    feats = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0], x)
    assert [f.shape[1] for f in feats] == [f.shape[2] for f in feats] == sizes
    assert [f["stride"] for f in model.feature_info] == [64 // s for s in sizes]
    # Classification works at every output_stride (pooled at the end, whatever the map size).
    clf = lm.create_model("mobilenet_v2_050", num_classes=3, output_stride=output_stride)
    assert jax.eval_shape(lambda x: clf.init_with_output(jax.random.key(0), x)[0], x).shape == (1, 3)


def test_dilations_follow_timm_rule():
    # output_stride 8: blocks 7 (stride 2 -> 1, still dilation 1) then dilation 2; block 14 (-> 1) then 4.
    specs = mv2.block_specs(1.0, 8)
    assert [(b.index, b.stride, b.dilation) for b in specs if b.index in (6, 7, 8, 13, 14, 15, 17)] == [
        (6, 1, 1), (7, 1, 1), (8, 1, 2), (13, 1, 2), (14, 1, 2), (15, 1, 4), (17, 1, 4)]
    assert all(b.dilation == 1 for b in mv2.block_specs(1.0, 32))


def test_init_matches_torchvision():
    # torchvision: kaiming_normal_(mode="fan_out") for every conv (fan_out = out_channels * kh * kw, groups
    # ignored), BN weight 1 / bias 0. Checked on one block (a whole-model init compiles for ~20 s on CPU).
    blk = mv2.InvertedResidual(64, expand_ratio=6)
    p = jax.jit(blk.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 64)))["params"]
    for path, fan_out in ((("conv_0", "0"), 384), (("conv_1", "0"), 384 * 9), (("conv_2",), 64)):
        k = p[path[0]][path[1]]["kernel"] if len(path) == 2 else p[path[0]]["kernel"]
        assert abs(float(jnp.std(k)) / (2 / fan_out) ** 0.5 - 1) < 0.1, (path, float(jnp.std(k)))
        assert abs(float(jnp.mean(k))) < 0.1 * (2 / fan_out) ** 0.5 * 3
    assert float(p["conv_3"]["scale"].min()) == float(p["conv_3"]["scale"].max()) == 1.0
    assert float(jnp.abs(p["conv_3"]["bias"]).max()) == 0.0


def test_bad_output_stride_is_a_clear_error():
    with pytest.raises(ValueError, match="output_stride"):
        lm.create_model("mobilenet_v2_100", output_stride=4).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="output_stride"):
        lm.create_model("mobilenet_v2_100", output_stride=12).feature_info
