"""Run outputs: JSONL metrics, TensorBoard events, the console progress bar and the final PNG of curves.

Only process 0 writes; other processes get no-op writers.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "training_curves.png"


def _import_tensorboardx_writer():
    """``tensorboardX.SummaryWriter``, imported without letting tensorboardX import PyTorch.

    tensorboardX's writer module does ``try: import torch`` (only to accept torch tensors as values); with
    torch installed that cost every training run ~3 s and ~0.5 GB before the first step. Scalars here are
    Python floats, so the import of torch is blocked while tensorboardX loads (it handles the ImportError).
    """
    import sys

    block = "torch" not in sys.modules
    if block:
        sys.modules["torch"] = None  # makes ``import torch`` raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        if block:
            del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """Appends ``{"step": s, ...}`` lines to ``workdir/metrics.jsonl`` and scalars to TensorBoard."""

    def __init__(self, workdir: str, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self._tb = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        # A resumed run repeats the steps after its last checkpoint: drop their records so the file stays a
        # single, monotonic history.
        if os.path.exists(self.path):
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
        try:
            SummaryWriter = _import_tensorboardx_writer()
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        except ImportError:  # TensorBoard output is optional
            self._tb = None

    def write(self, step: int, values: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        rec = {"step": int(step), **{k: _py(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _py(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def read_metrics(path: str) -> List[Dict[str, Any]]:
    """All records of a ``metrics.jsonl`` (tolerates a truncated last line from a killed run)."""
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def plot_curves(workdir: str, out: Optional[str] = None) -> Optional[str]:
    """Draws train loss / accuracy and eval top-1 (model and EMA) against step into a PNG."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(path)

    def series(key):
        pts = [(r["step"], r[key]) for r in recs if key in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(*series("train_loss"), label="train loss")
    axes[0].plot(*series("eval_loss"), "o-", label="eval loss")
    axes[0].set_title("loss")
    axes[1].plot(*series("train_acc"), label="train acc (augmented batches)")
    axes[1].plot(*series("eval_top1"), "o-", label="eval top-1")
    if any("ema_eval_top1" in r for r in recs):
        axes[1].plot(*series("ema_eval_top1"), "s--", label="EMA eval top-1")
    axes[1].set_title("accuracy")
    axes[2].plot(*series("learning_rate"))
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    fig.tight_layout()
    out = out or os.path.join(workdir, CURVES_FILE)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


class Progress:
    """tqdm bar with step, loss, img/s and ETA (process 0 only)."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                             bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]")

    def update(self, n: int, **postfix: Any) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def write(self, msg: str) -> None:
        if self._bar is not None:
            self._bar.write(msg)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
