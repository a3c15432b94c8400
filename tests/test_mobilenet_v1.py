"""MobileNet v1: parity with the seed's ``MobileNet`` and timm ``mobilenetv1_*``, parameter counts, specifics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightjax.models as lm
from lightjax import convert
from parity import check_parity, max_rel_err, randomize_

WIDTHS = {"mobilenet_v1_100": 1.0, "mobilenet_v1_075": 0.75, "mobilenet_v1_050": 0.5, "mobilenet_v1_025": 0.25}
# REFERENCE.md: paper / timm mobilenetv1_100 = 4.23M. The other widths have no published PyTorch module;
# they are checked against the seed's code and timm's generator at the same width (both live below).
PAPER_M = {"mobilenet_v1_100": 4.23, "mobilenet_v1_075": 2.6, "mobilenet_v1_050": 1.3, "mobilenet_v1_025": 0.5}


def _n_params(name: str, **kw) -> int:
    m = lm.create_model(name, **kw)
    v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(v["params"]))


def _timm_v1(timm, width: float, **kw):
    """timm's MobileNet v1 at any width (only mobilenetv1_100/125 are registered names)."""
    if width == 1.0:
        return timm.create_model("mobilenetv1_100", **kw)
    from timm.models.efficientnet import _gen_mobilenet_v1

    return _gen_mobilenet_v1(f"mobilenetv1_{round(width * 100):03d}", width, **kw)


def test_parity_seed(torch):
    from seed_mobilenet import MobileNetAdaptive

    tm = MobileNetAdaptive()
    check_parity("mobilenet_v1_100", tm, sizes=(64, 97), layout="seed", jit=True)
    _, report = convert.from_torch("mobilenet_v1_100", tm.state_dict(), return_report=True)
    assert report.layout == "mobilenet_v1/seed"


def test_parity_timm(torch, timm):
    # timm's MobileNet v1 uses ReLU6.
    tm = timm.create_model("mobilenetv1_100")
    check_parity("mobilenet_v1_100", tm, sizes=(64, 97), layout="timm", model_kwargs={"act": "relu6"},
                 jit=True)
    # Without a layout argument the key table is picked from the checkpoint's keys.
    _, report = convert.from_torch("mobilenet_v1_100", tm.state_dict(), act="relu6", return_report=True)
    assert report.layout == "mobilenet_v1/timm"


def test_parity_timm_width_025(torch, timm):
    # Width rounding and the timm key table at another width (eval + round trip; train is covered above).
    check_parity("mobilenet_v1_025", _timm_v1(timm, 0.25), sizes=(97,), layout="timm",
                 model_kwargs={"act": "relu6"}, train=False, jit=True)


def test_timm_weights_need_relu6(torch, timm):
    # Same keys-to-shapes as the seed model but ReLU6: loading timm weights into the ReLU model would be a
    # silent wrong answer, so from_torch refuses it, and load_model builds the ReLU6 model by itself.
    tm = timm.create_model("mobilenetv1_100").eval()
    randomize_(tm, 1)
    with pytest.raises(convert.ConversionError, match="act='relu6'"):
        convert.from_torch("mobilenet_v1_100", tm.state_dict())  # act="relu" (default)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32) * 3
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    model, v = lm.load_model("mobilenet_v1_100", tm.state_dict())
    assert model.act == "relu6"
    out = jax.jit(model.apply)(v, jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert max_rel_err(np.asarray(out), ref) < 1e-4
    # And the ReLU model really computes something else on these weights.
    relu_out = jax.jit(lm.create_model("mobilenet_v1_100").apply)(v, jnp.asarray(x.transpose(0, 2, 3, 1)))
    assert max_rel_err(np.asarray(relu_out), ref) > 1e-2


def test_features_only_parity_timm(torch, timm):
    tm = timm.create_model("mobilenetv1_100", features_only=True)
    assert lm.create_model("mobilenet_v1_100", features_only=True).feature_info == [
        {"index": i, "stride": s, "channels": c}
        for i, (s, c) in enumerate(zip(tm.feature_info.reduction(), tm.feature_info.channels()))]
    check_parity("mobilenet_v1_100", tm, sizes=(64,), layout="timm",
                 model_kwargs={"act": "relu6", "features_only": True}, train=False, jit=True)


def test_native_size_parity_seed_verbatim(torch):
    # The seed's own forward (AvgPool2d(7) + view(-1, 1024)) only works at 224 px.
    from seed_mobilenet import MobileNet

    check_parity("mobilenet_v1_100", MobileNet(), sizes=(224,), batch=1, train=False, roundtrip=False,
                 jit=True)


@pytest.mark.parametrize("name", sorted(WIDTHS))
def test_param_count(name, torch, timm):
    from seed_mobilenet import MobileNet

    width = WIDTHS[name]
    ref = sum(p.numel() for p in _timm_v1(timm, width).parameters())
    assert sum(p.numel() for p in MobileNet(width).parameters()) == ref
    assert _n_params(name) == ref
    assert abs(ref / 1e6 - PAPER_M[name]) < 0.05, (name, ref)
    if name == "mobilenet_v1_100":
        assert ref == 4_231_976


def test_seed_keys_and_shapes(torch):
    # The exported state_dict (default layout: seed) has exactly the seed's keys and shapes, at every width.
    from seed_mobilenet import MobileNet

    for name, width in WIDTHS.items():
        m = lm.create_model(name)
        shapes = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
        sd = convert.to_torch(name, jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes))
        ref = MobileNet(width).state_dict()
        assert {k: tuple(a.shape) for k, a in sd.items()} == {k: tuple(t.shape) for k, t in ref.items()}, name


def test_bad_fields_are_clear_errors():
    x = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match="act"):
        lm.create_model("mobilenet_v1_100", act="gelu").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="out_indices"):
        lm.create_model("mobilenet_v1_050", features_only=True, out_indices=(5,)).init(jax.random.key(0), x)
    with pytest.raises(TypeError, match="width"):
        lm.create_model("mobilenet_v1_050", width=0.3)
