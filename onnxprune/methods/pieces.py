"""Every piece of a Split keeps a channel.

A Split along the channels hands each consumer one piece of the group. A selection that keeps
none of a piece's channels would leave a tensor with zero channels, which no runtime runs
(a Conv with no input channels; onnxruntime refuses it). So after any method has picked k
channels, each piece that holds only this group's channels and lost all of them takes back its
strongest channel (largest l1 norm of outgoing weights) in exchange for the weakest kept
channel whose piece can spare it; k grows only when there are more such pieces than k.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .base import Selection


def split_pieces(group) -> list:
    """Channel index arrays of the Split pieces that hold this group's channels and nothing else."""
    pieces = []
    for site in group.attr_sites:
        if site.kind != "split":
            continue
        for layout in site.layouts:
            if any(s.source is None for s in layout.segments):
                continue                                    # opaque channels: never empty
            mine = [np.arange(s.lo, s.hi) for s in layout.segments if s.source in group.sources]
            if mine:
                pieces.append(np.unique(np.concatenate(mine)))
    return pieces


def cover_pieces(sel: Selection, pieces: list, scores: np.ndarray) -> tuple:
    """(selection, notes): `sel` with a kept channel in every piece (see module doc)."""
    kept = [int(i) for i in sel.kept]
    scales = None if sel.scales is None else dict(zip(kept, np.asarray(sel.scales).tolist()))
    notes = []
    for piece in pieces:
        if np.isin(piece, kept).any():
            continue
        best = int(piece[np.argmax(scores[piece])])
        spare = [c for c in kept if _spare(c, kept, pieces)]
        if spare:
            worst = min(spare, key=lambda c: (scores[c], -c))
            kept.remove(worst)
            notes.append(f"channel {best} kept instead of {worst} so that a Split piece keeps a channel")
            if scales is not None:
                scales.pop(worst)
        else:
            notes.append(f"channel {best} kept in addition so that a Split piece keeps a channel")
        kept.append(best)
        if scales is not None:
            scales[best] = 1.0
    if not notes:
        return sel, notes
    kept = np.sort(np.asarray(kept, dtype=np.int64))
    new_scales = None if scales is None else np.asarray([scales[int(c)] for c in kept])
    return replace(sel, kept=kept, scales=new_scales), notes


def _spare(channel: int, kept: list, pieces: list) -> bool:
    """Whether every piece holding `channel` keeps another channel without it."""
    others = [c for c in kept if c != channel]
    return all(np.isin(p, others).any() for p in pieces if channel in p)
