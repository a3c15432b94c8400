"""lightjax.export: jax.export artifacts with a symbolic batch, loadable with jax alone."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lightjax.models as lm
from lightjax import export
from parity import random_variables

FAMILIES = ("squeezenet", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3", "shufflenet_v1", "shufflenet_v2",
            "xception", "aligned_xception")
NAME = "squeezenet1_1"


def _init(model, size, key=0):
    """Random variables of the model's shapes (numpy-filled: no initialiser compile)."""
    return random_variables(model, jnp.zeros((1, size, size, 3)), seed=key)


def _close(a, b):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(float(np.abs(b).max()), 1e-3)
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * scale)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """squeezenet1_1 at its native 224 px, random weights (non-trivial logits), exported for CPU to a file."""
    model = lm.create_model(NAME)
    variables = _init(model, 64)
    path = str(tmp_path_factory.mktemp("export") / f"{NAME}.jaxexport")
    exp = export.export_to_file(NAME, variables, path)
    return model, variables, path, exp


def test_signature(artifact):
    _, _, path, exp = artifact
    assert str(exp.in_avals[0].shape) == "(b, 224, 224, 3)" and exp.in_avals[0].dtype == jnp.float32
    assert str(exp.out_avals[0].shape) == "(b, 1000)"
    assert exp.platforms == ("cpu",) and exp.fun_name == f"lightjax_{NAME}"
    # Weights are constants of the module: the file is at least as large as the float32 parameters.
    assert os.path.getsize(path) > 4 * 1_235_496


def test_loaded_artifact_matches_model(artifact):
    model, variables, path, _ = artifact
    loaded = export.load(path)
    x = jax.random.normal(jax.random.key(8), (8, 224, 224, 3))
    want = jax.jit(lambda x: model.apply(variables, x, train=False))(x)  # eval mode: rows are independent
    for batch in (1, 3, 8):
        got = loaded(x[:batch])
        assert got.shape == (batch, 1000)
        _close(got, want[:batch])


def test_wrong_input_clear_error(artifact):
    _, _, path, _ = artifact
    loaded = export.load(path)
    with pytest.raises(export.InputShapeError, match=r"lightjax_squeezenet1_1: expected an NHWC array of shape "
                                                     r"\(b, 224, 224, 3\) float32, got shape \(2, 3, 224, 224\)"
                                                     r".*NCHW"):
        loaded(np.zeros((2, 3, 224, 224), np.float32))
    with pytest.raises(export.InputShapeError, match=r"got shape \(2, 97, 97, 3\)"):
        loaded(np.zeros((2, 97, 97, 3), np.float32))
    with pytest.raises(export.InputShapeError, match=r"got rank 3"):
        loaded(np.zeros((224, 224, 3), np.float32))
    with pytest.raises(export.InputShapeError, match=r"got dtype int32"):
        loaded(np.zeros((1, 224, 224, 3), np.int32))
    with pytest.raises(ValueError, match="not a jax.export artifact"):
        export.load(b"definitely not a flatbuffer")


# Runs with `python -I` (no cwd, no PYTHONPATH, no user site) and an import hook refusing lightjax and flax: the
# artifact must need jax and numpy only.
_STANDALONE = textwrap.dedent(
    """
    import json, sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("lightjax", "flax"):
                raise ImportError(f"{name} must not be needed to run an exported artifact")
    sys.meta_path.insert(0, Block())
    import jax, numpy as np
    exp = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
    x = np.load(sys.argv[2])
    np.save(sys.argv[3], np.asarray(exp.call(x)))
    try:
        exp.call(np.zeros((2, 97, 97, 3), np.float32))
        err = None
    except ValueError as e:
        err = str(e)
    print(json.dumps({"error": err, "modules": sorted(m for m in sys.modules if m.split(".")[0] in ("lightjax", "flax"))}))
    """
)


def test_loads_with_jax_only(artifact, tmp_path):
    model, variables, path, _ = artifact
    x = np.asarray(jax.random.normal(jax.random.key(7), (3, 224, 224, 3)))
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "run.py"
    script.write_text(_STANDALONE)
    proc = subprocess.run([sys.executable, "-I", str(script), path, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["modules"] == []
    # jax's own error, what a user without lightjax sees: it names the axis, the expected and the given shape.
    assert "Shape mismatch for args[0].shape[1]" in report["error"]
    assert "(b, 224, 224, 3)" in report["error"] and "(2, 97, 97, 3)" in report["error"]
    _close(np.load(tmp_path / "y.npy"), jax.jit(model.apply)(variables, x))


def test_multi_platform_artifact():
    """Lowered for cpu, cuda and tpu in one artifact (no accelerator needed to export); runs on the CPU here."""
    model = lm.create_model(NAME, num_classes=7)
    variables = _init(model, 48, key=1)
    exp = export.export_model(NAME, variables, input_size=48, platforms="cpu,cuda,tpu", num_classes=7)
    assert exp.platforms == ("cpu", "cuda", "tpu")
    loaded = export.load(export.serialize(exp))
    x = jax.random.normal(jax.random.key(2), (2, 48, 48, 3))
    _close(loaded(x), jax.jit(model.apply)(variables, x))
    with pytest.raises(ValueError, match="unknown platform"):
        export.export_model(NAME, variables, platforms="gpu", num_classes=7)


def test_fixed_batch_and_bad_arguments():
    model = lm.create_model(NAME, num_classes=5)
    variables = _init(model, 32, key=1)
    exp = export.export_model(NAME, variables, batch=2, input_size=32, num_classes=5)
    assert exp.in_avals[0].shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="batch must be"):
        export.export_model(NAME, variables, batch="2 b", num_classes=5)
    with pytest.raises(ValueError, match=r"(?s)do not fit create_model\('squeezenet1_1'.*'num_classes': 1000.*"
                                         r"shape \['params'\]\['classifier_1'\]\['kernel'\]"):
        export.export_model(NAME, variables)  # num_classes=5 variables for the default 1000-class model


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_exports_with_symbolic_batch(family):
    """Shape polymorphism must survive every family's reshapes (channel shuffle, flatten, pooling)."""
    names = [n for n in lm.list_models() if lm.model_family(n) == family]
    if not names:
        pytest.skip(f"no {family} model registered yet")
    name = names[0]
    size = 32 if lm.model_info(name)["input_size"] <= 32 else 64
    model = lm.create_model(name, num_classes=10)
    x = jax.random.normal(jax.random.key(3), (3, size, size, 3))

    variables = random_variables(model, x[:1])
    want = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    exp = export.export_model(name, variables, input_size=size, num_classes=10)
    assert str(exp.in_avals[0].shape) == f"(b, {size}, {size}, 3)"
    _close(exp.call(x), want)


def test_cli_msgpack_and_torch(artifact, tmp_path, capsys):
    model, variables, _, _ = artifact
    from lightjax import convert

    ckpt = str(tmp_path / "w.msgpack")
    convert.save_flax(ckpt, variables)
    out = str(tmp_path / "m.jaxexport")
    assert export.main([NAME, ckpt, out, "--input-size", "64"]) == 0
    assert "(b, 64, 64, 3)" in capsys.readouterr().out
    x = jax.random.normal(jax.random.key(4), (2, 64, 64, 3))
    want = jax.jit(model.apply)(variables, x)
    _close(export.load(out)(x), want)
    # A checkpoint that does not fit gives a one-line error and exit status 2, not a traceback.
    assert export.main([NAME, ckpt, out, "--num-classes", "10"]) == 2
    assert "do not fit" in capsys.readouterr().err
    torch = pytest.importorskip("torch")
    pth = str(tmp_path / "w.pth")
    torch.save({k: torch.as_tensor(np.array(v)) for k, v in convert.to_torch(NAME, variables).items()}, pth)
    out2 = str(tmp_path / "m2.jaxexport")
    assert export.main([NAME, pth, out2, "--input-size", "64", "--batch", "2"]) == 0
    _close(export.load(out2)(x), want)


def test_tensorflow_saved_model(tmp_path):
    """Optional extra: only when TensorFlow is installed."""
    tf = pytest.importorskip("tensorflow")
    model = lm.create_model(NAME, num_classes=5)
    variables = _init(model, 64, key=1)
    out = export.to_tf_saved_model(NAME, variables, str(tmp_path / "saved"), input_size=64, num_classes=5)
    restored = tf.saved_model.load(out)
    x = np.asarray(jax.random.normal(jax.random.key(5), (3, 64, 64, 3)))
    got = restored.signatures["serving_default"](images=tf.constant(x))
    _close(list(got.values())[0].numpy(), model.apply(variables, x, train=False))
    n = export.to_tflite(NAME, variables, str(tmp_path / "m.tflite"), input_size=64, num_classes=5)
    assert n > 0
