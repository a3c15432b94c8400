"""lightjax.nnx: every lightjax model usable from Flax NNX (flax.nnx.bridge.ToNNX), same outputs as Linen."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import lightjax.models as lm
import lightjax.nnx as lnnx
from parity import random_variables

FAMILIES = ("squeezenet", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3", "shufflenet_v1", "shufflenet_v2",
            "xception", "aligned_xception")


def _first(family):
    names = [n for n in lm.list_models() if lm.model_family(n) == family]
    if not names:
        pytest.skip(f"no {family} model registered yet")
    return names[0]


def _size(name):
    return 32 if lm.model_info(name)["input_size"] <= 32 else 64


def _init(model, x):
    return random_variables(model, x[:1])


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_round_trip(family):
    """Variables go in and come out of the NNX module unchanged, as nnx.Param / nnx.BatchStat, for every family
    (random values from the model's own shapes: nothing is compiled here)."""
    name = _first(family)
    s = _size(name)
    model = lm.create_model(name, num_classes=10)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, s, s, 3)), train=False))
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), dict(shapes))
    m = lnnx.to_nnx(name, variables, num_classes=10, input_shape=(1, s, s, 3))
    for col, vtype in lnnx.COLLECTIONS:
        leaves = jax.tree_util.tree_leaves(nnx.state(m, vtype))
        assert len(leaves) == len(jax.tree_util.tree_leaves(variables.get(col, {}))), col
    back = lnnx.to_linen_variables(m)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(variables)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(variables)))


@pytest.mark.parametrize("which", ["squeezenet1_1", "batchnorm"])
def test_eval_same_as_linen(which):
    name = _bn_model() if which == "batchnorm" else which
    model = lm.create_model(name, num_classes=10)
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    variables = _init(model, x)
    m = lnnx.to_nnx(name, variables, num_classes=10, input_shape=(1, 64, 64, 3))
    # nnx.jit and jax.jit trace the same Linen apply: equal up to float reassociation.
    got = nnx.jit(lambda mod, x: mod(x, train=False))(m, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(jax.jit(model.apply)(variables, x)), rtol=1e-5, atol=1e-5)


def _bn_model():
    # The smallest BatchNorm network first: the train-step test compiles two gradients of it.
    for family in ("mobilenet_v1", "mobilenet_v2", "shufflenet_v2", "mobilenet_v3", "shufflenet_v1", "xception"):
        names = [n for n in lm.list_models() if lm.model_family(n) == family]
        if names:
            return names[0]
    pytest.skip("no model with BatchNorm registered yet")


def test_train_step_same_as_linen():
    """One SGD step in NNX (nnx.Optimizer, BatchNorm stats updated in place) equals the same step in Linen + optax."""
    name = _bn_model()
    model = lm.create_model(name, num_classes=10, drop_rate=0.0)  # no dropout: both sides deterministic
    x = jax.random.normal(jax.random.key(1), (4, 64, 64, 3))
    y = jnp.array([0, 3, 5, 9])
    variables = _init(model, x)
    tx = optax.sgd(0.1)

    def linen_loss(params, stats):
        logits, upd = model.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd["batch_stats"]

    @jax.jit
    def linen_step(variables):
        (loss, stats), g = jax.value_and_grad(linen_loss, has_aux=True)(variables["params"], variables["batch_stats"])
        updates, _ = tx.update(g, tx.init(variables["params"]), variables["params"])
        return loss, {"params": optax.apply_updates(variables["params"], updates), "batch_stats": stats}

    m = lnnx.to_nnx(name, variables, num_classes=10, drop_rate=0.0, input_shape=(1, 64, 64, 3))
    opt = nnx.Optimizer(m, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(m, opt):
        def loss_fn(m):
            logits = m(x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(m)
        opt.update(m, grads)
        return loss

    loss_nnx = nnx_step(m, opt)
    loss_linen, want = linen_step(variables)
    np.testing.assert_allclose(float(loss_nnx), float(loss_linen), rtol=1e-5)
    got = lnnx.to_linen_variables(m)
    for col in ("params", "batch_stats"):
        for a, b in zip(jax.tree_util.tree_leaves(got[col]), jax.tree_util.tree_leaves(want[col])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    # Something did change: the running mean moved away from its initial zeros.
    assert any(float(jnp.abs(a).max()) > 0 for a in jax.tree_util.tree_leaves(got["batch_stats"]))


def test_fresh_init_and_errors():
    m = lnnx.to_nnx("squeezenet1_1", num_classes=4, input_shape=(1, 32, 32, 3), rngs=nnx.Rngs(params=3, dropout=4))
    model = lm.create_model("squeezenet1_1", num_classes=4)
    want = jax.eval_shape(lambda: model.init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)), train=False))
    got = lnnx.to_linen_variables(m)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(dict(want))
    assert [a.shape for a in jax.tree_util.tree_leaves(got)] == [a.shape for a in jax.tree_util.tree_leaves(want)]
    assert isinstance(m.classifier_1["kernel"], nnx.Param)
    # Initialised as the model initialises itself (final conv normal(0, 0.01), zero bias), not left empty.
    assert 0.005 < float(jnp.std(got["params"]["classifier_1"]["kernel"])) < 0.02
    with pytest.raises(ValueError, match=r"(?s)do not fit.*shape params\['classifier_1'\]\['kernel'\]"):
        lnnx.to_nnx("squeezenet1_1", got, input_shape=(1, 32, 32, 3))  # 4-class weights, 1000-class model
    with pytest.raises(TypeError, match="only apply when the model is given by name"):
        lnnx.to_nnx(model, got, num_classes=4)
