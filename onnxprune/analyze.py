"""The `analyze` stage: find every prunable channel group, and say why the rest is left alone.

Pure graph work on the ONNX protobuf: no onnxruntime, no graph surgery.
"""
from __future__ import annotations

from collections.abc import Iterable

import onnx

from .errors import OnnxPruneError
from .graph import GraphIndex
from .groups import Analysis, Group, Skipped
from .oprules import MATMUL_LIKE, Production, Refusal, consumer, passthrough, production


def analyze(model: onnx.ModelProto, exclude: Iterable[str] = (), index: GraphIndex | None = None) -> Analysis:
    """All prunable groups in topological order, plus every Conv/Gemm/MatMul left alone."""
    idx = index or GraphIndex.build(model)
    exclude = set(exclude)
    unknown = exclude - set(idx.nodes)
    if unknown:
        raise OnnxPruneError(
            f"--exclude names no node of the model: {', '.join(sorted(unknown))} (see `onnxprune analyze` for names)"
        )
    groups, skipped = [], []
    for node in idx.topo_nodes():
        if node.op_type not in MATMUL_LIKE or node.domain not in ("", "ai.onnx"):
            continue
        if node.name in exclude:
            skipped.append(Skipped(node.name, node.op_type, "excluded by --exclude"))
            continue
        try:
            group = trace_group(idx, production(idx, node))
        except Refusal as why:
            skipped.append(Skipped(node.name, node.op_type, str(why)))
            continue
        groups.append(group)
    return Analysis(groups=tuple(groups), skipped=tuple(skipped))


def trace_group(idx: GraphIndex, prod: Production) -> Group:
    """Follow the producer's channels through pass-through ops to their consumers."""
    carriers = {prod.output: prod.carrier}
    queue = [prod.output]
    tensors, passthru, consumers = [], [], []
    slices = list(prod.slices)
    seen = set(prod.producer.nodes)
    while queue:
        tensor = queue.pop(0)
        carrier = carriers[tensor]
        tensors.append(tensor)
        if tensor in idx.graph_outputs:
            raise Refusal(f"channels reach the model output '{tensor}'")
        uses = idx.uses(tensor)
        if not uses:
            raise Refusal(f"tensor '{tensor}' is not used by any node")
        for node, i in uses:
            if i < 0:
                raise Refusal(f"channels are read inside a subgraph of {node.op_type} '{node.name}'")
            if node.name in seen:
                raise Refusal(f"channels reach {node.op_type} '{node.name}' along two paths")
            seen.add(node.name)
            found = consumer(idx, node, i, carrier)
            if found is not None:
                _check_consumer_width(idx, found, prod.channels)
                consumers.append(found)
                continue
            out_carrier, more = passthrough(idx, node, i, carrier, prod.channels)
            passthru.append(node.name)
            slices.extend(more)
            carriers[node.output[0]] = out_carrier
            queue.append(node.output[0])
    if not consumers:
        raise Refusal("no Conv/Gemm/MatMul consumes the channels")
    group = Group(
        name=prod.producer.node,
        channels=prod.channels,
        producers=(prod.producer,),
        passthrough=tuple(sorted(passthru, key=idx.order.__getitem__)),
        consumers=tuple(consumers),
        slices=tuple(slices),
        tensors=tuple(tensors),
        position=idx.order[prod.producer.node],
    )
    _check_private_params(idx, group)
    return group


def _check_consumer_width(idx: GraphIndex, c, channels: int) -> None:
    width = idx.shapes[c.weight][c.weight_axis]
    if width != channels * c.flatten_block:
        raise Refusal(
            f"{c.op} '{c.node}' expects {width} input features, the channels give {channels}x{c.flatten_block}"
        )


def _check_private_params(idx: GraphIndex, group: Group) -> None:
    """Refuse when a parameter we would resize is shared with another node (tied weights)."""
    names = [p.name for p in group.params] + [c.bias for c in group.consumers if c.bias]
    for name in names:
        users = {n.name for n, _ in idx.uses(name)}
        if len(users) > 1:
            raise Refusal(f"initializer '{name}' is shared by nodes {', '.join(sorted(users))}")
