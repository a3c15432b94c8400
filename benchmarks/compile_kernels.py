"""XLA compile time vs the number of DISTINCT fusion kernels (prints a table).

A gradient program of ``K`` train-mode BatchNorm + ReLU blocks is compiled twice: all blocks with one shape,
and each block with its own channel count. Both have the same number of fusions; on XLA:CPU the first compiles
in about the time of one block, because identical fusions are compiled once. Model compile time therefore
follows the number of distinct (op pattern, shape) kernels, not the depth of the network.

    python benchmarks/compile_kernels.py [--blocks 40] [--repeats 2]
"""

from __future__ import annotations

import argparse
import re
import time

import jax
import jax.numpy as jnp
from jax import lax


def _program(shapes):
    def f(xs, ws):
        total = 0.0
        for x, w in zip(xs, ws):
            m = jnp.mean(x, axis=(0, 1, 2))
            v = jnp.mean((x - m) ** 2, axis=(0, 1, 2))
            y = jnp.maximum((x - m) * lax.rsqrt(v + 1e-5) * w, 0.0)
            total = total + jnp.sum(y * y)
        return total

    xs = [jnp.ones(s, jnp.float32) for s in shapes]
    ws = [jnp.ones(s[-1], jnp.float32) for s in shapes]
    return jax.jit(jax.grad(f, argnums=(0, 1))).lower(xs, ws)


def compile_seconds(shapes) -> tuple:
    """(XLA compile seconds, number of fusions) of the gradient program for these block shapes."""
    lowered = _program(shapes)
    t = time.perf_counter()
    compiled = lowered.compile()
    return time.perf_counter() - t, len(re.findall(r" fusion\(", compiled.as_text()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--blocks", type=int, default=40)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    jax.jit(lambda v: v + 1).lower(1.0).compile()  # one-time backend start-up, not counted
    cases = {
        "1 block": [(8, 14, 14, 96)],
        f"{a.blocks} identical blocks": [(8, 14, 14, 96)] * a.blocks,
        f"{a.blocks} distinct widths": [(8, 14, 14, 96 + 8 * i) for i in range(a.blocks)],
    }
    print(f"backend {jax.default_backend()}, jax {jax.__version__}")
    print("| program | fusions | compile s (each repeat) |")
    print("|---|---|---|")
    for name, shapes in cases.items():
        runs = [compile_seconds(shapes) for _ in range(a.repeats)]
        print(f"| {name} | {runs[0][1]} | {' / '.join(f'{s:.2f}' for s, _ in runs)} |", flush=True)


if __name__ == "__main__":
    main()
