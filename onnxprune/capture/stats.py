"""Streaming second-order statistics of a consumer's input, summed in float64.

For rows X (current model, "B") and, in asym mode, rows X_A of the original model run on the
same batch, we keep G = Σ [X 1]ᵀ[X 1] and H = Σ [X 1]ᵀ Y with Y = [X_A 1] W_A (the original
layer's output) plus ||Y||² per column — never the activations themselves. The constant-1
column (last index) is the always-kept intercept.

Speed (docs/RESULTS.md "Statistics speed"):
- the products of one chunk of rows are computed in `StatsSettings.dtype` (float32 by default,
  twice the BLAS rate of float64) and added into float64 sums, so rounding does not grow with
  the number of batches;
- each batch's rows are shifted by that batch's own per-feature mean (of its first chunk)
  before the products, so a large mean does not cost float32 its precision, and the shift is
  undone exactly, in float64, when the batch is added to the sums (which are of the unshifted
  rows). A batch's contribution then depends on that batch alone: workers holding other
  batches (capture/parallel.py) add the same numbers, in another order;
- the intercept column is never materialised (its sums are Σ x and the row count);
- H is accumulated as Xᵀ Y (d x m per row) when the layer has fewer outputs m than inputs d_A,
  else through the cross Gram Xᵀ X_A (d x d_A per row) reduced to H once at the end, and then
  Y's column sums and energies come from X_A's own Gram (d_A² per row) instead of from Y
  (d_A x m per row; a transformer's Q/K/V or fc1 refit: m = 3 or 4 x d_A);
- `max_rows` keeps at most that many rows of each consumer per batch (seeded by the
  consumer and the batch's index in the calibration set, without replacement, weighted by
  rows/kept so the sums stay unbiased); Conv patches are gathered only for the kept rows.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .features import canonical_order, feature_rows, feature_width, rows_per_sample, samples_to_axis0, token_rows
from .skipdrift import output_rows
from ..graph.groups import Consumer

# Rows are turned into features in chunks of at most this many elements.
CHUNK_ELEMENTS = 8 * 1024 * 1024
SHIFT_ROWS = 1024       # a batch's shift is the mean of about this many of its rows, evenly spaced
SUM_BLOCK = 256         # column sums: float32 over blocks of this many rows, then float64
DTYPES = ("float32", "float64")
# `max_rows="auto"`: a layer keeps max(AUTO_ROWS_FLOOR, AUTO_ROWS_PER_FEATURE x features) rows
# per batch, so only layers with many more rows than features (a conv on a large feature map)
# are sub-sampled (docs/RESULTS.md "The ridge by cross-validation, rows sub-sampled by default").
AUTO_ROWS_FLOOR = 4096
AUTO_ROWS_PER_FEATURE = 16


@dataclass(frozen=True)
class StatsSettings:
    """How statistics are accumulated (the same for every consumer of a run)."""

    dtype: str = "float32"          # precision of each chunk's products (sums are float64)
    max_rows: int | str | None = None   # rows kept per consumer and batch (None: all; "auto": row_limit)
    seed: int = 0

    def row_limit(self, features: int) -> int | None:
        """Rows of one batch a consumer with `features` design columns keeps (None: all)."""
        if self.max_rows == "auto":
            return max(AUTO_ROWS_FLOOR, AUTO_ROWS_PER_FEATURE * (features + 1))
        return self.max_rows


@dataclass
class ConsumerStats:
    """Statistics of one consumer; `h` is None when the target activations are B's own."""

    consumer: Consumer
    gram: object            # (D, D) = Σ [B 1]ᵀ[B 1], D = features + 1, in weight-row order
    target: float | None    # Σ ||[A 1] W_A||²           (asym only)
    rows: int
    masked: bool = False    # padding rows were dropped (--row-mask)
    column_target: object | None = None     # asym: Σ ||A w_j||² per target column j
    h: object | None = None                 # asym: (D, m) = Σ [B 1]ᵀ [A 1] W_A, weight-row order
    sampled: bool = False                   # some batches kept only max_rows rows

    @property
    def features(self) -> int:
        return self.gram.shape[0]


@dataclass
class PartialSums:
    """One worker's share of a GramAccumulator's sums (of unshifted rows, in design rows' native
    column order, intercept apart) as host (NumPy) arrays, so they travel between processes and
    add up (capture/parallel.py)."""

    gram: np.ndarray                 # Σ w x xᵀ
    total: np.ndarray                # Σ w x
    count: float                     # Σ w
    h: np.ndarray | None             # asym: Σ w x yᵀ
    sum_y: np.ndarray | None         # asym: Σ w y
    column_target: np.ndarray | None     # asym: Σ w y² per column
    rows: int
    masked: bool
    sampled: bool


def _host(a):
    """A NumPy copy of a NumPy or CuPy array (None and scalars pass through)."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else a


class GramAccumulator:
    """Adds batches of consumer inputs into ConsumerStats without keeping them.

    Sums are kept in design rows' native column order, without the intercept column, and
    turned into the statistics of [X 1] in weight-row order once, in result().
    """

    def __init__(self, consumer: Consumer, xp, asym: bool = False, weight=None, settings: StatsSettings | None = None,
                 first_batch: int = 0):
        self.consumer = consumer
        self.xp = xp
        self.asym = asym
        self.weight = weight      # asym: the original consumer matrix (rows in A's order)
        self.settings = settings or StatsSettings()
        self.dtype = np.dtype(self.settings.dtype)
        self.batch = first_batch  # calibration index of the next batch (seeds row sub-sampling)
        self.gram = None          # Σ x xᵀ (float64)
        self.h = None             # asym, direct: Σ x yᵀ
        self.cross = None         # asym, through the cross Gram: Σ x x_Aᵀ (with Σ x_A x_Aᵀ, Σ x_A)
        self.rows = 0
        self.masked = False       # whether a row mask applied to this consumer
        self.sampled = False
        self._order = None

    def add(self, b_batch, a_batch=None, row_mask=None, drift=None) -> None:
        """Accumulate one batch; `row_mask` ([samples, tokens] of 0/1) drops padding rows of
        token-wise (Gemm/MatMul) consumers whose rows are sample x token. asym `drift`: an
        output-shaped batch added to the target Y (the skip path's drift at a residual Add,
        capture/skipdrift.py); only given when every batch has one."""
        c = self.consumer
        b_batch = samples_to_axis0(b_batch, c)
        a_batch = samples_to_axis0(a_batch, c) if self.asym else None
        drift = drift if self.asym else None
        if self.gram is None:
            self._start(b_batch, a_batch, drift is not None)
        if drift is not None and self.h is None:
            raise ValueError(f"{c.node}: a skip drift arrived after batches without one")
        keep = token_rows(c, b_batch, row_mask)
        self.masked |= keep is not None
        rows, weight = self._rows(b_batch, keep)
        self.batch += 1
        batch = _BatchSums()
        for b, a, d in self._chunks(b_batch, a_batch, rows, drift):
            self._accumulate(batch, b, a, weight, d)
            self.rows += b[0].shape[0]
        if batch.shift_b is not None:
            self._unshift(batch)

    def _rows(self, batch, keep):
        """(flat row indices or None for all, weight of each kept row)."""
        rows = None if keep is None else np.flatnonzero(keep.reshape(-1))
        limit = self.settings.row_limit(self._width_b)
        total = rows_per_sample(batch, self.consumer) * batch.shape[0] if rows is None else rows.size
        if limit is None or total <= limit:
            return rows, 1.0
        rng = np.random.default_rng([self.settings.seed, zlib.crc32(self.consumer.node.encode()), self.batch])
        pick = np.sort(rng.choice(total, size=limit, replace=False))
        self.sampled = True
        return (pick if rows is None else rows[pick]), total / limit

    def _chunks(self, b_batch, a_batch, rows, drift=None):
        """Yield (X_B, X_A or None, drift rows or None) chunks of design rows (no intercept) in
        the compute dtype, X_B and X_A each with whether it is a fresh copy."""
        c, xp = self.consumer, self.xp
        width = max(1, self._width_b + (self._width_a if self.asym else 0))
        if rows is None:
            per_sample = max(1, rows_per_sample(b_batch, c))
            step = max(1, CHUNK_ELEMENTS // (per_sample * width))
            pieces = [(slice(s, s + step), None) for s in range(0, b_batch.shape[0], step)]
        else:
            step = max(1, CHUNK_ELEMENTS // width)
            pieces = [(slice(None), rows[s:s + step]) for s in range(0, rows.size, step)]
        for samples, sub in pieces:
            b = feature_rows(xp.asarray(b_batch[samples]), c, xp, self.dtype, sub)
            a = feature_rows(xp.asarray(a_batch[samples]), c, xp, self.dtype, sub) if self.asym else None
            d = None if drift is None else output_rows(xp.asarray(drift[samples]), c, xp, self.dtype, sub)
            yield b, a, d

    def _shifted(self, rows_fresh: tuple, shift):
        """Rows minus the shift, in the compute dtype (in place when feature_rows made a copy)."""
        rows, fresh = rows_fresh
        if fresh and rows.dtype == self.dtype:
            rows -= shift
            return rows
        return self.xp.subtract(rows, shift, dtype=self.dtype)

    def _mean(self, rows):
        """The batch's shift: the per-feature mean of about SHIFT_ROWS evenly spaced rows of its
        first chunk, in the compute dtype (any fixed vector near the mean serves)."""
        step = max(1, rows.shape[0] // SHIFT_ROWS)
        return self.xp.mean(rows[::step], axis=0, dtype=self.xp.float64).astype(self.dtype)

    def _accumulate(self, batch: "_BatchSums", b_fresh: tuple, a_fresh: tuple | None, weight: float,
                    drift=None) -> None:
        """Add one chunk's products of shifted rows Z = X - shift into the float64 sums."""
        xp, f64 = self.xp, self.xp.float64
        if batch.shift_b is None:
            batch.start(self, b_fresh[0], a_fresh[0] if self.asym else None)
        b = self._shifted(b_fresh, batch.shift_b)
        _add(self.gram, xp.dot(b.T, b), weight, xp)       # dot of one buffer with its transpose: NumPy's syrk
        batch.sum_b += weight * _column_sums(b, xp)
        batch.count += weight * b.shape[0]
        if not self.asym:
            return
        a = self._shifted(a_fresh, batch.shift_a)
        if self.cross is not None:      # more outputs than inputs: Y's sums come from A's Gram
            _add(self.cross, xp.dot(b.T, a), weight, xp)
            _add(self.gram_a, xp.dot(a.T, a), weight, xp)
            batch.sum_a += weight * _column_sums(a, xp)
            return
        y = xp.dot(a, self._w_rows)
        y += batch.intercept
        if drift is not None:
            if drift.shape != y.shape:
                raise ValueError(f"{self.consumer.node}: skip drift rows {drift.shape} do not match its outputs {y.shape}")
            y += drift
        _add(self.h, xp.dot(b.T, y), weight, xp)
        batch.sum_y += weight * _column_sums(y, xp)
        self.column_target += weight * xp.sum(xp.square(y, dtype=f64), axis=0)

    def _unshift(self, batch: "_BatchSums") -> None:
        """Turn the batch's sums of shifted rows into sums of the rows themselves, in float64:
        Σ xxᵀ = Σ zzᵀ + c sᵀ + s cᵀ + n ccᵀ with s = Σ z (and alike for the cross sums)."""
        xp, f64 = self.xp, self.xp.float64
        c, n = xp.asarray(batch.shift_b, dtype=f64), batch.count
        t = xp.outer(c, batch.sum_b + 0.5 * n * c)
        self.gram += t + t.T                               # exactly symmetric
        self.total += batch.sum_b + n * c
        self.count += n
        if not self.asym:
            return
        if self.h is not None:
            self.h += xp.outer(c, batch.sum_y)
            self.sum_y += batch.sum_y
        else:
            ca = xp.asarray(batch.shift_a, dtype=f64)
            self.cross += xp.outer(c, batch.sum_a + n * ca) + xp.outer(batch.sum_b, ca)
            t = xp.outer(ca, batch.sum_a + 0.5 * n * ca)
            self.gram_a += t + t.T
            self.total_a += batch.sum_a + n * ca

    def _start(self, batch, a_batch, drift: bool = False) -> None:
        xp, f64 = self.xp, self.xp.float64
        self._width_b = feature_width(batch, self.consumer)
        self._order = canonical_order(self.consumer, self._width_b + 1)
        d = self._width_b
        self.gram = xp.zeros((d, d), dtype=f64)
        self.total = xp.zeros(d, dtype=f64)
        self.count = 0.0
        if not self.asym:
            return
        self._width_a = feature_width(a_batch, self.consumer)
        order_a = canonical_order(self.consumer, self._width_a + 1)
        native = np.argsort(order_a) if order_a is not None else None
        w = xp.asarray(self.weight, dtype=f64)
        w = w[xp.asarray(native)] if native is not None else w       # rows in A's native order
        m = w.shape[1]
        self._w64 = (w[:-1], w[-1])
        self._w_rows = w[:-1].astype(self.dtype)
        if m <= self._width_a or drift:      # a drift is no function of X_A: H directly
            self.h = xp.zeros((d, m), dtype=f64)
            self.sum_y = xp.zeros(m, dtype=f64)
            self.column_target = xp.zeros(m, dtype=f64)
        else:                               # Y's sums follow from these (_target_sums)
            self.cross = xp.zeros((d, self._width_a), dtype=f64)
            self.gram_a = xp.zeros((self._width_a, self._width_a), dtype=f64)
            self.total_a = xp.zeros(self._width_a, dtype=f64)

    def _raw_h(self):
        """Σ x yᵀ (native rows, no intercept row), from the cross Gram when it was kept."""
        if self.cross is None:
            return self.h
        w_rows, w_intercept = self._w64
        return self.cross @ w_rows + self.xp.outer(self.total, w_intercept)

    def _target_sums(self) -> tuple:
        """(Σ y, Σ y² per column) of the target Y = X_A W + b: summed as they came, or with the
        cross Gram from A's own Gram (Σ y² = wᵀ(Σ x_A x_Aᵀ)w + 2b (Σ x_A)ᵀw + n b²), which
        costs d_A² per row instead of computing Y's d_A x m."""
        if self.cross is None:
            return self.sum_y, self.column_target
        xp = self.xp
        w_rows, b = self._w64
        linear = self.total_a @ w_rows
        squares = xp.einsum("ij,ij->j", w_rows, self.gram_a @ w_rows)
        return linear + self.count * b, squares + 2.0 * b * linear + self.count * b * b

    def partial(self) -> PartialSums | None:
        """The sums so far, for another process to add up (None: no batch was added)."""
        if self.gram is None:
            return None
        asym = self.asym
        sum_y, column_target = self._target_sums() if asym else (None, None)
        return PartialSums(_host(self.gram), _host(self.total), self.count, _host(self._raw_h()) if asym else None,
                           _host(sum_y), _host(column_target), self.rows, self.masked, self.sampled)

    def absorb(self, part: PartialSums | None) -> None:
        """Add another accumulator's sums (same consumer, same model). Absorbing one partial
        into a fresh accumulator reproduces it exactly (the arrays are copied, not added to 0)."""
        if part is None:
            return
        xp = self.xp
        if self.gram is None:
            self._order = canonical_order(self.consumer, part.gram.shape[0] + 1)
            self.gram, self.total, self.count = xp.array(part.gram), xp.array(part.total), part.count
            if self.asym:
                self.h, self.sum_y = xp.array(part.h), xp.array(part.sum_y)
                self.column_target = xp.array(part.column_target)
        else:
            self.gram += xp.asarray(part.gram)
            self.total += xp.asarray(part.total)
            self.count += part.count
            if self.asym:
                self.h += xp.asarray(part.h)
                self.sum_y += xp.asarray(part.sum_y)
                self.column_target += xp.asarray(part.column_target)
        self.rows += part.rows
        self.masked |= part.masked
        self.sampled |= part.sampled

    def result(self) -> ConsumerStats:
        if self.gram is None:
            raise ValueError("no calibration rows were accumulated")
        xp, f64 = self.xp, self.xp.float64
        d = self.gram.shape[0]
        gram = xp.empty((d + 1, d + 1), dtype=f64)
        gram[:d, :d] = self.gram
        gram[:d, d] = self.total
        gram[d, :d] = self.total
        gram[d, d] = self.count
        h = column_target = None
        if self.asym:
            raw = self._raw_h()
            sum_y, column_target = self._target_sums()
            h = xp.empty((d + 1, raw.shape[1]), dtype=f64)
            h[:d] = raw
            h[d] = sum_y
        if self._order is not None:
            order = xp.asarray(self._order)
            gram = gram[order][:, order]
            h = h[order] if h is not None else None
        return ConsumerStats(
            consumer=self.consumer,
            gram=gram,
            target=float(xp.sum(column_target)) if self.asym else None,
            rows=self.rows,
            masked=self.masked,
            column_target=column_target,
            h=h,
            sampled=self.sampled,
        )


class _BatchSums:
    """One batch's shifts and its sums of shifted rows (float64), until they are unshifted."""

    shift_b = None

    def start(self, acc: GramAccumulator, b, a) -> None:
        xp, f64 = acc.xp, acc.xp.float64
        self.shift_b = acc._mean(b)
        self.sum_b = xp.zeros(acc._width_b, dtype=f64)
        self.count = 0.0
        if not acc.asym:
            return
        self.shift_a = acc._mean(a)
        if acc.cross is not None:
            self.sum_a = xp.zeros(acc._width_a, dtype=f64)
            return
        w_rows, w_intercept = acc._w64
        self.intercept = (w_intercept + xp.asarray(self.shift_a, dtype=f64) @ w_rows).astype(acc.dtype)
        self.sum_y = xp.zeros(w_rows.shape[1], dtype=f64)


def _column_sums(rows, xp):
    """Σ over rows, in float64: float32 sums of SUM_BLOCK rows (as precise as the products
    themselves, three times faster than casting every element), then float64 over the blocks."""
    if rows.dtype == xp.float64:
        return xp.sum(rows, axis=0)
    whole = rows.shape[0] - rows.shape[0] % SUM_BLOCK
    blocks = rows[:whole].reshape(-1, SUM_BLOCK, rows.shape[1]).sum(axis=1)
    return xp.sum(blocks, axis=0, dtype=xp.float64) + xp.sum(rows[whole:], axis=0, dtype=xp.float64)


def _add(total, product, weight: float, xp) -> None:
    """total += weight * product, in float64 (`product` may be float32)."""
    if weight == 1.0:
        total += product
    else:
        total += xp.multiply(product, weight, dtype=xp.float64)
