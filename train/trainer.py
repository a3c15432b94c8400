"""The training loop: one ``jax.jit`` step over a device ``Mesh`` (data parallel), Orbax checkpoints with the
grain iterator state, EMA evaluation, preemption handling.

Data parallelism: the batch is sharded over the mesh axis ``"data"`` and everything else is replicated. The
model's BatchNorm takes ``jnp.mean`` over the (global, sharded) batch, so under ``jit`` the statistics are
averaged across devices and processes; XLA inserts the all-reduces. No ``pmap``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import time
from typing import Any, Dict, Optional, Tuple

import flax
import grain.python as grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import lightjax
import lightjax.models as lm
from lightjax import ops
from train import checks, data, metrics_io, optim

log = logging.getLogger("train")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/inf; the run stops without checkpointing the bad state."""


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. ``rng`` is raw key data (uint32) so that Orbax stores it like any array."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any  # {} when config.ema_decay == 0
    ema_batch_stats: Any
    rng: jax.Array


# ----------------------------------------------------------------------------------------------------------
# Set-up.
# ----------------------------------------------------------------------------------------------------------


def compute_dtype(config: ml_collections.ConfigDict) -> Any:
    """The model's computation dtype (``config.model.dtype``)."""
    return {"bfloat16": jnp.bfloat16, "float64": jnp.float64}.get(config.model.dtype, jnp.float32)


def create_model(config: ml_collections.ConfigDict):
    dtype = compute_dtype(config)
    kwargs: Dict[str, Any] = dict(num_classes=config.data.num_classes, in_chans=config.model.in_chans, dtype=dtype)
    if dtype == jnp.float64:  # a float64 run keeps everything (params, optimizer state) in float64
        kwargs["param_dtype"] = jnp.float64
    if config.model.drop_rate >= 0:
        kwargs["drop_rate"] = config.model.drop_rate
    tag_cfg = checks.pretrained_tag_cfg(config)
    if tag_cfg is not None:  # settings the tag's weights need (e.g. timm MobileNetV1: act="relu6")
        kwargs = {**dict(tag_cfg.model_kwargs or {}), **kwargs}
    return lm.create_model(config.model.name, **kwargs)


def num_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> Tuple[int, int]:
    """(steps_per_epoch, total_steps)."""
    steps_per_epoch = max(num_train_examples // config.batch_size, 1)
    if config.num_train_steps > 0:
        return steps_per_epoch, int(config.num_train_steps)
    return steps_per_epoch, max(int(math.ceil(config.num_epochs * num_train_examples / config.batch_size)), 1)


def _merge_pretrained(fresh: Any, loaded: Any, what: str) -> Any:
    """Takes every leaf of ``loaded`` whose path and shape match ``fresh`` (the head of a new task does not)."""
    flat_loaded = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(loaded)}
    replaced = []

    def pick(path, x):
        v = flat_loaded.get(jax.tree_util.keystr(path))
        if v is not None and tuple(np.shape(v)) == tuple(x.shape):
            return jnp.asarray(v, x.dtype)
        replaced.append(jax.tree_util.keystr(path))
        return x

    out = jax.tree_util.tree_map_with_path(pick, fresh)
    if replaced:
        log.info("init_from: %d %s leaves kept their fresh initialisation: %s", len(replaced), what,
                 ", ".join(replaced[:8]) + (" ..." if len(replaced) > 8 else ""))
    return out


def restore_any_topology(path: str) -> Any:
    """Restores an Orbax StandardSave item onto this process's first device, whatever devices wrote it."""
    ckptr = ocp.StandardCheckpointer()
    meta = ckptr.metadata(path)
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), tree)
    return ckptr.restore(path, target)


def load_pretrained(config: ml_collections.ConfigDict, variables: Dict[str, Any], rng: jax.Array) -> Dict[str, Any]:
    """Loads ``config.model.init_from`` (a pretrained tag, a PyTorch file or an Orbax checkpoint) into freshly
    initialised ``variables``."""
    path = os.path.expanduser(config.model.init_from)
    fmt = config.model.init_format
    if fmt == "auto":
        fmt = "orbax" if os.path.isdir(path) else "torch"
    tag_cfg = checks.pretrained_tag_cfg(config)
    if tag_cfg is not None:
        from lightjax import pretrained  # weights resolution (cache, download) stands above the models

        # num_classes other than the tag's: load_model re-initialises the head (logged).
        _, loaded = pretrained.load_model(tag_cfg.tag, num_classes=config.data.num_classes,
                                          in_chans=config.model.in_chans)
        log.info("init_from: pretrained tag %s (%s); data transform from %s: eval %s", tag_cfg.tag,
                 tag_cfg.source, *[data.resolve_transform(config)[k] for k in ("source", "eval")])
    elif not os.path.exists(path):
        raise checks.ConfigError("model.init_from", config.model.init_from, "an existing checkpoint path or a "
                                 "pretrained tag")
    elif fmt == "torch":
        from lightjax import convert  # torch is only imported inside read_checkpoint, for .pth files

        loaded = convert.from_torch(config.model.name, path, strict=False, rng=rng,
                                    num_classes=config.data.num_classes, in_chans=config.model.in_chans)
    else:
        item = os.path.join(path, "state") if os.path.isdir(os.path.join(path, "state")) else path
        loaded = restore_any_topology(os.path.abspath(item))
    return {
        "params": _merge_pretrained(variables["params"], loaded["params"], "params"),
        "batch_stats": _merge_pretrained(variables.get("batch_stats", {}), loaded.get("batch_stats", {}), "batch_stats"),
    }


def init_state(config: ml_collections.ConfigDict, model, tx: optax.GradientTransformation) -> TrainState:
    """Initial state on the host (float32 params whatever the compute dtype)."""
    key = jax.random.key(config.seed)
    init_key, head_key = jax.random.split(key)
    shape = (1, config.data.image_size, config.data.image_size, config.model.in_chans)
    # Jitted, with the init compile options (lm.init_variables): eager init compiled every primitive separately.
    variables = lm.init_variables(model, init_key, shape)
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    if config.model.init_from:
        variables = load_pretrained(config, variables, head_key)
    params, batch_stats = variables["params"], variables["batch_stats"]
    ema = config.ema_decay > 0

    def rest(params, batch_stats, key):
        return dict(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=tx.init(params),
            ema_params=jax.tree.map(jnp.copy, params) if ema else {},
            ema_batch_stats=jax.tree.map(jnp.copy, batch_stats) if ema else {},
            rng=jax.random.key_data(jax.random.fold_in(key, 1)),
        )

    # One program: eager, the optimizer's zeros_like and the copies compiled one tiny kernel per parameter shape.
    return TrainState(**jax.jit(rest, compiler_options=ops.init_compiler_options())(params, batch_stats, key))


# ----------------------------------------------------------------------------------------------------------
# Steps.
# ----------------------------------------------------------------------------------------------------------


def train_step(state: TrainState, batch: Dict[str, jax.Array], *, model, tx, schedule, config) -> Tuple[TrainState, Dict]:
    """One optimizer step on a global batch; returns the new state and scalar metrics."""
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    x = batch["image"].astype(compute_dtype(config))
    labels = batch["label"]

    def loss_fn(params):
        logits, mutated = model.apply({"params": params, "batch_stats": state.batch_stats}, x, train=True,
                                      rngs={"dropout": rng}, mutable=["batch_stats"])
        loss = optim.cross_entropy(logits, labels, config.data.num_classes, config.label_smoothing).mean()
        return loss, (logits, mutated["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params, ema_stats = state.ema_params, state.ema_batch_stats
    if config.ema_decay > 0:
        # Ramp-up of the decay (TF ExponentialMovingAverage num_updates) so short runs are not stuck at init.
        d = jnp.minimum(config.ema_decay, (1.0 + state.step) / (10.0 + state.step))
        ema_params = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema_params, params)
        ema_stats = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema_stats, batch_stats)
    metrics = {
        "loss": loss,
        "acc": jnp.mean(jnp.argmax(logits, -1) == labels),
        "learning_rate": schedule(state.step),
        "grad_norm": optax.global_norm(grads),
    }
    new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
                        ema_params=ema_params, ema_batch_stats=ema_stats)
    return new, metrics


def eval_step(params, batch_stats, batch, *, model, config) -> Dict[str, jax.Array]:
    """Sums of correct top-1/top-5, loss and count over the real (mask 1) examples of a batch."""
    x = batch["image"].astype(compute_dtype(config))
    logits = model.apply({"params": params, "batch_stats": batch_stats}, x, train=False).astype(jnp.float32)
    labels, mask = batch["label"], batch["mask"]
    k = min(5, logits.shape[-1])
    topk = jax.lax.top_k(logits, k)[1]
    loss = optim.cross_entropy(logits, labels, config.data.num_classes, 0.0)
    return {
        "top1": jnp.sum((topk[:, 0] == labels) * mask),
        "top5": jnp.sum(jnp.any(topk == labels[:, None], -1) * mask),
        "loss": jnp.sum(loss * mask),
        "count": jnp.sum(mask),
    }


# ----------------------------------------------------------------------------------------------------------
# Checkpoints.
# ----------------------------------------------------------------------------------------------------------


class _FrozenIteratorState:
    """The grain handler calls ``get_state()`` when it writes; with async checkpointing that can happen after
    the loop has moved the iterator on, so hand it the state captured at the checkpoint step instead."""

    def __init__(self, state: Any):
        # The handler writes ``get_state().decode()`` for anything that is not a grain DatasetIterator and
        # reads it back with ``json.loads`` into one: so give it the JSON bytes.
        self._state = json.dumps(state, indent=4).encode() if isinstance(state, dict) else state

    def get_state(self) -> Any:
        return self._state


def checkpoint_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    opts = ocp.CheckpointManagerOptions(max_to_keep=config.max_to_keep, create=True,
                                        enable_async_checkpointing=config.async_checkpointing)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")), options=opts,
                                 item_names=("state", "data"))


def save_checkpoint(mngr: ocp.CheckpointManager, step: int, state: TrainState, it) -> None:
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.PyGrainCheckpointSave(_FrozenIteratorState(it.get_state())),
    ), force=True)


def restore_checkpoint(mngr: ocp.CheckpointManager, state: TrainState, it) -> Tuple[TrainState, int]:
    """Restores the latest checkpoint (state with its shardings, iterator position) if there is one."""
    step = mngr.latest_step()
    if step is None:
        return state, 0
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=grain.PyGrainCheckpointRestore(it)))
    return restored["state"], int(step)


# ----------------------------------------------------------------------------------------------------------
# The loop.
# ----------------------------------------------------------------------------------------------------------


class _Preemption:
    """SIGTERM (TPU preemption, ``kill``) sets a flag; the loop saves at the next step boundary and exits."""

    def __init__(self):
        self.requested = False
        self._old = None
        try:
            self._old = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread (e.g. inside a test runner thread)
            self._old = None

    def _handler(self, signum, frame):
        del signum, frame
        self.requested = True

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _agreed(flag: bool) -> bool:
    """True on every process if it is true on any (processes must take the same branch around collectives)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def evaluate(config, p_eval, state: TrainState, batch_sharding: NamedSharding) -> Dict[str, float]:
    """Top-1/top-5/loss of the model (and of its EMA) on the whole eval split."""
    it, n, steps = data.eval_batches(config, limit=config.data.eval_limit or None)
    sums: Dict[str, Any] = {}
    for _ in range(steps):
        batch = _global_batch(next(it), batch_sharding)
        variants = [("", state.params, state.batch_stats)]
        if config.ema_decay > 0:
            variants.append(("ema_", state.ema_params, state.ema_batch_stats))
        for prefix, params, stats in variants:
            for k, v in p_eval(params, stats, batch).items():
                sums[prefix + k] = sums.get(prefix + k, 0.0) + v
    sums = jax.device_get(sums)
    out = {}
    for prefix in ("", "ema_") if config.ema_decay > 0 else ("",):
        count = max(float(sums[prefix + "count"]), 1.0)
        out[f"{prefix}eval_top1"] = float(sums[prefix + "top1"]) / count
        out[f"{prefix}eval_top5"] = float(sums[prefix + "top5"]) / count
        out[f"{prefix}eval_loss"] = float(sums[prefix + "loss"]) / count
    out["eval_examples"] = int(float(sums["count"]))
    return out


def _global_batch(local: Dict[str, np.ndarray], sharding: NamedSharding) -> Dict[str, jax.Array]:
    """Per-process slices → one global array per key, sharded over the ``data`` axis."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop_after_step: Optional[int] = None) -> Dict[str, Any]:
    """Trains (resuming from ``workdir`` if it has checkpoints) and returns the final metrics and state.

    Args:
      config: a training config (see :mod:`train.config_base`).
      workdir: checkpoints, metrics and plots; an existing one is resumed.
      stop_after_step: behave as if SIGTERM arrived during this step (save, stop); for tests and tools.

    Raises:
      checks.ConfigError: bad config (before anything expensive happens).
      NonFiniteLossError: the loss became NaN/inf; the last good checkpoint is left in ``workdir``.
    """
    devices = jax.devices()
    checks.validate(config, num_devices=len(devices), num_processes=jax.process_count())
    is_main = jax.process_index() == 0
    mesh = Mesh(np.asarray(devices), ("data",))
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))

    train_ds, n_train = data.train_dataset(config)
    steps_per_epoch, total_steps = num_steps(config, n_train)
    eval_every = config.eval_every_steps or steps_per_epoch
    ckpt_every = config.checkpoint_every_steps or steps_per_epoch

    model = create_model(config)
    schedule = optim.lr_schedule(config, steps_per_epoch, total_steps)
    tx = optim.make_optimizer(config, schedule)
    # Every process computes the same initial state (same seed); make_array_from_process_local_data turns the
    # host values into replicated global arrays without device_put's per-leaf cross-process equality check.
    state = jax.tree.map(lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x)),
                         init_state(config, model, tx))

    it = iter(train_ds)
    mngr = checkpoint_manager(workdir, config)
    state, start = restore_checkpoint(mngr, state, it)
    if is_main:
        log.info("%s: %d train examples, %d steps (%d/epoch), global batch %d on %d devices / %d processes%s",
                 config.model.name, n_train, total_steps, steps_per_epoch, config.batch_size, len(devices),
                 jax.process_count(), f"; resumed at step {start}" if start else "")

    xla_options = lightjax.compiler_options()  # {} off CPU; on CPU dense convolutions on XLA's Eigen kernels
    p_train = jax.jit(functools.partial(train_step, model=model, tx=tx, schedule=schedule, config=config),
                      in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated),
                      donate_argnums=0, compiler_options=xla_options)
    p_eval = jax.jit(functools.partial(eval_step, model=model, config=config),
                     in_shardings=(replicated, replicated, batch_sharding), out_shardings=replicated,
                     compiler_options=xla_options)

    writer = metrics_io.MetricWriter(workdir, enabled=is_main, resume_step=start)
    bar = metrics_io.Progress(total_steps, start, enabled=is_main and config.progress_bar)
    preempt = _Preemption()
    pending: list = []  # device metrics since the last log
    last: Dict[str, Any] = {}
    t_log, n_log = time.perf_counter(), 0
    last_saved = mngr.latest_step()
    try:
        for step in range(start, total_steps):
            batch = _global_batch(next(it), batch_sharding)
            state, metrics = p_train(state, batch)
            pending.append(metrics)
            n_log += 1
            done = step + 1
            final = done == total_steps
            log_now = done % config.log_every_steps == 0 or final
            save_now = done % ckpt_every == 0 or final
            if log_now or save_now:
                host = jax.device_get(pending)
                pending = []
                losses = np.array([m["loss"] for m in host])
                if not np.all(np.isfinite(losses)):
                    bad = done - len(host) + int(np.argmin(np.isfinite(losses)))
                    raise NonFiniteLossError(
                        f"non-finite training loss ({losses[~np.isfinite(losses)][0]}) at step {bad + 1}; the run "
                        f"stopped without saving. Last good checkpoint: step {mngr.latest_step()} in "
                        f"{os.path.join(workdir, 'checkpoints')}. Lower optimizer.learning_rate or set "
                        f"optimizer.grad_clip_norm.")
                dt = time.perf_counter() - t_log
                img_s = n_log * config.batch_size / max(dt, 1e-9)
                last = {"train_loss": float(losses.mean()), "train_acc": float(np.mean([m["acc"] for m in host])),
                        "learning_rate": float(host[-1]["learning_rate"]),
                        "grad_norm": float(host[-1]["grad_norm"]), "img_per_sec": img_s,
                        "epoch": done / steps_per_epoch}
                if log_now:
                    writer.write(done, last)
                bar.update(n_log, loss=f"{last['train_loss']:.4f}", img_s=f"{img_s:.0f}")
                t_log, n_log = time.perf_counter(), 0
            if done % eval_every == 0 or final:
                ev = evaluate(config, p_eval, state, batch_sharding)
                writer.write(done, ev)
                last.update(ev)
                msg = f"step {done}: eval top-1 {ev['eval_top1']:.4f} top-5 {ev['eval_top5']:.4f}"
                if "ema_eval_top1" in ev:
                    msg += f" | EMA top-1 {ev['ema_eval_top1']:.4f}"
                bar.write(msg)
                t_log = time.perf_counter()  # eval time is not training throughput
            if stop_after_step is not None and done >= stop_after_step:
                preempt.requested = True
            # Multi-process runs agree on stopping at log steps only (it costs a cross-process gather).
            stop = _agreed(preempt.requested) if (log_now or jax.process_count() == 1) else False
            if save_now or stop:
                save_checkpoint(mngr, done, state, it)
                last_saved = done
            if stop:
                bar.write(f"SIGTERM: saved step {done}, exiting; re-run the same command to resume.")
                break
        mngr.wait_until_finished()
    finally:
        # Let an in-flight async save finish so that the last completed checkpoint is intact.
        mngr.wait_until_finished()
        mngr.close()
        bar.close()
        writer.close()
        preempt.restore()
    if is_main and config.plot:
        try:
            png = metrics_io.plot_curves(workdir)
            if png:
                log.info("training curves: %s", png)
        except Exception as e:  # a plotting problem must not fail a finished run
            log.warning("could not draw the training curves: %s", e)
    last["step"] = int(jax.device_get(state.step))
    last["last_checkpoint"] = last_saved
    last["preempted"] = bool(preempt.requested)
    return {"metrics": last, "state": state}
