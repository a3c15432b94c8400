"""Shared pytest set-up.

Tests that need torch / torchvision / timm call :func:`require` (or use the fixtures). They skip with a reason
when the package is missing, except under ``LIGHTJAX_REQUIRE_TORCH=1`` (set by CI), where a missing package
is a failure.
"""

from __future__ import annotations

import importlib
import os
import sys

# The suite's time is mostly XLA:CPU compiling small test graphs (a MobileNetV3 gradient: 14 s), not running
# them; LLVM's optimisation level 0 compiles ~25% faster and does not change floating-point semantics. Set
# before jax creates its backend; the training CLI tests pass the same level to their subprocesses.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import pytest  # noqa: E402

# tests/ holds the seed's PyTorch reference modules and the parity helpers.
sys.path.insert(0, os.path.dirname(__file__))
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True)
def _private_weights_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's weights cache (~/.cache/lightjax) or hub cache, or reaches a
    weights host: each test gets an empty cache of its own and offline hubs unless it sets its own."""
    root = tmp_path_factory.mktemp("lightjax_cache")
    monkeypatch.setenv("LIGHTJAX_CACHE", str(root / "lightjax"))
    monkeypatch.setenv("HF_HOME", str(root / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LIGHTJAX_WEIGHTS_MIRROR", raising=False)


def require(module: str):
    """Imports ``module`` or skips (fails under LIGHTJAX_REQUIRE_TORCH=1)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if os.environ.get("LIGHTJAX_REQUIRE_TORCH") == "1":
            pytest.fail(f"{module} is required (LIGHTJAX_REQUIRE_TORCH=1) but cannot be imported: {e}")
        pytest.skip(f"{module} not installed: {e}")


@pytest.fixture
def torch():
    t = require("torch")
    t.manual_seed(0)
    t.set_num_threads(2)
    return t


@pytest.fixture
def torchvision():
    require("torch")
    return require("torchvision")


@pytest.fixture
def timm():
    require("torch")
    return require("timm")
