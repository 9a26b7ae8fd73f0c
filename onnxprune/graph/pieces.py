"""Channel pieces: which channel ranges of which sources are removed together.

An element-wise op couples its operands position by position. Position i may hold channel
lo+i of source S in one operand and channel lo'+i of source T in the other: a YOLOv8 C2f adds
the second half of its cv1 (channels 16..31) to a bottleneck's output (channels 0..15), and an
option-A ResNet shortcut adds the previous stage (zero-padded on the channel axis) to the
stage's conv output at an offset of a few channels. Such a coupling is a *channel map*
between sources: S's channel lo+i goes with T's channel lo'+i.

Every source (a producer's output, or a run of zeros created by a Pad) is cut into *pieces*,
ranges of channels, so that every coupling maps whole pieces onto whole pieces (cuts are
carried across couplings until nothing changes). Pieces coupled with each other form one
group, with the identity map between them: channel c of the group is channel lo+c of each
member piece (lo its start). A source whose channels are coupled with nobody at an offset
stays one piece; several pieces of one source may land in one group (then that source loses
each removed channel once per piece).

Pure bookkeeping: which pieces are prunable is decided by analyze.py.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Piece:
    source: str
    lo: int
    hi: int

    @property
    def size(self) -> int:
        return self.hi - self.lo


class Pieces:
    def __init__(self):
        self.sizes = {}            # source -> channel count
        self.links = []            # (source a, lo a, source b, lo b, length)

    def add_source(self, source: str, size: int) -> None:
        self.sizes[source] = size

    def link(self, a: str, lo_a: int, b: str, lo_b: int, n: int) -> None:
        """Channel lo_a+i of `a` goes with channel lo_b+i of `b` for i < n."""
        if n > 0 and not (a == b and lo_a == lo_b):
            self.links.append((a, lo_a, b, lo_b, n))

    def solve(self) -> list:
        """The groups of pieces: lists of Piece, each list's pieces of one size."""
        cuts = {s: {0, n} for s, n in self.sizes.items()}
        for a, la, b, lb, n in self.links:
            cuts[a].update((la, la + n))
            cuts[b].update((lb, lb + n))
        changed = True
        while changed:
            changed = False
            for a, la, b, lb, n in self.links:
                for src, lo, dst, lo_d in ((a, la, b, lb), (b, lb, a, la)):
                    for p in [p for p in cuts[src] if lo < p < lo + n]:
                        q = lo_d + p - lo
                        if q not in cuts[dst]:
                            cuts[dst].add(q)
                            changed = True
        starts = {s: sorted(c) for s, c in cuts.items()}
        pieces = {(s, lo): Piece(s, lo, hi) for s, c in starts.items() for lo, hi in zip(c, c[1:])}
        parent = {p: p for p in pieces.values()}

        def find(p):
            while parent[p] != p:
                parent[p] = parent[parent[p]]
                p = parent[p]
            return p

        for a, la, b, lb, n in self.links:
            pos = la
            while pos < la + n:
                pa = pieces[(a, pos)]
                pb = pieces[(b, lb + pos - la)]
                ra, rb = find(pa), find(pb)
                if ra != rb:
                    parent[rb] = ra
                pos = pa.hi
        out = {}
        for p in pieces.values():
            out.setdefault(find(p), []).append(p)
        return list(out.values())
