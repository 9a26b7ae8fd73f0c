"""Turn a finished propagation (analyze.py) into groups: pieces coupled together, refusals,
and every site, consumer and pass-through op of each group in *group coordinates*.

A group is a set of pieces (pieces.py) of one size; its channel c is channel lo+c of every
member piece. Layouts are rewritten so that each segment names what is removed with it:

- a piece that is a whole source (the usual case: a producer coupled with nothing, or coupled
  one to one with a residual partner) keeps the source's name and channel numbers, so a group
  of whole sources looks exactly as before pieces existed;
- any other piece (half of a C2f cv1, the middle channels of an option-A stage, zeros of a
  Pad) is renamed to its group's name, counted from the piece's start;
- pieces of zeros that are coupled with no real channel are opaque (never removed).

`Group.sources` lists the names a group's channels carry in layouts, the group's name first.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .groups import Analysis, Group, Skipped
from .layout import Layout, Segment, Sources, _merge, opaque
from .roles import Refusal


def assemble(prop) -> Analysis:
    return _Assembly(prop).run()


class _Assembly:
    def __init__(self, prop):
        self.prop, self.idx = prop, prop.idx
        self.pieces_of = {}         # source -> [Piece] in channel order
        self.canon_name = {}        # Piece -> (name or None, whole)
        self._cache = {}
        self.refused = {}           # source -> [(rank, lo, hi, reason)]
        for i, (s, lo, hi, reason) in enumerate(prop.refusals):
            self.refused.setdefault(s, []).append((i, lo, hi, reason))

    def order(self, sid: str) -> int:
        return self.idx.order[sid] if sid in self.prop.sources else self.idx.order[self.prop.zeros[sid][1]]

    def run(self) -> Analysis:
        prop = self.prop
        classes = []
        for members in prop.pieces.solve():
            members.sort(key=lambda p: (p.source in prop.zeros, self.order(p.source), p.lo))
            for p in members:
                self.pieces_of.setdefault(p.source, []).append(p)
            classes.append(members)
        for lst in self.pieces_of.values():
            lst.sort(key=lambda p: p.lo)
        for members in classes:
            real = [p for p in members if p.source in prop.sources]
            if not real:
                for p in members:
                    self.canon_name[p] = (None, False)
                continue
            first = real[0]
            name = first.source if self._whole(first) else f"{first.source}[{first.lo}:{first.hi}]"
            for p in members:
                self.canon_name[p] = (p.source, True) if self._whole(p) else (name, False)
        groups, failed = [], {}
        for members in classes:
            real = [p for p in members if p.source in prop.sources]
            if not real:
                continue
            reason = self._refusal(members)
            if reason is None:
                try:
                    groups.append(self._group(members))
                    continue
                except Refusal as why:
                    reason = (real[0].source, str(why))
            for p in real:
                own = self._refusal([q for q in members if q.source == p.source])
                failed.setdefault(p.source, own if own is not None else reason)
        pruned = {p.node for g in groups for p in g.producers}
        skipped = list(prop.not_sources)
        for sid, (who, reason) in failed.items():
            if sid in pruned:
                continue
            why = reason if who == sid else f"coupled with '{who}': {reason}"
            skipped.append(Skipped(sid, prop.sources[sid].producer.op, why))
        groups.sort(key=lambda g: (g.position, g.name))
        skipped.sort(key=lambda s: self.idx.order[s.node])
        return Analysis(groups=tuple(groups), skipped=tuple(skipped))

    def _whole(self, p) -> bool:
        return p.source in self.prop.sources and p.lo == 0 and p.hi == self.prop.sources[p.source].channels

    # -- refusals --------------------------------------------------------------------------
    def _refusal(self, members):
        """(source, reason) of the first refusal touching a member piece, else None."""
        hits = [(i, p.source, reason) for p in members for i, lo, hi, reason in self.refused.get(p.source, ())
                if lo < p.hi and p.lo < hi]
        if not hits:
            return None
        _, s, reason = min(hits)
        if s in self.prop.zeros:        # zeros have no node to report: name a real member
            s = next(p.source for p in members if p.source in self.prop.sources)
        return s, reason

    # -- canonical layouts -----------------------------------------------------------------
    def canon(self, layout: Layout) -> Layout:
        out = self._cache.get(layout)
        if out is not None:
            return out
        segs, same = [], True
        for seg in layout.segments:
            if seg.source is None:
                segs.append(seg)
                continue
            for p in self.pieces_of.get(seg.source, ()):
                a, b = max(seg.lo, p.lo), min(seg.hi, p.hi)
                if a >= b:
                    continue
                name, whole = self.canon_name[p]
                if name is None:
                    segs.append(opaque(b - a))
                elif whole:
                    segs.append(Segment(name, a, b))
                else:
                    segs.append(Segment(name, a - p.lo, b - p.lo))
                same = same and whole and (a, b) == (seg.lo, seg.hi)
        out = layout if same else replace(layout, segments=_merge(tuple(segs)))
        self._cache[layout] = out
        return out

    def _site(self, site):
        if hasattr(site, "layout"):
            return replace(site, layout=self.canon(site.layout))
        return replace(site, layouts=tuple(self.canon(lay) for lay in site.layouts))

    # -- one group -------------------------------------------------------------------------
    def _group(self, members) -> Group:
        prop, order = self.prop, self.idx.order.__getitem__
        name = self.canon_name[members[0]][0]
        whole = [p.source for p in members if self.canon_name[p][1]]
        sources = (name,) + tuple(s for s in whole if s != name)
        names = set(sources)
        touches = lambda lay: any(s.source in names for s in lay.segments)  # noqa: E731
        owners = list(dict.fromkeys(p.source for p in members))
        real = [s for s in owners if s in prop.sources]
        consumers = {}
        for m in owners:
            for node, c in prop.consumers[m].items():
                if node not in consumers and touches(self.canon(c.layout)):
                    consumers[node] = replace(c, layout=self.canon(c.layout))
        if not consumers:
            raise Refusal("no Conv/Gemm/MatMul consumes the channels")
        sites, attr_sites, seen = [], [], set()
        for m in owners:
            for site in prop.sites[m]:
                key = (type(site).__name__, getattr(site, "name", None), getattr(site, "axis", None),
                       getattr(site, "node", None), getattr(site, "kind", None))
                if key in seen:
                    continue
                site = self._site(site)
                if not any(touches(lay) for lay in ([site.layout] if hasattr(site, "layout") else site.layouts)):
                    continue
                seen.add(key)
                (sites if hasattr(site, "layout") else attr_sites).append(site)
        passthrough = {n for m in owners for n in prop.passthrough[m]
                       if any(touches(self.canon(lay)) for lay in prop.seen.get(n, ()))}
        group = Group(
            name=name,
            channels=members[0].size,
            producers=tuple(prop.sources[s].producer for s in real),
            sources=Sources(sources, [(s, self.canon(prop.sources[s].layout)) for s in real
                                      if not self.canon_name[self.pieces_of[s][0]][1]]),
            passthrough=tuple(sorted(passthrough, key=order)),
            consumers=tuple(sorted(consumers.values(), key=lambda c: order(c.node))),
            sites=tuple(sites),
            attr_sites=tuple(attr_sites),
            tensors=tuple(t for m in owners for t in prop.tensors[m] if touches(self.canon(prop.layouts[t]))),
            position=order(real[0]),
            outputs=tuple((s, self.canon(prop.sources[s].layout)) for s in real),
        )
        _check_even_positions(group)
        _check_private_params(self.idx, group)
        return group


def _check_even_positions(group: Group) -> None:
    members = set(group.sources)
    for c in group.consumers:
        src, ch = c.layout.owners()
        counts = np.bincount(ch[np.isin(src, list(members))], minlength=group.channels)
        if len(set(counts[counts > 0])) > 1:
            raise Refusal(f"channels reach {c.op} '{c.node}' an uneven number of times")


def _check_private_params(idx, group: Group) -> None:
    """Refuse when a parameter we would resize is shared with another node (tied weights)."""
    names = [p.name for p in group.params] + [c.bias for c in group.consumers if c.bias]
    for name in names:
        users = {n.name for n, _ in idx.uses(name)}
        if len(users) > 1:
            raise Refusal(f"initializer '{name}' is shared by nodes {', '.join(sorted(users))}")
