"""Benchmark: lightjax vs PyTorch eager on the same weights, same process, alternating runs.

```
python -m lightjax.bench                       # every family's flagship, batch 32, native size, CPU
python -m lightjax.bench --models mobilenet_v2_100 xception65 --repeats 7
python -m lightjax.bench --quick               # CI smoke run: one small size, asserts nothing about speed
python -m lightjax.bench --device              # the same on the accelerator (jax GPU backend, torch CUDA)
```

For each model it prints one table row: inference img/s and training-step img/s (SGD momentum 0.9,
cross-entropy, train-mode BatchNorm) for lightjax and for PyTorch eager (the better of NCHW and channels_last),
their ratio, the first-call compile time of lightjax (AOT lower + compile of the train step, and of the
forward), and the peak RSS of a train step for each side (``--memory``, separate processes). Every timing is
the median of ``--repeats`` (>= 5 by default) runs taken in the same process, alternating lightjax and torch
(each timed run preceded by an untimed run of the same side: ``_switch_in_and_time``); each model runs in a
fresh process unless ``--in-process`` (or ``--quick``), in ``--processes N`` of them if asked (each figure
then the median over the processes: on this VM whole-process ratios moved by 20-25% between runs of the same
tree, more than within a process; the README table uses 3). A model whose process is killed
(out of memory) or peaks above ``MEMORY_PRESSURE_SHARE`` (70%) of the machine's RAM is re-run at half the batch
(Xception65 at 299 px on a 24 GiB machine: batch 32 killed, 16 thrashing, 8 measured); its row says so.

Process settings (this process only; the library itself never changes XLA flags):

* ``XLA_FLAGS += --xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED`` unless ``--no-xla-flags``
  (measured +13-18% on the CPU train step; has no effect on GPU).
* ``--allocator mimalloc`` (default when the ``cmeel-mimalloc`` wheel is installed) re-executes the benchmark
  with ``LD_PRELOAD=libmimalloc.so``, ``MIMALLOC_PURGE_DELAY=-1`` and ``MIMALLOC_ARENA_MAX_OBJECT_SIZE=1TiB``
  (``MIMALLOC_SETTINGS``); ``--allocator system`` keeps glibc
  malloc (with ``MALLOC_MMAP_MAX_=0`` unless ``--plain-glibc``). Both frameworks always run under the same
  allocator; the header says which.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

FLAGSHIPS = (
    "squeezenet1_1",
    "mobilenet_v1_100",
    "mobilenet_v2_100",
    "mobilenet_v3_large_100",
    "shufflenet_v1_g3",
    "shufflenet_v2_x1_0",
    "xception65",
)
SCHEDULER_FLAG = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
_CHILD_ENV = "LIGHTJAX_BENCH_CHILD"


# ----------------------------------------------------------------------------------------------------------
# Process set-up (before jax is imported).
# ----------------------------------------------------------------------------------------------------------
def mimalloc_path() -> Optional[str]:
    """``libmimalloc.so`` from the ``cmeel-mimalloc`` wheel (or ``$LIGHTJAX_MIMALLOC``), if installed."""
    env = os.environ.get("LIGHTJAX_MIMALLOC")
    if env and os.path.exists(env):
        return env
    for p in sys.path:
        for cand in glob.glob(os.path.join(p, "cmeel.prefix", "lib", "libmimalloc.so*")):
            return cand
    return None


#: mimalloc settings of ``--allocator mimalloc`` (user-set values win). ``PURGE_DELAY=-1``: freed memory is never
#: returned to the OS, so steady-state steps take no page faults. ``ARENA_MAX_OBJECT_SIZE``: mimalloc 3 serves
#: objects above 2 GiB straight from the OS (``mmap`` + ``MADV_HUGEPAGE`` per allocation, ``munmap`` on free), and
#: XLA:CPU's per-step temp buffer is one such object (Xception65 train step, batch 8: 5 GiB). Mapped afresh every
#: step it took ~2,600 huge-page faults per step, which after torch's steps stalled in compaction (2-4 s of system
#: time; lightjax 3.5-5.3 s per step). From an arena it stays mapped: 0 faults, 3.06-3.19 s.
MIMALLOC_SETTINGS = {"MIMALLOC_PURGE_DELAY": "-1", "MIMALLOC_ARENA_MAX_OBJECT_SIZE": "1TiB"}


def current_allocator() -> str:
    pre = os.environ.get("LD_PRELOAD", "")
    if "mimalloc" in pre:
        opts = ", ".join(f"{k}={os.environ.get(k, 'default')}" for k in MIMALLOC_SETTINGS)
        return f"mimalloc ({os.path.basename(pre)}, {opts})"
    if "jemalloc" in pre or "tcmalloc" in pre:
        return os.path.basename(pre)
    extra = f", MALLOC_MMAP_MAX_={os.environ['MALLOC_MMAP_MAX_']}" if "MALLOC_MMAP_MAX_" in os.environ else ""
    return f"glibc malloc{extra}"


def _reexec_with_allocator(args) -> None:
    """Re-executes this process under the requested allocator (env must be set before the process starts)."""
    if os.environ.get(_CHILD_ENV) == "1" or args.device:
        return
    env = dict(os.environ)
    want = args.allocator
    if want == "auto":
        want = "mimalloc" if mimalloc_path() else "system"
    if want == "mimalloc":
        lib = mimalloc_path()
        if lib is None:
            raise SystemExit("--allocator mimalloc: libmimalloc not found (pip install cmeel-mimalloc)")
        if lib in env.get("LD_PRELOAD", ""):
            return
        env["LD_PRELOAD"] = ":".join(filter(None, [lib, env.get("LD_PRELOAD")]))
        for k, v in MIMALLOC_SETTINGS.items():
            env.setdefault(k, v)
    else:
        if "mimalloc" in env.get("LD_PRELOAD", ""):
            env["LD_PRELOAD"] = ":".join(p for p in env["LD_PRELOAD"].split(":") if "mimalloc" not in p)
        if not args.plain_glibc:
            env.setdefault("MALLOC_MMAP_MAX_", "0")
        if env == dict(os.environ):
            return
    env[_CHILD_ENV] = "1"
    os.execve(sys.executable, [sys.executable, "-m", "lightjax.bench", *sys.argv[1:]], env)


def _set_xla_flags(args) -> None:
    if args.no_xla_flags or args.device:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_scheduler_type" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " " + SCHEDULER_FLAG).strip()


# ----------------------------------------------------------------------------------------------------------
# PyTorch references (same weights via lightjax.convert).
# ----------------------------------------------------------------------------------------------------------
def _repo_tests_dir() -> Optional[str]:
    d = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
    return d if os.path.isdir(d) else None


def _load_tests_module(name: str):
    d = _repo_tests_dir()
    if d is None or not os.path.exists(os.path.join(d, name + ".py")):
        return None
    spec = importlib.util.spec_from_file_location(f"_lightjax_bench_{name}", os.path.join(d, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def torch_reference(name: str) -> Tuple[Any, Optional[str], Dict[str, Any], str]:
    """(torch module, convert layout, lightjax model kwargs, description) for a lightjax model name."""
    import torchvision

    tv = torchvision.models
    if name.startswith("squeezenet"):
        return getattr(tv, name)(), None, {}, f"torchvision {name}"
    if name.startswith("mobilenet_v2_"):
        w = int(name.rsplit("_", 1)[1]) / 100
        return tv.mobilenet_v2(width_mult=w), "torchvision", {}, f"torchvision mobilenet_v2({w})"
    if name in ("mobilenet_v3_large_100", "mobilenet_v3_small_100"):
        tn = name[: -len("_100")]
        return getattr(tv, tn)(), "torchvision", {}, f"torchvision {tn}"
    if name.startswith("shufflenet_v2_"):
        return getattr(tv, name)(), None, {}, f"torchvision {name}"
    if name.startswith("mobilenet_v1_"):
        import timm

        tn = "mobilenetv1_" + name.rsplit("_", 1)[1]
        return timm.create_model(tn), "timm", {"act": "relu6"}, f"timm {tn}"
    if name in ("xception41", "xception65", "xception71"):
        import timm

        return timm.create_model(name), None, {}, f"timm {name}"
    if name == "xception":
        import timm

        return timm.create_model("legacy_xception"), None, {}, "timm legacy_xception"
    if name.startswith("shufflenet_v1_g") and not name.endswith("_cifar"):
        for modname in ("megvii_shufflenet", "seed_shufflenet_megvii", "ref_shufflenet_v1"):
            mod = _load_tests_module(modname)
            if mod is not None and hasattr(mod, "ShuffleNetV1"):
                g = int(name.rsplit("_g", 1)[1])
                return mod.ShuffleNetV1(group=g), "megvii", {}, f"megvii ShuffleNetV1 (tests/{modname}.py)"
        return _megvii_shufflenet_v1(int(name.rsplit("_g", 1)[1])), "megvii", {}, "megvii ShuffleNetV1 (bench copy)"
    raise KeyError(f"no PyTorch reference known for {name!r}")


def _megvii_shufflenet_v1(group: int):
    """megvii-model/ShuffleNet-Series ShuffleNetV1 (network.py + blocks.py, model_size 1.0x), same keys."""
    import torch
    import torch.nn as nn

    class ShuffleV1Block(nn.Module):
        def __init__(self, inp, oup, *, group, first_group, mid_channels, ksize, stride):
            super().__init__()
            self.stride, self.group = stride, group
            pad = ksize // 2
            outputs = oup - inp if stride == 2 else oup
            branch_main_1 = [
                nn.Conv2d(inp, mid_channels, 1, 1, 0, groups=1 if first_group else group, bias=False),
                nn.BatchNorm2d(mid_channels), nn.ReLU(inplace=True),
                nn.Conv2d(mid_channels, mid_channels, ksize, stride, pad, groups=mid_channels, bias=False),
                nn.BatchNorm2d(mid_channels),
            ]
            branch_main_2 = [
                nn.Conv2d(mid_channels, outputs, 1, 1, 0, groups=group, bias=False), nn.BatchNorm2d(outputs),
            ]
            self.branch_main_1 = nn.Sequential(*branch_main_1)
            self.branch_main_2 = nn.Sequential(*branch_main_2)
            if stride == 2:
                self.branch_proj = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)

        def forward(self, old_x):
            x = old_x
            x_proj = old_x
            x = self.branch_main_1(x)
            if self.group > 1:
                x = self.channel_shuffle(x)
            x = self.branch_main_2(x)
            if self.stride == 1:
                return torch.relu(x + x_proj)
            return torch.cat((self.branch_proj(x_proj), torch.relu(x)), 1)

        def channel_shuffle(self, x):
            b, c, h, w = x.data.size()
            g = self.group
            group_channels = c // g
            x = x.reshape(b, group_channels, g, h, w)
            x = x.permute(0, 2, 1, 3, 4)
            return x.reshape(b, c, h, w)

    class ShuffleNetV1(nn.Module):
        def __init__(self, n_class=1000, group=3):
            super().__init__()
            self.stage_repeats = [4, 8, 4]
            out = {3: [-1, 24, 240, 480, 960], 8: [-1, 24, 384, 768, 1536], 4: [-1, 24, 272, 544, 1088],
                   2: [-1, 24, 200, 400, 800], 1: [-1, 24, 144, 288, 576]}[group]
            self.first_conv = nn.Sequential(nn.Conv2d(3, out[1], 3, 2, 1, bias=False), nn.BatchNorm2d(out[1]),
                                            nn.ReLU(inplace=True))
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            features = []
            inp = out[1]
            for idxstage, numrepeat in enumerate(self.stage_repeats):
                oup = out[idxstage + 2]
                for i in range(numrepeat):
                    stride = 2 if i == 0 else 1
                    first_group = idxstage == 0 and i == 0
                    features.append(ShuffleV1Block(inp, oup, group=group, first_group=first_group,
                                                   mid_channels=oup // 4, ksize=3, stride=stride))
                    inp = oup
            self.features = nn.Sequential(*features)
            self.globalpool = nn.AvgPool2d(7)
            self.classifier = nn.Sequential(nn.Linear(out[-1], n_class, bias=False))

        def forward(self, x):
            x = self.maxpool(self.first_conv(x))
            x = self.features(x)
            x = torch.mean(x, dim=(2, 3))  # == globalpool(7) at 224 px, any size here
            return self.classifier(x)

    return ShuffleNetV1(group=group)


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


def _run_memory(name: str, side: str, args) -> Optional[float]:
    cmd = [sys.executable, "-m", "lightjax.bench", "--_memory", name, side, "--batch", str(args.batch)]
    if args.size:
        cmd += ["--size", str(args.size)]
    if args.device:
        cmd.append("--device")
    env = dict(os.environ, **{_CHILD_ENV: "1"})
    if side.endswith("xla"):
        env["LIGHTJAX_CONV_IMPL"] = "xla"
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.memory_timeout)
        return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
    except Exception:  # noqa: BLE001
        return None


def _bench_here(name: str, args) -> Dict[str, Any]:
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
    return _proc_mib("/proc/self/smaps_rollup", "AnonHugePages:")


def _proc_mib(path: str, field: str) -> Optional[float]:
    """A ``<field> <n> kB`` line of a Linux ``/proc`` file, in MiB; None where unavailable."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


#: A row whose process peaked above this share of the machine's RAM is re-run at half the batch: Xception65 at
#: batch 16 (299 px, both frameworks in one process) peaked near 24 GiB of 24 and ran its train step 5x slower
#: than at batch 8 (page-cache thrashing), which measures the memory pressure, not the kernels.
MEMORY_PRESSURE_SHARE = 0.7


def _total_ram_mib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return float("inf")


def _run_row(name: str, args) -> Dict[str, Any]:
    """Benchmarks one model in a fresh process: compiled executables, torch modules and allocator caches of
    earlier models do not pile up (with mimalloc's purge delay -1 nothing is returned to the OS, and the full
    table in one process was OOM-killed at 24 GiB on xception65), and a crash costs one row, not the table.
    A process killed (out of memory: Xception65 at 299 px, batch 32, both frameworks in one process on 24
    GiB) or one that peaked above ``MEMORY_PRESSURE_SHARE`` of the RAM is retried at half the batch, down to
    1; the row then says which batch it ran at and why."""
    batch, dropped, limit = args.batch, [], MEMORY_PRESSURE_SHARE * _total_ram_mib()
    while True:
        row = _run_row_at(name, args, batch)
        peak = row.get("peak_rss_mib") or 0
        if batch <= 1 or not (row.get("killed") or peak > limit):
            break
        if row.get("killed"):
            dropped.append(f"batch {batch} killed (out of memory?)")
        else:
            verb = "stopped at" if row.get("stopped") else "peaked at"
            dropped.append(f"batch {batch} {verb} {peak / 1024:.1f} GiB (> {limit / 1024:.1f})")
        batch //= 2
    row.pop("killed", None)
    row.pop("stopped", None)
    if dropped:
        row["note"] = f"{'; '.join(dropped)}: ran at batch {batch}"
    return row


def _run_row_processes(name: str, args) -> Dict[str, Any]:
    """``_run_row`` in ``args.processes`` fresh processes; the row holds the median of each figure over them
    (ratios: the median of the per-process ratios) and the per-process ratios under ``ratios_infer`` /
    ``ratios_train``. Why: on this VM the same-process alternation cancels drift within a process, but whatever
    a process starts with (we suspect its memory placement and huge pages) lasts its lifetime: whole-process
    ratios moved by 20-25% between runs of the same tree (torch's MobileNetV2 inference 228.5 vs 296.9 img/s in
    two processes), far more than the spread of the 5 runs inside one process."""
    first = _run_row(name, args)
    if args.processes <= 1 or "error" in first:
        return first
    rows, dropped = [first], []
    later = argparse.Namespace(**{**vars(args), "batch": first["batch"]})
    for _ in range(args.processes - 1):
        row = _run_row(name, later)
        if "error" not in row and row["batch"] == first["batch"]:
            rows.append(row)
        else:  # not comparable with the others: left out of the medians, and the row says why
            dropped.append(row.get("error") or row.get("note") or f"ran at batch {row['batch']}")
    out = dict(first)
    for key, val in first.items():
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        if isinstance(val, float) and len(vals) == len(rows):
            out[key] = statistics.median(vals)
    for mode in ("infer", "train"):
        ratios = [r[f"ratio_{mode}"] for r in rows if f"ratio_{mode}" in r]
        if ratios:
            out[f"ratios_{mode}"] = ratios  # ratio_{mode} itself is already the median (loop above)
            fmts = [r[f"torch_{mode}_fmt"] for r in rows]
            out[f"torch_{mode}_fmt"] = max(set(fmts), key=fmts.count)
    spread = "; ".join(f"{mode} ratio {min(out[f'ratios_{mode}']):.2f}-{max(out[f'ratios_{mode}']):.2f}x"
                       for mode in ("infer", "train") if f"ratios_{mode}" in out)
    out["note_processes"] = f"median of {len(rows)} processes ({spread})"
    if dropped:
        out["note_processes"] += f"; {len(dropped)} of {args.processes} left out: " + "; ".join(dropped)
    keep = ("jax_infer", "torch_infer", "jax_train", "torch_train", "peak_rss_mib", "anon_huge_pages_mib")
    out["processes"] = [{k: r[k] for k in keep if k in r} for r in rows]
    return out


def _run_row_at(name: str, args, batch: int) -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "lightjax.bench", "--_row", name, "--batch", str(batch), "--repeats",
           str(args.repeats)]
    for flag, on in (("--device", args.device), ("--no-torch", args.no_torch), ("--quick", args.quick)):
        if on:
            cmd.append(flag)
    if args.size:
        cmd += ["--size", str(args.size)]
    env = dict(os.environ, **{_CHILD_ENV: "1"})
    limit = MEMORY_PRESSURE_SHARE * _total_ram_mib()
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        watch = _RssWatch(proc.pid, limit)
        try:
            stdout, stderr = proc.communicate()
        finally:
            watch.stop()
    if watch.stopped_at is not None:
        return {"model": name, "error": f"stopped at batch {batch}: resident memory {watch.stopped_at / 1024:.1f} "
                f"GiB > {limit / 1024:.1f}", "peak_rss_mib": watch.stopped_at, "killed": False, "stopped": True}
    lines = [l for l in stdout.strip().splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        killed = proc.returncode in (-9, 137)
        why = f"exit {proc.returncode}" + (f" (killed at batch {batch}: out of memory?)" if killed else "")
        return {"model": name, "error": f"{why}: {stderr.strip()[-300:]}", "killed": killed}
    return json.loads(lines[-1])


def _rss_mib_of(pid: int) -> Optional[float]:
    """Resident set size of process ``pid`` in MiB (Linux ``/proc``), or None where unavailable."""
    return _proc_mib(f"/proc/{pid}/status", "VmRSS:")


class _RssWatch:
    """Kills a benchmark child as soon as its resident memory passes ``limit_mib``: the row is re-run at half
    the batch anyway, and a child left to run near the RAM limit thrashes for minutes (Xception65, batch 16:
    page-cache eviction of its own code, 1.5 GB/s of reads, ~15 s per train step) before it finishes."""

    def __init__(self, pid: int, limit_mib: float, interval_s: float = 0.5):
        self.pid, self.limit, self.interval = pid, limit_mib, interval_s
        self.stopped_at: Optional[float] = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self.interval):
            rss = _rss_mib_of(self.pid)
            if rss is None:
                return
            if rss > self.limit:
                self.stopped_at = rss
                try:
                    os.kill(self.pid, 9)
                except OSError:
                    pass
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


# ----------------------------------------------------------------------------------------------------------
# Report.
# ----------------------------------------------------------------------------------------------------------
def header(args) -> str:
    import jax
    import jaxlib

    import lightjax.models.ops as ops

    lines = [f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    lines.append(f"machine: {cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}")
    try:
        lines.append(f"load average at start: {os.getloadavg()[0]:.2f}")
    except OSError:
        pass
    devs = jax.devices()
    lines.append(f"jax {jax.__version__} / jaxlib {jaxlib.__version__} backend={jax.default_backend()} "
                 f"({devs[0].device_kind}), conv impl: {ops.conv_impl()}")
    try:
        import flax

        lines.append(f"flax {flax.__version__}")
    except ImportError:
        pass
    try:
        import torch

        lines.append(f"torch {torch.__version__}, {torch.get_num_threads()} threads"
                     + (f", cuda {torch.cuda.get_device_name()}" if args.device and torch.cuda.is_available() else ""))
    except ImportError:
        lines.append("torch: not installed (lightjax columns only)")
    lines.append(f"allocator: {current_allocator()} (both frameworks)")
    lines.append(f"XLA_FLAGS: {os.environ.get('XLA_FLAGS', '') or '(none)'}")
    lines.append(f"lightjax jit compiler_options (lightjax.compiler_options()): {ops.compiler_options() or '(none)'}")
    procs = getattr(args, "processes", 1)
    per_proc = f"; each row the median over {procs} fresh processes" if procs > 1 and not args.in_process else ""
    lines.append(f"batch {args.batch}, float32, median of {args.repeats} alternating runs (each after an untimed run "
                 f"of the same side){per_proc}; torch = best of NCHW and channels_last eager; ratio = lightjax / torch")
    return "\n".join(lines)


def _f(v, fmt="{:.1f}"):
    return "–" if v is None else fmt.format(v)


def table(rows: List[Dict[str, Any]], memory: bool) -> str:
    cols = ["model", "size", "infer lj", "infer torch", "ratio", "train lj", "train torch", "ratio",
            "compile fwd s", "compile train s", "first step s"]
    if memory:
        cols += ["peak MiB lj", "peak MiB lj-xla", "peak MiB torch"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | error: {r['error']} |")
            continue
        cells = [
            r["model"], str(r["size"]) + (f" (batch {r['batch']})" if "note" in r else ""),
            _f(r.get("jax_infer")),
            _f(r.get("torch_infer")) + (f" ({r['torch_infer_fmt']})" if "torch_infer_fmt" in r else ""),
            _f(r.get("ratio_infer"), "{:.2f}x"),
            _f(r.get("jax_train")),
            _f(r.get("torch_train")) + (f" ({r['torch_train_fmt']})" if "torch_train_fmt" in r else ""),
            _f(r.get("ratio_train"), "{:.2f}x"),
            _f(r.get("compile_fwd_s")), _f(r.get("compile_train_s")), _f(r.get("first_train_s")),
        ]
        if memory:
            cells += [_f(r.get("mem_jax"), "{:.0f}"), _f(r.get("mem_jax_xla"), "{:.0f}"),
                      _f(r.get("mem_torch"), "{:.0f}")]
        out.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r['model']}: torch reference: {r['torch_ref'] or 'none'}"
             + (f" ({r['torch_error']})" if "torch_error" in r else "") + (f"; {r['note']}" if "note" in r else "")
             + (f"; {r['note_processes']}" if "note_processes" in r else "") for r in rows if "error" not in r]
    return "\n".join(out + [""] + notes)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lightjax.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None, help=f"default: the flagships {', '.join(FLAGSHIPS)}")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=None, help="input size (default: each model's native size)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--processes", type=int, default=1, help="run each row in this many fresh processes and report "
                   "the median of each figure (ratios: median of the per-process ratios); the README table uses 3")
    p.add_argument("--quick", action="store_true", help="CI smoke: squeezenet1_1 at 64 px, batch 2, 2 repeats")
    p.add_argument("--device", action="store_true", help="run on the accelerator (jax GPU/TPU, torch CUDA)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--memory", action="store_true", help="peak RSS of a train step per side (fresh processes)")
    p.add_argument("--memory-xla", action="store_true", help="with --memory, also the plain 'xla' conv path")
    p.add_argument("--memory-timeout", type=int, default=900)
    p.add_argument("--allocator", choices=("auto", "mimalloc", "system"), default="auto")
    p.add_argument("--plain-glibc", action="store_true", help="with --allocator system: no MALLOC_MMAP_MAX_=0")
    p.add_argument("--no-xla-flags", action="store_true", help="do not add the memory-optimised XLA scheduler")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    p.add_argument("--_memory", nargs=2, metavar=("MODEL", "SIDE"), help=argparse.SUPPRESS)
    p.add_argument("--_row", metavar="MODEL", help=argparse.SUPPRESS)
    p.add_argument("--in-process", action="store_true", help="time every model in this process (default: one "
                   "fresh process per model)")
    args = p.parse_args(argv)

    if argv is None:
        _reexec_with_allocator(args)
    _set_xla_flags(args)
    import jax

    if not args.device:
        jax.config.update("jax_platforms", "cpu")
    elif jax.default_backend() == "cpu":
        print("--device: no accelerator visible to jax; running on CPU", file=sys.stderr)
    try:
        import torch

        if not args.device:
            torch.set_num_threads(os.cpu_count() or 1)
    except ImportError:
        args.no_torch = True

    if args._memory:
        print(json.dumps(memory_child(args._memory[0], args._memory[1], args.batch, args.size, args.device)))
        return 0
    if args._row:
        print(json.dumps(_bench_here(args._row, args)))
        return 0

    if args.quick:
        args.models = args.models or ["squeezenet1_1"]
        args.size, args.batch, args.repeats = args.size or 64, 2, 2
    import lightjax.models as lm

    names = args.models or list(FLAGSHIPS)
    print(header(args), flush=True)
    rows = []
    for name in names:
        if name not in lm.list_models():
            rows.append({"model": name, "error": "not registered"})
            continue
        try:
            row = _bench_here(name, args) if args.in_process or args.quick else _run_row_processes(name, args)
        except Exception as e:  # noqa: BLE001 -- one broken model must not hide the others
            row = {"model": name, "error": f"{type(e).__name__}: {e}"[:300]}
        if args.memory and "error" not in row:
            row["mem_jax"] = _run_memory(name, "jax", args)
            if args.memory_xla:
                row["mem_jax_xla"] = _run_memory(name, "jax_xla", args)
            if not args.no_torch:
                fmt = row.get("torch_train_fmt", "cl")
                row["mem_torch"] = _run_memory(name, f"torch_{fmt}", args)
        rows.append(row)
        if args.json:  # after every row: a later crash keeps what was measured
            with open(args.json, "w") as f:
                json.dump({"header": header(args), "rows": rows}, f, indent=1)
        print(f"[{name}] " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}),
              file=sys.stderr, flush=True)
    print()
    print(table(rows, args.memory))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header(args), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
