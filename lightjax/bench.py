"""``python -m lightjax.bench [args]``: runs the repository's benchmark, ``benchmarks/bench.py``.

The benchmark harness is a tool of the source checkout, not part of the library (it needs PyTorch, timm and the
repo's ``tests/`` reference modules): see ``python -m benchmarks.bench --help`` and docs/benchmarks.md. This
forwarder only finds ``benchmarks/`` next to the ``lightjax`` package; importing it imports neither the
benchmark nor torch.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

#: The repository root, when this package runs from a source checkout (``benchmarks/`` beside ``lightjax/``).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_script() -> Optional[str]:
    """The path of ``benchmarks/bench.py`` beside this package, or None (an installed wheel has none)."""
    path = os.path.join(REPO_ROOT, "benchmarks", "bench.py")
    return path if os.path.isfile(path) else None


def main() -> None:
    """Runs ``benchmarks/bench.py`` as ``__main__`` with the command line of this process."""
    import runpy

    script = bench_script()
    if script is None:
        raise SystemExit("python -m lightjax.bench: the benchmark lives in the lightjax repository "
                         f"(benchmarks/bench.py), not in the installed package ({os.path.dirname(__file__)}); run "
                         "`python -m benchmarks.bench` from a source checkout")
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)  # for `import benchmarks` and the children it starts
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
