"""The `rewrite` stage: physically remove channels from the graph (owns onnx-graphsurgeon).

Slices producer and pass-through parameters, writes the consumers' new weights and biases,
adds a bias (or a bias Add after a MatMul) where the refitted intercept needs one, and drops
stale intermediate shapes. Names of graph inputs, outputs, nodes and initializers are kept.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .groups import Group, channel_indices


def apply_group(model: onnx.ModelProto, group: Group, kept, updates: list) -> onnx.ModelProto:
    """A new model with `group` reduced to channels `kept` and consumers set from `updates`."""
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    nodes = {n.name: n for n in graph.nodes}
    for s in group.slices:
        const = tensors[s.name]
        const.values = np.take(const.values, channel_indices(kept, s.block), axis=s.axis)
    for u in updates:
        c = u.consumer
        node = nodes[c.node]
        tensors[c.weight].values = u.weight
        if u.bias is not None:
            if c.bias is not None:
                tensors[c.bias].values = u.bias
            else:
                _add_bias(graph, node, u.bias, set(tensors))
        for name, value in u.attrs.items():
            node.attrs[name] = value
    return _export_like(graph, model)


def _add_bias(graph: gs.Graph, node: gs.Node, bias: np.ndarray, taken: set) -> None:
    const = gs.Constant(_unique(f"{node.name}.bias", taken), np.ascontiguousarray(bias))
    if node.op in ("Conv", "Gemm"):
        node.inputs.append(const)
        return
    out = node.outputs[0]
    inner = gs.Variable(_unique(f"{out.name}.nobias", taken), dtype=out.dtype)
    node.outputs[0] = inner
    graph.nodes.append(gs.Node("Add", name=_unique(f"{node.name}.bias_add", taken), inputs=[inner, const],
                               outputs=[out]))
    graph.toposort()


def _unique(base: str, taken: set) -> str:
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def _export_like(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """Export, keeping the original's IR version, opsets, metadata and functions."""
    exported = gs.export_onnx(graph, do_type_check=False)
    out = onnx.ModelProto()
    out.CopyFrom(original)
    out.graph.CopyFrom(exported.graph)
    del out.graph.value_info[:]
    shapes = {t.name: t.dims for t in out.graph.initializer}
    for vi in out.graph.input:    # old IR: initializers also listed as inputs
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[vi.name]:
                dims.add().dim_value = d
    return out
