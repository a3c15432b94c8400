"""Optimizers and learning-rate schedules from a config (optax)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from train.checks import ConfigError


def lr_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """Linear warmup, then cosine / linear / staircase-exponential / constant, in optimizer steps."""
    s, base = config.schedule, float(config.optimizer.learning_rate)
    warmup = int(round(s.warmup_epochs * steps_per_epoch))
    rest = max(total_steps - warmup, 1)
    if s.name == "cosine":
        main = optax.cosine_decay_schedule(base, rest, alpha=s.end_factor)
    elif s.name == "linear":
        main = optax.linear_schedule(base, base * s.end_factor, rest)
    elif s.name == "exponential":
        main = optax.exponential_decay(base, max(int(round(s.decay_epochs * steps_per_epoch)), 1), s.decay_rate,
                                       staircase=True)
    elif s.name == "constant":
        main = optax.constant_schedule(base)
    else:
        raise ConfigError("schedule.name", s.name, "one of cosine, linear, exponential, constant")
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(base * s.warmup_init, base, warmup), main], [warmup])


def decay_mask(params: Any) -> Any:
    """True for the leaves weight decay applies to: conv/linear kernels; not BatchNorm scales nor biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )


def make_optimizer(config: ml_collections.ConfigDict, schedule: Callable) -> optax.GradientTransformation:
    """The config's optimizer, with masked weight decay and optional global-norm clipping."""
    o = config.optimizer
    chain = []
    if o.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(o.grad_clip_norm))
    if o.name == "adamw":
        chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                                 mask=decay_mask))
        return optax.chain(*chain)
    # SGD / RMSProp: classic L2 (added to the gradient before momentum), as in the papers' frameworks.
    if o.weight_decay > 0:
        chain.append(optax.add_decayed_weights(o.weight_decay, mask=decay_mask))
    if o.name == "sgd":
        chain.append(optax.sgd(schedule, momentum=o.momentum or None, nesterov=o.nesterov))
    elif o.name == "rmsprop":
        # TF-style RMSProp (eps inside the sqrt, as the MobileNet/Xception papers' TensorFlow trainers).
        chain.append(optax.rmsprop(schedule, decay=o.rmsprop_decay, eps=o.eps, momentum=o.momentum or None,
                                   eps_in_sqrt=True, initial_scale=1.0))
    else:
        raise ConfigError("optimizer.name", o.name, "one of sgd, rmsprop, adamw")
    return optax.chain(*chain)


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    """Per-example softmax cross entropy with label smoothing, in float32."""
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if smoothing > 0:
        onehot = optax.smooth_labels(onehot, smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), onehot)
