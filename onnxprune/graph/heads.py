"""Attention heads as prunable units: one head is removed from Q, K, V and O together.

A head is a block of `head_dim` input features of the output projection O, exactly as a Conv
channel is a block of kh*kw features of its consumer, so the greedy on O's input statistics,
the refit of O and every other method apply unchanged. This module holds the typed result a
head *detector* returns (`HeadGroup`) and turns it into the ordinary `Group` every later
stage reads (`HeadGroup.to_group`):

- the group's channels are the *units*: heads, or with grouped-query attention whole KV
  groups (one K/V head with its `queries_per_unit` query heads);
- every Q/K/V projection is a `HeadStream`: a producer whose output columns come in blocks
  (`layout.block` = columns of one unit, e.g. head_dim, or queries_per_unit x head_dim for
  the Q of a KV group); a packed QKV projection is one stream whose layout names the
  producer once per piece (three segments over the same source);
- O is the group's consumer; its input rows come in blocks of the V side's unit width;
- the head counts written in the graph (a Reshape target's head entry, its merged width
  H*Dh, a fused op's `num_heads`) are `AttrSite`s, rewritten to the kept units x `factor`;
  a count constant other nodes also read is copied first (rewrite/apply.py).

Keeping every unit reproduces the model exactly; removing units without refit equals the
original with O's rows of those units zeroed (rewrite/masked.py), because heads do not mix
before O: the surgery check verifies that on every run.

How a pattern plugs in: a detector is a function `(GraphIndex, opset) -> iterable of
HeadGroup | HeadRefusal`, listed in `headscan.DETECTORS`. The unfused detector (headflow.py) follows
Reshape / Transpose / MatMul / Softmax from each projection to O. A fused op that holds
`num_heads` (com.microsoft Attention / MultiHeadAttention) would return a HeadGroup whose
streams are its projections (for Attention: the node itself as `Producer` with its packed
weight, a layout of three segments, block head_dim), whose `output` is the O MatMul reading
the fused node's output, whose `counts` hold `AttrSite(node, "num_heads", (layout,))`
(rewrite/apply.py writes that kind into the node's attribute), whose `nodes` name the fused
node, and whose `pattern` names the op. `headscan.attach_heads` then does the rest: it swaps the
streams' refusals in the analysis for the new group.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from .groups import Consumer, Group, HeadInfo, ParamSite, Producer
from .index import GraphIndex
from .layout import Layout, Sources


@dataclass(frozen=True)
class HeadStream:
    """One Q, K, V (or packed QKV) projection, its output columns grouped by unit."""

    role: str               # 'q' | 'k' | 'v' | 'qkv' | 'kv' (one packed producer for several)
    producer: Producer
    layout: Layout          # unit positions of the producer's output; block = columns per unit
    head_dim: int

    @property
    def sites(self) -> tuple:
        out = [ParamSite(self.producer.weight, self.producer.weight_axis, self.layout)]
        if self.producer.bias is not None:
            out.append(ParamSite(self.producer.bias, -1, self.layout))
        return tuple(out)


@dataclass(frozen=True)
class HeadGroup:
    """The heads of one attention block, removed unit by unit from Q, K, V and O."""

    units: int                  # prunable units: heads, or KV groups for grouped-query attention
    head_dim: int               # features of one head on O's input (the V side)
    queries_per_unit: int       # query heads per unit (1 unless grouped-query attention)
    streams: tuple              # HeadStream values
    output: Consumer            # the O projection, layout block = queries_per_unit x head_dim
    counts: tuple = ()          # AttrSite values (head counts in shape constants, num_heads)
    nodes: tuple = ()           # nodes between the streams and O (topological order)
    tensors: tuple = ()         # tensors carrying the heads
    pattern: str = "unfused"
    sites: tuple = ()           # ParamSites outside the streams (a fused op's packed Q/K/V bias)

    @property
    def num_heads(self) -> int:
        return self.units * self.queries_per_unit

    def to_group(self, idx: GraphIndex) -> Group:
        """The ordinary Group of this attention block (channels = units)."""
        streams = sorted(self.streams, key=lambda s: idx.order[s.producer.node])
        producers = tuple(dict((s.producer.node, s.producer) for s in streams).values())
        names = tuple(p.node for p in producers)
        sites = tuple(_bias_axis(idx, site) for s in streams for site in s.sites) + tuple(self.sites)
        info = HeadInfo(self.num_heads, self.head_dim, self.queries_per_unit, self.pattern,
                        tuple((s.role, s.producer.node) for s in streams))
        return Group(
            name=names[0],
            channels=self.units,
            producers=producers,
            sources=Sources(names),
            passthrough=tuple(self.nodes),
            consumers=(self.output,),
            sites=_unique_sites(sites),
            attr_sites=tuple(self.counts),
            tensors=tuple(self.tensors),
            position=idx.order[names[0]],
            heads=info,
        )


@dataclass(frozen=True)
class HeadRefusal:
    """Projections that split into heads but whose heads cannot be proven independent."""

    producers: tuple        # producer node names
    reason: str
    lone: bool = False      # one projection meeting no other: the channel analysis's reason stays first


def _bias_axis(idx: GraphIndex, site: ParamSite) -> ParamSite:
    if site.axis >= 0:
        return site
    return replace(site, axis=len(idx.shapes[site.name]) - 1)


def _unique_sites(sites) -> tuple:
    """A packed producer's weight appears once, with all its pieces in one layout."""
    return tuple(dict(((s.name, s.axis), s) for s in sites).values())
