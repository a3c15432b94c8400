"""The two sides of a benchmark row and how they are timed: lightjax (jitted forward and SGD train step) and
PyTorch eager (NCHW and channels_last), alternating in one process, each timed run after an untimed run of the
same side; figures are medians. Runs inside one (child) process; :mod:`benchmarks.processes` starts those.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from benchmarks.processes import proc_mib
from benchmarks.references import torch_reference


# ----------------------------------------------------------------------------------------------------------
# Measurement helpers.
# ----------------------------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakRSS:
    """Samples this process's RSS every ``interval`` s in a thread; ``.peak`` is the maximum seen."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self.peak = _rss_bytes()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_bytes())


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _switch_in_and_time(fn: Callable[[], Any], n_sides: int) -> float:
    """Runs ``fn`` once untimed, then times it: each sample follows a run of the same framework.

    Why: after each PyTorch call its OpenMP worker keeps spinning (libgomp's default ``GOMP_SPINCOUNT``, a few ms
    on this CPU) on one of the two cores, so whichever side runs right after torch starts on half the machine.
    Paired measurements (20 rounds of torch, lightjax, lightjax): the lightjax call right after torch was 2.0 /
    5.6 / 4.2 ms slower than the next one (SqueezeNet 1.1 / MobileNetV1 / ShuffleNet v2 inference, 3-7%); torch
    right after lightjax +0.4 / +0.1 / +1.4 ms. The untimed run absorbs that for both sides; the sides still
    alternate, so slow drifts of the VM hit both. With one side (``--no-torch``) there is nothing to absorb.
    """
    if n_sides > 1:
        fn()
    return _timed(fn)


# ----------------------------------------------------------------------------------------------------------
# The two sides.
# ----------------------------------------------------------------------------------------------------------
class JaxSide:
    """A lightjax model, its jitted forward and SGD-momentum train step."""

    def __init__(self, name: str, variables, model_kwargs: Dict[str, Any], batch: int, size: int, seed: int = 0):
        import jax
        import jax.numpy as jnp
        import numpy as np
        import optax

        import lightjax
        import lightjax.models as lm

        self.jax = jax
        self.model = lm.create_model(name, **model_kwargs)
        rng = np.random.default_rng(seed)
        self.x = jnp.asarray(rng.standard_normal((batch, size, size, 3), dtype=np.float32))
        self.y = jnp.asarray(rng.integers(0, 1000, batch))
        if variables is None:
            variables = lm.init_variables(self.model, jax.random.key(0), (1, size, size, 3))
        self.params = variables["params"]
        self.batch_stats = variables.get("batch_stats", {})
        self.tx = optax.sgd(0.01, momentum=0.9)
        self.opt_state = self.tx.init(self.params)
        model, tx = self.model, self.tx

        def forward(params, batch_stats, x):
            return model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)

        def train_step(params, batch_stats, opt_state, x, y, key):
            def loss_fn(p):
                logits, upd = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                          mutable=["batch_stats"], rngs={"dropout": key})
                loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
                return loss, upd.get("batch_stats", batch_stats)

            (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), new_stats, opt_state, loss

        options = lightjax.compiler_options()  # what train/ uses too; printed in the header
        self._forward = jax.jit(forward, compiler_options=options)
        self._train = jax.jit(train_step, donate_argnums=(0, 1, 2), compiler_options=options)
        self.key = jax.random.key(1)

    def compile(self) -> Tuple[float, float]:
        """AOT lower+compile seconds of the forward and of the train step."""
        t0 = time.perf_counter()
        self._fwd_c = self._forward.lower(self.params, self.batch_stats, self.x).compile()
        t1 = time.perf_counter()
        self._train_c = self._train.lower(self.params, self.batch_stats, self.opt_state, self.x, self.y,
                                          self.key).compile()
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    def infer(self):
        return self._fwd_c(self.params, self.batch_stats, self.x).block_until_ready()

    def train(self):
        self.params, self.batch_stats, self.opt_state, loss = self._train_c(
            self.params, self.batch_stats, self.opt_state, self.x, self.y, self.key)
        return loss.block_until_ready()


class TorchSide:
    """The PyTorch reference in one memory format (``"nchw"`` or ``"cl"``): eval forward and SGD train step."""

    def __init__(self, module, fmt: str, batch: int, size: int, device: str = "cpu", seed: int = 0):
        import copy

        import numpy as np
        import torch

        self.torch = torch
        self.device = device
        self.m = copy.deepcopy(module).to(device)
        self.mf = torch.channels_last if fmt == "cl" else torch.contiguous_format
        self.m = self.m.to(memory_format=self.mf)
        rng = np.random.default_rng(seed)
        x = torch.from_numpy(rng.standard_normal((batch, 3, size, size), dtype=np.float32))
        self.x = x.to(device).contiguous(memory_format=self.mf)
        self.y = torch.from_numpy(rng.integers(0, 1000, batch)).to(device)
        self.opt = torch.optim.SGD(self.m.parameters(), lr=0.01, momentum=0.9)
        self.loss = torch.nn.CrossEntropyLoss()

    def _sync(self):
        if self.device != "cpu":
            self.torch.cuda.synchronize()

    def infer(self):
        self.m.eval()
        with self.torch.inference_mode():
            out = self.m(self.x)
        self._sync()
        return out

    def train(self):
        self.m.train()
        self.opt.zero_grad(set_to_none=True)
        out = self.m(self.x)
        if isinstance(out, (list, tuple)):
            out = out[0]
        loss = self.loss(out, self.y)
        loss.backward()
        self.opt.step()
        self._sync()
        return loss


def bench_model(name: str, batch: int, size: Optional[int], repeats: int, device: bool, with_torch: bool,
                quick: bool) -> Dict[str, Any]:
    """Times one model, alternating lightjax and torch; returns the row's figures."""
    import lightjax.models as lm
    from lightjax import convert

    size = size or lm.model_info(name).get("input_size", 224)
    row: Dict[str, Any] = {"model": name, "batch": batch, "size": size}
    tmod, layout, kwargs, desc = None, None, {}, ""
    variables = None
    if with_torch:
        try:
            import torch

            torch.manual_seed(0)
            tmod, layout, kwargs, desc = torch_reference(name)
            tmod.eval()
            sd = {k: v.detach().clone() for k, v in tmod.state_dict().items()}
            variables = convert.from_torch(name, sd, layout=layout, **kwargs)
        except Exception as e:  # noqa: BLE001 -- report and carry on with lightjax alone
            row["torch_error"] = f"{type(e).__name__}: {e}"[:200]
            tmod, variables, kwargs = None, None, {}
    row["torch_ref"] = desc
    jx = JaxSide(name, variables, kwargs, batch, size)
    row["compile_fwd_s"], row["compile_train_s"] = jx.compile()
    row["first_train_s"] = _timed(jx.train)
    jx.infer()
    tsides = {}
    if tmod is not None:
        dev = "cuda" if device else "cpu"
        for fmt in ("nchw", "cl"):
            ts = TorchSide(tmod, fmt, batch, size, device=dev)
            ts.infer()
            ts.train()
            tsides[fmt] = ts
    sides = [("jax", jx)] + [(f"torch_{fmt}", ts) for fmt, ts in tsides.items()]
    samples: Dict[str, List[float]] = {}
    for mode in ("infer", "train"):
        for _ in range(repeats):
            for key, side in sides:
                samples.setdefault(f"{key}_{mode}", []).append(_switch_in_and_time(getattr(side, mode), len(sides)))
    for key, vals in samples.items():
        row[key] = batch / statistics.median(vals)
    for mode in ("infer", "train"):
        best = [(row[f"torch_{f}_{mode}"], f) for f in tsides]
        if best:
            row[f"torch_{mode}"], row[f"torch_{mode}_fmt"] = max(best)
            row[f"ratio_{mode}"] = row[f"jax_{mode}"] / row[f"torch_{mode}"]
    return row


def memory_child(name: str, side: str, batch: int, size: Optional[int], device: bool) -> Dict[str, Any]:
    """Peak RSS (MiB) while running two train steps of one side in a fresh process, minus RSS before them."""
    import lightjax.models as lm

    size = size or lm.model_info(name).get("input_size", 224)
    if side.startswith("torch"):
        tmod, _, _, _ = torch_reference(name)
        s = TorchSide(tmod, side.split("_")[1], batch, size, device="cuda" if device else "cpu")
    else:
        s = JaxSide(name, None, {}, batch, size)
        s.compile()
    base = _rss_bytes()
    with PeakRSS() as pk:
        s.train()
        s.train()
    return {"peak_mib": (pk.peak - base) / 2**20, "base_mib": base / 2**20}



def bench_here(name: str, args) -> Dict[str, Any]:
    """One model's row, timed in this process, with the process's peak RSS (``peak_rss_mib``)."""
    import resource

    row = bench_model(name, args.batch, args.size, args.repeats, args.device, not args.no_torch, args.quick)
    row["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    thp = _anon_huge_pages_mib()
    if thp is not None:
        row["anon_huge_pages_mib"] = thp
    return row


def _anon_huge_pages_mib() -> Optional[float]:
    """This process's transparent-huge-page-backed memory (Linux), a clue when a row is an outlier."""
    return proc_mib("/proc/self/smaps_rollup", "AnonHugePages:")
