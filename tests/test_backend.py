"""lightjax.ops.backend: the formulation choice (context manager, environment default, errors) and the XLA
compile options recommended for the models (``lightjax.compiler_options``, ``init_compiler_options``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightjax import ops
from lightjax.ops import backend


def test_impl_selection_and_override(monkeypatch):
    monkeypatch.delenv("LIGHTJAX_CONV_IMPL", raising=False)
    assert ops.conv_impl() == ("cpu" if jax.default_backend() == "cpu" else "xla")
    monkeypatch.setenv("LIGHTJAX_CONV_IMPL", "xla")
    assert ops.conv_impl() == "xla"
    with ops.formulation("cpu"):
        assert ops.conv_impl() == "cpu"  # explicit setting wins over the environment
        with ops.formulation(None):  # None: the default again
            assert ops.conv_impl() == "xla"
    assert ops.current_formulation() == "xla"  # left the block: back to the environment's default
    monkeypatch.setenv("LIGHTJAX_CONV_IMPL", "bogus")
    with pytest.raises(ValueError, match="LIGHTJAX_CONV_IMPL"):
        ops.conv_impl()
    with pytest.raises(ValueError, match="unknown formulation"):
        with ops.formulation("fast"):
            pass
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="unknown conv impl"):
        ops.set_conv_impl("fast")


def test_compiler_options(monkeypatch):
    """lightjax.compiler_options(): {} off CPU; an option XLA_FLAGS already sets is left out; on CPU, dense
    convolutions leave YNNPACK (fewer YNN fusions in the compiled program) and the values do not change."""
    import warnings

    import lightjax

    assert lightjax.compiler_options("gpu") == {} and lightjax.compiler_options("tpu") == {}
    backend._options_accepted.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the acceptance probe must not itself warn (e.g. a deprecated jit arg)
        opts = lightjax.compiler_options("cpu")
    assert set(opts) == {"xla_cpu_experimental_ynn_fusion_type", "xla_cpu_prefer_vector_width"}, opts
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=")  # the user's flag wins, the rest stays
    assert lightjax.compiler_options("cpu") == {"xla_cpu_prefer_vector_width": 512}
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_prefer_vector_width=256")
    assert lightjax.compiler_options("cpu") == {}
    monkeypatch.delenv("XLA_FLAGS")

    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 32))
    k = jax.random.normal(jax.random.key(1), (3, 3, 32, 48))
    f = lambda x, k: ops.conv2d(x, k, padding=1)  # noqa: E731
    plain = jax.jit(f).lower(x, k).compile()
    tuned = jax.jit(f, compiler_options=opts).lower(x, k).compile()
    assert plain.as_text().count("__ynn_fusion") > tuned.as_text().count("__ynn_fusion")
    np.testing.assert_allclose(np.asarray(tuned(x, k)), np.asarray(plain(x, k)), rtol=1e-4, atol=1e-4)
    # ... and matrix products (1x1 convolutions) leave YNNPACK too; reductions stay (training needs them).
    w = jax.random.normal(jax.random.key(2), (1, 1, 32, 48))
    g = lambda x, w: jax.nn.relu(ops.conv2d(x, w))  # noqa: E731
    assert "__ynn_fusion" in jax.jit(g).lower(x, w).compile().as_text()
    assert "__ynn_fusion" not in jax.jit(g, compiler_options=opts).lower(x, w).compile().as_text()
    r = lambda x: jnp.sum(x * x, axis=(0, 1, 2))  # noqa: E731
    assert "__ynn_fusion" in jax.jit(r, compiler_options=opts).lower(x).compile().as_text()


def test_init_compiler_options_and_init_variables(monkeypatch):
    """init_compiler_options(): LLVM level 0 on CPU unless XLA_FLAGS sets the level, {} elsewhere;
    lm.init_variables gives model.init's variables (same tree, shapes, dtypes; values to float rounding)."""
    import flax.linen as nn

    import lightjax.models as lm
    from lightjax.models import layers

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = layers.BatchNorm()(layers.Conv2d(8, 3, padding=1)(x), use_running_average=not train)
            return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))

    assert ops.init_compiler_options("gpu") == {} and ops.init_compiler_options("tpu") == {}
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=2")
    assert ops.init_compiler_options("cpu") == {}  # the user's level wins
    monkeypatch.setenv("XLA_FLAGS", "")
    backend._options_accepted.cache_clear()
    assert ops.init_compiler_options("cpu") == {"xla_backend_optimization_level": 0}

    model = Tiny()
    got = lm.init_variables(model, jax.random.key(4), (1, 8, 8, 3))  # compiled at level 0
    want = jax.jit(lambda k: model.init(k, jnp.zeros((1, 8, 8, 3)), train=False)).lower(jax.random.key(4)).compile(
        compiler_options={"xla_backend_optimization_level": 2})(jax.random.key(4))
    monkeypatch.undo()
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    assert set(got) == {"params", "batch_stats"}
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="NHWC"):
        lm.init_variables(model, jax.random.key(4), (8, 8, 3))
