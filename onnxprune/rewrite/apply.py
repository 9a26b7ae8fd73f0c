"""The `rewrite` stage: physically remove channels from the graph (owns onnx-graphsurgeon).

Writes the consumers' new weights and biases, deletes the group's channels from every
parameter site (producers, pass-through ops) in the current model's coordinates, updates the
values that count channels (depthwise `group`, Split sizes, Reshape entries), adds a bias (or
a bias Add after a MatMul) where a refitted intercept needs one, and drops stale intermediate
shapes. Names of graph inputs, outputs, nodes and initializers are kept. A count constant
that other nodes also read is never changed in place: the rewritten node gets its own copy
(see `_set_input`).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import SparseValues

from ..graph.groups import Group
from ..io.largemodel import is_large, restore, skeleton, with_graph
from ..graph.layout import Alive, element_indices

ADDED_BIAS = ".bias"
HEAD_COUNTS = ("num_heads", "kv_num_heads", "q_num_heads")     # fused attention attributes (graph/fused_attention.py)


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
    weight_layouts = {site.name: site.layout for site in group.sites}
    for p in group.producers:
        if p.bias not in site_names:
            layout = group.output_layout(p.node)
            if layout is None and group.heads is not None:       # head blocks: the weight's columns
                layout = weight_layouts.get(p.weight)
            _slice_unlisted_bias(graph, nodes[p.node], p, tensors, alive, members, kept_mask, layout,
                                 heads=group.heads is not None)
    for a in group.attr_sites:
        (_write_pad if a.kind == "pad" else _write_count)(graph, nodes[a.node], a, after, taken)
    out = _export_like(graph, model)
    restore(out, large)
    return out


def _touched(model: onnx.ModelProto, group: Group) -> set:
    """Initializers this group's rewrite may read or change: its sites (and the copies earlier
    groups made of shared count constants), and every constant input of its producers,
    consumers, count nodes and the bias Adds onnxprune attached to them."""
    owners = {n for p in group.producers for n in p.nodes} | {c.node for c in group.consumers}
    owners |= {c.bias_node for c in group.consumers if c.bias_node}
    added = tuple(f"{n}{ADDED_BIAS}_add" for n in owners)
    names = {s.name for s in group.sites} | {a.name for a in group.attr_sites if a.name}
    copies = tuple(f"{a.name}." for a in group.attr_sites if a.name)    # see _set_input
    owners |= {a.node for a in group.attr_sites}
    for node in model.graph.node:
        if node.name in owners or node.name.startswith(added):
            names.update(node.input)
    if copies:
        names.update(t.name for t in model.graph.initializer if t.name.startswith(copies))
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


def _slice_unlisted_bias(graph, node, producer, tensors, alive, members, kept_mask, layout=None,
                         heads: bool = False) -> None:
    """Slice a producer bias the analysis did not list as per-channel: one onnxprune added
    earlier, or a scalar bias an earlier refit of this node widened to one value per output.
    `layout`: the producer's output channels as the group names them (part of them may be
    another group's, see graph/pieces.py); for a projection of attention heads (`heads`), its
    weight's layout, whose blocks are one unit's columns."""
    from ..graph.layout import Layout, Segment

    bias = tensors[producer.bias] if producer.bias is not None else _added_bias(graph, node)
    if layout is None:
        layout = Layout(0, 1, (Segment(producer.node, 0, kept_mask.size),))
    else:
        layout = Layout(0, 1, layout.segments, block=layout.block if heads else 1,
                        interleaved=layout.interleaved and heads)
    total = alive.current_positions(layout)
    if bias is None or np.ndim(bias.values) == 0 or bias.values.shape[-1] != total * layout.block:
        return
    drop = alive.removal(layout, members, kept_mask)
    bias.values = np.delete(bias.values, element_indices(drop, layout, total), axis=-1)


def _write_count(graph, node, site, after: Alive, taken) -> None:
    if site.kind == "conv_group":
        node.attrs["group"] = after.current_positions(site.layouts[0])
    elif site.kind in HEAD_COUNTS:
        node.attrs[site.kind] = after.current_positions(site.layouts[0]) * site.factor
    elif site.kind == "qkv_hidden_sizes":
        node.attrs["qkv_hidden_sizes"] = [after.current_positions(lay) * site.factor for lay in site.layouts]
    elif site.kind == "split":
        sizes = np.asarray([after.current_positions(lay) * lay.block for lay in site.layouts], dtype=np.int64)
        if site.name is not None or len(node.inputs) > 1:      # (an earlier group may have added one)
            _set_input(graph, node, 1, sizes, taken, f"{node.name}.split")
        elif graph.opset < 13:
            node.attrs["split"] = [int(s) for s in sizes]
        else:
            node.inputs.append(gs.Constant(_unique(f"{node.name}.split", taken), sizes))
            node.attrs.pop("num_outputs", None)
    elif site.kind == "reshape":
        reader, slot = _shape_reader(graph, node, site.name, taken)
        shape = np.array(reader.inputs[slot].values, copy=True)
        shape[site.index] = after.current_positions(site.layouts[0]) * site.factor
        _set_input(graph, reader, slot, shape, taken, f"{site.name}.{reader.name}")
    else:  # pragma: no cover - analysis only emits the kinds above
        raise ValueError(site.kind)


def _write_pad(graph, node, site, after: Alive, taken) -> None:
    """A Pad of zeros on the channel axis: its before/after amounts there are the zero
    channels still present (see graph/padding.py)."""
    pads = np.asarray(site.values, dtype=np.int64)
    pads[site.index] = after.current_positions(site.layouts[0])
    pads[site.index + site.factor] = after.current_positions(site.layouts[1])
    if site.name is None:
        node.attrs["pads"] = [int(p) for p in pads]
    else:
        _set_input(graph, node, 1, pads, taken, f"{node.name}.pads")


# -- constants other nodes also read -------------------------------------------------------
# Analysis refuses a group whose parameters (ParamSite, consumer weights and biases) another
# node reads. Counts (Split sizes, Reshape entries) are different: exporters share one small
# constant between many nodes (torch gives every C2f Split of a YOLOv8 one [c, c] tensor), and
# each reader may belong to another group or to none. Such a constant is never changed in
# place: the rewritten node gets its own copy, a new initializer, and the others keep theirs.

def _shared(graph, tensor, reader) -> bool:
    """Whether anything but `reader` reads `tensor` (another node, a subgraph, the output)."""
    return any(n is not reader for n in tensor.outputs) or any(t is tensor for t in graph.outputs)


def _set_input(graph, node, slot: int, values: np.ndarray, taken: set, base: str) -> None:
    """Give input `slot` of `node` the constant `values`: in place when it is an initializer
    only `node` reads, else as a new initializer for `node` alone (so is a Constant node's
    output that loading left a node, or a tensor computed from constants only)."""
    current = node.inputs[slot]
    if isinstance(current, gs.Constant) and not _shared(graph, current, node):
        current.values = values
        return
    node.inputs[slot] = gs.Constant(_unique(base, taken), values)


def _shape_reader(graph, node, name: str, taken: set) -> tuple:
    """(node, input slot) reading shape initializer `name` (or the copy an earlier group made
    of it) on the way into Reshape `node`'s shape, with that way made private to `node`.

    The shape may reach the Reshape through a few nodes (torch: Concat(Unsqueeze(batch),
    [c * h * w])); where a tensor on that way has other readers, the nodes from there on are
    cloned for this Reshape, so the copy of the constant changes no other Reshape."""
    path = _path_to(node.inputs[1], name, 0)
    if path is None:   # pragma: no cover - analysis only lists a shape it followed to `name`
        raise ValueError(f"Reshape '{node.name}' no longer reads shape constant '{name}'")
    path.append((node, 1))
    for i in range(len(path) - 1, 0, -1):
        reader, slot = path[i]
        tensor = reader.inputs[slot]
        if not _shared(graph, tensor, reader):
            continue
        producer = tensor.inputs[0]
        clone = gs.Node(producer.op, name=_unique(f"{producer.name}.{node.name}", {n.name for n in graph.nodes}),
                        attrs=dict(producer.attrs), inputs=list(producer.inputs),
                        outputs=[gs.Variable(_unique(f"{tensor.name}.{node.name}", taken), tensor.dtype,
                                             tensor.shape)], domain=producer.domain)
        graph.nodes.insert(graph.nodes.index(producer), clone)
        reader.inputs[slot] = clone.outputs[0]
        path[i - 1] = (clone, path[i - 1][1])
    return path[0]


def _path_to(tensor, name: str, depth: int):
    """[(node, input slot), ...] from the reader of constant `name` (or a copy of it) down to
    the node reading `tensor`, or None when `tensor` does not derive from it."""
    if isinstance(tensor, gs.Constant):
        return [] if tensor.name == name or tensor.name.startswith(f"{name}.") else None
    if depth > 16 or not tensor.inputs or tensor.inputs[0].op == "Shape":
        return None     # a Shape's output derives from no constant: the search stays off the data path
    producer = tensor.inputs[0]
    for slot, inp in enumerate(producer.inputs):
        if producer.op == "Where" and slot == 0:
            continue        # torch's expand(): Where(Equal(shape, -1), 1, shape): the values, not the test
        found = _path_to(inp, name, depth + 1)
        if found is not None:
            return found + [(producer, slot)]
    return None


def _added_bias(graph, node):
    """The bias constant onnxprune gave this node earlier, if any."""
    if node.op in ("Conv", "ConvTranspose", "Gemm"):
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
    if node.op in ("Conv", "ConvTranspose", "Gemm"):
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
    """Export, keeping the original's IR version, opsets, metadata, functions and input list.

    What gs's `export_graph` writes, less the value_info (stale after pruning), built in the
    output model itself: `export_graph` + `with_graph` copied every initializer twice a group,
    this copies it once (unchanged initializers are gs's LazyValues, the input's TensorProtos).
    """
    out = with_graph(original)
    g = out.graph
    g.node.extend(OnnxExporter.export_node(n) for n in graph.nodes)
    g.name = graph.name
    g.input.extend(OnnxExporter.export_value_info_proto(t, False) for t in graph.inputs)
    g.output.extend(OnnxExporter.export_value_info_proto(t, False) for t in graph.outputs)
    constants = [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    g.initializer.extend(OnnxExporter.export_tensor_proto(t) for t in constants if not isinstance(t._values, SparseValues))
    g.sparse_initializer.extend(OnnxExporter.export_sparse_tensor_proto(t) for t in constants
                                if isinstance(t._values, SparseValues))
    if graph.doc_string:
        g.doc_string = graph.doc_string
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
