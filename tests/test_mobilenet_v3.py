"""MobileNetV3: parity with torchvision (plain, dilated), parameter counts, output_stride, feature levels, init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightjax.models as lm
from lightjax.models import mobilenet_v3 as mv3
from parity import check_parity

VARIANTS = [("mobilenet_v3_large_100", "mobilenet_v3_large"), ("mobilenet_v3_small_100", "mobilenet_v3_small")]
# REFERENCE.md acceptance figures (== torchvision's ``num_params`` metadata).
PARAMS = {"mobilenet_v3_large_100": 5_483_032, "mobilenet_v3_small_100": 2_542_856}


def _param_count(model, size: int = 64) -> int:
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(v["params"]))


@pytest.mark.parametrize("name,tv", VARIANTS)
def test_parity_torchvision(name, tv, torch, torchvision):
    # Eval at 64 and 97 px, one train step (outputs + running stats, BN momentum 0.01 / eps 1e-3), round trip.
    check_parity(name, getattr(torchvision.models, tv)(), sizes=(64, 97), jit=True)


def test_native_size_parity(torch, torchvision):
    check_parity("mobilenet_v3_large_100", torchvision.models.mobilenet_v3_large(), sizes=(224,), batch=1,
                 train=False, roundtrip=False, jit=True)


def test_output_stride_16_is_torchvision_dilated(torch, torchvision):
    # torchvision ``dilated=True`` (its segmentation backbones): last stage stride 1, dilation 2; same keys.
    tm = torchvision.models.mobilenet_v3_small(dilated=True)
    check_parity("mobilenet_v3_small_100", tm, sizes=(97,), model_kwargs={"output_stride": 16}, train=False,
                 roundtrip=False, jit=True)


def test_output_stride_8_matches_torchvision_blocks_with_dilation(torch, torchvision):
    # No torchvision entry point builds stride 8; its own config class does: C3 and later at dilation 2,
    # C4 and later at dilation 4 (torchvision then runs those depthwise convs at stride 1).
    from torchvision.models import mobilenetv3 as tvm

    setting, last = tvm._mobilenet_v3_conf("mobilenet_v3_small")
    for i, cnf in enumerate(setting):
        cnf.dilation = 1 if i < 3 else (2 if i < 8 else 4)
    tm = tvm.MobileNetV3(setting, last)
    check_parity("mobilenet_v3_small_100", tm, sizes=(65,), model_kwargs={"output_stride": 8}, train=False,
                 roundtrip=False, jit=True)


@pytest.mark.parametrize("name,tv", VARIANTS)
def test_param_count_torchvision(name, tv, torch, torchvision):
    tm = getattr(torchvision.models, tv)()
    ref = sum(p.numel() for p in tm.parameters())
    assert ref == PARAMS[name]
    assert _param_count(lm.create_model(name)) == ref


@pytest.mark.parametrize("name,channels", [
    ("mobilenet_v3_large_100", [16, 24, 40, 112, 960]),
    ("mobilenet_v3_small_100", [16, 16, 24, 48, 576]),
])
@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_output_stride_spatial_sizes(name, channels, output_stride):
    model = lm.create_model(name, features_only=True, output_stride=output_stride)
    strides = [min(s, output_stride) for s in (2, 4, 8, 16, 32)]
    info = model.feature_info
    assert [f["channels"] for f in info] == channels
    assert [f["stride"] for f in info] == strides
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    outs = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0], x)
    assert [o.shape[1:] for o in outs] == [(64 // s, 64 // s, c) for s, c in zip(strides, channels)]


def test_feature_levels_match_timm(timm):
    # timm's MobileNetV3 ``features_only`` takes its levels at the same places (ends of the stride stages,
    # the last after the 1x1 conv to 6x channels).
    for name, timm_name in [("mobilenet_v3_large_100", "mobilenetv3_large_100"),
                            ("mobilenet_v3_small_100", "mobilenetv3_small_100")]:
        ref = timm.create_model(timm_name, features_only=True, pretrained=False).feature_info
        info = lm.create_model(name, features_only=True).feature_info
        assert [f["channels"] for f in info] == ref.channels()
        assert [f["stride"] for f in info] == ref.reduction()


def test_block_table_matches_torchvision(torchvision):
    # The architecture table resolves to torchvision's InvertedResidualConfig list, dilated or not.
    from torchvision.models import mobilenetv3 as tvm

    for arch in ("large", "small"):
        for dilated, os_ in ((False, 32), (True, 16)):
            ref, last = tvm._mobilenet_v3_conf(f"mobilenet_v3_{arch}", dilated=dilated)
            ours = mv3.block_configs(arch, 1.0, os_)
            assert len(ours) == len(ref)
            for a, b in zip(ours, ref):
                assert (a.in_ch, a.kernel, a.expanded, a.out, a.use_se, a.activation == "HS", a.stride, a.dilation) == (
                    b.input_channels, b.kernel, b.expanded_channels, b.out_channels, b.use_se, b.use_hs, b.stride,
                    b.dilation)
                assert a.conv_stride == (1 if b.dilation > 1 else b.stride)
            assert mv3.classifier_hidden(arch) == last


@pytest.mark.parametrize("bad", [4, 12, 64])
def test_bad_output_stride_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="output_stride"):
        lm.create_model("mobilenet_v3_small_100", output_stride=bad).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_num_classes_zero_returns_prelogits():
    # Like timm: classifier.0 + Hardswish stay (1024-d for small), only the last Linear goes.
    model = lm.create_model("mobilenet_v3_small_100", num_classes=0)
    out = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, 32, 32, 3)))[0])
    assert out.shape == (2, 1024)


def test_init_like_torchvision():
    # torchvision re-initialises every conv kaiming-normal (fan_out, plain normal) with zero bias, SE fc1/fc2
    # included. One block (expand, depthwise, SE, project) under jit: a whole-model init compiles ~40 s on CPU.
    cfg = mv3.block_configs("small")[4]  # features.5: 40 -> 240 (k5, SE 64) -> 40
    block = mv3.InvertedResidual(cfg)
    p = jax.jit(lambda: block.init(jax.random.key(0), jnp.zeros((1, 4, 4, cfg.in_ch))))()["params"]
    assert sorted(p) == ["block_0", "block_1", "block_2", "block_3"]
    se = p["block_2"]
    assert se["fc1"]["kernel"].shape == (1, 1, 240, 64) and se["fc2"]["kernel"].shape == (1, 1, 64, 240)
    assert not np.any(np.asarray(se["fc1"]["bias"])) and not np.any(np.asarray(se["fc2"]["bias"]))
    k = np.asarray(p["block_0"]["0"]["kernel"])  # 1x1, 40 -> 240: fan_out = 240
    assert abs(k.std() - np.sqrt(2.0 / 240)) < 0.1 * np.sqrt(2.0 / 240)
    assert abs(k.mean()) < 0.01 and np.abs(k).max() > 3 * k.std()  # a plain (untruncated) normal
    dw = np.asarray(p["block_1"]["0"]["kernel"])  # depthwise 5x5: torch fan_out = 240 * 25
    assert dw.shape == (5, 5, 1, 240) and abs(dw.std() - np.sqrt(2.0 / 6000)) < 0.1 * np.sqrt(2.0 / 6000)
    assert np.all(np.asarray(p["block_1"]["1"]["scale"]) == 1) and not np.any(np.asarray(p["block_1"]["1"]["bias"]))


def _timm_mnv3(timm, name):
    import torch

    tm = timm.create_model(name, pretrained=False)
    # timm trains with PyTorch's BN momentum 0.1; lightjax's MobileNetV3 keeps torchvision's 0.01 (a training
    # setting, not part of the weights), so the train-step check runs timm's module at 0.01 too.
    for m in tm.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.01
    return tm


def test_parity_timm_small(torch, timm):
    # timm's layout (conv_stem, blocks.S.J DS/IR blocks, conv_head as Linear) and BN eps 1e-5 (bn_eps field):
    # eval at an odd size, train step (outputs + running stats), strict round trip.
    check_parity("mobilenet_v3_small_100", _timm_mnv3(timm, "mobilenetv3_small_100"), sizes=(65,), layout="timm",
                 model_kwargs={"bn_eps": 1e-5}, jit=True)


def test_parity_timm_large(torch, timm):
    check_parity("mobilenet_v3_large_100", _timm_mnv3(timm, "mobilenetv3_large_100"), sizes=(97,), layout="timm",
                 model_kwargs={"bn_eps": 1e-5}, train=False, jit=True)


def test_timm_layout_requires_its_eps(torch, timm):
    # Same keys and shapes, other numerics: the converter refuses torchvision's eps for a timm checkpoint, and
    # load_model applies the layout's setting by itself.
    from lightjax import convert

    sd = timm.create_model("mobilenetv3_small_100", pretrained=False).state_dict()
    with pytest.raises(convert.ConversionError, match="bn_eps=1e-05"):
        convert.from_torch("mobilenet_v3_small_100", sd)
    model, _ = lm.load_model("mobilenet_v3_small_100", sd)
    assert model.bn_eps == 1e-5 and lm.create_model("mobilenet_v3_small_100").bn_eps == 1e-3
