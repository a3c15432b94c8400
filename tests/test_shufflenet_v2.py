"""ShuffleNetV2: parity with torchvision, parameter counts, channel-shuffle order, feature levels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightjax.models as lm
from lightjax.models import ops
from parity import check_parity

# REFERENCE.md acceptance figures (== torchvision's ``num_params`` metadata).
PARAMS = {
    "shufflenet_v2_x0_5": 1_366_792,
    "shufflenet_v2_x1_0": 2_278_604,
    "shufflenet_v2_x1_5": 3_503_624,
    "shufflenet_v2_x2_0": 7_393_996,
}


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "shufflenet_v2_x1_5"])
def test_parity_torchvision(name, torch, torchvision):
    # Eval at 64 and 97 px, one train step (outputs + running stats), round trip.
    check_parity(name, getattr(torchvision.models, name)(), sizes=(64, 97), jit=True)


def test_native_size_parity(torch, torchvision):
    check_parity("shufflenet_v2_x1_0", torchvision.models.shufflenet_v2_x1_0(), sizes=(224,), batch=1,
                 train=False, roundtrip=False, jit=True)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_count_torchvision(name, torch, torchvision):
    tm = getattr(torchvision.models, name)()
    ref = sum(p.numel() for p in tm.parameters())
    assert ref == PARAMS[name]
    m = lm.create_model(name)
    v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
    assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(v["params"])) == ref


def test_channel_shuffle_is_torchvision_order(torch, torchvision):
    from torchvision.models.shufflenetv2 import channel_shuffle

    x = np.random.default_rng(0).standard_normal((2, 12, 3, 5)).astype(np.float32)
    ref = channel_shuffle(torch.from_numpy(x), 2).numpy().transpose(0, 2, 3, 1)
    out = np.asarray(ops.channel_shuffle(jnp.asarray(x.transpose(0, 2, 3, 1)), 2))
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("name,channels", [
    ("shufflenet_v2_x0_5", [24, 24, 48, 96, 1024]),
    ("shufflenet_v2_x2_0", [24, 24, 244, 488, 2048]),
])
def test_feature_levels(name, channels):
    # conv1 (stride 2), maxpool (4), stage2 (8), stage3 (16), conv5 (32); 97 px exercises torch's floor sizes.
    model = lm.create_model(name, features_only=True)
    info = model.feature_info
    assert [f["channels"] for f in info] == channels
    assert [f["stride"] for f in info] == [2, 4, 8, 16, 32]
    x = jax.ShapeDtypeStruct((1, 97, 97, 3), jnp.float32)
    outs = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0], x)
    assert [o.shape[1:] for o in outs] == [(s, s, c) for s, c in zip([49, 25, 13, 7, 4], channels)]


def test_stride1_units_have_no_branch1():
    # torchvision: ``branch1`` is an empty Sequential in stride-1 units (no keys); the key table relies on it.
    m = lm.create_model("shufflenet_v2_x0_5")
    p = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))["params"]
    assert "branch1_0" in p["stage2_0"] and "branch1_0" not in p["stage2_1"]
    assert sorted(p["stage3_5"]) == ["branch2_0", "branch2_1", "branch2_3", "branch2_4", "branch2_5", "branch2_6"]


def test_bad_width_is_a_clear_error():
    from lightjax.models.shufflenet_v2 import ShuffleNetV2

    with pytest.raises(ValueError, match="width"):
        ShuffleNetV2(width=0.75).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
