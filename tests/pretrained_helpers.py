"""Helpers for the pretrained-weights tests: a torchvision model trained briefly on real data, real photographs.

Nothing here downloads: the digits ship with scikit-learn, the photos with scikit-learn / scikit-image.
"""

from __future__ import annotations

import hashlib
import io
from typing import Dict, List

import numpy as np

#: Input size of the digits model (the loopback tests register their tags at this crop).
SIZE = 64


def digits_batch(n: int, seed: int = 0, size: int = SIZE):
    """``n`` of scikit-learn's real 8x8 handwritten digits, upsampled to ``size`` px, 3 channels,
    ImageNet-normalised (NCHW float32), with their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(d.images), n, replace=False)
    img = d.images[idx] / 16.0  # (n, 8, 8) in [0, 1]
    img = np.kron(img, np.ones((size // 8, size // 8)))[:, None].repeat(3, axis=1)
    mean = np.array([0.485, 0.456, 0.406])[None, :, None, None]
    std = np.array([0.229, 0.224, 0.225])[None, :, None, None]
    return ((img - mean) / std).astype(np.float32), d.target[idx].astype(np.int64)


def train_on_digits(torch, torchvision, arch: str = "shufflenet_v2_x0_5", steps: int = 4, size: int = 32):
    """A torchvision classifier (``num_classes=10``) after a few SGD steps on real digits, in eval mode.

    Trained at ``size`` px (cheap on 2 cores) with BatchNorm momentum raised to 0.5 (torch keeps momentum out of
    the state_dict) so the running statistics move far from their defaults (0 / 1) in a few steps: default
    statistics hide BN bugs. ShuffleNetV2 x0.5 by default: after such a short run its logits on photographs
    are O(1) and differ per photo (MobileNetV3-Small's collapse to one constant answer, which would hide bugs).
    """
    torch.manual_seed(0)
    m = getattr(torchvision.models, arch)(num_classes=10)
    bns = [b for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    for b in bns:
        b.momentum = 0.5
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    x_all, y_all = digits_batch(16 * steps, seed=0, size=size)
    m.train()
    for step in range(steps):
        x, y = x_all[16 * step:16 * (step + 1)], y_all[16 * step:16 * (step + 1)]
        loss = torch.nn.functional.cross_entropy(m(torch.from_numpy(x)), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for b in bns:
        b.momentum = 0.1
    return m.eval()


def torch_bytes(torch, module) -> bytes:
    """``torch.save(module.state_dict())`` as bytes."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


def safetensors_bytes(state_dict: Dict) -> bytes:
    """A state_dict as .safetensors bytes (numpy: no torch needed to read it back)."""
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v))
                 for k, v in state_dict.items()})


def sha256_prefix(data: bytes, n: int = 8) -> str:
    return hashlib.sha256(data).hexdigest()[:n]


def photos() -> List[np.ndarray]:
    """Real photographs (HWC uint8) that packages ship: scikit-learn's two samples, scikit-image's cat/coffee
    when it is installed."""
    from sklearn.datasets import load_sample_image

    out = [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    try:
        from skimage import data

        out += [data.chelsea(), data.coffee(), data.astronaut()]
    except ImportError:
        pass
    return out


def tv_eval_batch(torchvision, images: List[np.ndarray], resize: int, crop: int) -> np.ndarray:
    """torchvision's own eval transform (Resize(shorter) -> CenterCrop -> ToTensor -> Normalize): NCHW float32."""
    from PIL import Image
    from torchvision import transforms as T

    tf = T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(),
                    T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    return np.stack([tf(Image.fromarray(im)).numpy() for im in images])
