"""SqueezeNet: parity with torchvision (== the seed's code) and architecture specifics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightjax.models as lm
from lightjax.models import ops
from parity import check_parity


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_parity_torchvision(name, torch, torchvision):
    tm = getattr(torchvision.models, name)()
    check_parity(name, tm, sizes=(64, 97))


def test_native_size_parity(torch, torchvision):
    check_parity("squeezenet1_1", torchvision.models.squeezenet1_1(), sizes=(224,), train=False, roundtrip=False)


@pytest.mark.parametrize("name,ref", [("squeezenet1_0", 1_248_424), ("squeezenet1_1", 1_235_496)])
def test_param_count_torchvision(name, ref, torch, torchvision):
    tm = getattr(torchvision.models, name)()
    assert sum(p.numel() for p in tm.parameters()) == ref
    m = lm.create_model(name)
    v = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
    assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(v["params"])) == ref


def test_ceil_mode_sizes():
    # REFERENCE.md: at 224, v1.0 goes 109 -> 54 -> 27 -> 13 (floor mode would give 26 -> 12).
    feats = lm.create_model("squeezenet1_0", features_only=True)
    outs, _ = jax.eval_shape(lambda x: feats.init_with_output(jax.random.key(0), x), jnp.zeros((1, 224, 224, 3)))
    assert [o.shape[1] for o in outs] == [109, 54, 27, 13]


def test_pool_output_size_rule():
    # torch: MaxPool2d(3, 2, ceil_mode=True) on 6 gives 3, on 13 gives 6; last window must start inside.
    assert ops.pool_output_size(6, 3, 2, 0, True) == 3
    assert ops.pool_output_size(13, 3, 2, 0, True) == 6
    assert ops.pool_output_size(5, 2, 2, 1, True) == 3
    assert ops.pool_output_size(4, 2, 2, 1, True) == 3


def test_logits_nonnegative():
    m = lm.create_model("squeezenet1_1", num_classes=10)
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    v = m.init(jax.random.key(0), x)
    assert bool(jnp.all(m.apply(v, x) >= 0))
