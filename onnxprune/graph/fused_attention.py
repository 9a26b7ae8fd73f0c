"""Fused attention ops as head groups: com.microsoft Attention / MultiHeadAttention /
GroupQueryAttention and ai.onnx Attention (opset 23, 3-D inputs).

A fused op computes every head inside one node, so nothing between the projections and the
output projection O needs following: head h of the op's output reads columns h of Q, K and V
only, and the op's counts are attributes. What this module proves before it returns a
`HeadGroup` (heads.py):

- the projections are constant weights: the packed [in, 3*H*Dh] weight and bias of
  com.microsoft Attention (the node itself is the producer, one layout of three segments),
  or one MatMul (+ bias Add) per Q, K, V input read by nothing else;
- the op's output is read by one MatMul with a constant weight (O), and is no model output;
- nothing the op reads or writes is laid out per head beyond what is sliced: a KV cache
  (past / present, `past_sequence_length`), a per-head attention bias or mask, head sinks
  and the packed QKV / KV input formats are refused, and so is rotary embedding inside
  com.microsoft Attention (its CPU kernel does not run it, so nothing could check it);
  GroupQueryAttention's rotary reads cos/sin caches every head shares and stays;
- with grouped-query attention the units are KV groups: one K/V head with its
  num_heads / kv_num_heads query heads (query head j uses KV head j // that ratio).

The counts are `AttrSite`s of kind 'num_heads', 'kv_num_heads', 'q_num_heads' (the attribute
of that name = kept units x factor) and 'qkv_hidden_sizes' (kept units x factor per layout);
rewrite/apply.py writes them. Pure graph work, like the rest of graph/.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .groups import AttrSite, ParamSite, Producer
from .heads import HeadGroup, HeadRefusal, HeadStream
from .index import GraphIndex, attr
from .layout import Layout, Segment
from .fusedrank import proven_rank as _rank
from .roles import Refusal, consumer, matmul_bias

MS = "com.microsoft"


@dataclass(frozen=True)
class _Projection:
    """A Q, K or V projection feeding a fused op."""

    producer: Producer
    width: int              # output columns


def fused_attention(idx: GraphIndex, opset: int) -> list:
    """HeadGroup / HeadRefusal for every fused attention node of the graph."""
    out = []
    for node in idx.topo_nodes():
        detect = _DETECT.get((node.domain or "ai.onnx", node.op_type))
        if detect is None:
            continue
        if detect is _onnx_attention and _rank(idx, node.input[0]) == 4:
            continue        # heads from the Reshapes of the projections: the head flow's (headattn.py)
        try:
            out.append(detect(idx, node))
        except Refusal as why:
            out.append(HeadRefusal((node.name,) + _projection_nodes(idx, node), f"{node.op_type} '{node.name}': {why}"))
    return out


# -- com.microsoft.Attention: packed weight ---------------------------------------------------

def _ms_attention(idx: GraphIndex, node) -> HeadGroup:
    _no_inputs(node, {4: "a KV cache (past)", 6: "a past sequence length"})
    _unused_outputs(idx, node, {1: "present"})
    _bias_broadcasts_over_heads(idx, node, 5)
    if attr(node, "do_rotary", 0):
        raise Refusal("rotary embedding inside the op is not proven safe to slice")
    heads = attr(node, "num_heads")
    weight = node.input[1]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    for name in (weight, bias):
        if name is not None and (not idx.is_constant(name) or len(idx.uses(name)) != 1):
            raise Refusal(f"'{name}' is not a constant only this node reads")
    wshape = idx.shapes[weight]
    sizes = attr(node, "qkv_hidden_sizes")
    sizes = list(sizes) if sizes else [wshape[1] // 3] * 3
    if len(wshape) != 2 or sum(sizes) != wshape[1] or len(set(sizes)) != 1 or sizes[0] % heads:
        raise Refusal(f"Q, K, V widths {sizes} of weight {list(wshape)} are not {heads} equal heads each")
    if bias is not None and list(idx.shapes[bias]) != [wshape[1]]:
        raise Refusal(f"bias '{bias}' is not one value per Q/K/V column")
    dh = sizes[0] // heads
    units = Layout(2, 3, (Segment(node.name, 0, heads),))
    packed = Layout(2, 3, (Segment(node.name, 0, heads),) * 3, block=dh)
    stream = HeadStream("qkv", Producer(node.name, node.op_type, weight, 1, bias), packed, dh)
    counts = [AttrSite(node.name, "num_heads", (units,))]
    if attr(node, "qkv_hidden_sizes"):
        counts.append(AttrSite(node.name, "qkv_hidden_sizes", (units,) * 3, factor=dh))
    return _group(idx, node, heads, dh, 1, (stream,), node.name, counts, "com.microsoft.Attention")


# -- separate projections: MultiHeadAttention, GroupQueryAttention, ai.onnx Attention ----------

def _ms_mha(idx: GraphIndex, node) -> HeadGroup:
    _no_inputs(node, {6: "a KV cache (past_key)", 7: "a KV cache (past_value)",
                      8: "a past sequence length", 9: "a cache indirection"})
    _unused_outputs(idx, node, {1: "present_key", 2: "present_value", 3: "qk"})
    _bias_broadcasts_over_heads(idx, node, 5)
    heads = attr(node, "num_heads")
    streams, dh = _projections(idx, node, heads, heads)
    counts = [AttrSite(node.name, "num_heads", (_units(streams[2]),))]
    group = _group(idx, node, heads, dh, 1, streams, streams[2].producer.node, counts,
                   "com.microsoft.MultiHeadAttention")
    bias = node.input[3] if len(node.input) > 3 and node.input[3] else None
    if bias is None:
        return group
    if len({s.head_dim for s in streams}) != 1:
        raise Refusal(f"bias '{bias}' packs Q, K, V of different head sizes")
    if not idx.is_constant(bias) or len(idx.uses(bias)) != 1 or list(idx.shapes[bias]) != [3 * heads * dh]:
        raise Refusal(f"bias '{bias}' is not a constant [3*{heads}*{dh}] only this node reads")
    segments = tuple(Segment(s.producer.node, 0, heads) for s in streams)
    return replace(group, sites=(ParamSite(bias, 0, Layout(0, 1, segments, block=dh)),))


def _ms_gqa(idx: GraphIndex, node) -> HeadGroup:
    _no_inputs(node, {3: "a KV cache (past_key)", 4: "a KV cache (past_value)", 10: "an attention bias per head",
                      11: "head sinks (one value per head)"})
    _unused_outputs(idx, node, {1: "present_key", 2: "present_value", 3: "output_qk"})
    return _kv_groups(idx, node, "num_heads", "com.microsoft.GroupQueryAttention")


def _onnx_attention(idx: GraphIndex, node) -> HeadGroup:
    _no_inputs(node, {4: "a KV cache (past_key)", 5: "a KV cache (past_value)",
                      6: "a non-padded KV length"})
    _unused_outputs(idx, node, {1: "present_key", 2: "present_value", 3: "qk_matmul_output"})
    if _rank(idx, node.input[0]) != 3:
        raise Refusal("Q is not 3-D: the heads come from its shape (q_num_heads is only read for 3-D inputs)")
    _bias_broadcasts_over_heads(idx, node, 3)
    if not attr(node, "q_num_heads") or not attr(node, "kv_num_heads"):
        raise Refusal("q_num_heads / kv_num_heads are not set")
    return _kv_groups(idx, node, "q_num_heads", "ai.onnx.Attention")


def _kv_groups(idx: GraphIndex, node, query_attr: str, pattern: str) -> HeadGroup:
    """A grouped-query op's group: one unit per K/V head with its query heads, the head counts
    in `query_attr` and kv_num_heads."""
    heads, kv = attr(node, query_attr), attr(node, "kv_num_heads")
    streams, dh = _projections(idx, node, heads, kv)
    per = heads // kv
    counts = [AttrSite(node.name, query_attr, (_units(streams[2]),), factor=per),
              AttrSite(node.name, "kv_num_heads", (_units(streams[2]),))]
    return _group(idx, node, kv, dh, per, streams, streams[2].producer.node, counts, pattern)


def _projections(idx: GraphIndex, node, heads: int, kv: int) -> tuple:
    """The Q, K, V streams: one constant-weight MatMul (+ bias Add) per input, read only here.
    Units are KV heads; Q's block holds the heads // kv query heads of one unit."""
    if len(node.input) < 3 or not node.input[1] or not node.input[2]:
        raise Refusal("packed QKV / KV inputs are not sliced")
    if not heads or not kv or heads % kv:
        raise Refusal(f"{heads} query heads do not split into {kv} KV heads")
    per, streams, dims = heads // kv, [], []
    for role, tensor, count in zip("qkv", node.input[:3], (heads, kv, kv)):
        src = _projection(idx, node, tensor)
        if src.width % count:
            raise Refusal(f"the {role} projection's {src.width} columns are not {count} heads")
        dims.append(src.width // count)
        layout = Layout(2, 3, (Segment(src.producer.node, 0, kv),), block=src.width // kv)
        streams.append(HeadStream(role, src.producer, layout, src.width // count))
    if dims[0] != dims[1]:
        raise Refusal(f"Q and K head sizes differ ({dims[0]}, {dims[1]})")
    if len({s.producer.node for s in streams}) != 3:
        raise Refusal("Q, K and V do not come from three different projections")
    return tuple(streams), dims[2] * per


def _projection(idx: GraphIndex, node, tensor: str) -> _Projection:
    """The constant-weight MatMul (+ bias Add) computing `tensor`, read by `node` alone."""
    maker = idx.producer.get(tensor)
    if maker is None or tensor in idx.graph_outputs:
        raise Refusal(f"input '{tensor}' is not computed by a projection")
    if maker.op_type == "Add" and maker.domain in ("", "ai.onnx"):
        maker = next((idx.producer[t] for t in maker.input if t in idx.producer
                      and idx.producer[t].op_type == "MatMul"), maker)
    if maker.op_type != "MatMul" or maker.domain not in ("", "ai.onnx"):
        raise Refusal(f"input '{tensor}' comes from {maker.op_type} '{maker.name}', not a MatMul projection")
    weight = maker.input[1]
    if not idx.is_constant(weight) or idx.is_constant(maker.input[0]) or len(idx.shapes[weight]) != 2:
        raise Refusal(f"projection '{maker.name}' has no constant 2-D weight")
    if _rank(idx, maker.input[0]) != 3:
        raise Refusal(f"projection '{maker.name}' does not read a 3-D [batch, sequence, features] tensor")
    width = idx.shapes[weight][1]
    bias, bias_node = matmul_bias(idx, maker)
    out = idx.nodes[bias_node].output[0] if bias_node else maker.output[0]
    if bias is not None and list(idx.shapes[bias])[-1:] != [width]:
        raise Refusal(f"projection '{maker.name}' adds a bias that is not one value per column")
    if out != tensor or [n.name for n, _ in idx.uses(tensor)] != [node.name]:
        raise Refusal(f"projection '{maker.name}' is not read by this node alone")
    return _Projection(Producer(maker.name, "MatMul", weight, 1, bias, bias_node), width)


# -- shared -----------------------------------------------------------------------------------

def _group(idx, node, units, dh_out, per, streams, v_source, counts, pattern) -> HeadGroup:
    """The HeadGroup with O: the one MatMul reading the op's output, rows in unit blocks."""
    out = node.output[0]
    uses = idx.uses(out)
    if out in idx.graph_outputs or len(uses) != 1 or uses[0][0].op_type != "MatMul" or uses[0][1] != 0:
        raise Refusal("its output is not read by one output projection MatMul")
    layout = Layout(2, 3, (Segment(v_source, 0, units),), block=dh_out)
    o = consumer(idx, uses[0][0], 0, layout)
    return HeadGroup(units=units, head_dim=dh_out // per, queries_per_unit=per, streams=tuple(streams),
                     output=o, counts=tuple(counts), nodes=(node.name,), tensors=(out,), pattern=pattern)


def _units(stream: HeadStream) -> Layout:
    return Layout(stream.layout.axis, stream.layout.rank, stream.layout.segments)


def _no_inputs(node, refused: dict) -> None:
    for i, what in refused.items():
        if len(node.input) > i and node.input[i]:
            raise Refusal(f"it reads {what}")


def _unused_outputs(idx: GraphIndex, node, outputs: dict) -> None:
    for i, what in outputs.items():
        if len(node.output) > i and node.output[i] and (idx.uses(node.output[i])
                                                       or node.output[i] in idx.graph_outputs):
            raise Refusal(f"its output {what} is read (it holds every head)")


def _bias_broadcasts_over_heads(idx: GraphIndex, node, i: int) -> None:
    """An additive bias / mask input is fine while it has no head axis: rank <= 2, or a known
    1 on the axis that lines up with the heads (third from last)."""
    if len(node.input) <= i or not node.input[i]:
        return
    dims = idx.shapes.get(node.input[i])
    if dims is None:
        raise Refusal(f"its mask / bias input '{node.input[i]}' has an unknown shape (it may hold one per head)")
    if len(dims) >= 3 and dims[-3] != 1:
        raise Refusal(f"its mask / bias input '{node.input[i]}' {list(dims)} has one slice per head")


def _projection_nodes(idx: GraphIndex, node) -> tuple:
    """Nodes whose refusal reason should name this op: the MatMuls feeding Q, K, V."""
    out = []
    for t in node.input[:3]:
        maker = idx.producer.get(t)
        if maker is not None and maker.op_type == "Add":
            maker = next((idx.producer[x] for x in maker.input if x in idx.producer), maker)
        if maker is not None and maker.op_type == "MatMul":
            out.append(maker.name)
    return tuple(dict.fromkeys(out))


_DETECT = {
    (MS, "Attention"): _ms_attention,
    (MS, "MultiHeadAttention"): _ms_mha,
    (MS, "GroupQueryAttention"): _ms_gqa,
    ("ai.onnx", "Attention"): _onnx_attention,
}
