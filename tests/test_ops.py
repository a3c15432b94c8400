"""lightjax.ops: every CPU formulation equals the plain ``lax.conv`` ("xla") path, forward and gradients.

Per op in float32 (relative to the largest reference magnitude, <= ~1e-5); a whole model's gradients in float64;
bfloat16 inputs; SPMD sharding of the batch. (The formulation choice and the XLA options are tested in
test_backend.py, the benchmark in test_bench.py.)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lightjax import ops
from lightjax.ops import depthwise as depthwise_mod
from lightjax.ops import grouped as grouped_mod
from parity import random_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_STACK = contextlib.ExitStack()


@pytest.fixture(autouse=True)
def _restore_formulation():
    yield
    _STACK.close()  # leaves every formulation entered by use() during the test


def use(impl):
    """Traces what follows with formulation ``impl`` until the test ends (``None``: the default)."""
    _STACK.enter_context(ops.formulation(impl))


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def conv_and_grads(impl, x, k, **kw):
    """Output and (dx, dk) of <conv(x, k), ct> under one formulation (one fresh jitted trace).

    The output is checked to be the same whether or not the convolution is differentiated (a custom VJP's
    forward rule may compute it differently from the primal, e.g. the RGB stems on CPU).
    """
    use(impl)

    @jax.jit
    def f(x, k):
        y, vjp = jax.vjp(lambda x, k: ops.conv2d(x, k, **kw), x, k)
        ct = jax.random.normal(jax.random.key(7), y.shape, jnp.float32).astype(y.dtype)
        return y, vjp(ct), ops.conv2d(x, k, **kw)

    y, grads, y_plain = f(x, k)
    use(None)
    assert y_plain.shape == y.shape and y_plain.dtype == y.dtype
    tol = 3e-2 if y.dtype == jnp.bfloat16 else 1e-12 if y.dtype == jnp.float64 else 1e-5
    assert rel(y_plain.astype(jnp.float32 if y.dtype == jnp.bfloat16 else y.dtype), y) < tol, (impl, kw)
    return y, grads


# (input shape NHWC, kernel HWIO, stride, padding, dilation, groups): every layer kind the families use.
CASES = {
    # depthwise 3x3: strides 1/2, odd sizes, non-square
    "dw_s1": ((2, 9, 11, 6), (3, 3, 1, 6), 1, 1, 1, 6),
    "dw_s2_odd": ((2, 9, 11, 6), (3, 3, 1, 6), 2, 1, 1, 6),
    "dw_s2_even": ((2, 10, 12, 6), (3, 3, 1, 6), 2, 1, 1, 6),
    # asymmetric pads (TF-'same'-like ((0,1),(0,1)), the seed's fixed_padding done as conv padding)
    "dw_s2_asym": ((2, 10, 10, 6), (3, 3, 1, 6), 2, ((0, 1), (0, 1)), 1, 6),
    "dw_s1_asym": ((2, 7, 8, 6), (3, 3, 1, 6), 1, ((1, 1), (2, 0)), 1, 6),
    # unpadded (the seed pads outside the conv with F.pad) and over-padded
    "dw_nopad": ((2, 13, 9, 6), (3, 3, 1, 6), 1, 0, 1, 6),
    "dw_nopad_s2": ((2, 13, 9, 6), (3, 3, 1, 6), 2, 0, 1, 6),
    # dilation 2 / 4 (aligned Xception, output_stride 8/16; MobileNetV3 dilated)
    "dw_dil2": ((2, 13, 9, 6), (3, 3, 1, 6), 1, 2, 2, 6),
    "dw_dil4_s2": ((2, 13, 9, 6), (3, 3, 1, 6), 2, 4, 4, 6),
    "dw_dil2_5x5": ((2, 12, 11, 6), (5, 5, 1, 6), 1, 4, 2, 6),
    # 5x5 (MobileNetV3), stride 2, odd size
    "dw_5x5_s2": ((2, 13, 9, 6), (5, 5, 1, 6), 2, 2, 1, 6),
    "dw_5x5_s1": ((2, 7, 7, 6), (5, 5, 1, 6), 1, 2, 1, 6),
    # channel multiplier 2
    "dw_mult2": ((2, 9, 7, 6), (3, 3, 1, 12), 1, 1, 1, 6),
    # 1x1 on a 1x1 map (SE-like), 3x3 depthwise on a tiny map with big padding
    "dw_tiny": ((2, 2, 2, 4), (3, 3, 1, 4), 1, 1, 1, 4),
    "dw_1px_s2": ((2, 1, 1, 4), (3, 3, 1, 4), 2, 1, 1, 4),
    # pointwise
    "pw": ((2, 9, 11, 6), (1, 1, 6, 8), 1, 0, 1, 1),
    "pw_s2": ((2, 9, 11, 6), (1, 1, 6, 8), 2, 0, 1, 1),
    "pw_1x1map": ((2, 1, 1, 16), (1, 1, 16, 4), 1, 0, 1, 1),
    "pw_padded": ((2, 5, 6, 6), (1, 1, 6, 8), 1, 1, 1, 1),
    # grouped 1x1 (ShuffleNet v1 g=3, g=8)
    "gpw_g3": ((2, 9, 11, 12), (1, 1, 4, 9), 1, 0, 1, 3),
    "gpw_g8": ((2, 5, 7, 16), (1, 1, 2, 24), 1, 0, 1, 8),
    "gpw_g16_xla": ((2, 5, 7, 32), (1, 1, 2, 32), 1, 0, 1, 16),
    "dw_1x1_s2": ((2, 7, 6, 8), (1, 1, 1, 8), 2, 0, 1, 8),
    # dense stems (broadcast multiply-add forward, im2col backward) 3x3 s2 and 7x7 s2, odd sizes, 4 channels
    # with asymmetric (TF "SAME") padding on an even size, 2x2 stride 3 (window shorter than the stride)
    "stem3_s2": ((2, 9, 11, 3), (3, 3, 3, 8), 2, 1, 1, 1),
    "stem4_s2_asym": ((2, 10, 12, 4), (3, 3, 4, 6), 2, ((0, 1), (0, 1)), 1, 1),
    "stem2x2_s3": ((2, 10, 11, 3), (2, 2, 3, 5), 3, 0, 1, 1),
    "stem3_s2_nopad": ((2, 9, 11, 3), (3, 3, 3, 8), 2, 0, 1, 1),
    "stem7_s2": ((2, 13, 11, 3), (7, 7, 3, 8), 2, 3, 1, 1),
    "stem_1ch": ((2, 8, 8, 1), (3, 3, 1, 4), 1, 1, 2, 1),
    # depthwise with C a multiple of depthwise.DW_ROWS_CHANNEL_MULTIPLE, stride 1: inference runs the (N, H, W*C) rows
    "dw16_rows": ((2, 7, 9, 16), (3, 3, 1, 16), 1, 1, 1, 16),
    "dw32_rows_dil2": ((2, 9, 8, 32), (3, 3, 1, 32), 1, 2, 2, 32),
    "dw16_rows_5x5_asym": ((1, 8, 10, 16), (5, 5, 1, 16), 1, ((2, 1), (0, 2)), 1, 16),
    "dw_rows_mult2": ((2, 6, 7, 8), (3, 3, 1, 16), 1, 1, 1, 8),
    # dense kxk with many channels (lax.conv), grouped kxk (lax.conv)
    "dense3": ((2, 9, 11, 8), (3, 3, 8, 8), 1, 1, 1, 1),
    "dense3_s2_dil": ((2, 13, 10, 6), (3, 3, 6, 5), 2, 2, 2, 1),
    "dense5_nopad": ((2, 11, 9, 8), (5, 5, 8, 4), 1, 0, 1, 1),
    "grouped3": ((2, 9, 11, 8), (3, 3, 2, 8), 2, 1, 1, 4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cpu_formulation_matches_xla_float32(case):
    shape, kshape, stride, padding, dilation, groups = CASES[case]
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    k = jax.random.normal(jax.random.key(1), kshape, jnp.float32)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y0, (dx0, dk0) = conv_and_grads("xla", x, k, **kw)
    y1, (dx1, dk1) = conv_and_grads("cpu", x, k, **kw)
    assert y1.shape == y0.shape and y1.dtype == y0.dtype
    assert rel(y1, y0) < 1e-5, case
    assert rel(dx1, dx0) < 1e-5, case
    assert rel(dk1, dk0) < 1e-5, case


@pytest.mark.parametrize("case", ["dw_s2_odd", "dw_dil2", "gpw_g3", "pw_s2", "stem3_s2", "dense3", "dense3_s2_dil",
                                  "dw16_rows", "dw32_rows_dil2", "dw16_rows_5x5_asym", "dw_rows_mult2"])
def test_cpu_formulation_float64_exact(case):
    shape, kshape, stride, padding, dilation, groups = CASES[case]
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), shape, jnp.float64)
        k = jax.random.normal(jax.random.key(1), kshape, jnp.float64)
        kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        y0, (dx0, dk0) = conv_and_grads("xla", x, k, **kw)
        y1, (dx1, dk1) = conv_and_grads("cpu", x, k, **kw)
        assert y1.dtype == jnp.float64 and dk1.dtype == jnp.float64
        for a, b in ((y1, y0), (dx1, dx0), (dk1, dk0)):
            assert rel(a, b) < 1e-12, case


def test_depthwise_row_formulation_runs_only_where_chosen(monkeypatch):
    """The (N, H, W*C) depthwise rows run for inference with stride 1 and C a multiple of
    ``DW_ROWS_CHANNEL_MULTIPLE``, never under differentiation, never for C = 58 / 116 (ShuffleNet v2's widths) or
    stride 2; the CPU/XLA equality of every case is checked by the tests above."""
    calls = []
    real = depthwise_mod._depthwise_fwd_rows
    monkeypatch.setattr(depthwise_mod, "_depthwise_fwd_rows", lambda *a: calls.append(a[0].shape) or real(*a))
    use("cpu")

    def run(c, stride=1, grad=False):
        x, k = jnp.ones((1, 6, 6, c)), jnp.ones((3, 3, 1, c))
        f = lambda x: jnp.sum(ops.conv2d(x, k, stride=stride, padding=1, groups=c))  # noqa: E731
        jax.jit(jax.grad(f) if grad else f).lower(x)
        n, calls[:] = len(calls), []
        return n

    assert run(32) == 1 and run(16 * 3) == 1 and run(72) == 1  # 72: a MobileNetV3 expansion width
    assert run(32, grad=True) == 0 and run(58) == 0 and run(116) == 0 and run(32, stride=2) == 0


@pytest.mark.parametrize("case", ["dw_s2_odd", "pw", "gpw_g3", "stem3_s2", "dw_dil2", "dense3"])
def test_cpu_formulation_bfloat16(case):
    shape, kshape, stride, padding, dilation, groups = CASES[case]
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    k = jax.random.normal(jax.random.key(1), kshape, jnp.float32)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y32, _ = conv_and_grads("xla", x, k, **kw)
    y1, (dx1, dk1) = conv_and_grads("cpu", x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), **kw)
    assert y1.dtype == jnp.bfloat16 and dx1.dtype == jnp.bfloat16 and dk1.dtype == jnp.bfloat16
    assert rel(y1.astype(jnp.float32), y32) < 3e-2
    assert np.isfinite(np.asarray(dk1, np.float32)).all()


def test_mixed_dtype_promotes_like_xla():
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 4), jnp.bfloat16)
    k = jax.random.normal(jax.random.key(1), (3, 3, 1, 4), jnp.float32)
    use("cpu")
    y = ops.conv2d(x, k, padding=1, groups=4)
    assert y.dtype == jnp.float32


def test_xla_impl_is_plain_lax_conv():
    """LIGHTJAX_CONV_IMPL=xla must lower to a single grouped convolution (the GPU/TPU path)."""
    x = jnp.zeros((1, 8, 8, 4))
    k = jnp.zeros((3, 3, 1, 4))
    use("xla")
    hlo = jax.jit(lambda x, k: ops.conv2d(x, k, padding=1, groups=4)).lower(x, k).as_text()
    assert "convolution" in hlo and "feature_group_count = 4" in hlo
    use("cpu")
    hlo = jax.jit(lambda x, k: ops.conv2d(x, k, padding=1, groups=4)).lower(x, k).as_text()
    assert "convolution" not in hlo


def test_errors():
    with pytest.raises(ValueError, match="channels"):
        ops.conv2d(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 2, 4)))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        ops.conv2d(jnp.zeros((1, 2, 2, 3)), jnp.zeros((3, 3, 3, 4)))
    with pytest.raises(ValueError, match="string padding"):
        ops.conv2d(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 3, 4)), padding="SAME")


@pytest.mark.parametrize("impl", ["xla", "cpu"])
@pytest.mark.parametrize("groups", [2, 3, 4])
def test_channel_shuffle(groups, impl):
    use(impl)
    c = 12
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, c))
    y = ops.channel_shuffle(x, groups)
    # torch: x.view(N, g, C/g, H, W).permute(0, 2, 1, 3, 4): channel i*(C/g)+j -> j*g+i
    for i in range(groups):
        for j in range(c // groups):
            np.testing.assert_array_equal(y[..., j * groups + i], x[..., i * (c // groups) + j])
    np.testing.assert_array_equal(y, x[..., ops.shuffle_permutation(c, groups)])
    ct = jax.random.normal(jax.random.key(1), y.shape)
    g = jax.grad(lambda x: jnp.sum(ops.channel_shuffle(x, groups) * ct))(x)
    np.testing.assert_array_equal(g, ct[..., np.argsort(ops.shuffle_permutation(c, groups))])
    with pytest.raises(ValueError, match="divisible"):
        ops.channel_shuffle(x, 5)


@pytest.mark.parametrize("case", ["gpw_g3", "gpw_g8"])
@pytest.mark.parametrize("split", [False, True])
def test_grouped_pointwise_per_group_or_block_diagonal(case, split, monkeypatch):
    """Both CPU forwards of a grouped 1x1 (one product per group / one block-diagonal product) equal
    ``lax.conv`` in float64, forward and gradients; the program really has g products or one forward."""
    monkeypatch.setattr(grouped_mod, "SPLIT_GROUPS_MIN_BLOCK", 0 if split else 10**9)
    shape, kshape, stride, padding, dilation, groups = CASES[case]
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), shape, jnp.float64)
        k = jax.random.normal(jax.random.key(1), kshape, jnp.float64)
        y0, (dx0, dk0) = conv_and_grads("xla", x, k, groups=groups)
        y1, (dx1, dk1) = conv_and_grads("cpu", x, k, groups=groups)
        use("cpu")
        fwd = jax.jit(lambda x, k: ops.conv2d(x, k, groups=groups)).lower(x, k).as_text()
        grad = jax.jit(jax.value_and_grad(lambda x, k: jnp.sum(ops.conv2d(x, k, groups=groups)), (0, 1)))
        grad = grad.lower(x, k).as_text()
    assert rel(y1, y0) < 1e-12 and rel(dx1, dx0) < 1e-12 and rel(dk1, dk0) < 1e-12
    # forward: g products or one; backward: per group (dx and dW) whichever forward ran
    assert fwd.count("stablehlo.dot_general") == (groups if split else 1)
    assert grad.count("stablehlo.dot_general") == (groups if split else 1) + 2 * groups


@pytest.mark.parametrize("impl", ["xla", "cpu"])
@pytest.mark.parametrize("kshape,padding", [((1, 1, 12, 5), 0), ((3, 3, 12, 5), 1), ((1, 1, 12, 5), 1)])
def test_conv2d_concat_equals_conv_of_concatenation(impl, kshape, padding):
    """``conv2d_concat(parts, k)`` == ``conv2d(concatenate(parts), k)``, value and gradients (of every part and
    the kernel); on CPU a 1x1 really runs without the concatenation (one product per part)."""
    parts = [jax.random.normal(jax.random.key(i), (2, 5, 6, c)) for i, c in enumerate((4, 8))]
    k = jax.random.normal(jax.random.key(9), kshape)
    use(impl)
    f_cat = lambda a, b, k: ops.conv2d(jnp.concatenate([a, b], axis=-1), k, padding=padding)  # noqa: E731
    f_parts = lambda a, b, k: ops.conv2d_concat([a, b], k, padding=padding)  # noqa: E731
    want, want_vjp = jax.vjp(f_cat, *parts, k)
    got, got_vjp = jax.vjp(f_parts, *parts, k)
    hlo = jax.jit(f_parts).lower(*parts, k).as_text()
    use(None)
    ct = jax.random.normal(jax.random.key(8), want.shape)
    assert rel(got, want) < 1e-5
    for g, w in zip(got_vjp(ct), want_vjp(ct)):
        assert rel(g, w) < 1e-5
    assert ("concatenate" in hlo) == (impl == "xla" or kshape[0] == 3 or padding == 1)
    with pytest.raises(ValueError, match="channels"):
        use("cpu")
        ops.conv2d_concat([parts[0], parts[0]], k[:, :, :, :])


@pytest.mark.parametrize("impl", ["xla", "cpu"])
@pytest.mark.parametrize("widths,groups,shuffle", [
    ((12,), 3, 0),  # one array: the per-group products' outputs as parts
    ((12,), 3, 4),  # megvii's shuffle folded in (interleaved slices)
    ((12,), 3, 3),  # the seed's shuffle: no per-group slicing expresses it -> one part
    ((4, 4, 4), 3, 0),  # parts that are the groups
    ((8, 4), 3, 0),  # two groups in one part: cut where the groups need it
    ((2, 6, 4), 2, 0),  # a part across a group boundary
])
def test_conv2d_parts_equals_conv2d(impl, widths, groups, shuffle):
    """``conv2d_parts`` (array or channel parts in, channel parts out) == ``conv2d`` of the concatenation, value
    and gradients in float64; on CPU a per-group product returns one part per group."""
    with jax.enable_x64(True):
        parts = [jax.random.normal(jax.random.key(i), (2, 3, 4, c), jnp.float64) for i, c in enumerate(widths)]
        k = jax.random.normal(jax.random.key(9), (1, 1, 12 // groups, 6), jnp.float64)
        use(impl)
        arg = parts[0] if len(parts) == 1 else parts
        f_ref = lambda ps, k: ops.conv2d(jnp.concatenate(ps, -1), k, groups=groups, shuffle_in=shuffle)  # noqa: E731
        f_parts = lambda ps, k: ops.concat_parts(  # noqa: E731
            ops.conv2d_parts(ps[0] if len(ps) == 1 else ps, k, groups=groups, shuffle_in=shuffle))
        out = ops.conv2d_parts(arg, k, groups=groups, shuffle_in=shuffle)
        want, want_vjp = jax.vjp(f_ref, parts, k)
        got, got_vjp = jax.vjp(f_parts, parts, k)
        use(None)
        ct = jax.random.normal(jax.random.key(8), want.shape, jnp.float64)
        assert rel(got, want) < 1e-12
        for g, w in zip(jax.tree_util.tree_leaves(got_vjp(ct)), jax.tree_util.tree_leaves(want_vjp(ct))):
            assert rel(g, w) < 1e-12
    per_group = impl == "cpu" and not (shuffle and shuffle != 12 // groups)
    assert [o.shape[-1] for o in out] == ([6 // groups] * groups if per_group else [6])


def test_regroup():
    """``regroup`` re-cuts channel parts without changing their concatenation, passes aligned parts through
    untouched, and names the mismatch when the widths do not add up."""
    a, b = jnp.arange(2 * 4.0).reshape(1, 1, 2, 4), jnp.arange(2 * 6.0).reshape(1, 1, 2, 6) + 100
    cat = jnp.concatenate([a, b], -1)
    for widths in ([4, 6], [10], [2, 2, 6], [5, 5], [1, 8, 1]):
        out = ops.regroup([a, b], widths)
        assert [o.shape[-1] for o in out] == widths
        np.testing.assert_array_equal(ops.concat_parts(out), cat)
    same = ops.regroup([a, b], [4, 6])
    assert same[0] is a and same[1] is b
    assert ops.regroup(cat, [10])[0] is cat and ops.concat_parts(cat) is cat
    with pytest.raises(ValueError, match=r"\[4, 6\] channels cannot be cut into \[4, 4\]"):
        ops.regroup([a, b], [4, 4])


@pytest.mark.parametrize("train", [False, True])
def test_batchnorm_of_parts_equals_batchnorm_of_concatenation(train):
    """``layers.BatchNorm`` on channel parts: same output (as parts), same running statistics, same gradients
    as on their concatenation."""
    from lightjax.models import layers

    parts = [jax.random.normal(jax.random.key(i), (4, 3, 3, c)) * (i + 1) + i for i, c in enumerate((2, 5, 3))]
    bn = layers.BatchNorm()
    v = bn.init(jax.random.key(0), jnp.concatenate(parts, -1))
    v = {"params": jax.tree_util.tree_map(lambda t: t + jnp.linspace(0.5, 1.5, t.shape[0]), v["params"]),
         "batch_stats": v["batch_stats"]}

    def run(ps, params):
        x = ps if isinstance(ps, list) else jnp.concatenate(ps, -1)
        y, upd = bn.apply({"params": params, "batch_stats": v["batch_stats"]}, x, use_running_average=not train,
                          mutable=["batch_stats"])
        return ops.concat_parts(y), upd["batch_stats"]

    got, got_stats = run(parts, v["params"])
    want, want_stats = run(tuple(parts), v["params"])
    assert isinstance(bn.apply(v, parts), list)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(got_stats), jax.tree_util.tree_leaves(want_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    ct = jax.random.normal(jax.random.key(5), want.shape)
    g1 = jax.grad(lambda ps, p: jnp.sum(run(ps, p)[0] * ct), (0, 1))(parts, v["params"])
    g2 = jax.grad(lambda ps, p: jnp.sum(run(tuple(ps), p)[0] * ct), (0, 1))(parts, v["params"])
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(4, 5, 3, 6), (7, 3), (2, 9, 9, 1)])
def test_batch_norm_train_analytic_gradient_float64(shape):
    """``ops.batch_norm_train`` (custom VJP, the textbook gradient) == autodiff of the plain two-pass formula in
    float64: output, batch statistics, and the gradients of x, scale and bias, also when the loss reads the
    batch mean and variance (their cotangents reach x)."""
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(3), 6)
        c = shape[-1]
        x = jax.random.normal(keys[0], shape, jnp.float64) * 3.0 + 1.5
        scale = jax.random.uniform(keys[1], (c,), jnp.float64, 0.5, 1.5)
        bias = jax.random.normal(keys[2], (c,), jnp.float64)
        cts = [jax.random.normal(k, s, jnp.float64) for k, s in zip(keys[3:], (shape, (c,), (c,)))]

        def plain(x, scale, bias):
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
            return (x - mean) * jax.lax.rsqrt(var + 1e-3) * scale + bias, mean, var

        def loss(fn, with_stats):
            def f(x, scale, bias):
                y, mean, var = fn(x, scale, bias)
                total = jnp.sum(y * cts[0])
                return total + (jnp.sum(mean * cts[1]) + jnp.sum(var * cts[2]) if with_stats else 0.0)
            return f

        fast = lambda x, s, b: ops.batch_norm_train(x, s, b, 1e-3)  # noqa: E731
        for a, b in zip(fast(x, scale, bias), plain(x, scale, bias)):
            assert a.dtype == jnp.float64
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        for with_stats in (False, True):
            got = jax.grad(loss(fast, with_stats), (0, 1, 2))(x, scale, bias)
            want = jax.grad(loss(plain, with_stats), (0, 1, 2))(x, scale, bias)
            for a, b in zip(got, want):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("keepdims", [False, True])
def test_global_avg_pool(dtype, keepdims):
    """CPU (a product with a constant row) == XLA path (a mean), value and gradient; low precision is
    accumulated in float32 and returned in the input dtype."""
    x = (jax.random.normal(jax.random.key(0), (3, 5, 7, 6)) + 2.0).astype(dtype)
    want = np.mean(np.asarray(x, np.float64), axis=(1, 2), keepdims=keepdims)
    out = {}
    for impl in ("xla", "cpu"):
        use(impl)
        y, vjp = jax.vjp(lambda x: ops.global_avg_pool(x, keepdims=keepdims), x)
        out[impl] = (y, vjp(jnp.ones_like(y))[0])
    for y, g in out.values():
        assert y.dtype == dtype and y.shape == want.shape and g.dtype == dtype
        assert rel(y, want) < (1e-2 if dtype == jnp.bfloat16 else 1e-6)
        assert rel(g, np.full(x.shape, 1 / 35)) < (1e-2 if dtype == jnp.bfloat16 else 1e-6)


def test_group_layout():
    """The shuffles a grouped 1x1 can read without moving the activation: none, megvii's (interleaved);
    the seed/torchvision order folded into a grouped conv is no per-group slice (block-diagonal keeps it)."""
    assert grouped_mod.group_layout(12, 3, None) == "blocks"
    assert grouped_mod.group_layout(12, 3, np.arange(12)) == "blocks"
    assert grouped_mod.group_layout(12, 3, ops.shuffle_permutation(12, 4)) == "interleaved"  # megvii: shuffle(x, C // g)
    assert grouped_mod.group_layout(12, 3, ops.shuffle_permutation(12, 3)) is None


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("impl", ["xla", "cpu"])
@pytest.mark.parametrize("kshape,groups,shuffle", [
    ((1, 1, 4, 12), 3, 4),   # ShuffleNet v1 (megvii order): grouped 1x1 reading shuffle(x, C // g)
    ((1, 1, 4, 12), 3, 3),   # seed order folded into a grouped 1x1: block-diagonal whatever `split` says
    ((1, 1, 12, 6), 1, 3),   # dense 1x1
    ((3, 3, 4, 6), 3, 2),    # not a matrix product: the shuffle runs first
])
def test_shuffle_in_equals_shuffle_then_conv(impl, kshape, groups, shuffle, split, monkeypatch):
    """``conv2d(x, k, shuffle_in=s)`` == ``conv2d(channel_shuffle(x, s), k)`` in value and in both gradients,
    whether the permutation is read as per-group strided slices or folded into a block-diagonal weight's rows
    (CPU 1x1) or applied to the activation."""
    monkeypatch.setattr(grouped_mod, "SPLIT_GROUPS_MIN_BLOCK", 0 if split else 10**9)
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 12))
    k = jax.random.normal(jax.random.key(1), kshape)
    kw = dict(groups=groups, padding=kshape[0] // 2)

    def value_and_grads(fn, which):
        use(which)
        y, vjp = jax.vjp(jax.jit(fn), x, k)
        ct = jax.random.normal(jax.random.key(2), y.shape)
        use(None)
        return y, vjp(ct)

    want_y, want_g = value_and_grads(lambda x, k: ops.conv2d(ops.channel_shuffle(x, shuffle), k, **kw), "xla")
    y, g = value_and_grads(lambda x, k: ops.conv2d(x, k, shuffle_in=shuffle, **kw), impl)
    assert rel(y, want_y) < 1e-5
    assert rel(g[0], want_g[0]) < 1e-5 and rel(g[1], want_g[1]) < 1e-5
    # The shuffle matters for these shapes (the check could fail): without it the output differs.
    plain, _ = value_and_grads(lambda x, k: ops.conv2d(x, k, **kw), impl)
    assert rel(plain, want_y) > 1e-2


POOLS = {  # (input NHWC, kernel, stride, padding, ceil_mode): every pooling the families use, plus edge cases
    "squeezenet_ceil_odd": ((2, 13, 11, 5), 3, 2, 0, True),
    "squeezenet_ceil_even": ((2, 12, 14, 5), 3, 2, 0, True),
    "shufflenet_pad1": ((2, 9, 10, 5), 3, 2, 1, False),
    "pad1_ceil": ((2, 8, 9, 5), 3, 2, 1, True),
    "k2_s2": ((2, 7, 8, 5), 2, 2, 0, False),
    "s1_pad1": ((2, 6, 5, 5), 3, 1, 1, False),
}


@pytest.mark.parametrize("impl", ["xla", "cpu"])
@pytest.mark.parametrize("case", sorted(POOLS))
def test_pools_match_torch(case, impl, torch):
    """max/avg pooling equal torch.nn.functional's, forward and gradient. Inputs are ReLU'd integers, so
    windows have tied maxima: the max-pool gradient must go to the first maximum in scan order, as in torch."""
    shape, k, s, p, ceil = POOLS[case]
    rng = np.random.default_rng(0)
    x = np.maximum(rng.integers(-3, 4, shape), 0).astype(np.float32)
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    for name, fn, tfn in [
        ("max", lambda a: ops.max_pool2d(a, k, s, p, ceil), lambda a: torch.nn.functional.max_pool2d(a, k, s, p, ceil_mode=ceil)),
        ("avg", lambda a: ops.avg_pool2d(a, k, s, p, ceil), lambda a: torch.nn.functional.avg_pool2d(a, k, s, p, ceil_mode=ceil)),
    ]:
        tx.grad = None
        ty = tfn(tx)
        ct = rng.standard_normal(tuple(ty.shape)).astype(np.float32)
        ty.backward(torch.from_numpy(ct))
        use(impl)
        y, vjp = jax.vjp(jax.jit(fn), jnp.asarray(x))
        (dx,) = vjp(jnp.asarray(ct.transpose(0, 2, 3, 1)))
        use(None)
        np.testing.assert_allclose(np.asarray(y), ty.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6,
                                   err_msg=f"{name} forward")
        np.testing.assert_allclose(np.asarray(dx), tx.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6,
                                   err_msg=f"{name} gradient")


def _model_grads(name, impl, x, variables, **kwargs):
    import lightjax.models as lm

    use(impl)
    model = lm.create_model(name, drop_rate=0.0, **kwargs)

    def loss(params):
        out, upd = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                               mutable=["batch_stats"])
        return jnp.sum(out * jnp.arange(out.shape[-1], dtype=out.dtype) / out.shape[-1]), upd

    (val, upd), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    use(None)
    return val, g, upd


@pytest.mark.parametrize("name,size,kw", [("mobilenet_v1_025", 33, {}),
                                          ("shufflenet_v1_g3", 33, {"width": 0.5})])  # channel parts, per-group VJPs
def test_whole_model_gradients_float64(name, size, kw):
    """Train-mode loss, parameter gradients and BN statistics agree between formulations in float64."""
    import lightjax.models as lm

    if name not in lm.list_models():
        pytest.skip(f"{name} not registered yet")
    with jax.enable_x64(True):
        model = lm.create_model(name, drop_rate=0.0, num_classes=10, **kw)
        x = jax.random.normal(jax.random.key(0), (2, size, size, 3), jnp.float64)
        variables = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), random_variables(model, x, seed=1))
        v0, g0, u0 = _model_grads(name, "xla", x, variables, num_classes=10, **kw)
        v1, g1, u1 = _model_grads(name, "cpu", x, variables, num_classes=10, **kw)
    assert rel(v1, v0) < 1e-6  # the models cast logits to float32
    flat0, flat1 = jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)
    assert len(flat0) == len(flat1) > 10
    tol = 1e-9 if all(a.dtype == np.float64 for a in jax.tree_util.tree_leaves(u0)) else 1e-5
    num = sum(float(np.sum((np.asarray(a) - np.asarray(b)) ** 2)) for a, b in zip(flat1, flat0))
    den = sum(float(np.sum(np.asarray(b) ** 2)) for b in flat0)
    assert (num / den) ** 0.5 < tol
    for a, b in zip(jax.tree_util.tree_leaves(u1), jax.tree_util.tree_leaves(u0)):
        assert rel(a, b) < tol


def test_sharded_batch_spmd():
    """jit + grad with the batch sharded over a 2-device Mesh (NamedSharding) runs and matches one device."""
    code = textwrap.dedent(
        """
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        os.environ["LIGHTJAX_CONV_IMPL"] = "cpu"
        from lightjax import ops
        mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
        x = jax.random.normal(jax.random.key(0), (4, 9, 9, 6))
        kd = jax.random.normal(jax.random.key(1), (3, 3, 1, 6))
        kp = jax.random.normal(jax.random.key(2), (1, 1, 6, 9))
        kg = jax.random.normal(jax.random.key(3), (1, 1, 3, 9))
        def loss(x, kd, kp, kg):
            y = ops.conv2d(x, kd, stride=2, padding=1, groups=6)
            y = ops.channel_shuffle(ops.conv2d(y, kp), 3)
            y = ops.conv2d(y, kg, groups=3)
            return jnp.sum(y ** 2)
        f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
        ref = f(x, kd, kp, kg)
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        out = f(xs, kd, kp, kg)
        assert len(out[1][0].sharding.device_set) == 2
        for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(ref)):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max(), (a.shape, np.abs(a - b).max(), np.abs(b).max())
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_parameters_identical_whichever_path():
    """The formulation never changes the parameter tree (names, shapes, dtypes): checkpoints are shared."""
    import lightjax.models as lm

    model = lm.create_model("mobilenet_v1_025")  # depthwise, pointwise, dense stem: every conv kind
    x = jnp.zeros((1, 32, 32, 3))
    trees = []
    for impl in ("xla", "cpu"):
        use(impl)
        trees.append(jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False)))
    assert jax.tree_util.tree_structure(trees[0]) == jax.tree_util.tree_structure(trees[1])
    assert jax.tree_util.tree_leaves(trees[0]) == jax.tree_util.tree_leaves(trees[1])
