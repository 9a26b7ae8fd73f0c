"""The skip path's drift at a residual Add, laid out as the refitted layer's output rows.

For a layer ending a residual branch (graph/residual.py) asym capture also fetches the Add's
other operand from both models; `s_orig - s_cur` is added to the layer's refit target, so the
layer's output rows and these rows must line up: a Conv output [N, C, *spatial] becomes rows
(sample, position) x C like im2col's patches, a Gemm/MatMul output [..., C] rows x C.
"""
from __future__ import annotations

import numpy as np

from ..graph.groups import Consumer


def output_rows(y, c: Consumer, xp, dtype, rows=None):
    """A layer's output-shaped batch as rows x channels (`rows`: only these flat rows)."""
    flat = xp.moveaxis(y, 1, -1).reshape(-1, y.shape[1]) if c.conv is not None else y.reshape(-1, y.shape[-1])
    if rows is not None:
        flat = flat[xp.asarray(rows)]
    return flat.astype(dtype, copy=False)


def batch_drift(group: list, partners: dict, widths: list, original: dict, current: dict):
    """The drift of one batch for an accumulator shared by `group` (their target columns
    stacked: `widths`), concatenated on the channel axis with zeros for consumers that end no
    residual branch; None when none of them does (or the skip's shapes differ between the
    models, e.g. when its channels were pruned: then there is nothing to compensate)."""
    parts, template = [], None
    for c, width in zip(group, widths):
        skip = partners.get(c.node)
        d = None
        if skip is not None and skip in original and skip in current:
            a, b = original[skip], current[skip]
            axis = 1 if c.conv is not None else -1
            if a.shape == b.shape and a.shape[axis] == width:
                d = np.subtract(a, b, dtype=np.promote_types(a.dtype, np.float32))   # exact before rounding
                template = (d, axis)
        parts.append((d, width))
    if template is None:
        return None
    ref, axis = template
    blocks = []
    for d, width in parts:
        if d is None:
            shape = list(ref.shape)
            shape[axis] = width
            d = np.zeros(shape, dtype=ref.dtype)
        blocks.append(d)
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=axis)


def add_step_batch(shared: list, targets: dict | None, current: dict, original: dict, row_mask,
                   partners: dict | None) -> None:
    """Add one batch of a seq/asym step to `shared` (shared.shared_accumulators), the skip
    drift of `partners` (consumer node -> skip tensor) included in asym mode."""
    for group, acc in shared:
        drift = None
        if partners and targets is not None:
            widths = [np.asarray(targets[c.node]).shape[1] for c in group]
            drift = batch_drift(group, partners, widths, original, current)
        acc.add(current[acc.consumer.input], original.get(acc.consumer.input), row_mask, drift)


def step_tensors(consumers: list, partners: dict | None) -> list:
    """What a step fetches from each model: the consumers' inputs and their skips."""
    skips = {partners[c.node] for c in consumers if partners and partners.get(c.node)}
    return sorted({c.input for c in consumers} | skips)
