"""The greedy selection math.

`greedy` is the submodular greedy of El Halabi et al. run on d x d statistics only. It scores
every candidate block at once from the residual block diagonal of the Gram and the residual H,
and grows a factor of the kept blocks instead of updating the whole d x d residual (see
`_Factor`). Its order is nested, so the first k picks answer every budget k.

Only the math lives here; the `greedy` method (methods/greedy.py) and the other methods'
dispatch are in methods/.
"""
from __future__ import annotations

import numpy as np

# A block whose residual variance is below this fraction of its raw energy carries no new
# information (zero, constant, or a copy of kept channels).
RESIDUAL_RTOL = 1e-9

# Residual targets are updated and scored in slabs of about this many float64 (2 MiB) on the
# CPU, so each slab is still in cache when its gains are computed.
SLAB_ELEMENTS = 256 * 1024

# The factor drops picked blocks' columns (and targets) once they are this fraction of those it
# holds: nothing reads them again, and a pick's cost is proportional to the columns held.
COMPACT_FRACTION = 1 / 8


class _State:
    """One consumer's part of the greedy: which of the group's channels it sees (`members`,
    one candidate block each, then `fixed` always-kept features, intercept last) and their
    tolerances. Subclasses keep the residual statistics; `pick` skips unseen channels."""

    def __init__(self, p, xp):
        self.xp = xp
        self.members = np.asarray(p.members)
        self.where = {int(c): i for i, c in enumerate(self.members)}    # group channel -> block
        self.block, self.channels = p.block, len(self.members)
        n = self.channels * self.block
        raw = xp.diagonal(p.gram)[:n].reshape(self.channels, self.block).sum(axis=1) / self.block
        self.tol = RESIDUAL_RTOL * raw

    def start(self, p) -> None:
        """Condition on the fixed features (tolerance 0: only exact zeros are dropped)."""
        total = p.gram.shape[0]
        self.error = p.target - self._add(slice(total - p.fixed, total), tol=0.0)

    def pick(self, channel: int) -> int | None:
        """Condition on `channel`; returns its block, or None when this consumer does not see it."""
        i = self.where.get(channel)
        if i is None:
            return None
        k, j = self.block, self._position(i)
        self.error -= self._add(slice(j * k, (j + 1) * k), tol=float(self.tol[i]))
        return i

    def _position(self, block: int) -> int:
        """Where candidate `block` sits in the residual statistics."""
        return block


class _Factor(_State):
    """Residual statistics of one consumer given the blocks picked so far, kept factored.

    With S the kept features (fixed ones first), the residual Gram is R = G - ZᵀZ where
    Z = L⁻¹ G_S: for a block factor L of G_SS (one row block per pick, so Z has at most
    fixed + kκ rows). Instead of R we keep Z and only what scoring reads: the residual
    diagonal blocks R_II of every candidate and the residual targets T = H - Zᵀ L⁻¹ H_S. A pick
    costs the new rows of Z (R_I: = G_I: - Z_:Iᵀ Z, κ x |S| x D) and rank-κ updates of T and
    of the diagonal blocks: O(k²κ²D) over k picks instead of the O(kκD²) update of all of R.
    Each row block whitens the pick's residual block R_II by its eigendecomposition, dropping
    directions with variance <= tol: exactly the thresholded pseudo-inverse of
    `reference_greedy_order`, so zero, constant and duplicate blocks behave the same.

    Only candidates not yet picked are read again, so Z's columns, T's rows and the diagonal
    blocks are those of the `held` blocks, and picked blocks are dropped from them in batches
    (`_compact`): keeping 1024 of 1536 FFN units then reads a third less than keeping all D.
    """

    def __init__(self, p, picks: int, xp):
        super().__init__(p, xp)
        c, k = self.channels, self.block
        self.gram = p.gram
        self.t = p.h.copy()
        self.diag = _diagonal_blocks(xp, p.gram, c, k)
        self.z = xp.zeros((p.fixed + picks * k, p.gram.shape[0]), dtype=p.gram.dtype)
        self.rank = 0
        self.score = xp.zeros(c, dtype=p.gram.dtype)
        self.held = np.arange(c)                    # candidate blocks in Z's columns, in order
        self.slot = np.arange(c)                    # block -> its place among them
        self.cols = None                            # Gram indices of Z's columns (None: all)
        self.taken = np.zeros(c, dtype=bool)        # blocks picked
        self.picked = 0                             # held blocks already picked
        self.start(p)

    def gains(self):
        """Gain tr(T_Iᵀ R_II⁺ T_I) of adding each candidate block I (kept current by `_add`;
        a picked block's is stale, and never read: the greedy skips taken channels)."""
        return self.score

    def _position(self, block: int) -> int:
        return int(self.slot[block])

    def pick(self, channel: int) -> int | None:
        i = super().pick(channel)
        if i is not None:
            self.taken[i] = True
            self.picked += 1
            if self.picked >= COMPACT_FRACTION * self.held.size:
                self._compact()
        return i

    def _gram_rows(self, idx: slice):
        """Rows `idx` (places in Z's columns) of the Gram, restricted to Z's columns."""
        if self.cols is None:
            return self.gram[idx, :]
        xp, cols = self.xp, self.cols
        return self.gram[xp.asarray(cols[idx])][:, xp.asarray(cols)]

    def _add(self, idx: slice, tol: float) -> float:
        """Append block `idx` (places in Z's columns) to the factor; returns its gain."""
        xp, z = self.xp, self.z[:self.rank]
        rows = self._gram_rows(idx)
        if self.rank:
            rows = rows - z[:, idx].T @ z                                # residual R_{I,:}  (κ, D)
        evals, evecs = xp.linalg.eigh(rows[:, idx])
        scale = xp.where(evals > tol, 1.0 / xp.sqrt(xp.where(evals > 0, evals, 1.0)), 0.0)
        whiten = (evecs * scale).T                                       # dropped directions -> 0
        new = whiten @ rows                                              # new rows of Z (κ, D)
        u = whiten @ self.t[idx, :]                                      # their target coordinates
        self.z[self.rank:self.rank + new.shape[0]] = new
        self.rank += new.shape[0]
        n, c = self.held.size * self.block, self.held.size
        if self.block == 1:
            self.diag -= xp.sum(new[:, :n] ** 2, axis=0)
        else:
            nb = new[:, :n].reshape(new.shape[0], c, self.block).transpose(1, 0, 2)  # (c, r, k)
            self.diag -= xp.matmul(nb.transpose(0, 2, 1), nb)
        self._update_targets_and_score(new, u)
        return float(xp.sum(u * u))

    def _update_targets_and_score(self, new, u) -> None:
        """T -= newᵀ u and every candidate's gain, a cache-sized slab of channels at a time:
        T (D x m) is then read and written once per pick instead of several times. (Only the
        candidates' rows: the fixed features' are never read again.)"""
        xp, k = self.xp, self.block
        n = self.held.size * k
        step = n if xp is not np else max(1, SLAB_ELEMENTS // (k * self.t.shape[1])) * k
        whole = self.held.size == self.channels
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            t = self.t[r0:r1]
            t -= new[:, r0:r1].T @ u
            c0, c1 = r0 // k, r1 // k
            where = slice(c0, c1) if whole else xp.asarray(self.held[c0:c1])
            self.score[where] = _block_gains(xp, self.diag[c0:c1], t, self.tol[where], c1 - c0, k)

    def _compact(self) -> None:
        """Drop the picked blocks' columns of Z, rows of T and diagonal blocks (and the fixed
        features' with the first drop: they were conditioned on at the start)."""
        xp, k = self.xp, self.block
        keep = np.flatnonzero(~self.taken[self.held])
        places = (keep[:, None] * k + np.arange(k)).reshape(-1)
        at = xp.asarray(places)
        self.cols = (np.arange(self.gram.shape[0]) if self.cols is None else self.cols)[places]
        z = xp.zeros((self.z.shape[0], places.size), dtype=self.z.dtype)
        z[:self.rank] = self.z[:self.rank][:, at]
        self.z, self.t, self.diag = z, self.t[at], self.diag[xp.asarray(keep)]
        self.slot[self.held] = -1
        self.held = self.held[keep]
        self.slot[self.held] = np.arange(self.held.size)
        self.picked = 0


def _diagonal_blocks(xp, matrix, channels: int, k: int):
    """Copies of the candidates' diagonal blocks of a D x D matrix: (c,) for k = 1, else (c, k, k)."""
    if k == 1:
        return xp.diagonal(matrix)[:channels].copy()
    idx = xp.arange(channels * k).reshape(channels, k)
    return matrix[idx[:, :, None], idx[:, None, :]]


def _block_gains(xp, blocks, t, tol, channels: int, k: int):
    """tr(T_Iᵀ B_I⁺ T_I) per channel I for residual blocks B (c,) or (c, k, k) and targets T;
    blocks with variance <= tol (per eigen-direction) count as zero."""
    n = channels * k
    if k == 1:
        num = xp.einsum("im,im->i", t[:n], t[:n])
        ok = blocks > tol
        return xp.where(ok, num / xp.where(ok, blocks, 1.0), 0.0)
    tb = t[:n].reshape(channels, k, -1)                                  # (c, k, m)
    evals, evecs = xp.linalg.eigh(blocks)
    proj = xp.matmul(evecs.transpose(0, 2, 1), tb)
    inv = xp.where(evals > tol[:, None], 1.0 / xp.where(evals > 0, evals, 1.0), 0.0)
    return xp.sum(inv * xp.einsum("cjm,cjm->cj", proj, proj), axis=1)


def greedy_order(problems: list, k: int, xp, on_step=None) -> tuple:
    """Pick k channels greedily by summed gain over all consumers.

    Returns (order, errors): errors[j] is the summed reconstruction error ||A W - B_S W~||²
    with the first j picks (errors[0]: the fixed features alone).
    """
    return _greedy([_Factor(p, k, xp) for p in problems], problems[0].channels, k, xp, on_step)


def reference_greedy_order(problems: list, k: int, xp, on_step=None) -> tuple:
    """`greedy_order` by the straightforward O(kκD²) update of the full residual Gram.

    Kept as the oracle the fast version is tested against (same picks, same errors)."""
    return _greedy([_FullResidual(p, xp) for p in problems], problems[0].channels, k, xp, on_step)


def _greedy(states: list, channels: int, k: int, xp, on_step) -> tuple:
    taken = xp.zeros(channels, dtype=bool)
    order, errors = [], [sum(s.error for s in states)]
    for _ in range(k):
        total = xp.zeros(channels, dtype=xp.float64)
        for s in states:
            total[xp.asarray(s.members)] += s.gains()
        total = xp.where(taken, -xp.inf, total)
        best = int(xp.argmax(total))
        order.append(best)
        taken[best] = True
        for s in states:
            s.pick(best)
        errors.append(max(0.0, sum(s.error for s in states)))
        if on_step is not None:
            on_step(len(order))
    return order, errors


class _FullResidual(_State):
    """Residual statistics of one consumer with the full d x d residual Gram R (reference)."""

    def __init__(self, p, xp):
        super().__init__(p, xp)
        self.r = p.gram.copy()
        self.t = p.h.copy()
        self.start(p)

    def gains(self):
        c, k = self.channels, self.block
        return _block_gains(self.xp, _diagonal_blocks(self.xp, self.r, c, k), self.t, self.tol, c, k)

    def _add(self, idx: slice, tol: float) -> float:
        """Condition R and T on block `idx`; returns its gain."""
        xp = self.xp
        evals, evecs = xp.linalg.eigh(self.r[idx, idx])
        inv = xp.where(evals > tol, 1.0 / xp.where(evals > 0, evals, 1.0), 0.0)
        pinv = (evecs * inv) @ evecs.T
        proj = self.r[:, idx] @ pinv                      # (D, k)
        gain = float(xp.sum(self.t[idx, :] * (pinv @ self.t[idx, :])))
        self.r -= proj @ self.r[idx, :]
        self.t -= proj @ self.t[idx, :]
        return gain
