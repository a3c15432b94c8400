"""ONNX export (lightjax.export.to_onnx): every registered model in onnxruntime equals lightjax's forward, and
the torch-exported graph of its torchvision/timm counterpart on the same weights.

One export per model (module-level cache), reused for batch 1, 3 and 8 (dynamic batch axis), for the torch
comparison and for the graph checks. Sizes: one model per family at its native size, another at an odd size
(compared with the default CPU formulation), the rest small (compared with the "xla" formulation: same
values, tested equal in test_ops.py, and 2-3x faster for XLA:CPU to compile). Weights: random, with random
BatchNorm statistics whose variances lie in [0.75, 1.75) (E[1/var] ~ 1: activations keep their scale through
depth, logits O(1)); the torchvision default of [0.5, 1.5) compounds to ReLU6-saturated MobileNets whose
logits cancel, and float32 rounding alone then differs by ~1e-5 between lightjax's own formulations.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightjax.models as lm
from conftest import require
from lightjax import export, ops
from parity import randomize_, random_variables

TOL = 1e-5
BATCHES = (1, 3, 8)
#: ONNX operators the exported graphs may contain (what runtimes implement natively).
NATIVE_OPS = {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Gemm", "MatMul", "Relu", "Clip", "HardSwish",
              "HardSigmoid", "Mul", "Add", "Concat", "Split", "Slice", "Reshape", "Transpose", "Flatten"}
SHUFFLE_PERM = [0, 2, 1, 3, 4]

# One row per registered model: input size, NCHW input, create_model kwargs, reference formulation of the
# lightjax forward ("default": the backend's, i.e. the CPU formulation here). Native size: one model per
# family; odd size: another one.
CASES: Dict[str, Dict[str, Any]] = {
    "squeezenet1_1": dict(size=224, nchw=True),
    "squeezenet1_0": dict(size=67, nchw=True, ref="default"),
    "mobilenet_v1_100": dict(size=224, nchw=True),
    "mobilenet_v1_075": dict(size=64),
    "mobilenet_v1_050": dict(size=61, nchw=True, ref="default"),
    "mobilenet_v1_025": dict(size=64, nchw=True, kwargs=dict(num_classes=0)),
    "mobilenet_v2_100": dict(size=224, nchw=True),
    "mobilenet_v2_140": dict(size=64, nchw=True),
    "mobilenet_v2_075": dict(size=67, nchw=True, ref="default"),
    "mobilenet_v2_050": dict(size=64, nchw=True, kwargs=dict(features_only=True)),
    "mobilenet_v3_large_100": dict(size=224, nchw=True),
    "mobilenet_v3_small_100": dict(size=71, nchw=True, ref="default"),
    "shufflenet_v1_g3": dict(size=224),
    "shufflenet_v1_g1": dict(size=64),
    "shufflenet_v1_g2": dict(size=67, ref="default"),
    "shufflenet_v1_g4": dict(size=64, kwargs=dict(num_classes=10)),
    "shufflenet_v1_g8": dict(size=64, kwargs=dict(in_chans=1)),
    "shufflenet_v1_g2_cifar": dict(size=32),
    "shufflenet_v1_g3_cifar": dict(size=32, nchw=True),
    "shufflenet_v2_x1_0": dict(size=224, nchw=True),
    "shufflenet_v2_x0_5": dict(size=65, nchw=True, ref="default"),
    "shufflenet_v2_x1_5": dict(size=64, nchw=True),
    "shufflenet_v2_x2_0": dict(size=64, kwargs=dict(features_only=True)),
    "xception": dict(size=299, nchw=True),
    "xception41": dict(size=71, nchw=True, ref="default"),
    "xception65": dict(size=64, nchw=True),
    "xception71": dict(size=64, nchw=True, kwargs=dict(num_classes=10)),
    "aligned_xception": dict(size=49, ref="default"),
}


def _timm_v1(timm, width: float, **kw):
    if width == 1.0:
        return timm.create_model("mobilenetv1_100", **kw)
    from timm.models.efficientnet import _gen_mobilenet_v1

    return _gen_mobilenet_v1(f"mobilenetv1_{round(width * 100):03d}", width, **kw)


def has_counterpart(name: str, kwargs: Dict[str, Any]) -> bool:
    """Whether torchvision/timm build the same network for these create_model kwargs."""
    return (name.startswith(("squeezenet", "mobilenet", "shufflenet_v2", "xception"))
            and not kwargs.get("features_only") and kwargs.get("in_chans", 3) == 3)


def torch_counterpart(name: str, kwargs: Dict[str, Any]) -> Optional[Tuple[Any, Optional[str], Dict[str, Any]]]:
    """``(torch module, convert layout, lightjax kwargs)`` of the torchvision/timm counterpart, or None."""
    if not has_counterpart(name, kwargs):
        return None
    nc = kwargs.get("num_classes", 1000)
    if name.startswith(("squeezenet", "mobilenet_v2", "mobilenet_v3", "shufflenet_v2")):
        tv = require("torchvision").models
        if name.startswith("mobilenet_v2_"):
            return tv.mobilenet_v2(width_mult=int(name[-3:]) / 100, num_classes=nc), "torchvision", {}
        ctor = {"mobilenet_v3_large_100": "mobilenet_v3_large", "mobilenet_v3_small_100": "mobilenet_v3_small"}
        return getattr(tv, ctor.get(name, name))(num_classes=nc), "torchvision" if "v3" in name else None, {}
    if name.startswith("mobilenet_v1_") or name.startswith("xception"):
        timm = require("timm")
        if name.startswith("mobilenet_v1_"):
            return _timm_v1(timm, int(name[-3:]) / 100, num_classes=nc), "timm", {"act": "relu6"}
        return timm.create_model("legacy_xception" if name == "xception" else name, num_classes=nc), None, {}
    return None


def condition_bn_(module, seed: int) -> None:
    """The recipe of conditioned_variables on a torch module: He-normal (fan-in) conv/linear weights (torch's
    default init shrinks the signal ~2.4x in variance per layer, so that BatchNorm offsets alone decide the
    logits), random BatchNorm affine and means (randomize_), running variances in [0.75, 1.75)."""
    import torch

    randomize_(module, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_var.copy_(0.75 + torch.rand(m.num_features, generator=g))
    module.eval()


def conditioned_variables(model, size: int, in_chans: int, seed: int = 0):
    """random_variables with running variances in [0.75, 1.75) (see the module docstring)."""
    v = random_variables(model, jnp.zeros((1, size, size, in_chans)), seed=seed)
    rng = np.random.default_rng(seed + 1)
    return jax.tree_util.tree_map_with_path(
        lambda p, a: jnp.asarray(0.75 + rng.random(a.shape), a.dtype)
        if p[0].key == "batch_stats" and p[-1].key == "var" else a, v)


_EXPORTS: Dict[str, Dict[str, Any]] = {}


def exported(name: str, tmp_dir: str) -> Dict[str, Any]:
    """The model of ``CASES[name]``, its weights (from the torch counterpart when there is one) and its ONNX
    file, exported once per session."""
    if name in _EXPORTS:
        return _EXPORTS[name]
    case = CASES[name]
    kwargs = dict(case.get("kwargs", {}))
    counterpart = torch_counterpart(name, kwargs)
    module = None
    if counterpart is not None:
        from lightjax import convert

        module, layout, extra = counterpart
        condition_bn_(module, seed=len(name))
        kwargs.update(extra)
        sd = {k: v.detach().clone() for k, v in module.state_dict().items()}
        variables = convert.from_torch(name, sd, layout=layout, **kwargs)
    else:
        model = lm.create_model(name, **kwargs)
        variables = conditioned_variables(model, case["size"], kwargs.get("in_chans", 3), seed=len(name))
    path = os.path.join(tmp_dir, f"{name}.onnx")
    info = export.to_onnx(name, variables, path, input_size=case["size"], nchw_input=case.get("nchw", False),
                          **kwargs)
    _EXPORTS[name] = dict(info=info, variables=variables, kwargs=kwargs, module=module, case=case)
    return _EXPORTS[name]


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    require("onnxruntime")
    require("jax2onnx")
    return str(tmp_path_factory.mktemp("onnx"))


_SESSIONS: Dict[str, Any] = {}


def _session(path: str):
    """An onnxruntime CPU session with default options (what a deployment gets), one per file."""
    if path not in _SESSIONS:
        ort = require("onnxruntime")
        _SESSIONS[path] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return _SESSIONS[path]


def _images(n: int, size: int, in_chans: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, size, size, in_chans)).astype(np.float32)


def _rel(got, want) -> float:
    want = np.asarray(want, np.float64)
    return float(np.abs(np.asarray(got, np.float64) - want).max() / max(np.abs(want).max(), 1e-30))


def _check_graph(info: export.OnnxExport, nchw: bool) -> None:
    import onnx

    model = onnx.load(info.path)
    ops_used = {n.op_type for n in model.graph.node}
    assert ops_used <= NATIVE_OPS, f"non-native operators {ops_used - NATIVE_OPS}"
    assert {o.domain for o in model.opset_import} == {""}, "runtime-private opset imports left in the file"
    assert info.input_shape[0] == "B" and all(s[0] == "B" for s in info.output_shapes)
    # Transposes: the channel shuffles' own (0, 2, 1, 3, 4); in NHWC, the input's and each NHWC feature map
    # output's (onnxruntime leaves a map that is both an output and the next layer's input transposed twice);
    # every Conv's pair cancels.
    perms = [list(a.ints) for n in model.graph.node if n.op_type == "Transpose" for a in n.attribute]
    others = [p for p in perms if p != SHUFFLE_PERM]
    maps = sum(len(s) == 4 for s in info.output_shapes)
    assert len(others) <= (0 if nchw else 1 + 2 * maps), f"transposes left: {others}"
    for n in model.graph.node:
        if n.op_type == "MaxPool":
            attrs = {a.name: a for a in n.attribute}
            assert len(attrs["kernel_shape"].ints) == 2 and "pads" in attrs, n


# ----------------------------------------------------------------------------------------------------------
# Every registered model.
# ----------------------------------------------------------------------------------------------------------
def test_cases_cover_every_model():
    assert sorted(CASES) == lm.list_models()
    for family in {lm.model_family(n) for n in CASES}:
        members = [n for n in CASES if lm.model_family(n) == family]
        assert any(CASES[n]["size"] == lm.model_info(n)["input_size"] or CASES[n]["size"] % 2 for n in members)
        assert any(CASES[n].get("ref") == "default" for n in members), family


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_matches_lightjax(name, onnx_dir):
    """batch 1, 3, 8 of one file (dynamic batch axis) == lightjax's jitted forward on the same weights; and,
    for a model with a torchvision/timm counterpart, == the torch-exported graph of that module."""
    if has_counterpart(name, CASES[name].get("kwargs", {})):
        require("torch")
    e = exported(name, onnx_dir)
    info, case, kwargs = e["info"], e["case"], e["kwargs"]
    nchw = case.get("nchw", False)
    _check_graph(info, nchw)
    in_chans = kwargs.get("in_chans", 3)
    x = _images(max(BATCHES), case["size"], in_chans)
    model = lm.create_model(name, **kwargs)
    with ops.formulation(None if case.get("ref") == "default" else "xla"):
        want = jax.tree_util.tree_leaves(jax.jit(lambda v, x: model.apply(v, x, train=False))(e["variables"], x))
    sess = _session(info.path)
    for b in BATCHES:
        feed = x[:b].transpose(0, 3, 1, 2) if nchw else x[:b]
        got = sess.run(None, {info.input_name: feed})
        assert len(got) == len(want)
        for g, w in zip(got, want):
            w = np.asarray(w)[:b]
            w = w.transpose(0, 3, 1, 2) if nchw and w.ndim == 4 else w
            assert g.shape == w.shape
            err = _rel(g, w)
            assert err < TOL, f"{name} batch {b}: max |onnx - lightjax| / max |lightjax| = {err:.2e}"
    # Logits O(1), and their input-dependent part (std over the batch) far above TOL: a wrong layer would show.
    scale = max(float(np.abs(w).max()) for w in want)
    assert 0.1 < scale < 1e6, scale  # feature maps of the headless aligned_xception reach ~1e5
    assert max(float(np.asarray(w).std(axis=0).mean()) for w in want) > 20 * TOL * scale
    if e["module"] is not None:
        check_against_torch_graph(name, e, onnx_dir)


def _torch_onnx(module, size: int, path: str) -> None:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 3, size, size),), path, dynamo=False, opset_version=17,
                          input_names=["images"], dynamic_axes={"images": {0: "B"}})


def check_against_torch_graph(name: str, e: Dict[str, Any], onnx_dir: str) -> None:
    """The lightjax graph and torch.onnx.export's graph of the counterpart, same weights, same inputs (part of
    test_onnx_matches_lightjax, so that under xdist the model is exported once, on one worker)."""
    import torch

    size = e["case"]["size"]
    tpath = os.path.join(onnx_dir, f"{name}_torch.onnx")
    _torch_onnx(e["module"], size, tpath)
    x = _images(3, size, 3, seed=1).transpose(0, 3, 1, 2)
    feed = x if e["case"].get("nchw") else x.transpose(0, 2, 3, 1)
    ours = _session(e["info"].path).run(None, {e["info"].input_name: feed})[0]
    theirs = _session(tpath).run(None, {"images": x})[0]
    with torch.no_grad():
        eager = e["module"](torch.from_numpy(x)).numpy()
    assert ours.shape == theirs.shape
    err = _rel(ours, theirs)
    assert err < TOL, f"{name}: max |lightjax graph - torch graph| / max |torch graph| = {err:.2e}"
    assert _rel(theirs, eager) < TOL  # the torch graph itself is its module


# ----------------------------------------------------------------------------------------------------------
# The primitives' lowerings, against torch's own operators (independent reference), odd sizes, ceil mode.
# ----------------------------------------------------------------------------------------------------------
POOLS = [  # kernel, stride, padding, ceil_mode, (avg) count_include_pad, H, W
    (3, 2, 0, True, True, 13, 11), (3, 2, 1, False, True, 17, 16), (3, 2, 1, True, False, 16, 15),
    (2, 2, 0, True, True, 7, 9), (3, 1, 1, False, False, 9, 8), (3, 2, 1, True, True, 14, 13),
]


@pytest.mark.parametrize("k,s,p,ceil,cip,h,w", POOLS)
def test_pool_lowerings_match_torch(k, s, p, ceil, cip, h, w, onnx_dir, torch):
    F = torch.nn.functional
    x = np.random.default_rng(3).standard_normal((2, h, w, 5)).astype(np.float32)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    def both(x):
        return [ops.max_pool2d(x, k, s, p, ceil_mode=ceil), ops.avg_pool2d(x, k, s, p, ceil_mode=ceil,
                                                                             count_include_pad=cip)]

    proto = export.function_to_onnx(both, ("B", h, w, 5))
    assert {n.op_type for n in proto.graph.node} >= {"MaxPool", "AveragePool"}
    path = os.path.join(onnx_dir, f"pool_{k}{s}{p}{ceil}{cip}{h}{w}.onnx")
    open(path, "wb").write(proto.SerializeToString())
    got = _session(path).run(None, {"images": x})
    want = [F.max_pool2d(xt, k, s, p, ceil_mode=ceil), F.avg_pool2d(xt, k, s, p, ceil_mode=ceil, count_include_pad=cip)]
    for g, t in zip(got, want):
        t = t.numpy().transpose(0, 2, 3, 1)
        assert g.shape == t.shape
        np.testing.assert_allclose(g, t, rtol=1e-6, atol=1e-6)


def test_shuffle_gap_and_hard_activation_lowerings_match_torch(onnx_dir, torch):
    F = torch.nn.functional
    x = _images(3, 5, 12, seed=4) * 4  # hard activations: values beyond +-3 saturate

    def fn(x):
        return [ops.channel_shuffle(x, 3), ops.global_avg_pool(x, keepdims=True), ops.global_avg_pool(x),
                ops.hard_swish(x), ops.hard_sigmoid(x)]

    proto = export.function_to_onnx(fn, ("B", 5, 5, 12))
    types = {n.op_type for n in proto.graph.node}
    assert {"GlobalAveragePool", "HardSigmoid", "Reshape"} <= types and "ReduceMean" not in types
    path = os.path.join(onnx_dir, "misc.onnx")
    open(path, "wb").write(proto.SerializeToString())
    got = _session(path).run(None, {"images": x})
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)  # noqa: E731
    want = [nhwc(torch.nn.ChannelShuffle(3)(xt)), nhwc(F.adaptive_avg_pool2d(xt, 1)), xt.mean((2, 3)).numpy(),
            nhwc(F.hardswish(xt)), nhwc(F.hardsigmoid(xt))]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_export_primitives_equal_xla_formulation():
    """lightjax.ops.export: eager, jit, vmap and a symbolic batch give the "xla" formulation's values; the
    pools' gradients too (the primitives' JVPs)."""
    from lightjax.ops import export as prims

    x = jnp.asarray(_images(2, 13, 6, seed=5))
    cases = [
        (lambda x: ops.max_pool2d(x, 3, 2, 1, ceil_mode=True), prims.MAX_POOL, True),
        (lambda x: ops.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), prims.AVG_POOL, True),
        (lambda x: ops.avg_pool2d(x, 2, 2, 0, ceil_mode=True), prims.AVG_POOL, False),
        (lambda x: ops.global_avg_pool(x, keepdims=True), prims.GLOBAL_AVG_POOL, False),
        (lambda x: ops.channel_shuffle(x, 2), prims.CHANNEL_SHUFFLE, False),
        (ops.hard_swish, prims.HARD_SWISH, True), (ops.hard_sigmoid, prims.HARD_SIGMOID, False),
    ]
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("b, 13, 13, 6"), jnp.float32)
    xs = jnp.stack([x, 2 * x], 1)
    for fn, prim, grad in cases:
        loss = lambda x: (fn(x) ** 2).sum()  # noqa: E731
        with ops.formulation("xla"):
            want = fn(x)
            want_vmap = jax.vmap(fn, in_axes=1, out_axes=1)(xs)
            want_grad = jax.grad(loss)(x) if grad else None
        with ops.formulation("export"):
            assert prim in str(jax.make_jaxpr(fn)(x)), prim
            np.testing.assert_array_equal(fn(x), want)  # eager: the primitive's impl
            np.testing.assert_array_equal(jax.vmap(fn, in_axes=1, out_axes=1)(xs), want_vmap)
            exp = jax.export.export(jax.jit(fn))(spec)  # jit lowering with a symbolic batch
            if grad:
                np.testing.assert_allclose(jax.grad(loss)(x), want_grad, rtol=1e-6, atol=1e-6)
        assert str(exp.out_avals[0].shape).startswith("(b,")
        np.testing.assert_array_equal(exp.call(x), want)


# ----------------------------------------------------------------------------------------------------------
# Metadata, CLI, errors.
# ----------------------------------------------------------------------------------------------------------
NAME = "shufflenet_v1_g1"  # NHWC, 64 px, random weights: the model of the metadata / error / CLI tests


def test_metadata_without_and_with_preprocessing(onnx_dir):
    e = exported(NAME, onnx_dir)
    meta = export.read_metadata(e["info"].path)
    assert meta["model_name"] == NAME and meta["input_layout"] == "NHWC"
    assert meta["input_shape"] == ["B", 64, 64, 3] and meta["num_classes"] == 1000
    assert meta["preprocessing_mean"] == "unknown" and meta["class_names"] == "unknown"
    assert meta["preprocessing"].startswith("unknown")
    import lightjax

    assert meta["lightjax_version"] == lightjax.__version__
    # The same weights with the eval transform and class names of a tag (no download: metadata only).
    from lightjax import labels, pretrained

    cfg = pretrained.pretrained_cfg(pretrained.list_pretrained("mobilenet_v2_100.*")[0])
    path = os.path.join(onnx_dir, "tagged.onnx")
    export.to_onnx(NAME, e["variables"], path, input_size=64, pretrained=cfg)
    meta = export.read_metadata(path)
    assert meta["pretrained_tag"] == cfg.tag and meta["source"] == cfg.source
    assert meta["preprocessing_mean"] == list(cfg.mean) and meta["preprocessing_std"] == list(cfg.std)
    assert meta["preprocessing_interpolation"] == cfg.interpolation
    assert meta["preprocessing_crop_size"] == cfg.crop_size and meta["preprocessing_resize_shorter"] == cfg.resize_shorter
    assert meta["class_names"] == labels.imagenet1k_classes()
    # Caller-given preprocessing and labels; labels of the wrong length are refused.
    export.to_onnx(NAME, e["variables"], path, input_size=64,
                          preprocessing=dict(mean=(0.5,) * 3, std=(0.25,) * 3, interpolation="bicubic",
                                             crop_size=64, resize_shorter=73), labels=[f"c{i}" for i in range(1000)])
    meta = export.read_metadata(path)
    assert meta["preprocessing_std"] == [0.25] * 3 and meta["class_names"][999] == "c999"
    with pytest.raises(export.OnnxExportError, match="labels has 3 names but the model outputs 1000 classes"):
        export.to_onnx(NAME, e["variables"], path, input_size=64, labels=["a", "b", "c"])


def test_errors_name_the_problem_and_leave_no_file(onnx_dir):
    e = exported(NAME, onnx_dir)
    path = os.path.join(onnx_dir, "kept.onnx")
    with open(path, "wb") as f:
        f.write(b"previous good file")
    before = set(os.listdir(onnx_dir))
    v = e["variables"]
    with pytest.raises(export.OnnxExportError, match=rf"(?s)do not fit create_model\('{NAME}'.*"
                                                     r"shape \['params'\]\['classifier_0'\]\['kernel'\]"):
        export.to_onnx(NAME, v, path, input_size=64, num_classes=10)
    bad = {**v, "params": {k: p for k, p in v["params"].items() if k != "classifier_0"}}
    with pytest.raises(export.OnnxExportError, match=r"missing \['params'\]\['classifier_0'\]\['kernel'\]"):
        export.to_onnx(NAME, bad, path, input_size=64)
    extra = {**v, "params": {**v["params"], "stray": {"kernel": jnp.zeros((3,))}}}
    with pytest.raises(export.OnnxExportError, match=r"unexpected \['params'\]\['stray'\]"):
        export.to_onnx(NAME, extra, path, input_size=64)
    for kw, msg in [(dict(batch="2 b"), "batch='2 b' must be an axis name"), (dict(batch=0), "batch=0"),
                    (dict(opset=12), "opset=12: lightjax graphs need opset >= 14"),
                    (dict(opset=99), "opset=99 is newer than the installed onnx"),
                    (dict(input_size=(64, 64, 3)), "input_size"),
                    (dict(preprocessing={"mean": (0.5,) * 3, "colour": 1}), r"unknown field\(s\) \['colour'\]")]:
        with pytest.raises(export.OnnxExportError, match=msg):
            export.to_onnx(NAME, v, path, **{"input_size": 64, **kw})
    # bfloat16 computation: onnxruntime has no bfloat16 Conv on the CPU; the error names the node and op.
    with pytest.raises(export.OnnxExportError, match=r"onnxruntime rejects the exported graph.*Conv"):
        export.to_onnx(NAME, v, path, input_size=64, dtype=jnp.bfloat16)
    assert open(path, "rb").read() == b"previous good file"
    assert set(os.listdir(onnx_dir)) == before, "a failed export left files behind"


def test_cli_msgpack_and_pretrained_tag(onnx_dir, capsys, tmp_path, monkeypatch):
    from lightjax import convert, pretrained

    e = exported(NAME, onnx_dir)
    ckpt = str(tmp_path / "w.msgpack")
    convert.save_flax(ckpt, e["variables"])
    out = str(tmp_path / "m.onnx")
    assert export.main([NAME, ckpt, out, "--input-size", "64", "--nchw", "--check"]) == 0
    printed = capsys.readouterr().out
    assert "input images ('B', 3, 64, 64) NCHW float32 -> logits ('B', 1000)" in printed, printed
    assert float(printed.rsplit("=", 1)[1]) < TOL  # --check: onnxruntime vs lightjax on random images
    x = _images(2, 64, 3)
    want = _session(e["info"].path).run(None, {"images": x})[0]
    np.testing.assert_allclose(_session(out).run(None, {"images": x.transpose(0, 3, 1, 2)})[0], want,
                               rtol=0, atol=TOL * np.abs(want).max())
    # A pretrained tag (registered to a local PyTorch file): --format with another suffix, and the tag's
    # eval transform and class names in the metadata.
    from safetensors.numpy import save_file

    pth = str(tmp_path / "w.safetensors")
    save_file({k: np.ascontiguousarray(v) for k, v in convert.to_torch(NAME, e["variables"]).items()}, pth)
    tag = f"{NAME}.onnx_test"
    monkeypatch.setenv("LIGHTJAX_CACHE", str(tmp_path / "cache"))
    pretrained.register_pretrained(tag, file=pth, crop_size=64, resize_size=73, interpolation="bicubic",
                                   source="tests/test_onnx.py", overwrite=True)
    try:
        out2 = str(tmp_path / "m.bin")
        assert export.main([NAME, tag, out2, "--format", "onnx", "--input-size", "64"]) == 0
    finally:
        pretrained.unregister_pretrained(tag)
    meta = export.read_metadata(out2)
    assert meta["pretrained_tag"] == tag and meta["preprocessing_interpolation"] == "bicubic"
    assert meta["preprocessing_resize_shorter"] == 73 and len(meta["class_names"]) == 1000
    np.testing.assert_allclose(_session(out2).run(None, {"images": x})[0], want, rtol=0,
                               atol=TOL * np.abs(want).max())
    # One-line errors, exit status 2.
    for argv, msg in [([NAME, ckpt, str(tmp_path / "m.xyz")], "cannot tell the format"),
                      ([NAME, ckpt, str(tmp_path / "m.jaxexport"), "--nchw"], "--nchw"),
                      ([NAME, "nope.tag", out], "neither a file nor a pretrained tag"),
                      ([NAME, ckpt, out, "--num-classes", "10", "--input-size", "64"], "do not fit")]:
        assert export.main(argv) == 2
        assert msg in capsys.readouterr().err


def test_import_needs_no_onnx_packages_and_leaves_jax2onnx_as_it_was(onnx_dir):
    code = ("import sys, lightjax.export, lightjax.models, lightjax.ops.export; "
            "print([m for m in sys.modules if m.split('.')[0] in ('jax2onnx', 'onnx', 'onnxruntime', 'onnx_ir')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    exported(NAME, onnx_dir)
    from jax2onnx.converter import ir_optimizations as iro
    from jax2onnx.plugins import plugin_system as ps

    assert ps._already_imported_plugins is False  # a user's own jax2onnx.to_onnx still imports every plugin
    assert "remove_redundant_transpose_pairs" in [p.name for p in iro._OPTIMIZER_PASSES]


def test_readme_onnx_example_runs_as_written(onnx_dir, torch, tmp_path, monkeypatch):
    """README.md's ONNX block, as written, in a directory holding a torchvision SqueezeNet 1.1 file under the
    published name (random weights and BatchNorm statistics) and cat.jpg (scikit-image's chelsea): the label
    it prints is torchvision's top-1 through its own transform, and the file's logits equal the module's."""
    import contextlib
    import io
    import re

    skimage_data = pytest.importorskip("skimage.data")
    tv = require("torchvision")
    from PIL import Image

    text = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    section = text[text.index("<!-- onnx:begin -->"):text.index("<!-- onnx:end -->")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    ckpt = re.search(r'convert\.from_torch\("squeezenet1_1", "([^"]+)"\)', code).group(1)
    module = tv.models.squeezenet1_1()
    condition_bn_(module, seed=7)
    monkeypatch.chdir(tmp_path)
    torch.save(module.state_dict(), ckpt)
    Image.fromarray(skimage_data.chelsea()).save("cat.jpg")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    weights = tv.models.SqueezeNet1_1_Weights.IMAGENET1K_V1
    xt = weights.transforms()(Image.open("cat.jpg").convert("RGB"))[None]
    with torch.no_grad():
        want = module(xt).numpy()
    assert out.getvalue().strip() == weights.meta["categories"][int(want.argmax())]
    got = _session(str(tmp_path / "squeezenet1_1.onnx")).run(None, {"images": xt.numpy()})[0]
    assert _rel(got, want) < TOL
    meta = export.read_metadata("squeezenet1_1.onnx")
    assert meta["pretrained_tag"] == "squeezenet1_1.tv_in1k" and meta["preprocessing_resize_shorter"] == 256
