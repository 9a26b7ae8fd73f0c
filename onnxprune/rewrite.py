"""The `rewrite` stage: physically remove channels from the graph (owns onnx-graphsurgeon).

Writes the consumers' new weights and biases, deletes the group's channels from every
parameter site (producers, pass-through ops) in the current model's coordinates, updates the
values that count channels (depthwise `group`, Split sizes, Reshape entries), adds a bias (or
a bias Add after a MatMul) where a refitted intercept needs one, and drops stale intermediate
shapes. Names of graph inputs, outputs, nodes and initializers are kept.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .groups import Group
from .layout import Alive, element_indices

ADDED_BIAS = ".bias"


def apply_group(model: onnx.ModelProto, group: Group, kept, updates: list, alive: Alive) -> onnx.ModelProto:
    """A new model with `group` reduced to channels `kept` and consumers set from `updates`.

    `alive` describes the model as it is now (groups pruned before); it is not modified.
    """
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    nodes = {n.name: n for n in graph.nodes}
    taken = set(tensors)
    for u in updates:
        _write_consumer(graph, nodes[u.consumer.node], u, tensors, taken)
    kept_mask = np.zeros(group.channels, dtype=bool)
    kept_mask[np.asarray(kept, dtype=np.int64)] = True
    members = set(group.sources)
    after = alive.after(members, kept_mask)
    for site in group.sites:
        drop = alive.removal(site.layout, members, kept_mask)
        if drop.size:
            elems = element_indices(drop, site.layout, alive.current_positions(site.layout))
            const = tensors[site.name]
            const.values = np.delete(const.values, elems, axis=site.axis)
    for p in group.producers:
        _slice_added_bias(graph, nodes[p.node], p, alive, members, kept_mask)
    for a in group.attr_sites:
        _write_count(graph, nodes[a.node], a, after, tensors, taken)
    return _export_like(graph, model)


def _write_consumer(graph, node, u, tensors, taken) -> None:
    c = u.consumer
    tensors[c.weight].values = u.weight
    if u.bias is not None:
        if c.bias is not None:
            tensors[c.bias].values = u.bias
        else:
            existing = _added_bias(graph, node)
            if existing is not None:
                existing.values = u.bias
            else:
                _add_bias(graph, node, u.bias, taken)
    for name, value in u.attrs.items():
        node.attrs[name] = value


def _slice_added_bias(graph, node, producer, alive, members, kept_mask) -> None:
    """A bias onnxprune added earlier is not a site of the analysis: slice it here."""
    if producer.bias is not None:
        return
    bias = _added_bias(graph, node)
    if bias is None:
        return
    from .layout import Layout, Segment

    layout = Layout(0, 1, (Segment(producer.node, 0, kept_mask.size),))
    drop = alive.removal(layout, members, kept_mask)
    bias.values = np.delete(bias.values, drop, axis=-1)


def _write_count(graph, node, site, after: Alive, tensors, taken) -> None:
    if site.kind == "conv_group":
        node.attrs["group"] = after.current_positions(site.layouts[0])
    elif site.kind == "split":
        sizes = [after.current_positions(lay) * lay.block for lay in site.layouts]
        if site.name is not None:
            tensors[site.name].values = np.asarray(sizes, dtype=np.int64)
        elif graph.opset < 13:
            node.attrs["split"] = sizes
        else:
            node.inputs.append(gs.Constant(_unique(f"{node.name}.split", taken), np.asarray(sizes, dtype=np.int64)))
            node.attrs.pop("num_outputs", None)
    elif site.kind == "reshape":
        shape = np.array(tensors[site.name].values, copy=True)
        shape[site.index] = after.current_positions(site.layouts[0]) * site.factor
        tensors[site.name].values = shape
    else:  # pragma: no cover - analysis only emits the kinds above
        raise ValueError(site.kind)


def _added_bias(graph, node):
    """The bias constant onnxprune gave this node earlier, if any."""
    if node.op in ("Conv", "Gemm"):
        if len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant):
            return node.inputs[2]
        return None
    outs = node.outputs[0].outputs
    if len(outs) == 1 and outs[0].op == "Add" and outs[0].name.startswith(f"{node.name}{ADDED_BIAS}_add"):
        const = outs[0].inputs[1]
        return const if isinstance(const, gs.Constant) else None
    return None


def _add_bias(graph: gs.Graph, node: gs.Node, bias: np.ndarray, taken: set) -> None:
    const = gs.Constant(_unique(f"{node.name}{ADDED_BIAS}", taken), np.ascontiguousarray(bias))
    if node.op in ("Conv", "Gemm"):
        node.inputs.append(const)
        return
    out = node.outputs[0]
    inner = gs.Variable(_unique(f"{out.name}.nobias", taken), dtype=out.dtype)
    node.outputs[0] = inner
    graph.nodes.append(gs.Node("Add", name=_unique(f"{node.name}{ADDED_BIAS}_add", taken), inputs=[inner, const],
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
