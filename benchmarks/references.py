"""The PyTorch reference module of each benchmarked lightjax model (same weights through ``lightjax.convert``).

torchvision and timm provide most of them; megvii's ShuffleNetV1 (github.com/megvii-model/ShuffleNet-Series)
is published nowhere on PyPI, so it comes from the repository's ``tests/seed_shufflenet.py`` (the copy the
parity tests check lightjax against). A model without a reference, or a reference that cannot be loaded, is an
error naming it: never a silent stand-in.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType
from typing import Any, Dict, Optional, Tuple

#: The repository's tests/ (benchmarks may import test helpers; the library may not).
TESTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")

#: lightjax name -> (torchvision constructor, its kwargs); convert layout "torchvision" where the keys need one.
_TORCHVISION: Dict[str, Tuple[str, Dict[str, Any], Optional[str]]] = {
    "squeezenet1_0": ("squeezenet1_0", {}, None),
    "squeezenet1_1": ("squeezenet1_1", {}, None),
    "mobilenet_v3_large_100": ("mobilenet_v3_large", {}, "torchvision"),
    "mobilenet_v3_small_100": ("mobilenet_v3_small", {}, "torchvision"),
}
#: lightjax name -> (timm name, lightjax kwargs, convert layout).
_TIMM: Dict[str, Tuple[str, Dict[str, Any], Optional[str]]] = {
    "xception41": ("xception41", {}, None),
    "xception65": ("xception65", {}, None),
    "xception71": ("xception71", {}, None),
    "xception": ("legacy_xception", {}, None),
}


def load_tests_module(name: str) -> ModuleType:
    """Imports ``tests/<name>.py`` of this repository under a private module name.

    Raises:
      FileNotFoundError: naming the path, when the file is not there (the benchmark runs from a source
        checkout; an installed wheel has no tests/).
    """
    path = os.path.join(TESTS_DIR, name + ".py")
    if not os.path.exists(path):
        raise FileNotFoundError(f"benchmark reference module {path} not found: run the benchmark from a source "
                                "checkout of lightjax (it loads the PyTorch reference from the repo's tests/)")
    spec = importlib.util.spec_from_file_location(f"_lightjax_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def megvii_shufflenet_v1(group: int, width: float = 1.0):
    """megvii's ShuffleNetV1 (``tests/seed_shufflenet.py``) with lightjax's channel table for ``group``/``width``.

    Its ``AvgPool2d(7)`` head is defined on 7x7 maps only (193-224 px); it is replaced by the global mean it
    equals there (no parameters either way), so that the benchmark also runs at other sizes (``--quick``,
    ``--size``).
    """
    import torch

    from lightjax.models import shufflenet_v1

    seed = load_tests_module("seed_shufflenet")
    stem, stages = shufflenet_v1.imagenet_channels(group, width)
    module = seed.ShuffleNetV1([-1, stem, *stages], group)
    module.globalpool = torch.nn.AdaptiveAvgPool2d(1)
    return module


def torch_reference(name: str) -> Tuple[Any, Optional[str], Dict[str, Any], str]:
    """The PyTorch counterpart of a lightjax model.

    Args:
      name: a registered lightjax model name.

    Returns:
      ``(torch module, convert layout, lightjax model kwargs, description)``: the module with random weights,
      the ``layout=`` to pass to ``lightjax.convert.from_torch``, the kwargs to build the lightjax model with
      (e.g. timm's MobileNetV1 uses ReLU6), and a description for the table's notes.

    Raises:
      KeyError: when no reference is known for ``name``.
    """
    import torchvision

    tv = torchvision.models
    if name in _TORCHVISION:
        ctor, kw, layout = _TORCHVISION[name]
        return getattr(tv, ctor)(**kw), layout, {}, f"torchvision {ctor}"
    if name.startswith("mobilenet_v2_"):
        w = int(name.rsplit("_", 1)[1]) / 100
        return tv.mobilenet_v2(width_mult=w), "torchvision", {}, f"torchvision mobilenet_v2({w})"
    if name.startswith("shufflenet_v2_"):
        return getattr(tv, name)(), None, {}, f"torchvision {name}"
    if name.startswith("mobilenet_v1_") or name in _TIMM:
        import timm

        if name in _TIMM:
            tn, kwargs, layout = _TIMM[name]
        else:
            tn, kwargs, layout = "mobilenetv1_" + name.rsplit("_", 1)[1], {"act": "relu6"}, "timm"
        return timm.create_model(tn), layout, kwargs, f"timm {tn}"
    if name.startswith("shufflenet_v1_g") and not name.endswith("_cifar"):
        group = int(name.rsplit("_g", 1)[1])
        return megvii_shufflenet_v1(group), "megvii", {}, "megvii ShuffleNetV1 (tests/seed_shufflenet.py)"
    raise KeyError(f"no PyTorch reference known for {name!r} (benchmarks/references.py); run it with --no-torch")
