"""Constant folding of a traced forward: everything that depends on the weights alone is computed once.

An exporter that traces ``model.apply(variables, x)`` sees the eval BatchNorm's ``scale * rsqrt(var + eps)``
and ``bias - mean * that`` (and the broadcasts of every per-channel constant) as graph operations: ~6 per
BatchNorm, ~2/3 of a MobileNet's equations. :func:`fold_constants` computes them before the exporter lowers
anything, so its graph holds only the per-image work (ShuffleNet v2: 1,320 raw ONNX nodes -> 479; jax2onnx's
own passes are quadratic in the node count).

The folded equations are evaluated with numpy when every one of them is an elementwise/broadcast primitive
numpy computes the same way (one ``float32`` rounding per operation; what BatchNorm folding needs: a jitted
evaluation of MobileNetV2's 417 folded equations cost a 3.3 s XLA compile), else as one jitted function.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import numpy as np


def _broadcast_in_dim(x, *, shape, broadcast_dimensions, **_):
    expanded = [1] * len(shape)
    for src, dst in enumerate(broadcast_dimensions):
        expanded[dst] = x.shape[src]
    return np.broadcast_to(np.reshape(x, expanded), shape)


def _rsqrt(x, **_):
    return np.reciprocal(np.sqrt(x))


#: numpy implementations of the primitives that folding meets (name -> fn(*args, **params)).
_NUMPY = {
    "add": lambda a, b, **_: np.add(a, b),
    "sub": lambda a, b, **_: np.subtract(a, b),
    "mul": lambda a, b, **_: np.multiply(a, b),
    "div": lambda a, b, **_: np.divide(a, b),
    "max": lambda a, b, **_: np.maximum(a, b),
    "min": lambda a, b, **_: np.minimum(a, b),
    "neg": lambda a, **_: np.negative(a),
    "sqrt": lambda a, **_: np.sqrt(a),
    "rsqrt": _rsqrt,
    "broadcast_in_dim": _broadcast_in_dim,
    "reshape": lambda a, *, new_sizes, **_: np.reshape(a, new_sizes),
    "squeeze": lambda a, *, dimensions, **_: np.squeeze(a, tuple(dimensions)),
    "expand_dims": lambda a, *, dimensions, **_: np.expand_dims(a, tuple(dimensions)),
    "transpose": lambda a, *, permutation, **_: np.transpose(a, permutation),
    "convert_element_type": lambda a, *, new_dtype, **_: np.asarray(a).astype(new_dtype),
    "copy": lambda a, **_: np.array(a),
    "copy_p": lambda a, **_: np.array(a),
}


def _bind_all(eqns: Sequence[Any], env: Dict[Any, Any], literal: type, dropvar: type) -> None:
    """Binds ``eqns`` in order into the current trace (like ``jax.core.eval_jaxpr``), reading/writing ``env``."""
    for eqn in eqns:
        invals = [v.val if isinstance(v, literal) else env[v] for v in eqn.invars]
        bound = eqn.primitive.get_bind_params(eqn.params)  # a dict; (subfuns, params) in older jax
        subfuns, params = bound if isinstance(bound, tuple) else ((), bound)
        manager = getattr(getattr(eqn, "ctx", None), "manager", None)
        with manager if manager is not None else contextlib.nullcontext():
            outs = eqn.primitive.bind(*subfuns, *invals, **params)
        outs = outs if eqn.primitive.multiple_results else [outs]
        for v, o in zip(eqn.outvars, outs):
            if not isinstance(v, dropvar):
                env[v] = o


def _numpy_all(eqns: Sequence[Any], env: Dict[Any, Any], literal: type) -> None:
    for eqn in eqns:
        args = [np.asarray(v.val, v.aval.dtype) if isinstance(v, literal) else env[v] for v in eqn.invars]
        (out,) = eqn.outvars
        env[out] = np.asarray(_NUMPY[eqn.primitive.name](*args, **eqn.params), out.aval.dtype)


def fold_constants(fn: Callable[..., Any], consts: Sequence[Any], x: Any, report: Optional[Dict[str, Any]] = None) -> Any:
    """``fn(consts, x)`` with every equation that depends on ``consts`` alone computed now.

    Meant to be called while an exporter traces (``x`` its tracer, possibly with a symbolic batch): the
    jaxpr of ``fn`` is split into the equations reachable from ``x`` and the rest; the rest is evaluated now
    (numpy, or one jitted call kept out of the exporter's trace by ``jax.ensure_compile_time_eval``) and its
    results enter the exporter's graph as constants; the other equations are bound into the exporter's
    trace. Equations with effects or with symbolically shaped outputs stay traced.

    Args:
      fn: ``fn(consts, x) -> pytree of arrays``.
      consts: a list of arrays (e.g. the model's variables, flattened).
      x: the traced input.
      report: if given, filled with ``folded`` / ``traced`` (equation counts) and ``unused`` (indices of
        ``consts`` the function never reads: variables the model does not have).

    Returns:
      What ``fn(consts, x)`` returns, traced into the current trace.
    """
    from jax.extend import core as jcore

    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(list(consts), jax.ShapeDtypeStruct(x.shape, x.dtype))
    jaxpr = closed.jaxpr
    *const_vars, x_var = jaxpr.invars
    known = set(jaxpr.constvars) | set(const_vars)

    def is_concrete(v: Any) -> bool:
        return all(isinstance(d, (int, np.integer)) for d in getattr(v.aval, "shape", ()))

    traced, folded = [], []
    for eqn in jaxpr.eqns:
        if (not eqn.effects and all(isinstance(v, jcore.Literal) or v in known for v in eqn.invars)
                and all(is_concrete(v) for v in eqn.outvars)):
            folded.append(eqn)
            known.update(eqn.outvars)
        else:
            traced.append(eqn)
    needed = {v for e in traced for v in e.invars if not isinstance(v, jcore.Literal)}
    needed |= {v for v in jaxpr.outvars if not isinstance(v, jcore.Literal)}
    folded_outs = [o for e in folded for o in e.outvars]
    residuals = [v for v in (*jaxpr.constvars, *const_vars, *folded_outs) if v in needed]

    if report is not None:
        read = {v for e in jaxpr.eqns for v in e.invars if not isinstance(v, jcore.Literal)} | needed
        report.update(folded=len(folded), traced=len(traced),
                      unused=[i for i, v in enumerate(const_vars) if v not in read])
    inputs = {**dict(zip(jaxpr.constvars, closed.consts)), **dict(zip(const_vars, consts))}
    if all(e.primitive.name in _NUMPY and not e.primitive.multiple_results for e in folded):
        env = {v: np.asarray(a) for v, a in inputs.items()}
        _numpy_all(folded, env, jcore.Literal)
        values = [env[v] for v in residuals]
    else:
        def run_folded(ins: List[Any]) -> List[Any]:
            env = dict(zip(inputs, ins))
            _bind_all(folded, env, jcore.Literal, jcore.DropVar)
            return [env[v] for v in residuals]

        with jax.ensure_compile_time_eval():  # concrete inputs: evaluated now, not staged into the exporter's graph
            values = jax.jit(run_folded)(list(inputs.values()))
    env = dict(zip(residuals, values))
    env[x_var] = x
    _bind_all(traced, env, jcore.Literal, jcore.DropVar)
    outs = [v.val if isinstance(v, jcore.Literal) else env[v] for v in jaxpr.outvars]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)

