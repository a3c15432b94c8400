"""``python -m lightjax.models [pattern]``: builds every registered model and prints name, input size,
parameter count and output shape (shapes only: ``jax.eval_shape``, no computation)."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

import lightjax.models as lm


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = lm.list_models(argv[0] if argv else None)
    if not names:
        print(f"no model matches {argv[0]!r}", file=sys.stderr)
        return 1
    print(f"{'model':<26} {'input':>11} {'params':>12}  output shape")
    for name in names:
        model = lm.create_model(name)
        size = lm.model_info(name)["input_size"]
        x = jax.ShapeDtypeStruct((1, size, size, model.in_chans), jnp.float32)
        out, variables = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False), x)
        n = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(variables["params"]))
        shape = ", ".join(str(tuple(o.shape)) for o in jax.tree_util.tree_leaves(out))
        print(f"{name:<26} {f'{size}x{size}x{model.in_chans}':>11} {n:>12,}  {shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
