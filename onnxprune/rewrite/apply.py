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

from ..graph.groups import Group
from ..io.largemodel import is_large, restore, skeleton, with_graph
from ..graph.layout import Alive, element_indices

ADDED_BIAS = ".bias"


def apply_group(model: onnx.ModelProto, group: Group, kept, updates: list, alive: Alive) -> onnx.ModelProto:
    """A new model with `group` reduced to channels `kept` and consumers set from `updates`.

    `alive` describes the model as it is now (groups pruned before); it is not modified.
    A model over 2 GB goes through graph surgery as a skeleton: initializers the group does not
    touch are stubs during surgery and copied back after (see largemodel.py).
    """
    large = {}
    if is_large(model):
        model, large = skeleton(model, keep=_touched(model, group))
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
    site_names = {site.name for site in group.sites}
    for p in group.producers:
        if p.bias not in site_names:
            _slice_unlisted_bias(graph, nodes[p.node], p, tensors, alive, members, kept_mask)
    for a in group.attr_sites:
        _write_count(graph, nodes[a.node], a, after, tensors, taken)
    out = _export_like(graph, model)
    restore(out, large)
    return out


def _touched(model: onnx.ModelProto, group: Group) -> set:
    """Initializers this group's rewrite may read or change: its sites, and every constant
    input of its producers, consumers and the bias Adds onnxprune attached to them."""
    owners = {n for p in group.producers for n in p.nodes} | {c.node for c in group.consumers}
    owners |= {c.bias_node for c in group.consumers if c.bias_node}
    added = tuple(f"{n}{ADDED_BIAS}_add" for n in owners)
    names = {s.name for s in group.sites} | {a.name for a in group.attr_sites if a.name}
    for node in model.graph.node:
        if node.name in owners or node.name.startswith(added):
            names.update(node.input)
    return names


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


def _slice_unlisted_bias(graph, node, producer, tensors, alive, members, kept_mask) -> None:
    """Slice a producer bias the analysis did not list as per-channel: one onnxprune added
    earlier, or a scalar bias an earlier refit of this node widened to one value per output."""
    from ..graph.layout import Layout, Segment

    bias = tensors[producer.bias] if producer.bias is not None else _added_bias(graph, node)
    layout = Layout(0, 1, (Segment(producer.node, 0, kept_mask.size),))
    if bias is None or np.ndim(bias.values) == 0 or bias.values.shape[-1] != alive.current_positions(layout):
        return
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
    """Export, keeping the original's IR version, opsets, metadata, functions and input list."""
    out = with_graph(original, gs.export_onnx(graph, do_type_check=False).graph)
    del out.graph.value_info[:]
    _inputs_like(out, original)
    return out


def _inputs_like(out: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Graph inputs as the original listed them: runtime inputs unchanged, initializers it also
    listed as inputs (old IR) with their new shapes; below IR 4, where every initializer must be
    an input, new ones (added biases, Split sizes) too."""
    inits = {t.name: t for t in out.graph.initializer}
    old_inits = {t.name for t in original.graph.initializer}
    listed = []
    for vi in original.graph.input:
        if vi.name in inits:
            listed.append(_value_info(inits[vi.name]))
        elif vi.name not in old_inits:
            listed.append(vi)
    if out.ir_version < 4:
        names = {vi.name for vi in listed}
        listed.extend(_value_info(t) for t in out.graph.initializer if t.name not in names)
    del out.graph.input[:]
    out.graph.input.extend(listed)


def _value_info(t: onnx.TensorProto) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims)
