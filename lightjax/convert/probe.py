"""Builds the PyTorch module a checkpoint came from, to compare logits after a conversion.

Only layouts with an installable PyTorch implementation (torchvision, timm) have a probe; the seed's
reference code lives in the test suite, not in the library. torch is imported lazily.
"""

from __future__ import annotations

from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

# lightjax name -> {layout: (package, constructor name, kwargs)}
TORCH_MODULES = {
    "squeezenet1_0": {"torchvision": ("torchvision", "squeezenet1_0", {})},
    "squeezenet1_1": {"torchvision": ("torchvision", "squeezenet1_1", {})},
    "mobilenet_v1_100": {"timm": ("timm", "mobilenetv1_100", {})},
    "mobilenet_v2_100": {"torchvision": ("torchvision", "mobilenet_v2", {"width_mult": 1.0}),
                         "timm": ("timm", "mobilenetv2_100", {})},
    "mobilenet_v2_050": {"torchvision": ("torchvision", "mobilenet_v2", {"width_mult": 0.5}),
                         "timm": ("timm", "mobilenetv2_050", {})},
    "mobilenet_v2_075": {"torchvision": ("torchvision", "mobilenet_v2", {"width_mult": 0.75}),
                         "timm": ("timm", "mobilenetv2_075", {})},
    "mobilenet_v2_140": {"torchvision": ("torchvision", "mobilenet_v2", {"width_mult": 1.4}),
                         "timm": ("timm", "mobilenetv2_140", {})},
    "mobilenet_v3_large_100": {"torchvision": ("torchvision", "mobilenet_v3_large", {})},
    "mobilenet_v3_small_100": {"torchvision": ("torchvision", "mobilenet_v3_small", {})},
    "shufflenet_v2_x0_5": {"torchvision": ("torchvision", "shufflenet_v2_x0_5", {})},
    "shufflenet_v2_x1_0": {"torchvision": ("torchvision", "shufflenet_v2_x1_0", {})},
    "shufflenet_v2_x1_5": {"torchvision": ("torchvision", "shufflenet_v2_x1_5", {})},
    "shufflenet_v2_x2_0": {"torchvision": ("torchvision", "shufflenet_v2_x2_0", {})},
    "xception": {"timm": ("timm", "legacy_xception", {})},
    "xception41": {"timm": ("timm", "xception41", {})},
    "xception65": {"timm": ("timm", "xception65", {})},
    "xception71": {"timm": ("timm", "xception71", {})},
}


def torch_module(model_name: str, layout: str, num_classes: Optional[int] = None):
    """The PyTorch module for ``model_name`` in ``layout``, randomly initialised; None if there is none."""
    spec = TORCH_MODULES.get(model_name, {}).get(layout.split("/")[-1])
    if spec is None:
        return None
    package, ctor, kwargs = spec
    kwargs = dict(kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if package == "torchvision":
        import torchvision

        return getattr(torchvision.models, ctor)(**kwargs)
    import timm

    return timm.create_model(ctor, pretrained=False, **kwargs)


def max_abs_diff(model_name: str, model, variables, state_dict, layout: str, size: int,
                 num_classes: Optional[int] = None) -> Optional[Tuple[float, float]]:
    """``(max |logits_torch - logits_jax|, max |logits_torch|)`` on a random probe batch, or None when torch or
    a PyTorch implementation of ``layout`` is unavailable."""
    try:
        import torch
    except ImportError:
        return None
    try:
        tm = torch_module(model_name, layout, num_classes)
    except ImportError:
        return None
    if tm is None:
        return None
    tm.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()}, strict=True)
    tm.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    with jax.default_matmul_precision("highest"):
        out = np.asarray(model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False))
    return float(np.abs(out - ref).max()), float(np.abs(ref).max())
