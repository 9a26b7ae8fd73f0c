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

from ..capture.features import canonical_order, design_rows, samples_to_axis0, token_rows
from ..graph.groups import Consumer
from ..solve.xp import to_numpy
from . import importance
from .base import Method, SelectContext, Selection

# Contributions are formed in chunks of at most this many elements (16 MiB of float32).
CHUNK_ELEMENTS = 4 * 1024 * 1024
# Totals at or below the smallest normal float32 (subnormal sums of subnormal products) count as
# zero: their reciprocal would overflow.
TINY = float(np.finfo(np.float32).tiny)


class SensitivityAccumulator:
    """Streams batches of one consumer's input into the running max of s(p); keeps nothing
    but the (channels,) maximum between batches.

    Float32 is safe here: every sum is of non-negative terms, so it carries no cancellation
    and its relative error stays below features x 2^-24. The rows stay in design_rows' column
    order (the weights are permuted to it instead), and a batch with no negative input (the
    usual post-ReLU case) skips the matmuls of the negative parts.
    """

    def __init__(self, consumer: Consumer, matrix: np.ndarray, view, xp):
        """`matrix`: the consumer's (features + 1, outputs) weights in weight-row order;
        `view`: where the group's channels sit among its rows (problem.ChannelView): a consumer
        of one Split piece sees only some of them."""
        self.consumer = consumer
        self.xp = xp
        self.matrix = matrix
        self.view = view
        self.value = xp.zeros(view.candidates.shape[0], dtype=xp.float32)
        self._weights = None
        self._step = 1
        self.rows = 0

    def add(self, batch, _unused=None, row_mask=None) -> None:
        """One batch of the consumer's input; `row_mask` leaves padding tokens out, as in the
        Gram statistics. The second argument (the original model's input in asym) is unused."""
        c, xp = self.consumer, self.xp
        batch = samples_to_axis0(batch, c)
        keep_rows = token_rows(c, batch, row_mask)
        if self._weights is None:
            self._prepare(design_rows(xp.asarray(batch[:1]), c, xp, xp.float32).shape)
        for start in range(0, batch.shape[0], self._step):
            x = design_rows(xp.asarray(batch[start:start + self._step]), c, xp, xp.float32)
            if keep_rows is not None:
                x = x[xp.asarray(keep_rows[start:start + self._step].reshape(-1))]
            self._update(x[:, :-1])                             # no intercept
            self.rows += x.shape[0]

    def spawn(self) -> "SensitivityAccumulator":
        """A fresh accumulator for the same consumer (one per capture worker)."""
        return SensitivityAccumulator(self.consumer, self.matrix, self.view, self.xp)

    def absorb(self, other: "SensitivityAccumulator") -> None:
        """Take in another worker's maximum (a max: exact in any order)."""
        self.value = self.xp.maximum(self.value, self.xp.asarray(other.value))
        self.rows += other.rows

    def _prepare(self, first_shape: tuple) -> None:
        """Weights and candidate columns in design_rows' column order, and the chunk size."""
        xp = self.xp
        rows_per_sample, features = first_shape
        order = canonical_order(self.consumer, features)
        order = np.arange(features) if order is None else order
        w = np.empty((features - 1, self.matrix.shape[1]), dtype=np.float32)
        w[order[:-1]] = self.matrix[:-1]                         # design column order[i] = weight row i
        w_pos, w_neg = np.maximum(w, 0), np.maximum(-w, 0)
        cols = order[self.view.candidates]                           # (channels, block) design columns
        self._cols = xp.asarray(cols)
        self._weights = tuple(xp.asarray(a) for a in (w_pos, w_neg, w_pos[cols], w_neg[cols]))
        per_row = self.view.candidates.shape[0] * w.shape[1] * 2 + features * 3
        self._step = max(1, CHUNK_ELEMENTS // (per_row * rows_per_sample))

    def _update(self, x) -> None:
        """s(p) = max(s(p), max over rows, outputs, sign of part(p) / total)."""
        xp = self.xp
        if x.shape[0] == 0:                                     # every row masked out
            return
        w_pos, w_neg, cw_pos, cw_neg = self._weights
        xc = xp.moveaxis(x[:, self._cols], 1, 0)                # (channels, rows, block)
        if bool(x.min() >= 0):                                  # no negative parts of x
            signs = (((x, xc, w_pos, cw_pos),), ((x, xc, w_neg, cw_neg),))
        else:                                                   # (x w)+ = x+ w+ + x- w-, likewise (x w)-
            x_pos, xc_pos = xp.maximum(x, 0), xp.maximum(xc, 0)
            x_neg, xc_neg = x_pos - x, xc_pos - xc
            signs = (((x_pos, xc_pos, w_pos, cw_pos), (x_neg, xc_neg, w_neg, cw_neg)),
                     ((x_pos, xc_pos, w_neg, cw_neg), (x_neg, xc_neg, w_pos, cw_pos)))
        for terms in signs:
            total = sum(a @ w for a, _, w, _ in terms)          # (rows, outputs)
            part = sum(xp.matmul(b, cw) for _, b, _, cw in terms)  # (channels, rows, outputs)
            ok = total > TINY                                   # 1/total stays finite (0 * inf is NaN)
            part *= xp.where(ok, 1 / xp.where(ok, total, 1), 0)[None]
            self.value = xp.maximum(self.value, part.reshape(part.shape[0], -1).max(axis=1))

    def result(self) -> np.ndarray:
        """(group channels,) sensitivities; 0 for channels this consumer does not see."""
        out = np.zeros(self.view.channels)
        out[self.view.members] = to_numpy(self.value)
        return out


class Sampling(Method):
    """Needs data for its sensitivities, which observers measure during capture."""
    name = "sampling"
    needs_data = True
    observes = True

    def observers(self, parts: list, xp) -> tuple:
        return tuple(SensitivityAccumulator(p.consumer, p.matrix, p.view, xp) for p in parts)

    def combine(self, observers: tuple):
        return np.max([o.result() for o in observers], axis=0)

    def select(self, k: int, ctx: SelectContext) -> Selection:
        kept, scales = importance.draw(ctx.observed, k, ctx.rng, ctx.draw)
        return Selection(kept, scales=scales)
