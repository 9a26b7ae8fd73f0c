"""Streaming second-order statistics of a consumer's input, accumulated in float64.

For rows X (current model, "B") and, in asym mode, rows X_A of the original model run on the
same batch, we keep G = Σ [X 1]ᵀ[X 1] and G_BA = Σ [X 1]ᵀ[X_A 1] plus ||A W||² — never the
activations themselves. The constant-1 column (last index) is the always-kept intercept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .features import canonical_order, design_rows, samples_to_axis0, token_rows
from ..graph.groups import Consumer

# Rows are turned into features in chunks of at most this many float64 elements (64 MiB).
CHUNK_ELEMENTS = 8 * 1024 * 1024


@dataclass
class ConsumerStats:
    """Statistics of one consumer; `cross` is None when the target activations are B's own."""

    consumer: Consumer
    gram: object            # (D, D) = Σ [B 1]ᵀ[B 1], D = features + 1, in weight-row order
    cross: object | None    # (D, D_A) = Σ [B 1]ᵀ[A 1]  (asym only; A is the original model's input)
    target: float | None    # Σ ||[A 1] W_A||²           (asym only)
    rows: int
    masked: bool = False    # padding rows were dropped (--row-mask)
    column_target: object | None = None     # asym: Σ ||A w_j||² per target column j

    @property
    def features(self) -> int:
        return self.gram.shape[0]


@dataclass
class PartialSums:
    """One worker's share of a GramAccumulator's sums, in design_rows' native column order,
    as host (NumPy) arrays so they travel between processes (capture/parallel.py adds them)."""

    gram: np.ndarray
    cross: np.ndarray | None
    target: float
    column_target: np.ndarray | float
    rows: int
    masked: bool


def _host(a):
    """A NumPy copy of a NumPy or CuPy array (scalars pass through)."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else a


class GramAccumulator:
    """Adds batches of consumer inputs into ConsumerStats without keeping them.

    Sums are kept in design_rows' native column order and permuted to channel-block order
    once, in result().
    """

    def __init__(self, consumer: Consumer, xp, asym: bool = False, weight=None):
        self.consumer = consumer
        self.xp = xp
        self.asym = asym
        self.weight = weight      # asym: the original consumer matrix (rows in A's order)
        self.gram = None
        self.cross = None
        self.target = 0.0
        self.column_target = 0.0
        self.rows = 0
        self._order = None        # weight-row order of B's native columns (None: identity)
        self._order_a = None
        self._weight_native = None
        self.masked = False       # whether a row mask applied to this consumer

    def add(self, b_batch, a_batch=None, row_mask=None) -> None:
        """Accumulate one batch; `row_mask` ([samples, tokens] of 0/1) drops padding rows of
        token-wise (Gemm/MatMul) consumers whose rows are sample x token."""
        c, xp = self.consumer, self.xp
        b_batch = samples_to_axis0(b_batch, c)
        a_batch = samples_to_axis0(a_batch, c) if self.asym else None
        if self.gram is None:
            self._start(b_batch, a_batch)
        per_sample = max(1, b_batch[:1].size * c.kernel_area)
        step = max(1, CHUNK_ELEMENTS // per_sample)
        keep_rows = token_rows(c, b_batch, row_mask)
        self.masked |= keep_rows is not None
        for start in range(0, b_batch.shape[0], step):
            b = design_rows(xp.asarray(b_batch[start:start + step]), c, xp, xp.float64)
            rows = None
            if keep_rows is not None:
                rows = xp.asarray(keep_rows[start:start + step].reshape(-1))
                b = b[rows]
            self.gram += xp.dot(b.T, b)     # dot, not @: NumPy then uses the symmetric kernel
            if self.asym:
                a = design_rows(xp.asarray(a_batch[start:start + step]), c, xp, xp.float64)
                a = a[rows] if rows is not None else a
                self.cross += xp.dot(b.T, a)
                y = xp.dot(a, self._weight_native)
                yy = y * y
                self.target += float(xp.sum(yy))
                self.column_target = self.column_target + xp.sum(yy, axis=0)
            self.rows += b.shape[0]

    def partial(self) -> PartialSums | None:
        """The sums so far, for another process to add up (None: no batch was added)."""
        if self.gram is None:
            return None
        cross = _host(self.cross) if self.asym else None
        return PartialSums(_host(self.gram), cross, self.target, _host(self.column_target), self.rows, self.masked)

    def absorb(self, part: PartialSums | None) -> None:
        """Add another accumulator's sums (same consumer, same model). Absorbing one partial
        into a fresh accumulator reproduces it exactly (0 + x = x)."""
        if part is None:
            return
        xp = self.xp
        if self.gram is None:
            self._order = canonical_order(self.consumer, part.gram.shape[0])
            self.gram = xp.array(part.gram, dtype=xp.float64)
            if self.asym:
                self._order_a = canonical_order(self.consumer, part.cross.shape[1])
                self.cross = xp.array(part.cross, dtype=xp.float64)
        else:
            self.gram += xp.asarray(part.gram)
            if self.asym:
                self.cross += xp.asarray(part.cross)
        if self.asym:
            self.target += part.target
            self.column_target = self.column_target + xp.asarray(part.column_target)
        self.rows += part.rows
        self.masked |= part.masked

    def _width(self, batch) -> int:
        c = self.consumer
        width = batch.shape[1] if c.conv is not None else batch.shape[-1]
        return width * (c.kernel_area if c.conv is not None else 1) + 1

    def _start(self, batch, a_batch) -> None:
        xp = self.xp
        features = self._width(batch)
        self._order = canonical_order(self.consumer, features)
        self.gram = xp.zeros((features, features), dtype=xp.float64)
        if self.asym:
            features_a = self._width(a_batch)
            self._order_a = canonical_order(self.consumer, features_a)
            self.cross = xp.zeros((features, features_a), dtype=xp.float64)
            native = np.argsort(self._order_a) if self._order_a is not None else None
            w = xp.asarray(self.weight, dtype=xp.float64)
            self._weight_native = w[xp.asarray(native)] if native is not None else w

    def result(self) -> ConsumerStats:
        if self.gram is None:
            raise ValueError("no calibration rows were accumulated")
        gram, cross = self.gram, self.cross
        if self._order is not None:
            order = self.xp.asarray(self._order)
            gram = gram[order][:, order]
            cross = cross[order] if cross is not None else None
        if self._order_a is not None:
            cross = cross[:, self.xp.asarray(self._order_a)]
        return ConsumerStats(
            consumer=self.consumer,
            gram=gram,
            cross=cross,
            target=self.target if self.asym else None,
            rows=self.rows,
            masked=self.masked,
            column_target=self.column_target if self.asym else None,
        )
