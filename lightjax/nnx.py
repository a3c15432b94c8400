"""Use any lightjax model from Flax NNX, through ``flax.nnx.bridge.ToNNX``.

```python
from flax import nnx
import lightjax.nnx

model = lightjax.nnx.to_nnx("mobilenet_v2_100", variables)          # pretrained (e.g. convert.from_torch)
model = lightjax.nnx.to_nnx("mobilenet_v2_100", num_classes=10)      # fresh, initialised as the reference does
logits = model(x, train=False)                                       # x NHWC, like model.apply(variables, x)
logits = model(x, train=True, mutable=["batch_stats"])               # train mode: BatchNorm stats update in place

@nnx.jit
def step(model, optimizer, x, y):   # optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    def loss_fn(model):
        logits = model(x, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

variables = lightjax.nnx.to_linen_variables(model)                  # back to {'params', 'batch_stats'}
```

The wrapper holds the Linen module and its variables as NNX state: ``nnx.Param`` for ``params`` and
``nnx.BatchStat`` for ``batch_stats``, under the same paths as the Linen tree (``model.features_0['0']['kernel']``).
Train mode needs ``mutable=["batch_stats"]`` (the bridge applies the Linen module with nothing mutable
otherwise) and a ``dropout`` stream in ``rngs`` for models with dropout (``to_nnx`` adds one).
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import bridge

from lightjax.models import registry

#: Linen collection ↔ NNX variable type of every lightjax model's state.
COLLECTIONS: Tuple[Tuple[str, type], ...] = (("params", nnx.Param), ("batch_stats", nnx.BatchStat))


def to_nnx(
    model: Union[str, nn.Module],
    variables: Optional[Mapping[str, Any]] = None,
    *,
    rngs: Optional[nnx.Rngs] = None,
    input_shape: Optional[Tuple[int, int, int, int]] = None,
    **model_kwargs: Any,
) -> bridge.ToNNX:
    """Wraps a lightjax (Linen) model as an NNX module holding its variables.

    Args:
      model: a registered name (built with ``create_model(model, **model_kwargs)``) or a Linen module.
      variables: ``{'params', 'batch_stats'}`` to load (from ``model.init``, ``convert.from_torch``,
        ``convert.load_flax``...). ``None`` initialises them with ``rngs.params()``.
      rngs: NNX random streams; default ``nnx.Rngs(params=0, dropout=1)``. The ``dropout`` stream feeds the
        model's dropout in train mode.
      input_shape: NHWC shape used to discover the variable structure; default ``(1, S, S, in_chans)`` at the
        model's native size (only shapes are traced; the variable shapes of these CNNs do not depend on it).
      **model_kwargs: ``create_model`` fields when ``model`` is a name.

    Returns:
      a ``flax.nnx.bridge.ToNNX`` module: ``module(x, train=False)`` equals ``model.apply(variables, x, train=False)``.

    Raises:
      ValueError: ``variables`` do not have the model's structure or shapes (every difference is listed).
    """
    if isinstance(model, str):
        name = model
        model = registry.create_model(model, **model_kwargs)
    elif model_kwargs:
        raise TypeError(f"to_nnx: model_kwargs {sorted(model_kwargs)} only apply when the model is given by name")
    else:
        name = type(model).__name__
    if input_shape is None:
        size = registry.model_info(name)["input_size"] if name in registry.list_models() else 224
        input_shape = (1, size, size, getattr(model, "in_chans", 3))
    if rngs is None:
        rngs = nnx.Rngs(params=0, dropout=1)
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)

    if variables is None:
        # Initialised by Linen under jit: the bridge's own lazy_init would run the forward eagerly, op by op.
        variables = registry.init_variables(model, rngs.params(), x.shape, x.dtype)

    # The structure comes from an abstract lazy_init (shapes only, nothing computed); the random streams are
    # taken from a concrete wrapper because eval_shape would leave the keys abstract.
    # Same stream names as ``rngs`` so that the graph structures agree when merged.
    streams = {stream: 0 for stream, _ in rngs.items()}
    abstract = nnx.eval_shape(
        lambda: bridge.lazy_init(bridge.ToNNX(model, rngs=nnx.Rngs(**streams)), jnp.zeros(x.shape), train=False))
    graphdef, *states, _ = nnx.split(abstract, *(t for _, t in COLLECTIONS), ...)
    rng_state = nnx.state(bridge.ToNNX(model, rngs=rngs))
    _check_structure(name, variables, {col: nnx.to_pure_dict(s) for (col, _), s in zip(COLLECTIONS, states)})
    for (col, _), state in zip(COLLECTIONS, states):
        if col in variables:
            nnx.replace_by_pure_dict(state, jax.tree_util.tree_map(jnp.asarray, dict(variables[col])))
    return nnx.merge(graphdef, *states, rng_state)


def _check_structure(name: str, variables: Mapping[str, Any], expected: Dict[str, Any]) -> None:
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError(f"to_nnx({name}): variables must be a mapping with a 'params' collection")
    want = {f"{col}{jax.tree_util.keystr(k)}": v.shape for col, tree in expected.items()
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}
    got = {f"{col}{jax.tree_util.keystr(k)}": jnp.shape(v) for col, tree in variables.items()
           for k, v in jax.tree_util.tree_leaves_with_path(tree)}
    problems = [f"missing {k} {s}" for k, s in want.items() if k not in got]
    problems += [f"unexpected {k}" for k in got if k not in want]
    problems += [f"shape {k}: model {s}, given {tuple(got[k])}" for k, s in want.items()
                 if k in got and tuple(got[k]) != tuple(s)]
    if problems:
        raise ValueError(f"to_nnx({name}): the variables do not fit the model ({len(problems)} problem(s)):\n  "
                         + "\n  ".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else ""))


def to_linen_variables(module: bridge.ToNNX) -> Dict[str, Any]:
    """The Linen variables ``{'params', 'batch_stats'}`` of a wrapped model (for ``model.apply``, saving, export)."""
    out = {}
    for col, vtype in COLLECTIONS:
        tree = nnx.to_pure_dict(nnx.state(module, vtype))
        if tree:
            out[col] = tree
    return out
