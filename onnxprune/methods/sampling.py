"""Channel sensitivities of provable filter pruning (Liebenwein et al., ICLR 2020), the
paper's LayerSampling baseline.

The sensitivity of channel p is the largest relative contribution it makes to any
pre-activation of any consumer, over every calibration sample and position:

    s(p) = max over rows r, outputs i, sign of  g(r, i, p) / sum_q g(r, i, q)

with g the positive (or negative) part of channel p's contribution x_r,p . W[p, i] — both
parts exactly, via (x w)+ = x+ w+ + x- w-. The denominator runs over every input feature of
the consumer (other groups' channels included), the bias excluded. Channels are then drawn
in proportion to s (see importance.py) and the kept ones importance-weighted.
"""
from __future__ import annotations

import numpy as np

from ..features import canonical_order, design_rows, sample_major, token_rows
from ..groups import Consumer
from ..xp import to_numpy

# Contributions are formed in chunks of at most this many float64 elements (32 MiB).
CHUNK_ELEMENTS = 4 * 1024 * 1024


class SensitivityAccumulator:
    """Streams batches of one consumer's input into the running max of s(p); keeps nothing
    but the (channels,) maximum between batches."""

    def __init__(self, consumer: Consumer, matrix: np.ndarray, candidates: np.ndarray, xp):
        """`matrix`: the consumer's (features + 1, outputs) weights in weight-row order;
        `candidates`: (channels, block) rows of the group's channels (ChannelView.candidates)."""
        self.consumer = consumer
        self.xp = xp
        w = xp.asarray(matrix[:-1], dtype=xp.float64)
        self.w_pos, self.w_neg = xp.maximum(w, 0), xp.maximum(-w, 0)
        self.candidates = xp.asarray(candidates)
        cw = w[self.candidates]                                  # (channels, block, outputs)
        self.cw_pos, self.cw_neg = xp.maximum(cw, 0), xp.maximum(-cw, 0)
        self.value = xp.zeros(candidates.shape[0], dtype=xp.float64)
        self._order = None
        self._step = 1
        self.rows = 0

    def add(self, batch, _unused=None, row_mask=None) -> None:
        """One batch of the consumer's input; `row_mask` leaves padding tokens out, as in the
        Gram statistics. The second argument (the original model's input in asym) is unused."""
        c, xp = self.consumer, self.xp
        batch = sample_major(batch, c)
        keep_rows = token_rows(c, batch, row_mask)
        if self._order is None:
            first = design_rows(xp.asarray(batch[:1]), c, xp, xp.float64)
            order = canonical_order(c, first.shape[1])
            self._order = xp.asarray(order) if order is not None else xp.arange(first.shape[1])
            per_row = self.candidates.shape[0] * self.w_pos.shape[1] + first.shape[1]
            self._step = max(1, CHUNK_ELEMENTS // (per_row * first.shape[0]))
        for start in range(0, batch.shape[0], self._step):
            x = design_rows(xp.asarray(batch[start:start + self._step]), c, xp, xp.float64)
            if keep_rows is not None:
                x = x[xp.asarray(keep_rows[start:start + self._step].reshape(-1))]
            self._update(x[:, self._order][:, :-1])             # weight-row order, no intercept
            self.rows += x.shape[0]

    def _update(self, x) -> None:
        xp = self.xp
        x_pos, x_neg = xp.maximum(x, 0), xp.maximum(-x, 0)
        totals = (x_pos @ self.w_pos + x_neg @ self.w_neg, x_pos @ self.w_neg + x_neg @ self.w_pos)
        xc = xp.moveaxis(x[:, self.candidates], 1, 0)            # (channels, rows, block)
        xc_pos, xc_neg = xp.maximum(xc, 0), xp.maximum(-xc, 0)
        parts = (xc_pos @ self.cw_pos + xc_neg @ self.cw_neg, xc_pos @ self.cw_neg + xc_neg @ self.cw_pos)
        for part, total in zip(parts, totals):                  # (channels, rows, outputs), (rows, outputs)
            ok = total > 0
            ratio = xp.where(ok[None], part / xp.where(ok, total, 1.0)[None], 0.0)
            self.value = xp.maximum(self.value, ratio.reshape(ratio.shape[0], -1).max(axis=1))

    def result(self) -> np.ndarray:
        return to_numpy(self.value)
