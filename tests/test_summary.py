"""lightjax.summary: the analytic MAC count (by hand and against published figures), XLA's cross-check, the CLI."""

import os
import re

import jax
import jax.numpy as jnp
import pytest
from jax import lax

import lightjax.models as lm
from lightjax import summary

#: One model per family is checked against its published MACs; a family without a registered model skips.
FAMILIES = ("squeezenet", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3", "shufflenet_v1", "shufflenet_v2",
            "xception", "aligned_xception")
#: Families with a published figure (the seed's aligned Xception is a DeepLab backbone without one).
PUBLISHED_FAMILIES = tuple(f for f in FAMILIES if f != "aligned_xception")
#: The reference table (params, MACs, top-1), copied from the shared REFERENCE.md into the repo so CI has it.
REFERENCE_MD = os.path.join(os.path.dirname(__file__), "data", "reference_figures.md")


def test_count_jaxpr_by_hand():
    """Conv (dense, grouped), dot, nested jit and scan, counted against numbers worked out by hand."""

    def f(x, k_dense, k_dw, w):
        y = lax.conv_general_dilated(x, k_dense, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = jax.jit(lambda a: lax.conv_general_dilated(a, k_dw, (1, 1), ((1, 1), (1, 1)),
                                                       dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                       feature_group_count=8))(y)
        z = y.mean(axis=(1, 2)) @ w                      # (2, 8) @ (8, 5)
        z, _ = lax.scan(lambda c, _: (c @ jnp.eye(5), None), z, None, length=3)
        return z

    args = (jnp.zeros((2, 16, 16, 3)), jnp.zeros((3, 3, 3, 8)), jnp.zeros((3, 3, 1, 8)), jnp.zeros((8, 5)))
    c = summary.count_jaxpr(jax.make_jaxpr(f)(*args))
    dense = 2 * 8 * 8 * 8 * (3 * 3 * 3)      # out elements (2, 8, 8, 8) x kh*kw*C_in
    depthwise = 2 * 8 * 8 * 8 * (3 * 3 * 1)  # groups = C: one input channel per output
    dots = 2 * 5 * 8 + 3 * (2 * 5 * 5)       # the head, then the scan body 3 times
    assert (c.conv_macs, c.dot_macs, c.macs) == (dense + depthwise, dots, dense + depthwise + dots)
    assert (c.num_convs, c.num_dots) == (2, 4)
    assert c.layer_output_bytes == 4 * (2 * 8 * 8 * 8 * 2 + 2 * 5 + 3 * 2 * 5)


def _reference_rows():
    rows = {}
    for line in open(REFERENCE_MD, encoding="utf-8"):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.match(r"^[\d.,]+M?$", cells[2]):
            rows[cells[0]] = cells
    return rows


def test_published_table_transcribes_reference_md():
    """Every row of REFERENCE.md's table is in PUBLISHED with the same params, MACs and top-1."""
    rows = _reference_rows()
    assert len(rows) == len(summary.PUBLISHED) == 16
    for p in summary.PUBLISHED:
        _, _, params, macs, top1 = rows[p.label]
        want_params = float(params[:-1]) * 1e6 if params.endswith("M") else int(params.replace(",", ""))
        assert p.params == want_params and p.params_exact == (not params.endswith("M")), p.label
        assert p.macs_g == float(macs) and p.top1 == top1, p.label


def _family_representative(family):
    names = [n for n in lm.list_models() if lm.model_family(n) == family]
    assert names, f"no {family} model is registered"
    published = [n for n in names if summary.published_for(n) is not None]
    assert published, f"{family}: registered {names} but none has a published figure"
    return published[0]


@pytest.mark.parametrize("family", PUBLISHED_FAMILIES)
def test_analytic_macs_and_params_match_published(family):
    name = _family_representative(family)
    s = summary.summarize(name, xla=False)
    pub = s.published
    assert abs(s.macs / (pub.macs_g * 1e9) - 1) < 0.02, (name, s.macs, pub.macs_g)
    if pub.params_exact:
        assert s.params == pub.params, name
    else:  # a rounded figure ("4.23M", "1.9M"): within 2%
        assert abs(s.params / pub.params - 1) < 0.02, (name, s.params, pub.params)


def test_published_for_names():
    assert summary.published_for("squeezenet1_0").label == "squeezenet1_0"
    for name in lm.list_models():
        row = summary.published_for(name)
        if row is not None:  # a row only ever describes one registered model
            assert [n for n in lm.list_models() if summary.published_for(n) is row] == [name]


@pytest.mark.parametrize("name", ["squeezenet1_1", "mobilenet_v1_025"])
def test_xla_cost_analysis_agrees_with_analytic(name):
    """XLA's flops/2 covers the conv/dense MACs plus a little elementwise work (BN, ReLU, pooling), minus the taps
    that fall in the zero padding, which XLA does not count."""
    if name not in lm.list_models():
        pytest.skip(f"{name} not registered")
    s = summary.summarize(name)
    assert 0.95 < s.xla_macs / s.macs < 1.10, (s.xla_macs, s.macs)
    assert s.xla_temp_bytes is not None and 0 < s.xla_temp_bytes < 64 * 2**20
    # The conv/dense outputs at batch 1 are at least the largest single layer output (squeezenet1_1: 111x111x64).
    assert s.layer_output_bytes > 4 * 64 * 55 * 55


def test_xla_flops_convention():
    """What the XLA column measures, on one 3x3 pad-1 conv over a 4x4 map: 2 flops per multiply-add, and only the
    taps inside the input (4 corners x 4 + 8 edges x 6 + 4 inner x 9 = 100 per channel pair), where the analytic
    (torchvision) convention counts all 16 x 9 = 144."""
    f = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    args = (jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 5)))
    flops = jax.jit(f).lower(*args).compile().cost_analysis()["flops"]
    assert flops == 2 * 100 * 2 * 5
    assert summary.count_jaxpr(jax.make_jaxpr(f)(*args)).macs == 144 * 2 * 5


def test_summary_is_per_batch():
    one = summary.summarize("squeezenet1_1", xla=False)
    two = summary.summarize("squeezenet1_1", xla=False, batch=2)
    assert two.macs == 2 * one.macs and two.params == one.params


def test_cli(capsys):
    assert summary.main(["squeezenet1_*", "--no-xla"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("| model | input | params")
    rows = [l for l in out.splitlines() if l.startswith("| squeezenet")]
    assert len(rows) == 2 and "1,235,496" in rows[1] and "58.18" in rows[1]
    with pytest.raises(SystemExit):
        summary.main(["no_such_model*"])
    assert "no registered model matches" in capsys.readouterr().err
