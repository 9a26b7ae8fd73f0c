"""Swap search after greedy (solve/swap.py): never worse than greedy, its objective is the
brute-force one of the final set, it repairs a greedy mistake built by hand, its pair scores
equal brute-force differences (blocks, asym targets, consumers seeing part of the group,
degenerate channels), rounds are bounded and results deterministic."""
import itertools

import numpy as np
import pytest

from onnxprune.solve.greedy import greedy_order
from onnxprune.solve.swap import _Kept, _best_swap, objective, swap_search
from test_select_fast import channel_data, problem


def asym_problem(rng, channels, block, outputs=4, rows=300, members=None, total=None):
    a = channel_data(rng, rows, channels, block, 0.3)
    b = a + 0.5 * rng.standard_normal(a.shape)
    w = rng.standard_normal((channels * block + 1, outputs))
    return problem(b, w, block, a=a, members=members, channels=total)


def brute_force_best(problems, k):
    channels = problems[0].channels
    return min(objective(problems, list(s), np) for s in itertools.combinations(range(channels), k))


@pytest.mark.parametrize("block", [1, 3, 9])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_never_worse_than_greedy_and_objective_is_brute_force(block, seed):
    rng = np.random.default_rng(seed)
    problems = [asym_problem(rng, 10, block)]
    order, errors = greedy_order(problems, 4, np)
    res = swap_search(problems, order, np)
    scale = problems[0].target
    # the search's objective of the greedy set is the greedy's error (up to its tiny ridge)
    assert res.before == pytest.approx(errors[-1], rel=1e-6)
    assert res.before == pytest.approx(objective(problems, order, np), rel=1e-12, abs=1e-12 * scale)
    assert res.after <= res.before
    assert res.after == pytest.approx(objective(problems, res.kept, np), rel=1e-9, abs=1e-9 * scale)
    assert res.after >= brute_force_best(problems, 4) - 1e-9 * scale
    assert len(res.kept) == 4 and len(set(res.kept.tolist())) == 4
    assert (res.swaps > 0) == (res.after < res.before)


def test_some_random_instances_are_improved():
    """Guards the test above against a search that never swaps."""
    improved = 0
    for block in (1, 3, 9):
        for seed in range(4):
            problems = [asym_problem(np.random.default_rng(seed), 10, block)]
            res = swap_search(problems, greedy_order(problems, 4, np)[0], np)
            improved += res.swaps > 0
            if res.swaps:
                assert res.after < 0.99 * res.before
    assert improved >= 4


def decoy_problem(block=1):
    """y = x1 + x2 with x1, x2 orthonormal, and a decoy x3 = x1 + x2 + 0.5 u3 that explains
    more of y alone (4/2.25 > 1). Greedy with k = 2 takes x3 then x1 (error 0.2 per output
    unit); {x1, x2} is exact."""
    rng = np.random.default_rng(5)
    z = rng.standard_normal((60, 3 * block))
    z -= z.mean(axis=0)                              # orthogonal to the intercept
    u = np.linalg.qr(z)[0]
    u1, u2, u3 = u[:, :block], u[:, block:2 * block], u[:, 2 * block:]
    b = np.hstack([u1, u2, u1 + u2 + 0.5 * u3])
    w = np.vstack([np.eye(block), np.eye(block), np.zeros((block, block)), np.zeros((1, block))])
    return problem(b, w, block)


@pytest.mark.parametrize("block", [1, 4])
def test_repairs_a_greedy_mistake(block):
    p = decoy_problem(block)
    order, errors = greedy_order([p], 2, np)
    assert 2 in order                                           # greedy fell for the decoy
    assert errors[-1] == pytest.approx(0.2 * block, rel=1e-6)
    res = swap_search([p], order, np)
    assert res.kept.tolist() == [0, 1]
    assert res.swaps == 1
    assert res.after == pytest.approx(0.0, abs=1e-6 * p.target)
    assert res.after == pytest.approx(brute_force_best([p], 2), abs=1e-9 * p.target)
    assert res.to_dict()["objective_before"] == pytest.approx(0.2 * block / p.target, rel=1e-6)


def test_pair_scores_equal_brute_force_differences():
    """Every (out, in) score of `_best_swap` is the brute-force drop of E, for joint consumers
    with different blocks, one of which sees only part of the group (a Split output)."""
    rng = np.random.default_rng(7)
    channels = 7
    problems = [asym_problem(rng, channels, 1, outputs=3), asym_problem(rng, channels, 4, outputs=2),
                asym_problem(rng, 4, 9, outputs=2, members=[0, 2, 5, 6], total=channels)]
    kept = [1, 2, 4]
    before = objective(problems, kept, np)
    states = [_Kept(p, kept, np) for p in problems]
    scores = {}
    for i in kept:
        for j in set(range(channels)) - set(kept):
            swapped = [j if c == i else c for c in kept]
            scores[i, j] = before - objective(problems, swapped, np)
    i, j, gain = _best_swap(states, kept, channels, np)
    best = max(scores, key=scores.get)
    assert (i, j) == best
    assert gain == pytest.approx(scores[best], rel=1e-8)
    # and every pair, through the per-consumer scores the search adds up
    for (i, j), want in scores.items():
        got = 0.0
        for s in states:
            loss, gains, now = s.scores()
            if i in s.where:
                r = s.blocks.index(s.where[i])
                got += (gains[s.where[j], r] if j in s.where else 0.0) - loss[r]
            elif j in s.where:
                got += now[s.where[j]]
        assert got == pytest.approx(want, rel=1e-7, abs=1e-9 * before)


@pytest.mark.parametrize("block", [1, 3])
def test_rank_updates_equal_a_rebuild(block):
    rng = np.random.default_rng(11)
    p = asym_problem(rng, 8, block)
    s = _Kept(p, [0, 3, 5, 6], np)
    s.remove(1)
    s.add(2)
    s.remove(0)
    s.add(7)
    assert s.blocks == [5, 6, 2, 7]
    got = (s.p, s.q, s.w, s.t, s.r)
    s.rebuild()
    for a, b in zip(got, (s.p, s.q, s.w, s.t, s.r)):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9 * np.abs(b).max())


def test_rounds_are_bounded():
    problems = [asym_problem(np.random.default_rng(3), 10, 1)]
    order = greedy_order(problems, 4, np)[0]
    free = swap_search(problems, order, np)
    assert free.swaps >= 3 and free.rounds == free.swaps + 1     # the last round finds nothing
    one = swap_search(problems, order, np, max_rounds=1)
    two = swap_search(problems, order, np, max_rounds=2)
    assert (one.swaps, one.rounds, two.swaps, two.rounds) == (1, 1, 2, 2)
    assert free.after <= two.after < one.after < one.before
    none = swap_search(problems, order, np, max_rounds=0)
    assert none.swaps == 0 and sorted(none.kept.tolist()) == sorted(order)


def test_deterministic():
    rng = np.random.default_rng(1)
    problems = [asym_problem(rng, 10, 3), asym_problem(rng, 10, 1)]
    order = greedy_order(problems, 5, np)[0]
    a, b = swap_search(problems, order, np), swap_search(problems, order, np)
    assert a.kept.tolist() == b.kept.tolist()
    assert (a.before, a.after, a.swaps, a.rounds) == (b.before, b.after, b.swaps, b.rounds)


def test_degenerate_channels():
    """Zero, constant and duplicated channels: the Gram is singular, the search still returns
    a set no worse than the start, with its brute-force objective."""
    rng = np.random.default_rng(4)
    b = channel_data(rng, 200, 8, 1)
    b[:, 2] = 0.0
    b[:, 4] = 3.0
    b[:, 6] = b[:, 1]
    w = rng.standard_normal((9, 3))
    p = problem(b, w, 1)
    for kept in ([0, 2, 4], [1, 6, 2], greedy_order([p], 5, np)[0]):
        res = swap_search([p], kept, np)
        assert res.after <= res.before
        assert res.after == pytest.approx(objective([p], res.kept, np), rel=1e-8, abs=1e-9 * p.target)
        assert not ({2, 4} <= set(res.kept.tolist()) and res.swaps)    # no swap towards useless channels


def test_all_or_nothing_kept_is_a_no_op():
    p = asym_problem(np.random.default_rng(0), 5, 1)
    for kept in ([], [0, 1, 2, 3, 4]):
        res = swap_search([p], kept, np)
        assert res.swaps == 0 and res.rounds == 0 and res.kept.tolist() == kept
