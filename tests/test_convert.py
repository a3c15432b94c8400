"""lightjax.convert: file formats, state_dict wrappers, strictness, error messages and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightjax.models as lm
from lightjax import convert
from parity import randomize_

NAME = "squeezenet1_1"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tv_model(torch, torchvision):
    m = torchvision.models.squeezenet1_1()
    randomize_(m)
    return m.eval()


@pytest.fixture
def sd(tv_model):
    return {k: v.detach().clone() for k, v in tv_model.state_dict().items()}


def _logits(variables, x_nchw, **kw):
    model = lm.create_model(NAME, **kw)
    return np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1))))


def _torch_logits(torch, m, x):
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


def test_pth_file_and_load_model(tmp_path, torch, tv_model, sd):
    path = tmp_path / "squeezenet1_1.pth"
    torch.save(sd, path)
    x = np.random.default_rng(0).standard_normal((2, 3, 67, 67)).astype(np.float32)
    ref = _torch_logits(torch, tv_model, x)
    np.testing.assert_allclose(_logits(convert.from_torch(NAME, str(path)), x), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    model, variables = lm.load_model(NAME, str(path))
    out = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x.transpose(0, 2, 3, 1))))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module"])
def test_wrapped_state_dicts(wrap, sd):
    if wrap == "module":
        wrapped = {f"module.{k}": v for k, v in sd.items()}
    else:
        wrapped = {wrap: sd, "epoch": 3} if wrap == "state_dict" else {wrap: sd}
    if wrap == "state_dict":
        wrapped.pop("epoch")  # torch.load(weights_only) files may carry ints; a mapping of arrays is what we take
    v = convert.from_torch(NAME, wrapped)
    ref = convert.from_torch(NAME, sd)
    jax.tree_util.tree_map(np.testing.assert_array_equal, v, ref)


def test_safetensors_loads_without_torch(tmp_path, sd):
    from safetensors.numpy import save_file

    path = tmp_path / "m.safetensors"
    save_file({k: v.numpy() for k, v in sd.items()}, str(path))
    out = tmp_path / "out.npy"
    # A fresh interpreter in which importing torch fails.
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name == 'torch' or name.startswith('torch.'):\n"
        "        raise ImportError('torch blocked for this test')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "import numpy as np, jax\n"
        "from lightjax import convert\n"
        f"v = convert.from_torch({NAME!r}, {str(path)!r})\n"
        f"np.save({str(out)!r}, np.asarray(v['params']['classifier_1']['kernel']))\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=300)
    np.testing.assert_array_equal(np.load(out), sd["classifier.1.weight"].numpy().transpose(2, 3, 1, 0))


def test_all_problems_reported_at_once(sd):
    bad = dict(sd)
    bad.pop("features.3.squeeze.weight")
    bad["features.99.weight"] = bad["features.0.weight"]
    bad["features.4.expand3x3.weight"] = bad["features.4.expand3x3.weight"][:, :, :2, :2]
    with pytest.raises(convert.ConversionError) as e:
        convert.from_torch(NAME, bad)
    msg = str(e.value)
    assert "missing features.3.squeeze.weight (expected shape (16, 64, 1, 1))" in msg
    assert "unexpected features.99.weight" in msg
    assert "shape mismatch features.4.expand3x3.weight: expected (64, 16, 3, 3), got (64, 16, 2, 2)" in msg


def test_non_strict_replaces_only_the_head(sd, caplog):
    v, report = convert.from_torch(NAME, sd, num_classes=10, strict=False, return_report=True)
    assert report.head_reinitialised == ["classifier.1"]
    assert v["params"]["classifier_1"]["kernel"].shape == (1, 1, 512, 10)
    np.testing.assert_array_equal(v["params"]["features_0"]["kernel"], sd["features.0.weight"].numpy().transpose(2, 3, 1, 0))
    with pytest.raises(convert.ConversionError, match="classifier.1.weight"):
        convert.from_torch(NAME, sd, num_classes=10)  # strict by default
    body_missing = dict(sd)
    body_missing.pop("features.0.bias")
    with pytest.raises(convert.ConversionError, match="only lets the classifier differ"):
        convert.from_torch(NAME, body_missing, num_classes=10, strict=False)


def test_headless_model_drops_the_checkpoint_head(sd):
    v, report = convert.from_torch(NAME, sd, num_classes=0, strict=False, return_report=True)
    assert report.head_dropped == ["classifier.1"] and "classifier_1" not in v["params"]
    with pytest.raises(convert.ConversionError, match="unexpected classifier.1.weight"):
        convert.from_torch(NAME, sd, num_classes=0)


def test_unknown_layout_is_an_error(sd):
    renamed = {f"backbone.{k}": v for k, v in sd.items()}
    with pytest.raises(convert.ConversionError, match="match none of the known layouts"):
        convert.from_torch(NAME, renamed)


def test_bad_files(tmp_path, torch):
    good = tmp_path / "good.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(convert.CheckpointReadError, match="not a readable PyTorch checkpoint"):
        convert.from_torch(NAME, str(truncated))
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(convert.CheckpointReadError, match="not a readable PyTorch checkpoint"):
        convert.from_torch(NAME, str(text))
    other = tmp_path / "weights.h5"
    other.write_bytes(b"\x89HDF\r\n")
    with pytest.raises(convert.CheckpointReadError, match="unsupported checkpoint format"):
        convert.from_torch(NAME, str(other))
    with pytest.raises(convert.CheckpointReadError, match="not found"):
        convert.from_torch(NAME, str(tmp_path / "absent.pth"))
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00\x01garbage")
    with pytest.raises(convert.CheckpointReadError, match="safetensors"):
        convert.from_torch(NAME, str(bad_st))


class _Payload:  # a pickled Python object: torch.load(weights_only=True) must refuse it
    def __init__(self):
        self.x = 1


def test_pickled_objects_refused(tmp_path, torch):
    path = tmp_path / "evil.pth"
    torch.save({"obj": _Payload()}, path)
    with pytest.raises(convert.CheckpointReadError, match="weights_only"):
        convert.from_torch(NAME, str(path))


def test_not_a_state_dict(tmp_path, torch):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(convert.CheckpointReadError, match="not a state_dict"):
        convert.from_torch(NAME, str(path))


def test_to_torch_rejects_foreign_variables(sd):
    v = convert.from_torch(NAME, sd)
    v["params"]["features_0"]["kernel"] = v["params"]["features_0"]["kernel"][:, :, :, :3]
    with pytest.raises(convert.ConversionError, match="shape mismatch params/features_0/kernel"):
        convert.to_torch(NAME, v)


def test_cli_writes_msgpack_and_probes(tmp_path, torch, sd, capsys):
    from lightjax.convert.__main__ import main

    src = tmp_path / "sq.pth"
    torch.save(sd, src)
    dst = tmp_path / "sq.msgpack"
    assert main([NAME, str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert "layout: squeezenet/torchvision" in out and "keys mapped: 52" in out
    diff = float(out.split("probe input: ")[1].split()[0])
    assert diff < 1e-3
    model, v = lm.load_model(NAME, str(dst))
    ref = convert.from_torch(NAME, sd)
    jax.tree_util.tree_map(np.testing.assert_array_equal, v, ref)
    # A failing conversion exits non-zero with the reason, and leaves no output file.
    bad = tmp_path / "bad.pth"
    torch.save({"x": torch.zeros(1)}, bad)
    assert main([NAME, str(bad), str(tmp_path / "bad.msgpack")]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "bad.msgpack").exists()


def test_layout_detected_from_keys_mobilenet_v2(torch, torchvision, timm):
    """Both torchvision (features.N...) and timm (conv_stem, blocks.i.j...) state_dicts load."""
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    for tm in (torchvision.models.mobilenet_v2(), timm.create_model("mobilenetv2_100", pretrained=False)):
        randomize_(tm)
        tm.eval()
        v, report = convert.from_torch("mobilenet_v2_100", tm.state_dict(), return_report=True)
        ref = _torch_logits(torch, tm, x)
        out = np.asarray(jax.jit(lm.create_model("mobilenet_v2_100").apply)(v, jnp.asarray(x.transpose(0, 2, 3, 1))))
        np.testing.assert_allclose(out, ref, atol=1e-4 * np.abs(ref).max(), err_msg=report.layout)
