"""Channel layouts: which prunable channels sit at which position of a tensor's channel axis.

A tensor's channel axis is a sequence of *segments*: a range [lo, hi) of one source's
channels (a source is a producer's output), or `size` opaque channels that are never pruned
(graph inputs, zero padding, ...). Concat joins segment lists, Split cuts them, Flatten
multiplies the elements per position (`block`), an NHWC flatten interleaves them.

Positions are always described in *original* coordinates. `Alive` records which channels
each pruned source kept, so any site can be mapped to the current model's coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Segment:
    source: str | None      # source id (producer node name), or None for opaque channels
    lo: int
    hi: int

    @property
    def size(self) -> int:
        return self.hi - self.lo


@dataclass(frozen=True)
class Layout:
    """Channels along `axis` of a rank-`rank` tensor; each position owns `block` elements
    (contiguous, or strided by the position count when `interleaved`)."""

    axis: int
    rank: int
    segments: tuple
    block: int = 1
    interleaved: bool = False

    @property
    def positions(self) -> int:
        return sum(s.size for s in self.segments)

    @property
    def sources(self) -> set:
        return {s.source for s in self.segments if s.source is not None}

    def with_axis(self, axis: int, rank: int) -> "Layout":
        return replace(self, axis=axis, rank=rank)

    def owners(self) -> tuple:
        """(source per position, channel per position) as arrays; source None -> ''."""
        src, ch = [], []
        for s in self.segments:
            src.extend([s.source or ""] * s.size)
            ch.extend(range(s.lo, s.hi))
        return np.array(src, dtype=object), np.array(ch, dtype=np.int64)


def concat(layouts: list, axis: int, rank: int) -> Layout:
    segments = tuple(s for lay in layouts for s in lay.segments)
    return Layout(axis, rank, _merge(segments), layouts[0].block, layouts[0].interleaved)


def cut(layout: Layout, start: int, stop: int) -> Layout:
    """Positions [start, stop) of a layout (a Split output)."""
    out, pos = [], 0
    for s in layout.segments:
        a, b = max(start, pos), min(stop, pos + s.size)
        if a < b:
            out.append(Segment(s.source, s.lo + a - pos, s.lo + b - pos))
        pos += s.size
    return replace(layout, segments=tuple(out))


def opaque(size: int) -> Segment:
    return Segment(None, 0, size)


def _merge(segments: tuple) -> tuple:
    """Join adjacent pieces of the same source that continue each other."""
    out = []
    for s in segments:
        if out and out[-1].source == s.source and s.source is not None and out[-1].hi == s.lo:
            out[-1] = Segment(s.source, out[-1].lo, s.hi)
        elif out and out[-1].source is None and s.source is None:
            out[-1] = opaque(out[-1].size + s.size)
        else:
            out.append(s)
    return tuple(out)


class Sources(tuple):
    """A group's source names, carrying `outputs`: (producer node, Layout of its output channels)
    for producers whose channels are split between groups (see pieces.py), so that `Alive`
    can also say which output channels such a producer still has."""

    outputs: tuple = ()

    def __new__(cls, names, outputs=()):
        out = super().__new__(cls, names)
        out.outputs = tuple(outputs)
        return out

    def __reduce__(self):
        return (Sources, (tuple(self), self.outputs))


class Alive:
    """Which channels of each source are still present (all, until its group is pruned).

    `kept[node]` of a producer whose output is split between groups is its whole output's
    mask, kept up to date as those groups are marked (readers look producers up by node)."""

    def __init__(self):
        self.kept = {}          # source -> bool mask over its original channels
        self._split = {}        # producer node -> Layout of its output (pieces of several groups)

    def mark(self, sources, channels: int, kept) -> None:
        mask = np.zeros(channels, dtype=bool)
        mask[np.asarray(kept, dtype=np.int64)] = True
        for s in sources:
            self.kept[s] = mask
        self._split.update(getattr(sources, "outputs", ()))
        for node, layout in self._split.items():
            self.kept[node] = self.mask(layout)

    def after(self, sources, kept_mask: np.ndarray) -> "Alive":
        """A copy with `sources` reduced to `kept_mask`."""
        out = Alive()
        out.kept = dict(self.kept)
        out._split = dict(self._split)
        for s in sources:
            out.kept[s] = kept_mask
        return out

    def mask(self, layout: Layout) -> np.ndarray:
        """Alive flag of every original position of `layout`."""
        parts = []
        for s in layout.segments:
            if s.source is None or s.source not in self.kept:
                parts.append(np.ones(s.size, dtype=bool))
            else:
                parts.append(self.kept[s.source][s.lo:s.hi])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    def current_positions(self, layout: Layout) -> int:
        return int(self.mask(layout).sum())

    def current_index(self, layout: Layout) -> np.ndarray:
        """For each original position: its index in the current tensor (-1 if removed)."""
        alive = self.mask(layout)
        index = np.cumsum(alive) - 1
        return np.where(alive, index, -1)

    def removal(self, layout: Layout, sources: set, kept_mask: np.ndarray) -> np.ndarray:
        """Current positions to delete when the group of `sources` keeps `kept_mask`."""
        src, ch = layout.owners()
        index = self.current_index(layout)
        drop = np.array([s in sources and not kept_mask[c] for s, c in zip(src, ch)], dtype=bool)
        return index[drop & (index >= 0)]

    def channel_positions(self, layout: Layout, sources: set, channels: int) -> list:
        """Current positions of each group channel (a list per channel) in `layout`."""
        src, ch = layout.owners()
        index = self.current_index(layout)
        out = [[] for _ in range(channels)]
        for s, c, i in zip(src, ch, index):
            if s in sources and i >= 0:
                out[c].append(int(i))
        return out


def element_indices(positions, layout: Layout, total_positions: int) -> np.ndarray:
    """Element indices along the axis of the given (current) positions, block-expanded."""
    if not layout.interleaved:
        return channel_indices(positions, layout.block)
    positions = np.asarray(positions, dtype=np.int64)
    r = np.arange(layout.block, dtype=np.int64)
    return (r[None, :] * total_positions + positions[:, None]).ravel()


def channel_indices(positions, block: int) -> np.ndarray:
    """Element indices of the given positions when each owns `block` contiguous elements
    (position p: p*block ... p*block + block-1)."""
    positions = np.asarray(positions, dtype=np.int64)
    return (positions[:, None] * block + np.arange(block, dtype=np.int64)[None, :]).ravel()
