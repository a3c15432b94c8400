"""Compare lightjax models by size and computation: ``python -m lightjax.summary [PATTERN]``.

For every registered model (or those matching a shell pattern such as ``"mobilenet*"``) at its native input
size and batch 1:

* **params**: elements of the ``params`` collection (trainable parameters; ``batch_stats`` excluded, as
  PyTorch's ``parameters()`` and the published figures count them).
* **MACs (analytic)**: multiply-accumulates of the convolutions and dense layers only (the torchvision/paper
  convention: no BatchNorm, activation, pooling or residual adds), counted from the model's jaxpr: for each
  ``conv_general_dilated`` equation, output elements × kernel contraction size (``kh·kw·C_in/groups``), for each
  ``dot_general``, output elements × contracted size. The count is taken with the XLA convolution formulation
  forced (``with ops.formulation('xla')``) so that a backend-specific formulation of depthwise convolutions
  (shifted multiply-adds on CPU) cannot hide convolutions from it.
* **MACs (XLA)**: ``jax.jit(forward).lower(...).compile().cost_analysis()['flops'] / 2`` (XLA counts 2 flops
  per multiply-add), compiled with the XLA convolution formulation by default (``conv_impl=None`` compiles the
  backend's own). A cross-check from the compiler rather than the same convention: XLA adds the elementwise
  work (BatchNorm, activations, pooling, adds) and leaves out kernel taps that fall in the zero padding; the
  ratio column shows the net difference (0.98-1.12 on these models).
* **activations**: at batch 1, float32, (a) the bytes written by all conv/dense layers (fvcore's "activations"
  convention, i.e. what a layer-by-layer runtime that keeps each layer output once would write) and (b) XLA's
  compiled ``memory_analysis().temp_size_in_bytes`` (the scratch memory XLA's buffer assignment reserves for
  the inference forward, weights and input excluded).
* **published**: the figures of ``REFERENCE.md`` (:data:`PUBLISHED`) with the relative difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from lightjax import ops
from lightjax.models import registry


# ----------------------------------------------------------------------------------------------------------
# Published figures, transcribed from ../shared/REFERENCE.md ("Variants and reference figures").
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Published:
    """One row of the reference table.

    Attributes:
      label: the row's name in REFERENCE.md.
      names: lightjax / torchvision / timm names this row describes (a registered model matches a row when its
        name, or the last word of its ``model_info(name)['reference']``, is one of them).
      params: parameter count (trainable only).
      params_exact: True when ``params`` is an exact count (a live PyTorch module), False when rounded ("4.23M").
      macs_g: multiply-adds in G (conv + fc only).
      top1: ImageNet top-1 accuracy as published (text: some rows give two figures).
      source: where the weights / figures come from.
    """

    label: str
    names: Tuple[str, ...]
    params: int
    params_exact: bool
    macs_g: float
    top1: str
    source: str


PUBLISHED: Tuple[Published, ...] = (
    Published("squeezenet1_0", ("squeezenet1_0",), 1_248_424, True, 0.82, "58.09", "torchvision"),
    Published("squeezenet1_1", ("squeezenet1_1",), 1_235_496, True, 0.35, "58.18", "torchvision"),
    Published("mobilenet_v1 1.0-224", ("mobilenet_v1", "mobilenet_v1_100", "mobilenetv1_100", "mobilenet_v1_1_0"),
              4_230_000, False, 0.569, "70.6 (paper), 75.4 (timm ra4)", "paper / timm mobilenetv1_100"),
    Published("mobilenet_v2 1.0", ("mobilenet_v2", "mobilenet_v2_100", "mobilenetv2_100", "mobilenet_v2_1_0"),
              3_504_872, True, 0.30, "71.88 / 72.15", "torchvision mobilenet_v2"),
    Published("mobilenet_v3_large", ("mobilenet_v3_large", "mobilenet_v3_large_100", "mobilenetv3_large_100"),
              5_483_032, True, 0.217, "74.04 / 75.27", "torchvision"),
    Published("mobilenet_v3_small", ("mobilenet_v3_small", "mobilenet_v3_small_100", "mobilenetv3_small_100"),
              2_542_856, True, 0.057, "67.67", "torchvision"),
    Published("shufflenet v1 1.0x g=3", ("shufflenet_v1_g3", "shufflenet_v1_x1_0_g3", "shufflenet_v1_100_g3",
                                         "shufflenet_v1_g3_x1_0", "shufflenet_v1_1_0_g3"),
              1_900_000, False, 0.138, "67.8", "paper (megvii)"),
    Published("shufflenet v1 1.0x g=8", ("shufflenet_v1_g8", "shufflenet_v1_x1_0_g8", "shufflenet_v1_100_g8",
                                         "shufflenet_v1_g8_x1_0", "shufflenet_v1_1_0_g8"),
              2_400_000, False, 0.138, "68.0", "paper (megvii)"),
    Published("shufflenet_v2_x0_5", ("shufflenet_v2_x0_5",), 1_366_792, True, 0.04, "60.55", "torchvision"),
    Published("shufflenet_v2_x1_0", ("shufflenet_v2_x1_0",), 2_278_604, True, 0.145, "69.36", "torchvision"),
    Published("shufflenet_v2_x1_5", ("shufflenet_v2_x1_5",), 3_503_624, True, 0.296, "73.00", "torchvision"),
    Published("shufflenet_v2_x2_0", ("shufflenet_v2_x2_0",), 7_393_996, True, 0.583, "76.23", "torchvision"),
    Published("xception (Chollet, 299 px)", ("xception", "legacy_xception", "xception_chollet"),
              22_855_952, True, 8.4, "79.0", "Keras / timm legacy_xception"),
    Published("xception41 (aligned)", ("xception41", "aligned_xception41"), 26_970_000, False, 9.28, "78.55", "timm"),
    Published("xception65 (aligned)", ("xception65", "aligned_xception65"), 39_920_000, False, 13.96, "79.56", "timm"),
    Published("xception71 (aligned)", ("xception71", "aligned_xception71"), 42_340_000, False, 18.09, "79.92", "timm"),
)


def published_for(name: str) -> Optional[Published]:
    """The published row describing registered model ``name``, or None (e.g. CIFAR or DeepLab variants)."""
    keys = {name}
    ref = registry.model_info(name).get("reference")
    if isinstance(ref, str) and ref.split():
        keys.add(ref.split()[-1])
    for row in PUBLISHED:
        if keys & set(row.names):
            return row
    return None


# ----------------------------------------------------------------------------------------------------------
# Analytic count from the jaxpr.
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class JaxprCount:
    """What :func:`count_jaxpr` found: multiply-adds and layer-output sizes of conv/dense equations."""

    macs: int = 0
    conv_macs: int = 0
    dot_macs: int = 0
    layer_output_bytes: int = 0
    num_convs: int = 0
    num_dots: int = 0

    def add(self, other: "JaxprCount", times: int = 1) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + times * getattr(other, f.name))


def _sub_jaxprs(value: Any) -> List[Any]:
    """Jaxprs held in an equation parameter (a ClosedJaxpr, a Jaxpr, or a tuple of them)."""
    if hasattr(value, "eqns"):
        return [value]
    if hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        return [value.jaxpr]
    if isinstance(value, (tuple, list)):
        return [j for v in value for j in _sub_jaxprs(v)]
    return []


def _nbytes(aval: Any) -> int:
    return int(np.prod(aval.shape, dtype=np.int64)) * np.dtype(aval.dtype).itemsize


def count_jaxpr(jaxpr: Any) -> JaxprCount:
    """Counts conv / dot_general multiply-adds in a (closed) jaxpr, descending into nested jaxprs.

    ``conv_general_dilated``: output elements × (kernel spatial size × kernel input features); the kernel's input
    features are already ``C_in / feature_group_count``, so grouped and depthwise convolutions count right.
    ``dot_general``: output elements × product of the contracted dimensions. Nested calls (``pjit``,
    ``custom_jvp_call``, ``custom_vjp_call``, ``remat``) count once, ``scan`` bodies ``length`` times, ``cond``
    the most expensive branch. A ``while`` loop has no static trip count and is refused.
    """
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = JaxprCount()
    for eqn in jaxpr.eqns:
        prim = eqn.primitive.name
        if prim == "conv_general_dilated":
            out = eqn.outvars[0].aval
            rhs = eqn.invars[1].aval
            rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature dim, in feature dim, *spatial)
            contraction = int(np.prod([rhs.shape[d] for d in rhs_spec[1:]], dtype=np.int64))
            macs = int(np.prod(out.shape, dtype=np.int64)) * contraction
            total.add(JaxprCount(macs=macs, conv_macs=macs, layer_output_bytes=_nbytes(out), num_convs=1))
        elif prim == "dot_general":
            out = eqn.outvars[0].aval
            lhs = eqn.invars[0].aval
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            contraction = int(np.prod([lhs.shape[d] for d in lhs_contract], dtype=np.int64))
            macs = int(np.prod(out.shape, dtype=np.int64)) * contraction
            total.add(JaxprCount(macs=macs, dot_macs=macs, layer_output_bytes=_nbytes(out), num_dots=1))
        elif prim == "while":
            if any(count_jaxpr(j).macs for j in _sub_jaxprs(eqn.params.get("body_jaxpr"))):
                raise NotImplementedError("count_jaxpr: a while loop with convolutions has no static trip count")
        elif prim == "cond":
            branches = [count_jaxpr(j) for j in _sub_jaxprs(eqn.params["branches"])]
            if branches:
                total.add(max(branches, key=lambda c: c.macs))
        else:
            times = int(eqn.params.get("length", 1)) if prim == "scan" else 1
            for value in eqn.params.values():
                for sub in _sub_jaxprs(value):
                    total.add(count_jaxpr(sub), times)
    return total


# ----------------------------------------------------------------------------------------------------------
# One model.
# ----------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ModelSummary:
    """Figures of one model at its native input size, batch 1, float32 (see the module docstring)."""

    name: str
    family: str
    input_size: int
    params: int
    macs: int  # analytic, conv + dense
    conv_macs: int
    dot_macs: int
    layer_output_bytes: int
    xla_flops: Optional[float] = None
    xla_temp_bytes: Optional[int] = None
    compile_s: Optional[float] = None
    published: Optional[Published] = None

    @property
    def xla_macs(self) -> Optional[float]:
        """XLA's flops / 2 (XLA counts a multiply-add as 2 flops)."""
        return None if self.xla_flops is None else self.xla_flops / 2

    @property
    def params_diff(self) -> Optional[float]:
        """Relative difference of ``params`` to the published figure."""
        return None if self.published is None else self.params / self.published.params - 1

    @property
    def macs_diff(self) -> Optional[float]:
        """Relative difference of the analytic MACs to the published figure."""
        return None if self.published is None else self.macs / (self.published.macs_g * 1e9) - 1


def _abstract_inputs(name: str, model: Any, batch: int) -> Tuple[Any, Any]:
    size = registry.model_info(name)["input_size"]
    in_chans = getattr(model, "in_chans", 3)
    x = jax.ShapeDtypeStruct((batch, size, size, in_chans), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape, x.dtype), train=False))
    return variables, x


def summarize(name: str, *, xla: bool = True, batch: int = 1, conv_impl: Optional[str] = "xla",
              **model_kwargs: Any) -> ModelSummary:
    """Computes the figures of one registered model.

    Args:
      name: a name from ``lightjax.models.list_models()``.
      xla: also compile the forward and read XLA's cost and memory analyses (slow for big models).
      batch: batch size (the table uses 1; MACs are per batch, not per image).
      conv_impl: convolution formulation compiled for the XLA figures: ``"xla"`` (default: one convolution op
        per layer, comparable across backends) or ``None`` for the backend default (on CPU lightjax's
        ``"cpu"`` formulation, whose grouped 1x1 convolutions multiply block-diagonal zeros, so XLA's count
        grows with the group count).
      **model_kwargs: ``create_model`` fields (defaults: the ImageNet head of the variant).

    Returns:
      A :class:`ModelSummary`.
    """
    model = registry.create_model(name, **model_kwargs)
    variables, x = _abstract_inputs(name, model, batch)
    params = sum(int(np.prod(a.shape, dtype=np.int64)) for a in jax.tree_util.tree_leaves(variables.get("params", {})))

    def forward(v, inp):
        return model.apply(v, inp, train=False)

    # The jaxpr is traced with the XLA conv formulation so that every convolution appears as one equation.
    with ops.formulation("xla"):
        counted = count_jaxpr(jax.make_jaxpr(forward)(variables, x))
    summary = ModelSummary(
        name=name, family=registry.model_family(name), input_size=x.shape[1], params=params,
        macs=counted.macs, conv_macs=counted.conv_macs, dot_macs=counted.dot_macs,
        layer_output_bytes=counted.layer_output_bytes, published=published_for(name),
    )
    if xla:
        # The weights are arguments, not constants, so XLA cannot fold any of the work away.
        start = time.perf_counter()
        with ops.formulation(conv_impl):
            compiled = jax.jit(forward).lower(variables, x).compile()
        summary.compile_s = time.perf_counter() - start
        cost = compiled.cost_analysis()
        if isinstance(cost, (list, tuple)):  # older jax returned one dict per computation
            cost = cost[0] if cost else {}
        summary.xla_flops = float(cost.get("flops", float("nan"))) if cost else None
        try:
            summary.xla_temp_bytes = int(compiled.memory_analysis().temp_size_in_bytes)
        except (NotImplementedError, AttributeError):
            summary.xla_temp_bytes = None
    return summary


# ----------------------------------------------------------------------------------------------------------
# Table.
# ----------------------------------------------------------------------------------------------------------
COLUMNS = (
    "model", "input", "params", "pub. params", "Δ params", "MACs (G)", "XLA MACs (G)", "XLA/analytic",
    "pub. MACs (G)", "Δ MACs", "layer outputs (MB)", "XLA temp (MB)", "pub. top-1", "source",
)


def _pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{100 * v:+.1f}%"


def _row(s: ModelSummary) -> List[str]:
    p = s.published
    return [
        s.name,
        str(s.input_size),
        f"{s.params:,}",
        "–" if p is None else (f"{p.params:,}" if p.params_exact else f"{p.params / 1e6:.2f}M"),
        _pct(s.params_diff),
        f"{s.macs / 1e9:.4f}",
        "–" if s.xla_macs is None else f"{s.xla_macs / 1e9:.4f}",
        "–" if s.xla_macs is None or not s.macs else f"{s.xla_macs / s.macs:.3f}",
        "–" if p is None else f"{p.macs_g:g}",
        _pct(s.macs_diff),
        f"{s.layer_output_bytes / 2**20:.1f}",
        "–" if s.xla_temp_bytes is None else f"{s.xla_temp_bytes / 2**20:.1f}",
        "–" if p is None else p.top1,
        "–" if p is None else p.source,
    ]


def format_table(summaries: Sequence[ModelSummary]) -> str:
    """A Markdown table of the summaries (one row per model)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_row(s)) + " |" for s in summaries]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m lightjax.summary [PATTERN] [--no-xla]``: prints the Markdown comparison table."""
    parser = argparse.ArgumentParser(prog="python -m lightjax.summary", description=__doc__.split("\n")[0])
    parser.add_argument("pattern", nargs="?", default=None, help="shell pattern of model names, e.g. 'mobilenet*'")
    parser.add_argument("--no-xla", action="store_true", help="skip XLA compilation (analytic figures only)")
    parser.add_argument("--conv-impl", default="xla",
                        help="formulation compiled for the XLA columns: xla (default), cpu, or default (the backend's)")
    args = parser.parse_args(argv)
    impl = None if args.conv_impl == "default" else args.conv_impl
    names = registry.list_models(args.pattern)
    if not names:
        parser.error(f"no registered model matches {args.pattern!r}; registered: {', '.join(registry.list_models())}")
    summaries = []
    for name in names:
        s = summarize(name, xla=not args.no_xla, conv_impl=impl)
        summaries.append(s)
        print(f"  {name}: {s.macs / 1e9:.3f} GMACs" + (f", compiled in {s.compile_s:.1f}s" if s.compile_s else ""),
              file=sys.stderr, flush=True)
    print(format_table(summaries))
    print(
        "\nBatch 1, float32, native input size. MACs: conv + dense multiply-adds counted from the jaxpr; XLA MACs: "
        f"compiled cost_analysis()['flops'] / 2 on {jax.default_backend()}, conv formulation {args.conv_impl!r} "
        "(includes elementwise work, excludes taps that fall in the padding); "
        "layer outputs: bytes written by conv/dense layers; XLA temp: memory_analysis().temp_size_in_bytes."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
