"""Typed results of graph analysis: prunable channel groups and the layers left alone.

These are plain frozen values; every later stage (capture, select, rewrite, budget) reads
them and none of them needs the graph traversal again.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class ParamSlice:
    """An initializer whose `axis` is indexed by the group's channels, `block` elements each."""

    name: str
    axis: int
    block: int = 1


@dataclass(frozen=True)
class Producer:
    """A node whose output channels are the group's: its weight's `weight_axis` indexes them."""

    node: str
    op: str                  # Conv | Gemm | MatMul
    weight: str
    weight_axis: int
    bias: str | None = None
    bias_node: str | None = None     # the Add carrying a MatMul bias

    @property
    def nodes(self) -> tuple:
        return (self.node,) + ((self.bias_node,) if self.bias_node else ())


@dataclass(frozen=True)
class ConvGeometry:
    """What im2col needs to lay a Conv consumer's input out as rows x (channel, kernel)."""

    kernel: tuple
    strides: tuple
    pads: tuple          # begin pads for every spatial axis, then end pads (ONNX order)
    dilations: tuple
    auto_pad: str = "NOTSET"


@dataclass(frozen=True)
class Consumer:
    """A Conv / Gemm / MatMul reading the group's channels; its input weights are refitted.

    `block` is how many weight rows (features) one channel owns: kernel area times the
    Flatten block. Features of channel c are rows [c*block, (c+1)*block) of `matrix` form.
    """

    node: str
    op: str                 # Conv | Gemm | MatMul
    input: str              # the tensor captured for statistics
    weight: str
    weight_axis: int        # axis of `weight` indexed by the group's channels
    flatten_block: int      # columns per channel when a Flatten sits in between
    block: int
    bias: str | None = None          # Conv B, Gemm C, or the constant of the MatMul's Add
    bias_node: str | None = None     # the Add node carrying a MatMul bias
    trans_a: bool = False
    trans_b: bool = False
    alpha: float = 1.0
    beta: float = 1.0
    conv: ConvGeometry | None = None

    @property
    def weight_slice(self) -> ParamSlice:
        return ParamSlice(self.weight, self.weight_axis, self.flatten_block)


@dataclass(frozen=True)
class Group:
    """Channels that are removed together, with every node and parameter that depends on them."""

    name: str
    channels: int
    producers: tuple        # Producer values
    passthrough: tuple      # node names, topological order
    consumers: tuple        # Consumer values
    slices: tuple           # ParamSlice of producers and pass-through ops
    tensors: tuple          # tensors carrying the channels (producer output onwards)
    position: int = 0       # topological position of the first producer

    @property
    def boundary(self) -> str:
        """The first producer node: pruning this group changes nothing before it."""
        return self.producers[0].node

    @property
    def params(self) -> tuple:
        """Every initializer axis indexed by this group's channels (consumers included)."""
        return self.slices + tuple(c.weight_slice for c in self.consumers)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "channels": self.channels,
            "producers": [n for p in self.producers for n in p.nodes],
            "passthrough": list(self.passthrough),
            "consumers": [c.node for c in self.consumers],
            "block_sizes": {c.node: c.block for c in self.consumers},
            "params": [asdict(p) for p in self.params],
        }


@dataclass(frozen=True)
class Skipped:
    """A Conv / Gemm / MatMul that is not pruned, and why."""

    node: str
    op: str
    reason: str

    def to_dict(self) -> dict:
        return {"node": self.node, "op": self.op, "reason": self.reason}


@dataclass(frozen=True)
class Analysis:
    groups: tuple
    skipped: tuple
    notes: tuple = field(default=())

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {
            "groups": [g.to_dict() for g in self.groups],
            "skipped": [s.to_dict() for s in self.skipped],
        }


def channel_indices(kept, block: int):
    """Positions along an axis of the kept channels when each channel owns `block` of them."""
    import numpy as np

    kept = np.asarray(kept, dtype=np.int64)
    return (kept[:, None] * block + np.arange(block, dtype=np.int64)).ravel()


def feature_rows(kept, block: int, total: int):
    """Rows of a (features + 1)-row consumer matrix for the kept channels, plus the intercept."""
    import numpy as np

    return np.append(channel_indices(kept, block), total - 1)
