"""ShuffleNet v1: parity with the seed's CIFAR code and megvii's official ImageNet code; paper / megvii figures.

References (tests/seed_shufflenet.py): the seed's ``ShuffleNetG2`` / ``ShuffleNetG3`` and megvii's
``ShuffleNetV1`` (github.com/megvii-model/ShuffleNet-Series). Complexity figures: paper Table 1 (1.0x, 224 px)
and megvii's README (params and FLOPs of the published g=3 / g=8 models). FLOPs there are multiply-adds (MACs)
of the convolutions and the classifier, which is what :func:`_torch_macs` counts.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightjax.models as lm
from lightjax import convert
from lightjax.models import ops
from lightjax.models import shufflenet_v1 as sv
from parity import check_parity, max_rel_err, randomize_, torch_to_np

#: Paper Table 1, complexity (MFLOPs = MACs) of ShuffleNet 1x at 224 px per group count.
PAPER_MFLOPS = {1: 143, 2: 140, 3: 137, 4: 133, 8: 137}
#: megvii README: (params in M, MFLOPs) per (group, size).
MEGVII_README = {
    (3, 0.5): (0.7, 38), (3, 1.0): (1.9, 138), (3, 1.5): (3.4, 292), (3, 2.0): (5.4, 524),
    (8, 0.5): (1.0, 40), (8, 1.0): (2.4, 138), (8, 1.5): (4.3, 290), (8, 2.0): (6.5, 522),
}


def _n_params(model, size: int, in_chans: int = 3) -> int:
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, in_chans)), train=False))
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(v["params"]))


def _torch_macs(module, size: int) -> int:
    """Analytic multiply-adds of every Conv2d / Linear, from the shapes of a forward pass at ``size``.

    Runs on a shape-only copy (``meta`` device): no arithmetic, only the output shapes the hooks read.
    """
    import copy

    import torch

    module = copy.deepcopy(module).to("meta")
    total = [0]

    def hook(m, inputs, out):
        if isinstance(m, torch.nn.Conv2d):
            total[0] += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, torch.nn.Linear):
            total[0] += m.in_features * m.out_features

    for m in module.modules():
        m.register_forward_hook(hook)
    with torch.no_grad():
        module.eval()(torch.zeros(1, 3, size, size, device="meta"))
    return total[0]


def _megvii(group: int, width: float = 1.0, adaptive_pool: bool = False):
    """megvii's ShuffleNetV1 with lightjax's channels (== megvii's own tables for g=3/8, checked below).

    ``adaptive_pool`` swaps megvii's ``AvgPool2d(7)`` (defined on 7x7 maps only, i.e. 193-224 px) for the global
    mean it equals there, so that the body can be compared at small sizes too.
    """
    import torch
    import seed_shufflenet as ss

    stem, stages = sv.imagenet_channels(group, width)
    tm = ss.ShuffleNetV1([-1, stem, *stages], group)
    if adaptive_pool:
        tm.globalpool = torch.nn.AdaptiveAvgPool2d(1)
    return tm


# ----------------------------------------------------------------------------------------------------------
# CIFAR variants == the seed's code
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,ctor,sizes,train", [
    ("shufflenet_v1_g3_cifar", "ShuffleNetG3", (32, 31), True),  # 31: odd, still a 4x4 final map (seed head global)
    ("shufflenet_v1_g2_cifar", "ShuffleNetG2", (32,), False),  # eval + round trip (the train step is checked on g3)
])
def test_parity_seed(name, ctor, sizes, train, torch):
    import seed_shufflenet as ss

    check_parity(name, getattr(ss, ctor)(), sizes=sizes, train=train)


@pytest.mark.parametrize("name,ctor", [("shufflenet_v1_g2_cifar", "ShuffleNetG2"),
                                       ("shufflenet_v1_g3_cifar", "ShuffleNetG3")])
def test_param_count_seed(name, ctor, torch):
    import seed_shufflenet as ss

    ref = sum(p.numel() for p in getattr(ss, ctor)().parameters())  # g2: 887,582; g3: 862,768
    assert _n_params(lm.create_model(name), 32) == ref


def test_seed_head_off_native_size(torch):
    """At 35 px the final map is 5x5: the body still matches the seed, whose ``avg_pool2d(4)`` then averages the
    top-left 4x4 window only; lightjax averages the whole map (documented choice)."""
    import seed_shufflenet as ss

    tm = ss.ShuffleNetG3()
    randomize_(tm)
    tm.eval()
    variables = convert.from_torch("shufflenet_v1_g3_cifar", tm.state_dict())
    x = np.random.default_rng(0).standard_normal((2, 3, 35, 35)).astype(np.float32)
    seen = {}
    tm.layer3.register_forward_hook(lambda m, i, o: seen.setdefault("layer3", o))
    with torch.no_grad():
        ref_logits = tm(torch.from_numpy(x)).numpy()
    feats_model = lm.create_model("shufflenet_v1_g3_cifar", features_only=True, out_indices=(3,))
    (feat,) = jax.jit(lambda v, x: feats_model.apply(v, x))(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
    ref_feat = torch_to_np(seen["layer3"])
    assert feat.shape == ref_feat.shape == (2, 5, 5, 960)
    assert max_rel_err(np.asarray(feat), ref_feat) < 1e-4
    w, b = np.asarray(variables["params"]["linear"]["kernel"]), np.asarray(variables["params"]["linear"]["bias"])
    seed_head = np.asarray(feat)[:, :4, :4].mean(axis=(1, 2)) @ w + b
    assert max_rel_err(seed_head, ref_logits) < 1e-4
    global_head = np.asarray(feat).mean(axis=(1, 2)) @ w + b
    assert max_rel_err(global_head, ref_logits) > 1e-3  # the two heads really differ here


def test_cifar_in_chans_num_classes():
    # The training program: shufflenet_v1_g3_cifar on 32x32 grey digits, 10 classes.
    model = lm.create_model("shufflenet_v1_g3_cifar", in_chans=1, num_classes=10)
    x = jnp.zeros((2, 32, 32, 1))
    out, v = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, train=False))
    assert out.shape == (2, 10) and out.dtype == jnp.float32
    assert v["params"]["conv1"]["kernel"].shape == (1, 1, 1, 24)
    pooled = lm.create_model("shufflenet_v1_g3_cifar", num_classes=0)
    out = jax.eval_shape(lambda: pooled.init_with_output(jax.random.key(0), jnp.zeros((2, 32, 32, 3)))[0])
    assert out.shape == (2, 960)


# ----------------------------------------------------------------------------------------------------------
# ImageNet variants == megvii's official code
# ----------------------------------------------------------------------------------------------------------
def test_parity_megvii_native(torch):
    # megvii's module unchanged (AvgPool2d(7) head) at its native 224 px: eval, train step, round trip.
    check_parity("shufflenet_v1_g3", _megvii(3), sizes=(224,))


def test_parity_megvii_g8_half_width(torch):
    # g=8 at 0.5x: stem rounded up to 16 (megvii's table), 8-group shuffle; odd size 65 (final map 3x3).
    check_parity("shufflenet_v1_g8", _megvii(8, 0.5, adaptive_pool=True), sizes=(65,), train=False,
                 model_kwargs={"width": 0.5})


def test_shuffle_order_field(torch):
    """``shuffle_order="seed"`` is the seed/torchvision permutation, megvii's is its inverse (checked on one unit
    against megvii's block with the seed's ``ShuffleBlock`` swapped in); the megvii key table refuses a model built
    with the other order (its weights would load and compute something else)."""
    import seed_shufflenet as ss
    from lightjax.convert.core import torch_to_flax_array

    sd = _megvii(3, 0.5).state_dict()
    with pytest.raises(convert.ConversionError, match="shuffle_order"):
        convert.from_torch("shufflenet_v1_g3", sd, width=0.5, shuffle_order="seed")

    c, g = 120, 3
    tb = ss.ShuffleV1Block(c, c, group=g, first_group=False, mid_channels=c // 4, ksize=3, stride=1)
    randomize_(tb)
    tb.eval()
    variables = {"params": {}, "batch_stats": {}}
    for name, m in tb.named_modules():
        flax_name = name.replace(".", "_")
        if isinstance(m, torch.nn.Conv2d):
            variables["params"][flax_name] = {"kernel": torch_to_flax_array(m.weight.detach().numpy(), "conv")}
        elif isinstance(m, torch.nn.BatchNorm2d):
            variables["params"][flax_name] = {"scale": m.weight.detach().numpy(), "bias": m.bias.detach().numpy()}
            variables["batch_stats"][flax_name] = {"mean": m.running_mean.numpy(), "var": m.running_var.numpy()}
    x = np.random.default_rng(1).standard_normal((2, c, 6, 6)).astype(np.float32)
    xj = jnp.asarray(x.transpose(0, 2, 3, 1))
    unit = sv.Unit(c, c, c // 4, 1, False)
    # The unit returns channel parts (one per group on CPU, see ops.conv2d_parts): read as their concatenation.
    outs = {order: np.asarray(ops.concat_parts(sv.ShuffleV1Block(unit, g, order).apply(variables, xj)))
            for order in ("megvii", "seed")}
    with torch.no_grad():
        megvii_ref = torch_to_np(tb(torch.from_numpy(x)))
        tb.__dict__["channel_shuffle"] = ss.ShuffleBlock(g)  # instance attribute shadows the method
        seed_ref = torch_to_np(tb(torch.from_numpy(x)))
    assert max_rel_err(outs["megvii"], megvii_ref) < 1e-5
    assert max_rel_err(outs["seed"], seed_ref) < 1e-5
    assert max_rel_err(outs["seed"], megvii_ref) > 1e-2  # the order matters


def test_megvii_shuffle_is_the_inverse(torch):
    import seed_shufflenet as ss

    c, g = 12, 3
    x = np.arange(2 * c * 2 * 2, dtype=np.float32).reshape(2, c, 2, 2)
    block = ss.ShuffleV1Block(c, c, group=g, first_group=False, mid_channels=c, ksize=3, stride=1)
    megvii = torch_to_np(block.channel_shuffle(torch.from_numpy(x)))
    seed = torch_to_np(ss.ShuffleBlock(g)(torch.from_numpy(x)))
    xj = jnp.asarray(x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(np.asarray(ops.channel_shuffle(xj, c // g)), megvii)
    np.testing.assert_array_equal(np.asarray(ops.channel_shuffle(xj, g)), seed)
    np.testing.assert_array_equal(np.asarray(ops.channel_shuffle(ops.channel_shuffle(xj, g), c // g)), np.asarray(xj))


@pytest.mark.parametrize("g", [1, 2, 3, 4, 8])
def test_paper_table1(g, torch):
    """1.0x: params == megvii's module; MACs within 3% of the paper's Table 1; params of g=3/8 vs megvii's README.

    Measured (params, MACs at 224): g1 1,530,936 / 143.1M; g2 1,732,848 / 140.8M; g3 1,864,728 / 137.5M;
    g4 1,967,344 / 134.3M; g8 2,433,768 / 138.4M.
    """
    tm = _megvii(g)
    n = _n_params(lm.create_model(f"shufflenet_v1_g{g}"), 64)
    assert n == sum(p.numel() for p in tm.parameters())
    macs = _torch_macs(tm, 224)
    assert abs(macs / 1e6 - PAPER_MFLOPS[g]) / PAPER_MFLOPS[g] < 0.03, macs
    if (g, 1.0) in MEGVII_README:
        assert abs(n / 1e6 - MEGVII_README[g, 1.0][0]) / MEGVII_README[g, 1.0][0] < 0.03, n


@pytest.mark.parametrize("g,width", sorted(MEGVII_README))
def test_megvii_sizes(g, width, torch):
    """The width rule reproduces megvii's hard-coded channel tables; params and MACs match its README."""
    import seed_shufflenet as ss

    stem, stages = sv.imagenet_channels(g, width)
    assert [-1, stem, *stages] == ss.MEGVII_STAGE_OUT_CHANNELS[g][f"{width}x"]
    tm = _megvii(g, width)
    n = sum(p.numel() for p in tm.parameters())
    if width != 1.0:  # 1.0x: the lightjax count is checked in test_paper_table1
        assert _n_params(lm.create_model(f"shufflenet_v1_g{g}", width=width), 64) == n
    ref_params, ref_mflops = MEGVII_README[g, width]
    assert abs(n / 1e6 - ref_params) / ref_params < 0.03, n
    assert abs(_torch_macs(tm, 224) / 1e6 - ref_mflops) / ref_mflops < 0.03


@pytest.mark.parametrize("g,width", [(2, 0.5), (4, 1.5)])
def test_other_widths_build(g, width, torch):
    # Widths megvii does not publish for g=1/2/4: channels rounded to multiples of 4g; same code as megvii's.
    tm = _megvii(g, width)
    assert _n_params(lm.create_model(f"shufflenet_v1_g{g}", width=width), 64) == sum(p.numel() for p in tm.parameters())


# ----------------------------------------------------------------------------------------------------------
# Feature levels and errors
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,size,spatial", [
    ("shufflenet_v1_g3", 224, [112, 56, 28, 14, 7]),
    ("shufflenet_v1_g8", 224, [112, 56, 28, 14, 7]),
    ("shufflenet_v1_g3_cifar", 32, [32, 16, 8, 4]),
    ("shufflenet_v1_g2_cifar", 32, [32, 16, 8, 4]),
])
def test_feature_levels(name, size, spatial):
    model = lm.create_model(name, features_only=True)
    info = model.feature_info
    shapes = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, size, size, 3)))[0])
    assert [s.shape[1] for s in shapes] == spatial
    assert [f["stride"] for f in info] == [size // s for s in spatial]
    assert [s.shape[-1] for s in shapes] == [f["channels"] for f in info]


def test_errors():
    x = jnp.zeros((1, 64, 64, 3))
    with pytest.raises(ValueError, match="width must be one of"):
        jax.eval_shape(lambda: lm.create_model("shufflenet_v1_g3", width=0.75).init(jax.random.key(0), x))
    with pytest.raises(ValueError, match="shuffle_order"):
        jax.eval_shape(lambda: lm.create_model("shufflenet_v1_g3", shuffle_order="torch").init(jax.random.key(0), x))
    with pytest.raises(ValueError, match="groups must be one of"):
        sv.ShuffleNetV1(groups=5).feature_info
    with pytest.raises(ValueError, match="groups must be one of"):
        sv.ShuffleNetV1Cifar(groups=8).feature_info
    with pytest.raises(TypeError, match="groups"):
        lm.create_model("shufflenet_v1_g3", groups=8)
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        lm.create_model("shufflenet_v1_g3_cifar").init(jax.random.key(0), jnp.zeros((1, 3, 32, 32)))
