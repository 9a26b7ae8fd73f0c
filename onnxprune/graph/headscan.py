"""Find the attention blocks of a model and add them to the analysis as head groups.

Every detector in `DETECTORS` returns HeadGroup / HeadRefusal values (heads.py says what a
detector must produce); a fused-op detector is one more entry here.
"""
from __future__ import annotations

from dataclasses import replace

from .groups import Analysis, Skipped
from .fused_attention import fused_attention
from .headflow import unfused_attention
from .heads import HeadRefusal
from .index import GraphIndex
from .roles import is_matmul_like


DETECTORS = (unfused_attention, fused_attention)


def attach_heads(analysis: Analysis, idx: GraphIndex, opset: int, exclude: set) -> Analysis:
    """`analysis` with every provable attention block as a head group.

    A block is taken only when all its projections were left alone by the channel analysis
    (they normally are: their Reshape splits the channel axis into heads) and none is
    excluded; a refused block replaces its projections' reasons with the head reason (a
    refused fused attention node is listed itself, with that reason)."""
    skipped = {s.node: s for s in analysis.skipped}
    grouped = {p.node for g in analysis.groups for p in g.producers}
    groups = list(analysis.groups)
    for detect in DETECTORS:
        for found in detect(idx, opset):
            if isinstance(found, HeadRefusal):
                for node in found.producers:
                    reason = f"attention heads: {found.reason}"
                    if node in skipped and node not in exclude:
                        old = skipped[node].reason
                        why = f"{old}; as attention heads: {found.reason}" if found.lone else reason
                        skipped[node] = replace(skipped[node], reason=why)
                    elif node not in grouped and node not in exclude and not is_matmul_like(idx.nodes[node]):
                        skipped[node] = Skipped(node, idx.nodes[node].op_type, reason)    # a fused op
                continue
            nodes = {s.producer.node for s in found.streams}
            looked = {n for n in nodes if is_matmul_like(idx.nodes[n])}   # a fused op is never a channel producer
            if nodes & grouped or nodes & exclude or not looked <= set(skipped):
                continue
            groups.append(found.to_group(idx))
            grouped |= nodes
            for node in looked:
                skipped.pop(node)
    groups.sort(key=lambda g: (g.position, g.name))
    rest = sorted(skipped.values(), key=lambda s: idx.order[s.node])
    return Analysis(groups=tuple(groups), skipped=tuple(rest), notes=analysis.notes)
