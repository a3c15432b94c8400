"""Weights download / cache / mirror / hub (lightjax.hub), offline: every file comes from a loopback server.

The checkpoint is a torchvision ShuffleNetV2 x0.5 trained for a few steps on scikit-learn's real digits (BN
statistics far from their defaults), saved with torch.save under a name carrying its true sha256 prefix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import types

import jax
import numpy as np
import pytest

from conftest import require
from pretrained_helpers import (SIZE, photos, safetensors_bytes, sha256_prefix, torch_bytes,
                                train_on_digits, tv_eval_batch)
from weights_server import WeightsServer, closed_port

from lightjax import hub
from lightjax import pretrained as lp

TAG = "shufflenet_v2_x0_5.test_digits"
RESIZE = 73
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def digits():
    torch, torchvision = require("torch"), require("torchvision")
    torch.set_num_threads(2)
    module = train_on_digits(torch, torchvision)
    data = torch_bytes(torch, module)
    sha = sha256_prefix(data)
    st = safetensors_bytes(module.state_dict())
    return types.SimpleNamespace(module=module, data=data, sha=sha, name=f"shufflenet_digits-{sha}.pth",
                                 st=st, st_sha=sha256_prefix(st), st_name=f"shufflenet_digits-{sha256_prefix(st)}.safetensors",
                                 torch=torch, torchvision=torchvision)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A private cache, hub home and no route to the real network for the hub client."""
    monkeypatch.setenv("LIGHTJAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LIGHTJAX_PROGRESS", "0")
    monkeypatch.delenv("LIGHTJAX_WEIGHTS_MIRROR", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("LIGHTJAX_OFFLINE", raising=False)
    return tmp_path


def _register(name: str, sha: str, **extra):
    # The public URL is never contacted: every test sets a loopback mirror (or a local file).
    kw = dict(url=f"https://weights.invalid/models/{name}", sha256=sha, num_classes=10, crop_size=SIZE,
              resize_size=RESIZE, layout="torchvision", source="test: torchvision shufflenet_v2_x0_5 on digits")
    kw.update(extra)
    return lp.register_pretrained(TAG, overwrite=True, **kw)


@pytest.fixture
def tag(digits):
    cfg = _register(digits.name, digits.sha)
    yield cfg
    lp.unregister_pretrained(TAG)


def _cache_files(root) -> list:
    """Files in the cache a later load could read (lock files excluded)."""
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(d, n), root) for n in names if not n.endswith(".lock")]
    return sorted(out)


def _same_tree(a, b) -> None:
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (p, x), (_, y) in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(p))


def test_mirror_download_once_then_cached_and_torchvision_logits(digits, tag, env, monkeypatch):
    with WeightsServer() as srv:
        srv.files["/m/" + digits.name] = digits.data
        monkeypatch.setenv("LIGHTJAX_WEIGHTS_MIRROR", srv.url + "/m/")
        model, variables = lp.load_model(TAG)
        assert srv.requests == [("GET", "/m/" + digits.name)]
        assert (env / "cache" / "weights" / digits.name).read_bytes() == digits.data

    # Real photographs through torchvision's own eval transform, logits against the torchvision module.
    x = tv_eval_batch(digits.torchvision, photos(), RESIZE, SIZE)
    with digits.torch.no_grad():
        ref = digits.module(digits.torch.from_numpy(x)).numpy()
    with jax.default_matmul_precision("highest"):
        out = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x.transpose(0, 2, 3, 1)))
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-4
    # The same top-1 label per photo, and the same ranking of the top 5 (a few training steps leave the
    # photos' top-1 mostly alike; the rankings below it still differ per photo).
    np.testing.assert_array_equal(out.argmax(-1), ref.argmax(-1))
    np.testing.assert_array_equal(np.argsort(-out, -1)[:, :5], np.argsort(-ref, -1)[:, :5])
    assert np.abs(ref).max() > 0.5 and np.ptp(ref, axis=0).max() > 0.05  # O(1) logits that depend on the photo

    # Second load: no server, no torch (the converted variables come from the cache).
    monkeypatch.setenv("LIGHTJAX_WEIGHTS_MIRROR", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setitem(sys.modules, "torch", None)
    model2, variables2 = lp.load_model(TAG)
    assert model2 == model
    _same_tree(variables2, variables)


@pytest.mark.parametrize("failure", ["hash_mismatch", "truncated", "404", "no_network", "offline"])
def test_failures_give_one_clear_error_and_leave_nothing(failure, digits, tag, env, monkeypatch):
    path = "/m/" + digits.name
    with WeightsServer() as srv:
        if failure == "hash_mismatch":
            srv.files[path] = digits.data[:-1] + bytes([digits.data[-1] ^ 1])
        elif failure == "truncated":
            srv.files[path] = digits.data
            srv.truncate.add(path)
        elif failure == "offline":  # the mirror works, but LIGHTJAX_OFFLINE forbids the network
            srv.files[path] = digits.data
            monkeypatch.setenv("LIGHTJAX_OFFLINE", "1")
        base = f"http://127.0.0.1:{closed_port()}/m" if failure == "no_network" else srv.url + "/m"
        monkeypatch.setenv("LIGHTJAX_WEIGHTS_MIRROR", base)
        with pytest.raises(hub.WeightsUnavailableError) as info:
            lp.load_model(TAG)
        msg = str(info.value)
        cache_path = str(env / "cache" / "weights" / digits.name)
        for needed in (TAG, f"{base}/{digits.name}", cache_path, "LIGHTJAX_WEIGHTS_MIRROR", digits.sha):
            assert needed in msg, f"{needed!r} not in:\n{msg}"
        reason = {"hash_mismatch": "sha256 mismatch", "truncated": "bytes", "404": "HTTP 404",
                  "no_network": "unreachable", "offline": "LIGHTJAX_OFFLINE is set"}[failure]
        assert reason in msg
        assert srv.count(path) == (0 if failure in ("no_network", "offline") else 1)
        e = info.value  # one error, no chain of urllib internals
        assert "Traceback" not in msg and e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)
        assert info.value.cache_path == cache_path and info.value.tag == TAG
        assert _cache_files(env / "cache") == []

        # The next call against a good mirror loads the real file.
        srv.files[path] = digits.data
        srv.truncate.clear()
        monkeypatch.delenv("LIGHTJAX_OFFLINE", raising=False)
        monkeypatch.setenv("LIGHTJAX_WEIGHTS_MIRROR", srv.url + "/m")
        lp.load_model(TAG)
        assert (env / "cache" / "weights" / digits.name).read_bytes() == digits.data


def test_corrupt_cache_files_are_detected_and_replaced(digits, tag, env, monkeypatch):
    with WeightsServer() as srv:
        srv.files["/" + digits.name] = digits.data
        monkeypatch.setenv("LIGHTJAX_WEIGHTS_MIRROR", srv.url)
        _, good = lp.load_model(TAG)
        weights = env / "cache" / "weights" / digits.name
        converted = hub.converted_path(tag)
        assert os.path.isfile(converted)

        # A corrupt converted file: detected by its digest, converted again from the (verified) cached weights.
        raw = bytearray(open(converted, "rb").read())
        raw[-5] ^= 0xFF
        open(converted, "wb").write(bytes(raw))
        _, again = lp.load_model(TAG)
        _same_tree(again, good)
        assert len(srv.requests) == 1

        # A corrupt cached checkpoint: detected by its sha256, fetched again.
        os.remove(converted)
        weights.write_bytes(digits.data[:1000])
        _, again = lp.load_model(TAG)
        _same_tree(again, good)
        assert len(srv.requests) == 2 and weights.read_bytes() == digits.data


def test_two_processes_loading_one_tag_both_succeed_with_one_download(digits, env, monkeypatch):
    # .safetensors source: the workers need no torch. The test holds the tag's lock until both workers are
    # about to load, so they really arrive together; then one downloads and converts, the other waits for it.
    fields = dict(url=f"https://weights.invalid/{digits.st_name}", sha256=digits.st_sha, num_classes=10,
                  crop_size=SIZE, resize_size=RESIZE, layout="torchvision")
    script = textwrap.dedent(f"""
        import hashlib, sys
        import numpy as np
        from lightjax import pretrained as lp
        lp.register_pretrained({TAG!r}, **{fields!r})
        print("START", flush=True)
        model, variables = lp.load_model({TAG!r})
        import jax
        h = hashlib.sha256()
        for leaf in jax.tree_util.tree_leaves(variables):
            h.update(np.asarray(leaf).tobytes())
        print("DIGEST", h.hexdigest())
    """)
    cfg = lp.register_pretrained(TAG, overwrite=True, **fields)
    try:
        with WeightsServer() as srv:
            srv.files["/" + digits.st_name] = digits.st
            srv.delay = 1.0
            penv = {**os.environ, "LIGHTJAX_WEIGHTS_MIRROR": srv.url, "JAX_PLATFORMS": "cpu"}
            with hub.lock(hub.converted_path(cfg)):
                procs = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=penv, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True) for _ in range(2)]
                for p in procs:
                    assert p.stdout.readline().strip() == "START", p.stderr.read()[-3000:]
                time.sleep(0.5)  # both are now inside load_model, waiting for the lock
            outs = [p.communicate(timeout=300) for p in procs]
            for p, (out, err) in zip(procs, outs):
                assert p.returncode == 0, err[-3000:]
            digests = {line.split()[1] for out, _ in outs for line in out.splitlines() if line.startswith("DIGEST")}
            assert len(digests) == 1
            assert srv.count("/" + digits.st_name) == 1
    finally:
        lp.unregister_pretrained(TAG)
    # One good copy: the checkpoint, its digest record, one converted file; no partial downloads.
    files = _cache_files(env / "cache")
    assert len(files) == 3 and files[0].startswith(f"converted/{TAG}-"), files
    assert files[1:] == [f"weights/{digits.st_name}", f"weights/{digits.st_name}.sha256"]


def test_hub_source_through_hf_endpoint_without_torch(digits, env):
    # A hub-style source (hf_hub_id + model.safetensors) served by a loopback HF_ENDPOINT; the worker cannot
    # import torch. Its variables must equal the converter's output on the same state_dict.
    from lightjax import convert

    expected = convert.from_torch("shufflenet_v2_x0_5", digits.module.state_dict(), num_classes=10)
    np.savez(env / "expected.npz", **{jax.tree_util.keystr(p): np.asarray(v)
                                      for p, v in jax.tree_util.tree_leaves_with_path(expected)})
    script = textwrap.dedent(f"""
        import os, sys
        for blocked in ("torch", "torchvision", "timm"):
            sys.modules[blocked] = None
        import jax, numpy as np
        from lightjax import pretrained as lp
        lp.register_pretrained({TAG!r}, hf_hub_id="lightjax-test/digits", num_classes=10, crop_size={SIZE},
                               resize_size={RESIZE}, layout="torchvision")
        exp = np.load({str(env / "expected.npz")!r})
        def check(variables):
            leaves = jax.tree_util.tree_leaves_with_path(variables)
            assert sorted(jax.tree_util.keystr(p) for p, _ in leaves) == sorted(exp.files)
            for p, v in leaves:
                np.testing.assert_array_equal(np.asarray(v), exp[jax.tree_util.keystr(p)])
        check(lp.load_model({TAG!r})[1])
        print("FIRST_DONE", flush=True)
        sys.stdin.readline()                      # the parent counts requests here
        check(lp.load_model({TAG!r})[1])          # from the converted cache
        from lightjax import hub
        os.remove(hub.converted_path(lp.pretrained_cfg({TAG!r})))
        os.environ["HF_HUB_OFFLINE"] = "1"        # from the hub cache, offline
        check(lp.load_model({TAG!r})[1])
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        print("ALL_DONE", flush=True)
    """)
    with WeightsServer() as srv:
        path = "/lightjax-test/digits/resolve/main/model.safetensors"
        srv.files[path] = digits.st
        penv = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "LIGHTJAX_WEIGHTS_MIRROR")}
        penv.update(HF_ENDPOINT=srv.url, JAX_PLATFORMS="cpu", HF_HUB_DISABLE_TELEMETRY="1")
        p = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, env=penv, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = p.stdout.readline()
        if "FIRST_DONE" not in line:
            p.kill()
            pytest.fail(f"worker failed: {line}{p.stderr.read()[-3000:]}")
        first = list(srv.requests)
        assert srv.count(path) == 1 and all(q.endswith("model.safetensors") for _, q in first), first
        out, err = p.communicate("\n", timeout=300)
        assert p.returncode == 0 and "ALL_DONE" in out, err[-3000:]
        assert srv.requests == first  # the second and third loads made no request
    assert os.path.isdir(env / "hf")  # the hub client kept its own cache under HF_HOME


def test_local_file_source_and_directory_mirrors(digits, env, monkeypatch, tmp_path):
    # A local ``file=`` entry; then a mirror that is a plain directory, and one given as file://.
    f = tmp_path / "own.safetensors"
    f.write_bytes(digits.st)
    lp.register_pretrained(TAG, overwrite=True, file=str(f), num_classes=10, crop_size=SIZE, resize_size=RESIZE)
    try:
        _, from_file = lp.load_model(TAG)
        assert not os.path.exists(env / "cache" / "weights")  # used in place, not copied

        mirror = tmp_path / "mirror"
        mirror.mkdir()
        (mirror / digits.name).write_bytes(digits.data)
        _register(digits.name, digits.sha)
        for value in (str(mirror), mirror.as_uri()):
            for p in _cache_files(env / "cache"):
                os.remove(env / "cache" / p)
            monkeypatch.setenv("LIGHTJAX_WEIGHTS_MIRROR", value)
            _, from_mirror = lp.load_model(TAG)
            _same_tree(from_mirror, from_file)
            assert (env / "cache" / "weights" / digits.name).read_bytes() == digits.data

        # A missing local file is the same clear error.
        lp.register_pretrained(TAG, overwrite=True, file=str(tmp_path / "nope.pth"), num_classes=10, crop_size=SIZE,
                               resize_size=RESIZE)
        with pytest.raises(hub.WeightsUnavailableError, match="nope.pth"):
            lp.load_model(TAG)
    finally:
        lp.unregister_pretrained(TAG)


def test_hand_placed_file_is_used_without_network(digits, tag, env, monkeypatch):
    # The error message's instructions work: a file placed at the printed path loads with no mirror reachable.
    monkeypatch.setenv("LIGHTJAX_WEIGHTS_MIRROR", f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(hub.WeightsUnavailableError) as info:
        lp.load_model(TAG)
    os.makedirs(os.path.dirname(info.value.cache_path), exist_ok=True)
    with open(info.value.cache_path, "wb") as f:
        f.write(digits.data)
    lp.load_model(TAG)
    assert json.dumps(_cache_files(env / "cache")).count("converted/") == 1


def test_prefilled_hub_cache_offline_and_a_corrupt_blob(digits, env, monkeypatch):
    # huggingface_hub's cache layout under HF_HOME (set after import: read at call time), HF_HUB_OFFLINE=1, no
    # server at all. A blob whose content no longer matches its sha256 name is reported, not loaded.
    import hashlib

    sha = hashlib.sha256(digits.st).hexdigest()
    repo = env / "hf" / "hub" / "models--lightjax-test--digits"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / sha).write_bytes(digits.st)
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snap.mkdir(parents=True)
    os.symlink(os.path.join("..", "..", "blobs", sha), snap / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(snap.name)
    lp.register_pretrained(TAG, overwrite=True, hf_hub_id="lightjax-test/digits", num_classes=10, crop_size=SIZE,
                           resize_size=RESIZE)
    try:
        monkeypatch.setitem(sys.modules, "torch", None)  # a .safetensors source needs no torch
        _, variables = lp.load_model(TAG)
        assert variables["params"]["fc"]["kernel"].shape == (1024, 10)

        os.remove(hub.converted_path(lp.pretrained_cfg(TAG)))
        (repo / "blobs" / sha).write_bytes(digits.st[:-10] + b"0123456789")
        with pytest.raises(hub.WeightsUnavailableError, match="corrupt") as info:
            lp.load_model(TAG)
        assert "lightjax-test/digits/resolve/main/model.safetensors" in str(info.value)
        assert not os.listdir(env / "cache" / "converted") or all(
            f.endswith(".lock") for f in os.listdir(env / "cache" / "converted"))
    finally:
        lp.unregister_pretrained(TAG)
