"""The layers of the library point one way: ops <- models <- convert <- weights resolution <- CLIs.

Two checks: statically, no module imports (at any depth, function-level imports included) a module of a layer
above its own; and at run time, in a fresh interpreter, importing a module pulls in nothing above it, and no
library module imports ``train``, ``benchmarks``, torch or the optional export/hub packages when imported.
"""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(REPO, "lightjax")

#: Layer of each lightjax subpackage/module (lower number = lower layer). A module may import only modules
#: of its own layer or below. Modules not listed are CLIs / tools at the top.
LAYERS = {
    "lightjax.ops": 0,
    "lightjax.models": 1,
    "lightjax.convert": 2,
    "lightjax.summary": 2,
    "lightjax.nnx": 2,
    "lightjax.transforms": 0,
    "lightjax.labels": 0,
    "lightjax._atomic": 0,  # standard library only: the one atomic file write
    "lightjax.hub": 3,
    "lightjax._download": 3,
    "lightjax.pretrained": 3,
    "lightjax._pretrained_checks": 3,
}
TOP = 9
#: Never imported by library code at module import time (optional, heavy, or outside the library).
FORBIDDEN_AT_IMPORT = ("train", "benchmarks", "torch", "torchvision", "timm", "jax2onnx", "onnx", "onnxruntime",
                       "huggingface_hub", "tensorflow")
#: Never imported by library code at all (the library does not depend on the programs built on it).
NEVER = ("train", "benchmarks")
#: Adapter modules that exist to extend an optional package (registered only when that package is used):
#: they import it at module level, and nothing imports them at module level (checked below).
ADAPTERS = {"lightjax.export.onnx_plugins": "jax2onnx"}


def _layer(module: str) -> int:
    best, best_len = TOP, -1
    for prefix, layer in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
            best, best_len = layer, len(prefix)
    return best


def _library_modules():
    mods = ["lightjax"]
    for info in pkgutil.walk_packages([PKG], prefix="lightjax."):
        mods.append(info.name)
    return sorted(m for m in mods if not m.endswith("__main__"))


def _source(module: str) -> str:
    base = os.path.join(REPO, *module.split("."))
    return base + "/__init__.py" if os.path.isdir(base) else base + ".py"


def _imports(path: str, module: str):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            yield name, node.lineno
            for a in node.names:  # ``from lightjax import convert`` imports lightjax.convert
                yield f"{name}.{a.name}", node.lineno


def test_no_module_imports_a_layer_above_its_own():
    problems = []
    for module in _library_modules():
        path = _source(module)
        own = _layer(module)
        for name, line in _imports(path, module):
            root = name.split(".")[0]
            if root in NEVER:
                problems.append(f"{module} (line {line}) imports {name}: the library never imports {root}/")
            if root == "lightjax" and name.count(".") >= 1:
                target = ".".join(name.split(".")[:3])
                if _is_module(target) and _layer(target) > own:
                    problems.append(f"{module} (layer {own}, line {line}) imports {target} (layer {_layer(target)})")
    assert not problems, "\n".join(problems)


def _is_module(name: str) -> bool:
    base = os.path.join(REPO, *name.split("."))
    return os.path.isdir(base) or os.path.isfile(base + ".py")


def test_layer_table_is_not_empty_and_known():
    # A guard so that the static test cannot pass by looking at nothing.
    mods = _library_modules()
    assert {"lightjax.ops.conv", "lightjax.models.base", "lightjax.convert.core"} <= set(mods)
    for prefix in LAYERS:
        assert _is_module(prefix), f"LAYERS names {prefix}, which does not exist"


_PROBE = r"""
import importlib, json, sys
mod = sys.argv[1]
before = set(sys.modules)
importlib.import_module(mod)
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def _imported_by(module: str):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", _PROBE, module], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_importing_the_library_pulls_in_nothing_above_it():
    """One fresh interpreter imports every library module; none of them imports train/, benchmarks/, torch or
    the optional packages at import time, and ``lightjax.models`` alone imports nothing above the models."""
    code = _PROBE.replace("importlib.import_module(mod)", "[importlib.import_module(m) for m in mod.split(',')]")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    mods = [m for m in _library_modules() if m not in ADAPTERS]
    r = subprocess.run([sys.executable, "-c", code, ",".join(mods)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = json.loads(r.stdout.strip().splitlines()[-1])
    bad = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN_AT_IMPORT)
    assert not bad, f"importing the library loaded {bad[:10]}"
    assert not set(ADAPTERS) & set(loaded), "an optional-package adapter was imported at module import time"


@pytest.mark.parametrize("module,above", [
    ("lightjax.ops", ("lightjax.models", "lightjax.convert")),
    ("lightjax.models", ("lightjax.convert", "lightjax.pretrained", "lightjax.hub", "lightjax.export",
                         "lightjax.labels")),
    ("lightjax.convert", ("lightjax.pretrained", "lightjax.hub", "lightjax.export")),
])
def test_a_layer_alone_imports_nothing_above_it(module, above):
    loaded = _imported_by(module)
    bad = sorted(m for m in loaded if any(m == a or m.startswith(a + ".") for a in above))
    assert not bad, f"import {module} loaded {bad}"
    assert module in loaded or module.split(".")[0] in loaded
