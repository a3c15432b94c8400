"""Parity helpers: a PyTorch module and a lightjax model on the same weights must agree.

``check_parity`` runs the checks every port must pass (issue: port PyTorch checkpoints exactly):
eval-mode outputs at several input sizes, train-mode outputs and updated BatchNorm running statistics after
one step, and the state_dict round trip ``to_torch(from_torch(sd)) == sd`` loading back with ``strict=True``.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import lightjax.models as lm
from lightjax import convert


def randomize_(module, seed: int = 0) -> None:
    """Random weights and random (non-default) BatchNorm running statistics; default stats hide BN bugs."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in module.named_modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                if m.weight is not None:
                    m.weight.copy_(1.0 + 0.2 * torch.randn(n, generator=g))
                    m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def random_variables(model, x, seed: int = 0) -> Dict:
    """Variables with the shapes ``model.init`` would give, filled by numpy instead of the model's initialisers.

    Compiling a model's init costs XLA:CPU 5-15 s per variant (one RNG kernel per parameter plus the forward);
    tests that only need *some* well-scaled weights use this instead (``jax.eval_shape`` traces, nothing
    compiles). Kernels are He-normal over ``prod(shape[:-1])`` (conv HWIO and Linear ``(in, out)`` alike),
    BatchNorm affine and running statistics are random around their defaults, so BN bugs are not hidden.
    """
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        col, name = path[0].key, path[-1].key
        shape, dtype = leaf.shape, leaf.dtype
        if col == "batch_stats":
            v = 0.2 * rng.standard_normal(shape) if name == "mean" else 0.5 + rng.random(shape)
        elif name == "scale":
            v = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name == "bias":
            v = 0.1 * rng.standard_normal(shape)
        else:
            v = rng.standard_normal(shape) * np.sqrt(2.0 / max(int(np.prod(shape[:-1])), 1))
        return jnp.asarray(v, dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def disable_dropout_(module) -> None:
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _as_list(out):
    if isinstance(out, (list, tuple)):
        return list(out)
    return [out]


def torch_to_np(t) -> np.ndarray:
    a = t.detach().cpu().numpy()
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def max_rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b| (relative to the largest reference magnitude)."""
    scale = max(float(np.abs(b).max()), 1e-12)
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max()) / scale


def check_parity(
    name: str,
    torch_module,
    *,
    sizes: Sequence[int] = (64, 97),
    batch: int = 2,
    tol: float = 1e-4,
    layout: Optional[str] = None,
    model_kwargs: Optional[Dict] = None,
    in_chans: int = 3,
    train: bool = True,
    roundtrip: bool = True,
    seed: int = 0,
    jit: bool = True,
) -> Dict[str, float]:
    """Runs eval, train-step and round-trip parity between ``torch_module`` and lightjax ``name``.

    ``jit=True`` runs the lightjax side under ``jax.jit``: one compile per input shape instead of one per op,
    several times cheaper on CPU for deep nets (``tests/test_models.py`` checks jit == eager separately).

    Returns the measured errors (for debugging); asserts each is below ``tol``.
    """
    import torch

    model_kwargs = dict(model_kwargs or {})
    randomize_(torch_module, seed)
    torch_module.eval()
    sd = {k: v.detach().clone() for k, v in torch_module.state_dict().items()}
    variables = convert.from_torch(name, sd, layout=layout, **model_kwargs)
    errs: Dict[str, float] = {}
    rng = np.random.default_rng(seed)
    with jax.default_matmul_precision("highest"):
        model = lm.create_model(name, **model_kwargs)
        fwd = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
        fwd = jax.jit(fwd) if jit else fwd
        for size in sizes:
            x = rng.standard_normal((batch, in_chans, size, size)).astype(np.float32)
            with torch.no_grad():
                ref = _as_list(torch_module(torch.from_numpy(x)))
            out = _as_list(fwd(variables, jnp.asarray(x.transpose(0, 2, 3, 1))))
            assert len(out) == len(ref), f"{name}: {len(out)} outputs vs torch {len(ref)}"
            for i, (o, r) in enumerate(zip(out, ref)):
                r = torch_to_np(r)
                assert o.shape == r.shape, f"{name} @ {size}: output {i} shape {o.shape} vs torch {r.shape}"
                errs[f"eval{size}_{i}"] = e = max_rel_err(np.asarray(o), r)
                assert e < tol, f"{name} eval @ {size}px output {i}: rel err {e:.2e} >= {tol}"

        if train:
            disable_dropout_(torch_module)
            torch_module.train()
            size = sizes[-1]
            x = rng.standard_normal((batch, in_chans, size, size)).astype(np.float32)
            with torch.no_grad():
                ref = _as_list(torch_module(torch.from_numpy(x)))
            tmodel = lm.create_model(name, **{**model_kwargs, "drop_rate": 0.0})
            step = lambda v, x: tmodel.apply(v, x, train=True, mutable=["batch_stats"],  # noqa: E731
                                             rngs={"dropout": jax.random.key(0)})
            out, updates = (jax.jit(step) if jit else step)(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
            for i, (o, r) in enumerate(zip(_as_list(out), ref)):
                errs[f"train_{i}"] = e = max_rel_err(np.asarray(o), torch_to_np(r))
                assert e < tol, f"{name} train-mode output {i}: rel err {e:.2e} >= {tol}"
            if "batch_stats" in variables:
                new_sd = convert.to_torch(name, {"params": variables["params"], **updates}, layout=layout,
                                          **model_kwargs)
                tsd = torch_module.state_dict()
                worst = 0.0
                for k, v in new_sd.items():
                    if k.endswith(("running_mean", "running_var")):
                        ref_v = tsd[k].numpy()
                        e = float(np.abs(v - ref_v).max() / max(np.abs(ref_v).max(), 1e-12))
                        worst = max(worst, e)
                        assert e < tol, f"{name}: {k} after one train step: rel err {e:.2e} >= {tol}"
                errs["running_stats"] = worst
            torch_module.eval()

    if roundtrip:
        back = convert.to_torch(name, variables, layout=layout, **model_kwargs)
        assert set(back) == set(sd), f"round trip keys differ: {sorted(set(back) ^ set(sd))[:10]}"
        for k, v in sd.items():
            if k.endswith("num_batches_tracked"):
                continue
            np.testing.assert_array_equal(back[k], v.numpy(), err_msg=f"round trip {k}")
        torch_module.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in back.items()}, strict=True)
    return errs
