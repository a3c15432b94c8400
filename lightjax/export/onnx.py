"""ONNX export of a model's eval forward: native operators, a dynamic batch axis, preprocessing metadata.

```python
from lightjax import export
info = export.to_onnx("mobilenet_v2_100", variables, "mobilenet_v2_100.onnx")                  # NHWC input
info = export.to_onnx("mobilenet_v2_100", variables, "m.onnx", nchw_input=True, pretrained="mobilenet_v2_100.tv_in1k")
# python -m lightjax.export mobilenet_v2_100 weights.msgpack mobilenet_v2_100.onnx --nchw
```

How (each step is why the graph runs at onnxruntime's speed and equals lightjax's forward):

1. The model is traced under the ``"export"`` formulation (:mod:`lightjax.ops.backend`): convolutions as
   ``lax.conv_general_dilated``, and pools, the channel shuffle, global average pooling and the hard
   activations as named primitives (:mod:`lightjax.ops.export`) that :mod:`lightjax.export.onnx_plugins`
   lowers to ``MaxPool`` / ``AveragePool`` (explicit pads, ceil_mode) / ``GlobalAveragePool`` /
   ``Reshape``+``Transpose`` / ``HardSwish`` / ``HardSigmoid``.
2. Everything that depends on the weights only (the eval BatchNorm's ``scale / sqrt(var + eps)`` and shift,
   broadcasts of constants) is computed once (:func:`lightjax.export.fold.fold_constants`), so jax2onnx sees
   only the per-image graph (ShuffleNet v2: 1,320 raw nodes without this, 479 with; jax2onnx's own passes
   are quadratic in the node count).
3. jax2onnx (with only the plugin families a lightjax model needs: importing all of its plugins took ~20 s)
   writes the NHWC graph; every Conv sits between a Transpose pair.
4. onnxruntime's *basic* graph optimisation (constant folding, Conv+BatchNorm / Conv+Add / Conv+Mul fusion,
   transpose cancellation; the level whose output stays portable ONNX, no runtime-private operators) is run
   offline and its result saved; then exact rewrites (:mod:`lightjax.export.onnx_passes`): clamps to ``Clip``
   and ``Max(x, 0)`` to ``Relu`` (what runtimes fuse into a Conv), a Dense layer's bias into its ``Gemm``,
   unused opset imports dropped.
5. ``metadata_props`` record the lightjax version, model, input layout/size and, when known, the eval
   transform and class names (from a pretrained tag or the caller); the model is checked with
   ``onnx.checker`` and written atomically (temp file in the same directory, then ``os.replace``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from lightjax.export import onnx_passes as passes
from lightjax.export.fold import fold_constants
from lightjax.export.jax_export import _check_variables, atomic_write
from lightjax.export.metadata import (UNKNOWN, OnnxExportError, model_metadata, preprocessing_fields,  # noqa: F401
                                      pretrained_cfg_of, read_metadata)
from lightjax.models import registry
from lightjax.ops import backend
from lightjax.ops.geometry import to_pairs

#: Opset written when ``opset=None``: 17 is read by TensorRT 8.6+, OpenVINO 2022.3+, onnxruntime 1.14+ and
#: every operator lightjax emits exists in it (HardSwish needs 14).
DEFAULT_OPSET = 17
MIN_OPSET = 14
#: jax2onnx plugin families a lightjax forward needs (lax primitives, custom_jvp/pjit, jax.nn's relu): the
#: other families (equinox, flax nnx/linen examples...) cost ~15 s of imports and XLA compiles.
_PLUGIN_TREES = ("jax/lax", "jax/core", "jax/nn")
#: jax2onnx optimiser passes skipped (onnxruntime's basic optimisation does the same work, in linear time).
_SKIPPED_PASSES = ("remove_redundant_transpose_pairs",)


@dataclasses.dataclass(frozen=True)
class OnnxExport:
    """What :func:`to_onnx` wrote.

    Attributes:
      path: the ``.onnx`` file.
      model: the lightjax model name.
      input_name, input_shape: the graph input (batch symbolic as a string, e.g. ``("B", 224, 224, 3)``).
      layout: ``"NHWC"`` or ``"NCHW"``.
      output_names, output_shapes: the graph outputs.
      opset: the default-domain opset.
      op_counts: node count per operator type of the written graph.
      metadata: the ``metadata_props`` written.
      size_bytes: size of the file.
    """

    path: str
    model: str
    input_name: str
    input_shape: Tuple[Union[int, str], ...]
    layout: str
    output_names: Tuple[str, ...]
    output_shapes: Tuple[Tuple[Union[int, str], ...], ...]
    opset: int
    op_counts: Dict[str, int]
    metadata: Dict[str, str]
    size_bytes: int

    @property
    def num_nodes(self) -> int:
        return sum(self.op_counts.values())


# ----------------------------------------------------------------------------------------------------------
# Optional dependencies.
# ----------------------------------------------------------------------------------------------------------
def _require_onnx() -> Tuple[Any, Any, Any]:
    try:
        import jax2onnx
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"ONNX export needs jax2onnx, onnx and onnxruntime (pip install 'lightjax[onnx]'): {e}") from e
    return jax2onnx, onnx, onnxruntime


@contextlib.contextmanager
def _jax2onnx_for_lightjax() -> Any:
    """jax2onnx set up for a lightjax forward, restored afterwards.

    - Plugins: jax2onnx imports every plugin module it ships on its first conversion (~20 s here, XLA
      compiles of example modules included). Inside this block only :data:`_PLUGIN_TREES` are imported, plus
      lightjax's lowerings (:mod:`lightjax.export.onnx_plugins`), and the "all imported" flag is set; it is
      restored afterwards, so a later ``jax2onnx.to_onnx`` of the user's own function still gets everything.
    - Passes: jax2onnx's ``remove_redundant_transpose_pairs`` pass is quadratic in the graph (ShuffleNet v1:
      8 of 11 s of the export); onnxruntime's transpose optimiser, which runs next, cancels the same pairs
      (same final graph, same outputs), so it is skipped.
    - Its per-equation "output is connected" check scans the whole graph; a value whose producer node lists
      it is accepted at once (the full scan stays for the rest).

    If jax2onnx's internals differ from what this expects, its defaults run (slower, same result).
    """
    from jax2onnx.plugins import plugin_system as ps

    from lightjax.export import onnx_plugins  # noqa: F401  (registers the lowerings)

    previous = getattr(ps, "_already_imported_plugins", None)
    if previous is False and hasattr(ps, "_import_tree"):
        import pathlib

        import flax.nnx  # noqa: F401  (jax2onnx's jax.nn plugins patch flax.nnx's activations too)
        import jax2onnx.plugins as plugin_pkg

        root = pathlib.Path(os.path.dirname(plugin_pkg.__file__))
        for tree in _PLUGIN_TREES:
            ps._import_tree(root / tree, "jax2onnx.plugins." + tree.replace("/", "."))
        ps._already_imported_plugins = True
    try:
        from jax2onnx.converter import ir_optimizations as iro
    except ImportError:  # pragma: no cover - another jax2onnx layout
        iro = None
    passes_before = getattr(iro, "_OPTIMIZER_PASSES", None)
    if isinstance(passes_before, tuple):
        iro._OPTIMIZER_PASSES = tuple(p for p in passes_before if getattr(p, "name", None) not in _SKIPPED_PASSES)
    try:
        from jax2onnx.converter import output_binding as ob
    except ImportError:  # pragma: no cover - another jax2onnx layout
        ob = None
    connected_before = getattr(ob, "_value_is_graph_connected", None)
    if callable(connected_before):
        def connected(ctx: Any, value: Any) -> bool:
            # jax2onnx checks every equation's outputs by scanning all graph nodes (quadratic: 5.7 of 7 s of
            # Xception71's lowering); a value its producer node lists as an output is connected, anything else
            # gets the full scan. A genuinely disconnected graph would still fail onnxruntime's load next.
            producer = getattr(value, "producer", None)
            node = producer() if callable(producer) else None
            return (node is not None and any(o is value for o in node.outputs)) or connected_before(ctx, value)

        ob._value_is_graph_connected = connected
    try:
        yield
    finally:
        if previous is False:
            ps._already_imported_plugins = False
        if isinstance(passes_before, tuple):
            iro._OPTIMIZER_PASSES = passes_before
        if callable(connected_before):
            ob._value_is_graph_connected = connected_before


# ----------------------------------------------------------------------------------------------------------
# Export.
# ----------------------------------------------------------------------------------------------------------
def _output_names(n: int, num_classes: Any, features_only: bool) -> List[str]:
    if features_only or n > 1:
        return [f"features_{i}" for i in range(n)]
    return ["logits" if num_classes else "features"]


def _lower(fn: Any, inputs: Sequence[Tuple[Any, ...]], *, model_name: str, opset: int, nchw_input: bool,
           optimize: bool, what: str, output_names: Any = None) -> Any:
    """jax2onnx of ``fn`` under the export formulation, then onnxruntime's basic optimisation and the exact
    rewrites of :mod:`lightjax.export.onnx_passes`; returns the ``onnx.ModelProto``."""
    jax2onnx, onnx, ort = _require_onnx()
    try:
        with _jax2onnx_for_lightjax(), backend.formulation("export"):
            proto = jax2onnx.to_onnx(fn, inputs=list(inputs), model_name=model_name, opset=opset,
                                     inputs_as_nchw=[0] if nchw_input else None,
                                     input_names=["images" if len(inputs) == 1 else f"input_{i}"
                                                  for i in range(len(inputs))])
    except NotImplementedError as e:
        raise OnnxExportError(f"{what}: jax2onnx cannot lower an operation of this model: {e}") from e
    if output_names is not None:
        passes.rename_outputs(proto, output_names(len(proto.graph.output)))
    if nchw_input:
        passes.outputs_to_nchw(proto)
    if optimize:
        with tempfile.TemporaryDirectory(prefix="lightjax_onnx_") as tmp:
            raw, opt = os.path.join(tmp, "raw.onnx"), os.path.join(tmp, "optimized.onnx")
            onnx.save_model(proto, raw)
            so = ort.SessionOptions()
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            so.optimized_model_filepath = opt
            so.log_severity_level = 3  # its warnings about initializers it removed itself are noise here
            try:
                ort.InferenceSession(raw, so, providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types: name the node and why
                raise OnnxExportError(f"{what}: onnxruntime rejects the exported graph: {e}") from e
            proto = onnx.load_model(opt)
        passes.canonical_activations(proto)
        passes.fuse_gemm_bias(proto)
    passes.strip_unused_opsets(proto)
    return proto


def function_to_onnx(fn: Any, input_shape: Sequence[Union[int, str]], *, opset: Optional[int] = None,
                     nchw_input: bool = False, optimize: bool = True) -> Any:
    """Any function of one NHWC (or other) float32 array, built from lightjax ops, as an ``onnx.ModelProto``.

    The same lowering as :func:`to_onnx` (export formulation, lightjax's operator plugins, onnxruntime's basic
    optimisation), without a model, metadata or file: for custom heads and for testing the lowerings.

    Args:
      fn: ``fn(x) -> array or pytree of arrays``; constants it closes over become initializers.
      input_shape: e.g. ``("B", 17, 17, 8)``; a string is a dynamic axis.
      opset, nchw_input, optimize: as in :func:`to_onnx`.
    """
    return _lower(fn, [tuple(input_shape)], model_name="lightjax_function",
                  opset=int(DEFAULT_OPSET if opset is None else opset), nchw_input=nchw_input, optimize=optimize,
                  what="function_to_onnx")


def to_onnx(
    name: str,
    variables: Mapping[str, Any],
    path: Union[str, os.PathLike],
    *,
    batch: Union[str, int] = "B",
    input_size: Union[int, Tuple[int, int], None] = None,
    nchw_input: bool = False,
    opset: Optional[int] = None,
    pretrained: Any = None,
    preprocessing: Any = None,
    labels: Optional[Sequence[str]] = None,
    optimize: bool = True,
    **model_kwargs: Any,
) -> OnnxExport:
    """Writes the eval forward (``model.apply(variables, x, train=False)``) of a registered model as ONNX.

    Args:
      name: registered model name (``lightjax.models.list_models()``).
      variables: ``{'params', 'batch_stats'}`` for that model and ``model_kwargs``; stored as initializers.
      path: the ``.onnx`` file to write (atomically; parent directory must exist).
      batch: name of the dynamic batch axis (``"B"``), or a positive int for a fixed batch.
      input_size: ``H`` (= ``W``) or ``(H, W)``; default the model's native size. Fixed in the graph.
      nchw_input: the graph input is ``(B, C, H, W)`` (what most deployment tools feed) instead of NHWC;
        feature maps (``features_only``) are then NCHW too.
      opset: default-domain opset, ``>= 14``; ``None``: :data:`DEFAULT_OPSET`.
      pretrained: a pretrained tag (``"mobilenet_v2_100.tv_in1k"``) or its ``PretrainedCfg``: the eval
        transform and class names recorded in the metadata (unless ``preprocessing``/``labels`` are given).
      preprocessing: a mapping (``mean``, ``std``, ``interpolation``, ``crop_size``, ``resize_shorter``), an
        ``EvalTransform`` or a ``PretrainedCfg``; recorded in the metadata. Without it or ``pretrained``
        every preprocessing field says ``"unknown"``.
      labels: class names in index order (length ``num_classes``); recorded as a JSON list.
      optimize: run onnxruntime's basic graph optimisation (on by default; ``False`` keeps jax2onnx's graph).
      **model_kwargs: ``create_model`` fields (``num_classes``, ``in_chans``, ``features_only``, ...).

    Returns:
      An :class:`OnnxExport` describing the file.

    Raises:
      OnnxExportError: a bad option, variables that do not fit the model, an operator jax2onnx or
        onnxruntime cannot handle (the message names it). No file is written then.
      ImportError: jax2onnx / onnx / onnxruntime missing (``pip install 'lightjax[onnx]'``).
    """
    model = registry.create_model(name, **model_kwargs)
    if input_size is None:
        input_size = registry.model_info(name)["input_size"]
    try:
        h, w = to_pairs(input_size)
    except (TypeError, ValueError) as e:
        raise OnnxExportError(f"to_onnx {name}: input_size={input_size!r} must be an int or (H, W)") from e
    if h <= 0 or w <= 0:
        raise OnnxExportError(f"to_onnx {name}: input_size={input_size!r} must be positive")
    if isinstance(batch, str):
        if not batch.isidentifier():
            raise OnnxExportError(f"to_onnx {name}: batch={batch!r} must be an axis name like 'B' or a positive int")
    elif isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch <= 0:
        raise OnnxExportError(f"to_onnx {name}: batch={batch!r} must be an axis name like 'B' or a positive int")
    opset = DEFAULT_OPSET if opset is None else opset
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or opset < MIN_OPSET:
        raise OnnxExportError(f"to_onnx {name}: opset={opset!r}: lightjax graphs need opset >= {MIN_OPSET} "
                              f"(HardSwish); default {DEFAULT_OPSET}")
    in_chans = getattr(model, "in_chans", 3)
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise OnnxExportError(f"to_onnx {name}: variables must be a mapping with a 'params' collection, "
                              f"got {type(variables).__name__}")

    cfg = pretrained_cfg_of(pretrained)
    pre = preprocessing_fields(preprocessing if preprocessing is not None else cfg)
    num_classes = getattr(model, "num_classes", None)
    features_only = bool(getattr(model, "features_only", False))
    if labels is None and cfg is not None:
        labels = getattr(cfg, "label_names", None)
        if labels is not None and (features_only or len(labels) != num_classes):
            labels = None  # the tag's weights with another head: its class names do not apply
    if labels is not None:
        labels = [str(s) for s in labels]
        if features_only or not num_classes or len(labels) != num_classes:
            raise OnnxExportError(f"to_onnx {name}: labels has {len(labels)} names but the model outputs "
                                  f"{'features' if features_only or not num_classes else f'{num_classes} classes'}")

    _, onnx, _ = _require_onnx()
    if opset > onnx.defs.onnx_opset_version():
        raise OnnxExportError(f"to_onnx {name}: opset={opset} is newer than the installed onnx "
                              f"{onnx.__version__} knows ({onnx.defs.onnx_opset_version()})")

    leaves, treedef = jax.tree_util.tree_flatten(jax.tree_util.tree_map(jnp.asarray, dict(variables)))
    report: Dict[str, Any] = {}

    def apply(consts: Sequence[Any], x: jax.Array) -> Any:
        return model.apply(jax.tree_util.tree_unflatten(treedef, consts), x, train=False)

    def forward(x: jax.Array) -> Any:
        return fold_constants(apply, leaves, x, report)

    def check() -> None:
        # Variables are checked leaf by leaf only when tracing failed or left some unread: flax itself
        # checks every param's shape while tracing, and the full check costs a trace of model.init (2-3 s).
        try:
            _check_variables(name, model, variables, (h, w, in_chans))
        except ValueError as e:
            raise OnnxExportError(str(e)) from e

    path = os.fspath(path)
    try:
        proto = _lower(forward, [(batch, h, w, in_chans)], model_name=f"lightjax_{name}", opset=int(opset),
                       nchw_input=nchw_input, optimize=optimize, what=f"to_onnx {name}",
                       output_names=lambda n: _output_names(n, num_classes, features_only))
    except OnnxExportError:
        raise
    except Exception:
        check()  # a variables mismatch gets its full listing; anything else propagates as it is
        raise
    if report.get("unused"):
        check()
    layout = "NCHW" if nchw_input else "NHWC"
    (inp,) = proto.graph.input
    in_shape = passes.dims(inp)
    meta = model_metadata(name, model_kwargs, in_shape, layout, pre, labels, cfg, num_classes)
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "lightjax"
    proto.producer_version = meta["lightjax_version"]
    proto.doc_string = (f"lightjax {name} eval forward, input {layout} {list(in_shape)} float32; preprocessing "
                        f"in metadata_props (preprocessing_*), class names in class_names")
    proto.graph.name = f"lightjax_{name}"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # onnx.checker.ValidationError / shape inference errors
        raise OnnxExportError(f"to_onnx {name}: the ONNX checker rejects the graph: {e}") from e
    data = proto.SerializeToString()
    atomic_write(path, data)


    return OnnxExport(
        path=path, model=name, input_name=inp.name, input_shape=in_shape, layout=layout,
        output_names=tuple(o.name for o in proto.graph.output),
        output_shapes=tuple(passes.dims(o) for o in proto.graph.output), opset=int(opset),
        op_counts=dict(Counter(n.op_type for n in proto.graph.node)), metadata=meta, size_bytes=len(data))


def describe(info: OnnxExport) -> str:
    """One paragraph about a written file (what the command line prints)."""
    ops = ", ".join(f"{k} {v}" for k, v in sorted(info.op_counts.items(), key=lambda kv: (-kv[1], kv[0])))
    outs = ", ".join(f"{n} {tuple(s)}" for n, s in zip(info.output_names, info.output_shapes))
    pre = info.metadata.get("preprocessing_mean", UNKNOWN)
    pre = (f"mean {pre}, std {info.metadata['preprocessing_std']}, {info.metadata['preprocessing_interpolation']}, "
           f"resize {info.metadata['preprocessing_resize_shorter']} crop {info.metadata['preprocessing_crop_size']}"
           if pre != UNKNOWN else "unknown (no pretrained tag)")
    return (f"wrote {info.path}: {info.size_bytes / 2**20:.1f} MiB, ONNX opset {info.opset}, input {info.input_name} "
            f"{tuple(info.input_shape)} {info.layout} float32 -> {outs}; {info.num_nodes} nodes ({ops}); "
            f"preprocessing: {pre}")


def compare_with_lightjax(path: Union[str, os.PathLike], name: str, variables: Mapping[str, Any], *,
                          batch_sizes: Sequence[int] = (1, 3), seed: int = 0, **model_kwargs: Any) -> float:
    """Runs the ONNX file in onnxruntime (CPU) and lightjax's jitted forward on the same random images.

    Returns:
      max |onnx - lightjax| / max |lightjax| over every output and batch size (layout read from the file).
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    nchw = read_metadata(path).get("input_layout") == "NCHW"
    shape = [d for d in inp.shape[1:]]
    model = registry.create_model(name, **model_kwargs)
    fwd = jax.jit(lambda x: model.apply(variables, x, train=False))
    rng = np.random.default_rng(seed)
    worst = 0.0
    for b in batch_sizes:
        x = rng.standard_normal((b, *shape)).astype(np.float32)
        got = sess.run(None, {inp.name: x})
        want = jax.tree_util.tree_leaves(fwd(x.transpose(0, 2, 3, 1) if nchw else x))
        for g, w in zip(got, want):
            w = np.asarray(w)
            w = w.transpose(0, 3, 1, 2) if nchw and w.ndim == 4 else w
            scale = max(float(np.abs(w).max()), 1e-12)
            worst = max(worst, float(np.abs(g.astype(np.float64) - w).max()) / scale)
    return worst
