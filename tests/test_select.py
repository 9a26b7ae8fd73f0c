"""Greedy selection and least squares checked against brute force on raw data."""
import itertools

import numpy as np
import pytest

from onnxprune.graph.groups import Consumer, channel_indices
from onnxprune.graph.layout import Alive, Layout, Segment
from onnxprune.solve.problem import ChannelView, Problem
from onnxprune.solve.reweight import least_squares
from onnxprune.methods import select
from onnxprune.methods.base import SelectContext
from onnxprune.solve.greedy import greedy_order
from onnxprune.capture.stats import ConsumerStats


def augmented(x):
    return np.hstack([x, np.ones((x.shape[0], 1))])


def make_problem(b, w, block=1, a=None):
    """Problem for min ||[A 1] W - [B 1]_S W~|| (A = B unless given); channel c owns
    features [c*block, (c+1)*block)."""
    channels = b.shape[1] // block
    layout = Layout(1, 2, (Segment("p", 0, channels),), block=block)
    consumer = Consumer(node="c", op="MatMul", input="x", weight="w", weight_axis=0, layout=layout)
    bb = augmented(b)
    aa = augmented(a) if a is not None else None
    stats = ConsumerStats(consumer, gram=bb.T @ bb, h=None if aa is None else bb.T @ (aa @ w),
                          target=None if aa is None else float(np.sum((aa @ w) ** 2)), rows=b.shape[0])
    view = ChannelView.of(consumer, {"p"}, channels, Alive())
    return Problem.build(stats, w, view, np)


def correlated_data(rows, channels, block, seed):
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((rows, max(2, channels * block // 2)))
    mix = rng.standard_normal((latent.shape[1], channels * block))
    return latent @ mix + 0.3 * rng.standard_normal((rows, channels * block))


def best_error(target_rows, w, b, kept, block):
    """min_W~ ||T W - [B 1]_S W~||² by lstsq on the raw rows."""
    cols = np.append(channel_indices(kept, block), b.shape[1])
    bs = augmented(b)[:, cols]
    y = augmented(target_rows) @ w
    sol = np.linalg.lstsq(bs, y, rcond=None)[0]
    return float(np.sum((y - bs @ sol) ** 2))


@pytest.mark.parametrize("block", [1, 3])
def test_greedy_gains_equal_brute_force_objective(block):
    b = correlated_data(200, 7, block, seed=1)
    w = np.random.default_rng(2).standard_normal((7 * block + 1, 4))
    p = make_problem(b, w, block)
    order, errors = greedy_order([p], 5, np)
    for j in range(0, 6):
        err = best_error(b, w, b, order[:j], block)
        assert errors[j] == pytest.approx(err, rel=1e-6, abs=1e-9 * p.target)


@pytest.mark.parametrize("block", [1, 2])
def test_each_greedy_pick_is_the_brute_force_best_marginal(block):
    b = correlated_data(150, 6, block, seed=3)
    w = np.random.default_rng(4).standard_normal((6 * block + 1, 3))
    order, _ = greedy_order([make_problem(b, w, block)], 4, np)
    chosen = []
    for pick in order:
        errors = {c: best_error(b, w, b, chosen + [c], block) for c in range(6) if c not in chosen}
        assert pick == min(errors, key=errors.get)
        chosen.append(pick)


def test_asym_objective_uses_original_targets():
    rng = np.random.default_rng(5)
    a = correlated_data(180, 6, 1, seed=6)
    b = a + 0.2 * rng.standard_normal(a.shape)       # the pruned model's (perturbed) activations
    w = rng.standard_normal((7, 3))
    p = make_problem(b, w, a=a)
    order, errors = greedy_order([p], 3, np)
    err = best_error(a, w, b, order, 1)
    assert errors[-1] == pytest.approx(err, rel=1e-6)
    new = least_squares(p, np.sort(order), ridge=0.0, xp=np)
    assert p.error(np.sort(order), new, np) == pytest.approx(err, rel=1e-6)


def test_joint_selection_over_two_consumers_sums_their_objectives():
    b = correlated_data(160, 5, 1, seed=7)
    rng = np.random.default_rng(8)
    w1, w2 = rng.standard_normal((6, 2)), rng.standard_normal((6, 3))
    order, errors = greedy_order([make_problem(b, w1), make_problem(b, w2)], 3, np)
    joint = best_error(b, w1, b, order, 1) + best_error(b, w2, b, order, 1)
    assert errors[-1] == pytest.approx(joint, rel=1e-6)


def test_brute_force_optimum_is_at_least_as_good_and_greedy_is_close():
    b = correlated_data(120, 8, 1, seed=9)
    w = np.random.default_rng(10).standard_normal((9, 3))
    p = make_problem(b, w)
    order, _ = greedy_order([p], 3, np)
    greedy_err = best_error(b, w, b, order, 1)
    optimum = min(best_error(b, w, b, list(s), 1) for s in itertools.combinations(range(8), 3))
    assert optimum <= greedy_err + 1e-9
    assert greedy_err <= optimum + 0.5 * (p.target - optimum)   # within the (1 - 1/e)-style guarantee


def test_greedy_beats_weight_norm_and_random_after_reweighting():
    b = correlated_data(400, 24, 1, seed=11)
    w = np.random.default_rng(12).standard_normal((25, 6))
    p = make_problem(b, w)
    errors = {}
    for method in ("greedy", "weight-norm", "random"):
        sel = select(method, 8, SelectContext(24, problems=[p], rows=[w[:-1]], rng=np.random.default_rng(0)))
        errors[method] = p.error(sel.kept, least_squares(p, sel.kept, 0.0, np), np)
    assert errors["greedy"] <= errors["weight-norm"]
    assert errors["greedy"] <= errors["random"]


def test_duplicate_zero_and_constant_channels_are_never_worth_a_pick():
    rng = np.random.default_rng(13)
    b = rng.standard_normal((300, 8))
    b[:, 5] = b[:, 1]          # duplicate
    b[:, 6] = 0.7              # constant: the intercept already explains it
    b[:, 7] = 0.0              # dead
    w = rng.standard_normal((9, 3))
    p = make_problem(b, w)
    order, errors = greedy_order([p], 5, np)
    assert sorted(order) == [0, 1, 2, 3, 4] or (5 in order and 1 not in order)
    assert errors[-1] == pytest.approx(0.0, abs=1e-8 * p.target)


def test_weight_norm_keeps_largest_outgoing_l1():
    w = np.array([[1, 1], [5, 0], [0, 0.5], [3, 3]], dtype=float)
    sel = select("weight-norm", 2, SelectContext(4, rows=[w]))
    assert list(sel.kept) == [1, 3]


def test_random_is_seeded_and_exact_size():
    s1 = select("random", 3, SelectContext(10, rng=np.random.default_rng(7)))
    s2 = select("random", 3, SelectContext(10, rng=np.random.default_rng(7)))
    assert list(s1.kept) == list(s2.kept) and len(set(s1.kept)) == 3


def test_keeping_everything_is_the_identity():
    assert list(select("greedy", 4, SelectContext(4)).kept) == [0, 1, 2, 3]


def test_consumers_seeing_part_of_the_channels_split_the_objective():
    """After a Split each consumer sees some channels: the joint greedy sums what each sees."""
    import dataclasses

    b = correlated_data(200, 6, 1, seed=21)
    rng = np.random.default_rng(22)
    w1, w2 = rng.standard_normal((3, 2)), rng.standard_normal((4, 2))      # channels 0-1 / 2-4 + intercept
    p1 = dataclasses.replace(make_problem(b[:, :2], w1), channels=6, members=np.array([0, 1]))
    p2 = dataclasses.replace(make_problem(b[:, 2:5], w2), channels=6, members=np.array([2, 3, 4]))
    order, errors = greedy_order([p1, p2], 3, np)
    assert 5 not in order                      # seen by no consumer: worth nothing
    first = [c for c in order if c < 2]
    second = [c - 2 for c in order if c >= 2]
    want = best_error(b[:, :2], w1, b[:, :2], first, 1) + best_error(b[:, 2:5], w2, b[:, 2:5], second, 1)
    assert errors[-1] == pytest.approx(want, rel=1e-6)
