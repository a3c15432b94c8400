"""Checks every registered variant must pass (the family files check parity and parameter counts).

Per name: output shape, finite outputs, finite and non-zero gradients for every parameter, jit == eager,
eval output independent of the rest of the batch, train mode updates ``batch_stats``, ``features_only``
strides and channels equal to ``feature_info``; plus the registry's error cases.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightjax.models as lm
from lightjax.models import layers
from parity import random_variables

ALL = lm.list_models()
NUM_CLASSES = 7


def _size(name: str) -> int:
    # Small inputs keep the suite fast; CIFAR variants are defined at 32 px.
    return 32 if lm.model_info(name)["input_size"] <= 32 else 64


def _leaves(out):
    return jax.tree_util.tree_leaves(out)


def test_registry_has_every_issue_variant():
    expected = {
        "squeezenet1_0", "squeezenet1_1",
        "mobilenet_v1_100", "mobilenet_v1_075", "mobilenet_v1_050", "mobilenet_v1_025",
        "mobilenet_v2_100", "mobilenet_v2_050", "mobilenet_v2_075", "mobilenet_v2_140",
        "mobilenet_v3_large_100", "mobilenet_v3_small_100",
        "shufflenet_v1_g1", "shufflenet_v1_g2", "shufflenet_v1_g3", "shufflenet_v1_g4", "shufflenet_v1_g8",
        "shufflenet_v1_g2_cifar", "shufflenet_v1_g3_cifar",
        "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
        "xception", "xception41", "xception65", "xception71", "aligned_xception",
    }
    missing = sorted(expected - set(ALL))
    assert not missing, f"not registered: {missing}"
    assert lm.list_models("mobilenet_v3*") == ["mobilenet_v3_large_100", "mobilenet_v3_small_100"]


@pytest.mark.parametrize("name", ALL)
def test_variant(name):
    size = _size(name)
    model = lm.create_model(name, num_classes=NUM_CLASSES)
    x = jax.random.normal(jax.random.key(1), (2, size, size, model.in_chans))
    # numpy-filled variables: compiling every variant's initialisers cost 5-15 s each (the real init is
    # tested per family against the reference and by the training tests).
    variables = random_variables(model, x)
    assert "params" in variables

    # Eval forward: shape, finiteness (jit == eager: test_jit_equals_eager, on one variant per kind of block).
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
    out = fwd(variables, x)
    if name != "aligned_xception":  # the seed's backbone returns (features, low_level_features)
        chex.assert_shape(out, (2, NUM_CLASSES))
    for leaf in _leaves(out):
        chex.assert_tree_all_finite(leaf)

    # Eval mode: sample 0 does not depend on the rest of the batch.
    x2 = x.at[1].set(jax.random.normal(jax.random.key(7), x.shape[1:]) * 3.0)
    out2 = fwd(variables, x2)
    for a, b in zip(_leaves(out), _leaves(out2)):
        np.testing.assert_allclose(np.asarray(a[0]), np.asarray(b[0]), rtol=1e-5, atol=1e-6 * float(jnp.abs(a).max()))

    # Train mode: gradients finite and non-zero for every parameter; batch_stats updated.
    proj = [jax.random.normal(jax.random.key(3 + i), leaf.shape) for i, leaf in enumerate(_leaves(out))]

    def loss_fn(params, batch_stats):
        y, upd = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                             rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
        return sum(jnp.sum(l * p) for l, p in zip(_leaves(y), proj)), upd

    (loss, updates), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        variables["params"], variables.get("batch_stats", {}))
    assert np.isfinite(float(loss))
    # numpy, not jnp: an eager jnp op per leaf compiles one tiny kernel per parameter shape (~20 s per model).
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(grads))[0]
    dead = [jax.tree_util.keystr(p) for p, g in flat if not np.any(g != 0)]
    bad = [jax.tree_util.keystr(p) for p, g in flat if not np.all(np.isfinite(g))]
    assert not bad, f"{name}: non-finite gradients for {bad[:5]}"
    assert not dead, f"{name}: zero gradients for {dead[:5]}"
    if "batch_stats" in variables:
        before = jax.tree_util.tree_leaves(variables["batch_stats"])
        after = jax.tree_util.tree_leaves(updates["batch_stats"])
        assert len(before) == len(after)
        # Exact comparison: a BatchNorm fed by a linear BN -> 1x1 conv sees a batch mean of ~1e-10, so its
        # running mean moves by less than any allclose tolerance (torchvision behaves the same).
        changed = sum(not np.array_equal(a, b) for a, b in zip(before, after))
        assert changed == len(before), f"{name}: {len(before) - changed} batch_stats not updated in train mode"


# Op-by-op (eager) execution compiles every primitive separately: 25-70 s per MobileNetV3/Xception on this
# CPU, so this runs on four small variants that together use every op of lightjax.models.ops (dense, im2col
# stem, ceil-mode pool; depthwise s1/s2, pointwise; grouped 1x1, gather shuffle, avg pool; split, concat)
# rather than on all 28.
@pytest.mark.parametrize("name", ["squeezenet1_1", "mobilenet_v1_025", "shufflenet_v1_g3_cifar", "shufflenet_v2_x0_5"])
def test_jit_equals_eager(name):
    model = lm.create_model(name, num_classes=NUM_CLASSES)
    size = 32
    x = jax.random.normal(jax.random.key(1), (2, size, size, model.in_chans))
    variables = random_variables(model, x)
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    eager = model.apply(variables, x, train=False)
    np.testing.assert_allclose(np.asarray(out), np.asarray(eager), rtol=1e-4,
                               atol=1e-5 * float(jnp.abs(eager).max()))


@pytest.mark.parametrize("name", ALL)
def test_features_only(name):
    size = _size(name)
    probe = lm.create_model(name, features_only=True)
    info = probe.feature_info
    assert [f["index"] for f in info] == list(range(len(info))), "default out_indices = every level"
    strides = [f["stride"] for f in info]
    assert strides == sorted(strides) and all(s & (s - 1) == 0 for s in strides), strides
    x = jax.ShapeDtypeStruct((2, size, size, probe.in_chans), jnp.float32)
    shapes = jax.eval_shape(lambda x: probe.init_with_output(jax.random.key(0), x, train=False)[0], x)
    assert len(shapes) == len(info)
    for f, s in zip(info, shapes):
        assert s.shape[-1] == f["channels"], (name, f, s.shape)
        # The measured downsampling factor is the declared stride (to the nearest power of two: unpadded
        # stems such as SqueezeNet's lose a few pixels).
        assert 2 ** round(np.log2(size / s.shape[1])) == f["stride"], (name, f, s.shape)
    # A subset, in the order asked for.
    last = len(info) - 1
    sub = lm.create_model(name, features_only=True, out_indices=(last, 0))
    assert [f["index"] for f in sub.feature_info] == [last, 0]
    with pytest.raises(ValueError, match="out_indices"):
        lm.create_model(name, features_only=True, out_indices=(len(info),)).feature_info


@pytest.mark.parametrize("name", ["squeezenet1_1", "mobilenet_v2_100", "shufflenet_v2_x0_5"])
def test_num_classes_zero_pooled_features(name):
    model = lm.create_model(name, num_classes=0)
    x = jnp.ones((2, 64, 64, 3))
    out, _ = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), x)
    assert out.ndim == 2 and out.shape[0] == 2 and out.shape[1] > NUM_CLASSES


def test_dtype_bfloat16_params_stay_float32():
    model = lm.create_model("mobilenet_v2_050", num_classes=5, dtype=jnp.bfloat16)
    x = jnp.ones((2, 64, 64, 3))
    v = random_variables(model, x)  # dtypes as model.init gives them (eval_shape), without compiling the init
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(v["params"]))
    y = jax.jit(model.apply)(v, x)
    assert y.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.parametrize("dtype,param_dtype,stats_dtype", [
    (jnp.float32, jnp.float32, jnp.float32),
    (jnp.bfloat16, jnp.float32, jnp.float32),
    (jnp.float64, jnp.float64, jnp.float64),
])
def test_train_mode_keeps_batch_stats_dtype(dtype, param_dtype, stats_dtype):
    """A train-mode update must return running statistics of the dtype they were created with: otherwise the
    train state changes type after step 1 and ``jit`` traces and compiles the train step a second time (it did
    for float64 runs: float32 statistics came back float64). Only BatchNorm owns ``batch_stats``; a conv in
    front of it gives the statistics the model's compute dtype."""

    class ConvBN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            x = layers.Conv2d(4, 3, padding=1, dtype=dtype, param_dtype=param_dtype)(x)
            return layers.BatchNorm(dtype=dtype, param_dtype=param_dtype)(x, use_running_average=not train)

    with jax.enable_x64(True):
        model = ConvBN()
        x = jax.random.normal(jax.random.key(2), (2, 8, 8, 3), dtype)
        v = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.key(0))
        before = jax.tree.map(lambda a: a.dtype, v["batch_stats"])
        assert set(jax.tree.leaves(before)) == {jnp.dtype(stats_dtype)}
        train_apply = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"])[1])
        upd = train_apply(v)
        assert jax.tree.map(lambda a: a.dtype, upd["batch_stats"]) == before
        changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(upd["batch_stats"]),
                                                              jax.tree.leaves(v["batch_stats"]))]
        assert all(changed)  # the statistics were really updated
        # Statistics stored in float32 (e.g. ported from a PyTorch checkpoint) stay float32 under any dtype.
        v32 = {**v, "batch_stats": jax.tree.map(lambda a: a.astype(jnp.float32), v["batch_stats"])}
        upd = train_apply(v32)
        assert set(jax.tree.leaves(jax.tree.map(lambda a: a.dtype, upd["batch_stats"]))) == {jnp.dtype(jnp.float32)}


def test_in_chans():
    model = lm.create_model("shufflenet_v2_x0_5", in_chans=1, num_classes=3)
    x = jnp.ones((1, 64, 64, 1))
    v = lm.init_variables(model, jax.random.key(0), x.shape)
    assert v["params"]["conv1_0"]["kernel"].shape == (3, 3, 1, 24)  # torchvision conv1.0 with one input channel
    out = jax.jit(model.apply)(v, x)
    chex.assert_shape(out, (1, 3))
    chex.assert_tree_all_finite(out)


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="mobilenet_v2_100"):
        lm.create_model("mobilenet_v2_10")
    with pytest.raises(ValueError, match="unknown model"):
        lm.create_model("resnet50")


def test_unknown_kwarg_is_an_error():
    with pytest.raises(TypeError, match="num_clases"):
        lm.create_model("squeezenet1_1", num_clases=10)
    with pytest.raises(TypeError, match="version"):
        lm.create_model("squeezenet1_1", version="1_0")


@pytest.mark.parametrize("shape,match", [
    ((1, 3, 64, 64), r"NHWC.*\(N, H, W, 3\).*NCHW"),
    ((64, 64, 3), r"\(N, H, W, 3\)"),
    ((1, 64, 64, 4), r"\(N, H, W, 3\)"),
])
def test_wrong_input_shape_is_a_clear_error(shape, match):
    model = lm.create_model("squeezenet1_1")
    with pytest.raises(ValueError, match=match):
        model.init(jax.random.key(0), jnp.zeros(shape))
