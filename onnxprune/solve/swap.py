"""Swap search after greedy: local search on the greedy's own layer-wise objective.

Greedy picks k blocks one at a time and never revisits a pick. The swap search (the local
search of OSSCAR, Meng et al., ICML 2024) then tries every exchange of one kept block i for
one dropped block j and applies the best one while it lowers the summed least-squares error

    E(S) = sum over consumers of  ||A W||² - tr(H_Sᵀ G_SS⁻¹ H_S),

until no exchange helps or `max_rounds` exchanges were made. Everything runs on the d x d
statistics (never on activations). Per consumer the state of the kept set S (fixed features
first, then the kept blocks) is P = G_SS⁻¹, Q = G_:S P, the least-squares weights W = P H_S,
the residual targets T = H - G_:S W and the residual diagonal blocks R_jj of every candidate.
Taking block i out is a rank-κ downdate, R' = R + Q_i P_ii⁻¹ Q_iᵀ and T' = T + Q_i P_ii⁻¹ W_i,
losing tr(W_iᵀ P_ii⁻¹ W_i); putting j in then gains tr(T'_jᵀ R'_jj⁻¹ T'_j), as in the greedy.
So every (i, j) pair is scored at once from κ x κ blocks and one GEMM T Wᵀ, and an accepted
swap updates the state by one rank-κ downdate and one rank-κ update.

The Gram gets a tiny ridge δ_f = RIDGE_RTOL (G_ff + mean diag G) on every feature, so G_SS is
invertible whatever the set (zero, constant or duplicate channels); E is evaluated with it.
Where the greedy drops a direction (variance below its 1e-9 tolerance) this adds a term of
the same order, so E agrees with the greedy's error to about 1e-9 of the energy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..graph.groups import channel_indices

RIDGE_RTOL = 1e-9
# A swap is applied only when it lowers E by more than this fraction of the target energy
# (below that it is rounding noise, and ties must not make the search cycle).
MIN_GAIN_RTOL = 1e-9
MAX_ROUNDS = 32
# The state is rebuilt from scratch after this many rank-κ updates (rounding drift).
REFRESH_EVERY = 16
# Pair scores are computed a slab of kept blocks at a time, about this many κ x κ entries each.
CHUNK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class SwapResult:
    kept: np.ndarray        # sorted group channels
    before: float           # E of the starting set (sum over consumers)
    after: float            # E of `kept`, recomputed from scratch
    energy: float           # sum of the consumers' target energies ||A W||²
    swaps: int              # exchanges applied
    rounds: int             # exchange rounds scored (swaps, plus one that found none unless bounded)

    def to_dict(self) -> dict:
        """Report entry: relative objective before/after the search and its counts."""
        rel = (lambda e: e / self.energy) if self.energy > 0 else (lambda e: 0.0)
        return {"objective_before": rel(self.before), "objective_after": rel(self.after),
                "swaps": self.swaps, "rounds": self.rounds}


def ridged_gram(problem, xp):
    """G + diag(δ) with δ_f = RIDGE_RTOL (G_ff + mean diagonal)."""
    diag = xp.diagonal(problem.gram)
    g = problem.gram.copy()
    d = g.shape[0]
    g[xp.arange(d), xp.arange(d)] += RIDGE_RTOL * (diag + float(xp.mean(diag)))
    return g


def objective(problems: list, kept, xp) -> float:
    """E(kept) by a direct solve per consumer (the brute-force value the search must match)."""
    total = 0.0
    for p in problems:
        s = xp.asarray(p.rows(kept))
        g = ridged_gram(p, xp)[s][:, s]
        h = p.h[s]
        total += p.target - float(xp.sum(h * xp.linalg.solve(g, h)))
    return total


class _Kept:
    """One consumer's statistics given the kept set (see module doc). Blocks are this
    consumer's candidate indices (positions in `members`); `blocks` lists the kept ones in
    state order, after the `fixed` features."""

    def __init__(self, p, kept, xp):
        self.xp, self.h, self.target = xp, p.h, p.target
        self.members = np.asarray(p.members)
        self.where = {int(c): i for i, c in enumerate(self.members)}
        self.k, self.c, self.fixed = p.block, len(self.members), p.fixed
        self.n = self.c * self.k
        self.g = ridged_gram(p, xp)
        self.blocks = [self.where[int(c)] for c in kept if int(c) in self.where]
        self.rebuild()

    def cols(self) -> np.ndarray:
        d = self.g.shape[0]
        return np.append(np.arange(d - self.fixed, d), channel_indices(np.asarray(self.blocks, dtype=np.int64), self.k))

    def rebuild(self) -> None:
        """State of the current set from scratch."""
        xp, n, k = self.xp, self.n, self.k
        s = xp.asarray(self.cols())
        gss = self.g[s][:, s]
        self.p = xp.linalg.inv(gss)
        self.p = (self.p + self.p.T) / 2
        gns = self.g[:n][:, s]
        self.q = gns @ self.p
        self.w = self.p @ self.h[s]
        self.t = self.h[:n] - gns @ self.w
        qb = self.q.reshape(self.c, k, -1)
        gb = gns.reshape(self.c, k, -1)
        self.r = _diagonal_blocks(xp, self.g, self.c, k) - xp.matmul(qb, gb.transpose(0, 2, 1))
        self.updates = 0

    def explained(self) -> float:
        return float(self.xp.sum(self.w * self.h[self.xp.asarray(self.cols())]))

    def _pos(self, r: int) -> np.ndarray:
        return self.fixed + r * self.k + np.arange(self.k)

    def scores(self):
        """(loss (kb,), gains given S minus each kept block (c, kb), gains given S (c,)) for
        this consumer's kept blocks and its candidates (zero for the kept candidates)."""
        xp, k, kb = self.xp, self.k, len(self.blocks)
        pos = xp.asarray(self.fixed + np.arange(kb * k).reshape(kb, k))
        pinv = xp.linalg.inv(self.p[pos[:, :, None], pos[:, None, :]])            # (kb, k, k)
        wi = self.w[pos]                                                         # (kb, k, m)
        loss = xp.einsum("rab,rbm,ram->r", pinv, wi, wi)
        gains, now = xp.zeros((self.c, kb)), xp.zeros(self.c)
        free = np.setdiff1d(np.arange(self.c), self.blocks)
        if not len(free):
            return loss, gains, now
        fi = xp.asarray(free)
        t = self.t.reshape(self.c, k, -1)[fi]                                    # (f, k, m)
        tt = xp.matmul(t, t.transpose(0, 2, 1))
        now[fi] = _trace_solve(xp, self.r[fi], tt)
        q = self.q.reshape(self.c, k, -1)[fi]
        step = max(1, CHUNK_ELEMENTS // (len(free) * k * k))
        for r0 in range(0, kb, step):
            r1 = min(kb, r0 + step)
            gains[fi, r0:r1] = self._swap_gains(q, t, tt, self.r[fi], pos[r0:r1], pinv[r0:r1], wi[r0:r1])
        return loss, gains, now

    def _swap_gains(self, q, t, tt, r, pos, pinv, wi):
        """Gain of each free candidate j (rows) once kept block i (columns) is out:
        tr(R'⁻¹ T'T'ᵀ) with R' = R_jj + B Q_jiᵀ, T' = T_j + B W_i, B = Q_ji P_ii⁻¹."""
        xp, k, kb = self.xp, self.k, pos.shape[0]
        f = q.shape[0]
        qji = q[:, :, pos.ravel()].reshape(f, k, kb, k).transpose(0, 2, 1, 3)    # (f, kb, k_j, k_i)
        b = xp.matmul(qji, pinv[None])
        rp = r[:, None] + xp.matmul(b, qji.transpose(0, 1, 3, 2))
        x = (t.reshape(f * k, -1) @ wi.reshape(kb * k, -1).T).reshape(f, k, kb, k).transpose(0, 2, 1, 3)
        bx = xp.matmul(b, x.transpose(0, 1, 3, 2))                               # B W_i T_jᵀ
        ww = xp.matmul(wi, wi.transpose(0, 2, 1))
        m = tt[:, None] + bx + bx.transpose(0, 1, 3, 2) + xp.matmul(xp.matmul(b, ww[None]), b.transpose(0, 1, 3, 2))
        return _trace_solve(xp, rp, m)

    def remove(self, r: int) -> None:
        """Rank-κ downdate: take the r-th kept block out."""
        xp = self.xp
        pos = self._pos(r)
        rest = np.setdiff1d(np.arange(self.p.shape[0]), pos)
        pos_x, rest_x = xp.asarray(pos), xp.asarray(rest)
        pinv = xp.linalg.inv(self.p[pos_x][:, pos_x])
        pr = self.p[rest_x][:, pos_x]
        qi, wi = self.q[:, pos_x], self.w[pos_x]
        self.p = self.p[rest_x][:, rest_x] - pr @ pinv @ pr.T
        self.q = self.q[:, rest_x] - qi @ pinv @ pr.T
        self.w = self.w[rest_x] - pr @ (pinv @ wi)
        self.t = self.t + qi @ (pinv @ wi)
        qb = qi.reshape(self.c, self.k, self.k)
        self.r = self.r + xp.matmul(xp.matmul(qb, pinv[None]), qb.transpose(0, 2, 1))
        del self.blocks[r]
        self._updated()

    def add(self, j: int) -> None:
        """Rank-κ update: put candidate block j in (appended last)."""
        xp, k = self.xp, self.k
        rows = xp.asarray(j * k + np.arange(k))
        s = xp.asarray(self.cols())
        e = xp.linalg.inv(self.r[j])
        u = self.q[rows].T                                   # P G_SJ (s, k)
        rj = self.g[:self.n][:, rows] - self.q @ self.g[s][:, rows]      # residual columns (n, k)
        wj = e @ self.t[rows]
        self.p = xp.block([[self.p + u @ e @ u.T, -u @ e], [-(e @ u.T), e]])
        self.q = xp.concatenate([self.q - rj @ e @ u.T, rj @ e], axis=1)
        self.w = xp.concatenate([self.w - u @ wj, wj])
        self.t = self.t - rj @ wj
        rb = rj.reshape(self.c, k, k)
        self.r = self.r - xp.matmul(xp.matmul(rb, e[None]), rb.transpose(0, 2, 1))
        self.blocks.append(j)
        self._updated()

    def _updated(self) -> None:
        self.updates += 1
        if self.updates >= REFRESH_EVERY:
            self.rebuild()


def _diagonal_blocks(xp, matrix, channels: int, k: int):
    idx = xp.arange(channels * k).reshape(channels, k)
    return matrix[idx[:, :, None], idx[:, None, :]]


def _trace_solve(xp, a, b):
    """tr(A⁻¹ B) over the leading batch axes of SPD κ x κ blocks A."""
    if a.shape[-1] == 1:
        return b[..., 0, 0] / a[..., 0, 0]
    return xp.trace(xp.linalg.solve(a, b), axis1=-2, axis2=-1)


def swap_search(problems: list, kept, xp, max_rounds: int = MAX_ROUNDS) -> SwapResult:
    """Best-improvement swaps from the kept group channels `kept` (see module doc)."""
    channels = problems[0].channels
    kept = [int(c) for c in kept]
    start = np.sort(np.asarray(kept, dtype=np.int64))
    states = [_Kept(p, kept, xp) for p in problems]
    energy = sum(p.target for p in problems)
    before = sum(s.target - s.explained() for s in states)
    floor = MIN_GAIN_RTOL * energy
    swaps = rounds = 0
    while rounds < max_rounds and 0 < len(kept) < channels:
        rounds += 1
        i, j, gain = _best_swap(states, kept, channels, xp)
        if gain <= floor:
            break
        for s in states:
            if i in s.where:
                s.remove(s.blocks.index(s.where[i]))
            if j in s.where:
                s.add(s.where[j])
        kept[kept.index(i)] = j
        swaps += 1
    for s in states:
        s.rebuild()
    after = sum(s.target - s.explained() for s in states)
    if swaps and after >= before:          # rounding fooled the scores: keep the start
        return SwapResult(start, before, before, energy, 0, rounds)
    return SwapResult(np.sort(np.asarray(kept, dtype=np.int64)), before, after, energy, swaps, rounds)


def _best_swap(states: list, kept: list, channels: int, xp) -> tuple:
    """(kept channel out, dropped channel in, lowering of E) of the best exchange."""
    kept_arr = np.asarray(kept)
    total = xp.zeros((len(kept), channels))          # rows: kept channels; columns: every channel
    for s in states:
        loss, gains, now = s.scores()
        seen = np.array([c in s.where for c in kept])              # kept channels this consumer sees
        rows_seen = xp.asarray(np.flatnonzero(seen))
        cols = xp.asarray(s.members)
        order = [s.blocks.index(s.where[c]) for c in kept_arr[seen]]   # their rows in `gains`
        if len(order):
            sub = gains[:, xp.asarray(order)].T                       # (seen kept, c)
            total[rows_seen[:, None], cols[None, :]] += sub
            total[rows_seen] -= loss[xp.asarray(order)][:, None]
        if (~seen).any():
            total[xp.asarray(np.flatnonzero(~seen))[:, None], cols[None, :]] += now[None, :]
    total[:, xp.asarray(kept_arr)] = -xp.inf
    best = int(xp.argmax(total))
    r, j = divmod(best, channels)
    return kept[r], j, float(total[r, j])
