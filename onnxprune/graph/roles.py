"""Conv / Gemm / MatMul in their two roles: producing prunable channels (a *source*) and
consuming them (their input weights get refitted). A node can play both; a depthwise Conv
plays neither and passes its input's channels through (`depthwise_conv`).

`Refusal` (why channels cannot be followed) and `Effect` (what a node does to the channels
reaching it) are the vocabulary of these roles and of the per-op rules in oprules.py."""
from __future__ import annotations

from dataclasses import dataclass, field

from .index import GraphIndex, attr
from .groups import AttrSite, ConvGeometry, Consumer, ParamSite, Producer
from .fusedrank import proven_rank
from .layout import Layout, Segment

MATMUL_LIKE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


class Refusal(Exception):
    """Why channels cannot be pruned safely through this op."""


@dataclass
class Effect:
    """What a node does to the channels reaching it (see oprules.transfer, depthwise_conv)."""

    outputs: dict = field(default_factory=dict)     # output tensor -> Layout
    sites: list = field(default_factory=list)       # ParamSite / AttrSite
    couplings: list = field(default_factory=list)   # (Layout, Layout) that must align position-wise
    zeros: dict = field(default_factory=dict)       # zero source id -> channel count (Pad of zeros)


@dataclass(frozen=True)
class Source:
    """A producer's output channels, before coupling with other sources."""

    producer: Producer
    output: str
    channels: int
    layout: Layout
    sites: tuple


def production(idx: GraphIndex, node) -> Source:
    """Describe `node` as a source of prunable output channels, or raise Refusal."""
    op, name = node.op_type, node.name
    if len(node.input) < 2 or not idx.is_constant(node.input[1]):
        raise Refusal(f"{op} '{name}' has no constant weight as its second input")
    if idx.is_constant(node.input[0]):
        raise Refusal(f"{op} '{name}' has a constant data input")
    out = node.output[0]
    rank = idx.rank(out) or proven_rank(idx, out)      # through com.microsoft ops (fusedrank.py)
    if rank is None:
        raise Refusal(f"{op} '{name}' has an output of unknown rank")
    weight, wshape, bias = _weight_and_bias(idx, node)
    if op == "ConvTranspose":
        return _conv_transpose_source(idx, node, weight, wshape, bias, out, rank)
    if op == "Conv":
        if attr(node, "group", 1) != 1:
            raise Refusal(f"Conv '{name}' is grouped (group={attr(node, 'group')}); its channels follow its input")
        return _source(idx, Producer(name, op, weight, 0, bias), out, wshape[0], 1, rank)
    if op == "Gemm":
        trans_b = bool(attr(node, "transB", 0))
        channels = wshape[0] if trans_b else wshape[1]
        if bias is not None and not _row_vector(idx.shapes[bias], channels):
            raise Refusal(f"Gemm '{name}' has a bias that is not one value per output column")
        src = _source(idx, Producer(name, op, weight, 0 if trans_b else 1, bias), out, channels, 1, 2)
        return src if bias is None or _per_channel(idx.shapes[bias], channels) else _drop_bias_site(src)
    if len(wshape) != 2:
        raise Refusal(f"MatMul '{name}' has a weight of rank {len(wshape)}, not 2")
    bias, bias_node = matmul_bias(idx, node)
    if bias_node is not None:
        out = idx.nodes[bias_node].output[0]
    src = _source(idx, Producer(name, op, weight, 1, bias, bias_node), out, wshape[1], rank - 1, rank)
    return src if bias is None or _per_channel(idx.shapes[bias], wshape[1]) else _drop_bias_site(src)


def _source(idx: GraphIndex, producer: Producer, output: str, channels: int, axis: int, rank: int) -> Source:
    layout = Layout(axis, rank, (Segment(producer.node, 0, channels),))
    sites = [ParamSite(producer.weight, producer.weight_axis, layout)]
    if producer.bias is not None:
        sites.append(ParamSite(producer.bias, len(idx.shapes[producer.bias]) - 1, layout))
    return Source(producer, output, channels, layout, tuple(sites))


def _per_channel(shape, n: int) -> bool:
    """True when a row-vector bias holds one value per channel (not a shared scalar)."""
    return bool(shape) and shape[-1] == n


def _drop_bias_site(src: Source) -> Source:
    """A scalar-like bias is shared by every channel: nothing to slice."""
    return Source(src.producer, src.output, src.channels, src.layout, src.sites[:1])


def depthwise_conv(idx: GraphIndex, node, layouts: dict) -> Effect | None:
    """A depthwise Conv keeps channel identity: prune its filters and update `group`."""
    layout = layouts.get(0)
    group = attr(node, "group", 1)
    if layout is None or group == 1 or set(layouts) != {0}:
        return None
    wshape = idx.shapes.get(node.input[1])
    if not idx.is_constant(node.input[1]) or wshape is None:
        raise Refusal(f"grouped Conv '{node.name}' has no constant weight")
    channels = layout.positions
    if not (group == channels and wshape[0] == channels and wshape[1] == 1) or layout.axis != 1 or layout.block != 1:
        raise Refusal(f"channels reach grouped Conv '{node.name}' (group={group}); only depthwise "
                      "convolutions with one filter per channel are followed")
    effect = Effect(outputs={node.output[0]: layout})
    effect.sites = [ParamSite(node.input[1], 0, layout)]
    if len(node.input) > 2 and node.input[2]:
        if not idx.is_constant(node.input[2]):
            raise Refusal(f"depthwise Conv '{node.name}' has a non-constant bias")
        effect.sites.append(ParamSite(node.input[2], 0, layout))
    effect.sites.append(AttrSite(node.name, "conv_group", (layout,)))
    return effect



def consumer(idx: GraphIndex, node, in_index: int, layout: Layout) -> Consumer:
    """The Consumer for `node` reading channels laid out as `layout` on input `in_index`."""
    op, name = node.op_type, node.name
    if in_index != 0:
        raise Refusal(f"channels enter {op} '{name}' as input {in_index} (the weight side)")
    if len(node.input) < 2 or not idx.is_constant(node.input[1]):
        raise Refusal(f"{op} '{name}' multiplies the channels with a non-constant operand")
    weight, wshape, bias = _weight_and_bias(idx, node)
    if op == "Conv":
        if attr(node, "group", 1) != 1:
            raise Refusal(f"channels reach grouped Conv '{name}' (group={attr(node, 'group')})")
        if layout.axis != 1 or layout.block != 1:
            raise Refusal(f"Conv '{name}' reads channels on axis 1, the channels are elsewhere")
        spatial = len(wshape) - 2
        geometry = ConvGeometry(
            kernel=tuple(wshape[2:]),
            strides=tuple(attr(node, "strides", [1] * spatial)),
            pads=tuple(attr(node, "pads", [0] * (2 * spatial))),
            dilations=tuple(attr(node, "dilations", [1] * spatial)),
            auto_pad=_str(attr(node, "auto_pad", "NOTSET")),
        )
        return _checked(idx, Consumer(name, op, node.input[0], weight, 1, layout, bias=bias, conv=geometry))
    if op == "ConvTranspose":
        return _checked(idx, Consumer(name, op, node.input[0], weight, 0, layout, bias=bias,
                                      conv=_transposed_geometry(idx, node, layout, wshape, bias)))
    if op == "Gemm":
        trans_a, trans_b = bool(attr(node, "transA", 0)), bool(attr(node, "transB", 0))
        if layout.rank != 2 or layout.axis != (0 if trans_a else 1):
            raise Refusal(f"Gemm '{name}' contracts an axis that does not hold the channels")
        outputs = wshape[0] if trans_b else wshape[1]
        if bias is not None and not _row_vector(idx.shapes[bias], outputs):
            raise Refusal(f"Gemm '{name}' has a bias that is not one value per output column")
        return _checked(idx, Consumer(name, op, node.input[0], weight, 1 if trans_b else 0, layout, bias=bias,
                                      trans_a=trans_a, trans_b=trans_b, alpha=float(attr(node, "alpha", 1.0)),
                                      beta=float(attr(node, "beta", 1.0))))
    if len(wshape) != 2:
        raise Refusal(f"MatMul '{name}' has a weight of rank {len(wshape)}, not 2")
    if layout.axis != layout.rank - 1:
        raise Refusal(f"MatMul '{name}' contracts the last axis, the channels are on axis {layout.axis}")
    bias, bias_node = matmul_bias(idx, node)
    if bias is None:
        bias, bias_node = fused_bias(idx, node)
    return _checked(idx, Consumer(name, op, node.input[0], weight, 0, layout, bias=bias, bias_node=bias_node))


def _weight_and_bias(idx: GraphIndex, node):
    """(weight name, weight shape, bias name or None); the bias must be a constant."""
    weight = node.input[1]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and not idx.is_constant(bias):
        raise Refusal(f"{node.op_type} '{node.name}' has a non-constant bias '{bias}'")
    return weight, idx.shapes[weight], bias


def _checked(idx: GraphIndex, c: Consumer) -> Consumer:
    width = idx.shapes[c.weight][c.weight_axis]
    if width != c.layout.positions * c.layout.block:
        raise Refusal(f"{c.op} '{c.node}' expects {width} input features, the channels give "
                      f"{c.layout.positions}x{c.layout.block}")
    return c


def matmul_bias(idx: GraphIndex, node):
    """(bias constant, Add node name) when the MatMul's only use is an Add of a [N] constant."""
    add, _ = _sole_reader(idx, node)
    if add is None or add.op_type != "Add" or len(add.input) != 2:
        return None, None
    out = node.output[0]
    other = add.input[1] if add.input[0] == out else add.input[0]
    return (other, add.name) if _private_bias(idx, node, other) else (None, None)


# com.microsoft ops that add a bias input to the sum of their first two inputs (input + skip)
# before normalising: onnxruntime's transformer optimizer moves a MatMul's bias Add there.
FUSED_BIAS_SLOT = {"SkipLayerNormalization": 4, "SkipSimplifiedLayerNormalization": 3}


def fused_bias(idx: GraphIndex, node):
    """(bias constant, fused node name) when the MatMul's only use is as the input or skip of a
    com.microsoft Skip*LayerNormalization whose private [N] bias input is then the MatMul's own
    bias: the refit's intercept goes there instead of into an extra Add (consumers only; the
    normalised axis is never pruned)."""
    fused, slot = _sole_reader(idx, node)
    where = FUSED_BIAS_SLOT.get(fused.op_type) if fused is not None else None
    if where is None or fused.domain != "com.microsoft" or slot not in (0, 1) or len(fused.input) <= where:
        return None, None
    bias = fused.input[where]
    return (bias, fused.name) if _private_bias(idx, node, bias) else (None, None)


def _sole_reader(idx: GraphIndex, node) -> tuple:
    """(node, input slot) of the one reader of `node`'s output, or (None, None) when it has
    several, none, or is a model output."""
    out = node.output[0]
    uses = idx.uses(out)
    return uses[0] if len(uses) == 1 and out not in idx.graph_outputs else (None, None)


def _private_bias(idx: GraphIndex, matmul, name: str) -> bool:
    """Whether `name` is a constant only one node reads, adding one value per output column of
    the MatMul (or one value to all)."""
    n = idx.shapes[matmul.input[1]][1]
    return bool(name) and idx.is_constant(name) and _row_vector(idx.shapes[name], n) and len(idx.uses(name)) == 1


def _row_vector(shape, n: int) -> bool:
    """True for shapes like [n], [1, n], [1] that add one value per output column."""
    if not shape:
        return True
    return all(d == 1 for d in shape[:-1]) and shape[-1] in (1, n)


def _str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def is_matmul_like(node) -> bool:
    return node.op_type in MATMUL_LIKE and node.domain in ("", "ai.onnx")


def _conv_transpose_source(idx: GraphIndex, node, weight, wshape, bias, out: str, rank: int):
    """A ConvTranspose's output channels as a source: weight [C_in, C_out/group, k...], so they
    are axis 1 (output_padding, strides and pads only shape the spatial axes)."""
    name = node.name
    if attr(node, "group", 1) != 1:
        raise Refusal(f"ConvTranspose '{name}' is grouped (group={attr(node, 'group')})")
    if bias is not None and len(idx.shapes[bias]) != 1:
        raise Refusal(f"ConvTranspose '{name}' has a bias that is not one value per output channel")
    return _source(idx, Producer(name, "ConvTranspose", weight, 1, bias), out, wshape[1], 1, rank)


def _transposed_geometry(idx: GraphIndex, node, layout: Layout, wshape, bias) -> ConvGeometry:
    """A ConvTranspose consumer: weight [C_in, C_out, k...], input channel c owns the rows
    W[c] (features: its kernel taps, see capture/features.transposed_cols). Output sizes
    given as `output_shape` or auto_pad SAME_* (pads worked out at run time) are refused."""
    name = node.name
    if attr(node, "group", 1) != 1:
        raise Refusal(f"channels reach grouped ConvTranspose '{name}' (group={attr(node, 'group')})")
    if layout.axis != 1 or layout.block != 1:
        raise Refusal(f"ConvTranspose '{name}' reads channels on axis 1, the channels are elsewhere")
    if bias is not None and len(idx.shapes[bias]) != 1:
        raise Refusal(f"ConvTranspose '{name}' has a bias that is not one value per output channel")
    auto_pad = _str(attr(node, "auto_pad", "NOTSET"))
    if attr(node, "output_shape") is not None or auto_pad not in ("NOTSET", "VALID"):
        raise Refusal(f"ConvTranspose '{name}' sets its output size by output_shape or auto_pad {auto_pad}; "
                      "only explicit pads are followed")
    spatial = len(wshape) - 2
    return ConvGeometry(
        kernel=tuple(wshape[2:]),
        strides=tuple(attr(node, "strides", [1] * spatial)),
        pads=tuple(attr(node, "pads", [0] * (2 * spatial))) if auto_pad == "NOTSET" else (0,) * (2 * spatial),
        dilations=tuple(attr(node, "dilations", [1] * spatial)),
        transposed=True,
        output_padding=tuple(attr(node, "output_padding", [0] * spatial)),
    )


def refit_layer(idx: GraphIndex, node) -> Consumer:
    """Any Conv / Gemm / MatMul with a constant weight as a Consumer whose every input channel
    is opaque (none pruned): the description `--refit all` refits a layer with. Raises Refusal
    for what the refit cannot handle (grouped Conv or ConvTranspose, non-constant weight, unknown rank)."""
    from .layout import opaque

    op, name = node.op_type, node.name
    if not is_matmul_like(node):
        raise Refusal(f"{op} '{name}' is not a Conv, ConvTranspose, Gemm or MatMul")
    if len(node.input) < 2 or not idx.is_constant(node.input[1]) or idx.is_constant(node.input[0]):
        raise Refusal(f"{op} '{name}' has no constant weight applied to a data input")
    wshape = idx.shapes.get(node.input[1])
    if wshape is None:
        raise Refusal(f"{op} '{name}' has a weight of unknown shape")
    shared = [t for t in node.input[1:] if t and idx.is_constant(t) and len(idx.uses(t)) > 1]
    if shared:
        raise Refusal(f"{op} '{name}' shares its parameter '{shared[0]}' with another node (tied weights)")
    if op == "Conv":
        if attr(node, "group", 1) != 1:
            raise Refusal(f"Conv '{name}' is grouped (group={attr(node, 'group')}): not refitted (each output "
                          "channel would need its own group's statistics)")
        layout = Layout(1, len(wshape), (opaque(wshape[1]),))
    elif op == "ConvTranspose":
        layout = Layout(1, len(wshape), (opaque(wshape[0]),))
    elif op == "Gemm":
        width = wshape[1] if attr(node, "transB", 0) else wshape[0]
        layout = Layout(0 if attr(node, "transA", 0) else 1, 2, (opaque(width),))
    else:
        rank = idx.rank(node.input[0])
        if rank is None or len(wshape) != 2:
            raise Refusal(f"MatMul '{name}' has an input of unknown rank or a weight of rank {len(wshape)}")
        layout = Layout(rank - 1, rank, (opaque(wshape[0]),))
    return consumer(idx, node, 0, layout)
