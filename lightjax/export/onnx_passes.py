"""Small exact rewrites of an ONNX ``ModelProto`` after onnxruntime's basic optimisation.

- :func:`canonical_activations`: ``Min(Max(x, lo), hi)`` (how jax2onnx writes ``jnp.clip``, i.e. ReLU6) ->
  ``Clip(x, lo, hi)``, and ``Max(x, 0)`` (``jax.nn.relu``) -> ``Relu(x)``: the operators runtimes fuse into the
  preceding Conv (onnxruntime's FusedConv, TensorRT, OpenVINO); as Max/Min pairs MobileNetV2 ran two
  elementwise passes per activation. Bitwise the same values.
- :func:`fuse_gemm_bias`: jax2onnx writes a Dense layer as ``Gemm(x, W, 0, beta=0)`` then ``Add(bias)``;
  the bias becomes the Gemm's ``C`` (what torch's export writes; one node less, the add inside the GEMM).
- :func:`strip_unused_opsets`: onnxruntime's saved model imports its private domains; drop unused imports.
- :func:`rename_outputs`: graph outputs get lightjax's names (``logits``, ``features``, ``features_i``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np


def _scalar_constants(model: Any) -> Dict[str, float]:
    """Names of one-element float initializers / Constant outputs of rank 0 or 1 -> their value (rank <= 1:
    broadcasting one against the other operand never changes the result's shape)."""
    from onnx import numpy_helper

    out: Dict[str, float] = {}
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.size == 1 and arr.ndim <= 1 and np.issubdtype(arr.dtype, np.floating):
            out[init.name] = float(arr.reshape(()))
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            arr = numpy_helper.to_array(node.attribute[0].t)
            if arr.size == 1 and arr.ndim <= 1 and np.issubdtype(arr.dtype, np.floating):
                out[node.output[0]] = float(arr.reshape(()))
    return out


def _split_const(node: Any, consts: Dict[str, float]) -> Optional[Tuple[str, float]]:
    """``(other input, constant)`` of a binary Max/Min with exactly one scalar-constant operand."""
    if len(node.input) != 2:
        return None
    a, b = node.input
    if b in consts and a not in consts:
        return a, consts[b]
    if a in consts and b not in consts:
        return b, consts[a]
    return None


def canonical_activations(model: Any) -> Dict[str, int]:
    """Rewrites clamps to ``Clip`` and ``Max(x, 0)`` to ``Relu`` in place; returns the counts rewritten.

    Only a Max/Min with a scalar (rank <= 1, one element) constant operand qualifies, and an inner node is
    fused only when the outer one is its sole consumer and it is not a graph output.
    """
    import onnx
    from onnx import helper

    g = model.graph
    consts = _scalar_constants(model)
    graph_outputs = {o.name for o in g.output}
    consumers: Dict[str, List[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    producer = {o: n for n in g.node for o in n.output}
    dtype = {i.name: i.data_type for i in g.initializer}
    removed, new_nodes, counts = set(), {}, {"Clip": 0, "Relu": 0}
    scalars: List[Any] = []

    def scalar(value: float, like: str) -> str:
        name = f"lightjax_clip_{len(scalars)}"
        elem = dtype.get(like, onnx.TensorProto.FLOAT)
        scalars.append(helper.make_tensor(name, elem, [], [value]))
        return name

    for n in g.node:
        if n.op_type not in ("Min", "Max") or id(n) in removed:
            continue
        outer = _split_const(n, consts)
        if outer is None:
            continue
        x, c_out = outer
        inner = producer.get(x)
        other = "Max" if n.op_type == "Min" else "Min"
        if (inner is not None and inner.op_type == other and x not in graph_outputs
                and len(consumers.get(x, [])) == 1 and _split_const(inner, consts) is not None):
            y, c_in = _split_const(inner, consts)
            lo, hi = (c_in, c_out) if n.op_type == "Min" else (c_out, c_in)
            if lo <= hi:
                const_name = next(i for i in n.input if i in consts)
                new_nodes[id(n)] = helper.make_node("Clip", [y, scalar(lo, const_name), scalar(hi, const_name)],
                                                    list(n.output), name=f"{n.name or 'clip'}_clip")
                removed.add(id(inner))
                counts["Clip"] += 1
                continue
        if n.op_type == "Max" and c_out == 0.0:
            new_nodes[id(n)] = helper.make_node("Relu", [x], list(n.output), name=f"{n.name or 'relu'}_relu")
            counts["Relu"] += 1
    if not new_nodes:
        return counts
    nodes = [new_nodes.get(id(n), n) for n in g.node if id(n) not in removed]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(scalars)
    _drop_unused_initializers(model)
    return counts


def fuse_gemm_bias(model: Any) -> int:
    """``Add(Gemm(a, b, c, beta=0), bias)`` -> ``Gemm(a, b, bias, beta=1)`` for a constant bias of shape
    ``(N,)`` or ``(1, N)``, when the Add is the Gemm's only consumer; returns the number fused (in place)."""
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: Dict[str, List[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}
    replace, removed = {}, set()
    for n in g.node:
        if n.op_type != "Gemm":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if attrs.get("beta", 1.0) != 0.0 or n.output[0] in graph_outputs:
            continue
        users = consumers.get(n.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add":
            continue
        add = users[0]
        other = [i for i in add.input if i != n.output[0]]
        if len(other) != 1 or other[0] not in inits:
            continue
        bias = numpy_helper.to_array(inits[other[0]])
        if bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1):
            continue
        attrs["beta"] = 1.0
        replace[id(n)] = helper.make_node("Gemm", [n.input[0], n.input[1], other[0]], list(add.output),
                                          name=n.name or "gemm", **attrs)
        removed.add(id(add))
    if replace:
        nodes = [replace.get(id(n), n) for n in g.node if id(n) not in removed]
        del g.node[:]
        g.node.extend(nodes)
        _drop_unused_initializers(model)
    return len(replace)


def _drop_unused_initializers(model: Any) -> None:
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)


def strip_unused_opsets(model: Any) -> None:
    """Drops opset imports of domains no node uses (onnxruntime's optimiser adds its private ones)."""
    used = {n.domain or "" for n in model.graph.node}
    for f in model.functions:
        used |= {n.domain or "" for n in f.node} | {f.domain}
    keep = [o for o in model.opset_import if (o.domain or "") in used or (o.domain or "") == ""]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def rename_outputs(model: Any, names: Sequence[str]) -> None:
    """Renames the graph outputs (in order) to ``names``, and every reference to them."""
    g = model.graph
    if len(names) != len(g.output):
        raise ValueError(f"rename_outputs: {len(names)} names for {len(g.output)} outputs")
    mapping = {o.name: new for o, new in zip(g.output, names) if o.name != new}
    if not mapping:
        return
    for n in g.node:
        for i, v in enumerate(n.input):
            if v in mapping:
                n.input[i] = mapping[v]
        for i, v in enumerate(n.output):
            if v in mapping:
                n.output[i] = mapping[v]
    for o in g.output:
        o.name = mapping.get(o.name, o.name)
    for vi in g.value_info:
        vi.name = mapping.get(vi.name, vi.name)


def dims(value_info: Any) -> Tuple[Any, ...]:
    """The shape of a graph input/output: ints, and the symbol (``"B"``) of a dynamic axis."""
    return tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in value_info.type.tensor_type.shape.dim)


def outputs_to_nchw(model: Any) -> List[str]:
    """Appends a ``Transpose(0, 3, 1, 2)`` to every rank-4 graph output (NHWC feature maps -> NCHW), in place.

    Done on jax2onnx's graph before onnxruntime's optimisation, which cancels it against the Transpose back
    to NHWC that follows the last Conv. Returns the outputs transposed.
    """
    from onnx import helper

    g = model.graph
    done = []
    for o in g.output:
        shape = o.type.tensor_type.shape
        if len(shape.dim) != 4:
            continue
        inner = f"{o.name}_nhwc"
        for n in g.node:
            for i, v in enumerate(n.output):
                if v == o.name:
                    n.output[i] = inner
            for i, v in enumerate(n.input):
                if v == o.name:
                    n.input[i] = inner
        g.node.append(helper.make_node("Transpose", [inner], [o.name], perm=[0, 3, 1, 2], name=f"{o.name}_to_nchw"))
        d = [shape.dim[i] for i in (0, 3, 1, 2)]
        copies = [type(d[0])() for _ in d]
        for c, src in zip(copies, d):
            c.CopyFrom(src)
        del shape.dim[:]
        shape.dim.extend(copies)
        done.append(o.name)
    return done
