"""The factored greedy (`greedy_order`) against the full-residual reference: same picks, same
error curve, on problems built to hit every branch (blocks, joint consumers, asym targets,
and zero / constant / duplicated / partly redundant channels)."""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune.solve.problem import Problem
from onnxprune.solve.greedy import COMPACT_FRACTION, _Factor, greedy_order, reference_greedy_order


def problem(b, w, block, a=None, extra=None, members=None, channels=None):
    """Problem for min ||[A E 1] W - [B_S E 1] W~|| from raw rows: B's channels are the
    candidates (channel c owns columns [c*block, (c+1)*block)), E (`extra`) and the intercept
    are fixed features; A = B unless given. `members`/`channels`: which of a larger group's
    channels B's blocks are (default: all of them)."""
    fixed = [extra] if extra is not None else []
    ones = np.ones((b.shape[0], 1))
    bb = np.hstack([b, *fixed, ones])
    aa = bb if a is None else np.hstack([a, *fixed, ones])
    gram = bb.T @ bb
    h = (bb.T @ aa) @ w
    members = np.arange(b.shape[1] // block) if members is None else np.asarray(members)
    return Problem(gram, h, w, float(np.sum((aa @ w) ** 2)), block,
                   len(members) if channels is None else channels, bb.shape[1] - b.shape[1], members)


def channel_data(rng, rows, channels, block, rank_fraction=0.5):
    """Correlated features (rows, channels*block) from a low-rank latent plus noise."""
    d = channels * block
    latent = rng.standard_normal((rows, max(2, int(d * rank_fraction))))
    return latent @ rng.standard_normal((latent.shape[1], d)) + 0.3 * rng.standard_normal((rows, d))


def assert_same_greedy(problems, k, aliases=None):
    """Equal error curves (to 1e-9 of the target) and equal picks, where `aliases` maps a
    duplicated channel to its original (the two tie exactly, so either may be picked)."""
    fast_order, fast_err = greedy_order(problems, k, np)
    ref_order, ref_err = reference_greedy_order(problems, k, np)
    canon = (lambda c: aliases.get(c, c)) if aliases else (lambda c: c)
    assert [canon(c) for c in fast_order] == [canon(c) for c in ref_order]
    scale = sum(p.target for p in problems)
    np.testing.assert_allclose(fast_err, ref_err, rtol=1e-9, atol=1e-9 * scale)
    return fast_order, fast_err


@pytest.mark.parametrize("block", [1, 3, 9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_picks_and_errors_on_correlated_channels(block, seed):
    rng = np.random.default_rng(seed)
    channels = 12
    b = channel_data(rng, 400, channels, block)
    w = rng.standard_normal((channels * block + 1, 5))
    assert_same_greedy([problem(b, w, block)], channels - 1)


@pytest.mark.parametrize("block", [1, 4])
def test_same_picks_for_asym_targets(block):
    rng = np.random.default_rng(10 + block)
    channels = 10
    a = channel_data(rng, 300, channels, block)
    b = a + 0.25 * rng.standard_normal(a.shape)        # the pruned model's perturbed inputs
    w = rng.standard_normal((channels * block + 1, 4))
    p = problem(b, w, block, a=a)
    assert not np.allclose(p.h, p.gram @ w)            # H really comes from the cross Gram
    assert_same_greedy([p], channels - 2)


def test_same_picks_for_joint_consumers_with_different_blocks():
    rng = np.random.default_rng(20)
    channels = 9
    problems = []
    for block, outputs in ((1, 3), (4, 6), (9, 2)):      # e.g. a Gemm, a 2x2 and a 3x3 Conv
        b = channel_data(rng, 350, channels, block)
        problems.append(problem(b, rng.standard_normal((channels * block + 1, outputs)), block))
    assert_same_greedy(problems, channels - 1)


@pytest.mark.parametrize("block", [1, 3])
def test_zero_constant_and_duplicate_channels(block):
    rng = np.random.default_rng(30 + block)
    channels = 10
    b = channel_data(rng, 300, channels, block, rank_fraction=1.0).reshape(300, channels, block)
    b[:, 7] = b[:, 2]                  # duplicate of channel 2
    b[:, 8] = 0.7                      # constant: the intercept already explains it
    b[:, 9] = 0.0                      # dead
    b = b.reshape(300, -1)
    w = rng.standard_normal((channels * block + 1, 3))
    p = problem(b, w, block)
    order, errors = assert_same_greedy([p], channels, aliases={7: 2})
    useful = set(order[:7])
    assert useful == {0, 1, 3, 4, 5, 6} | ({2} if 2 in useful else {7})
    assert errors[7] == pytest.approx(0.0, abs=1e-8 * p.target)   # the rest adds nothing
    assert errors[7:] == pytest.approx([errors[7]] * 4, abs=1e-8 * p.target)


def test_partly_redundant_block_keeps_only_its_new_directions():
    """A block with one feature copied from another channel: the thresholded whitening must
    drop exactly that direction, like the reference's pseudo-inverse."""
    rng = np.random.default_rng(40)
    channels, block = 6, 3
    b = channel_data(rng, 250, channels, block, rank_fraction=1.0)
    b[:, 4 * block] = b[:, 1 * block + 2]     # channel 4's first feature = channel 1's last
    b[:, 5 * block:] = b[:, 0:block] @ rng.standard_normal((block, block))   # channel 5 spans channel 0
    w = rng.standard_normal((channels * block + 1, 4))
    order, errors = assert_same_greedy([problem(b, w, block)], channels)
    assert errors[-1] == pytest.approx(0.0, abs=1e-8 * problem(b, w, block).target)


@pytest.mark.parametrize("block", [1, 2])
def test_below_tolerance_block_has_no_gain_even_when_it_would_fit_the_target(block):
    """Asym: B's channel 5 is channel 2 plus a 1e-6 wiggle (residual variance ~1e-12 of its
    energy, below RESIDUAL_RTOL) while A's channel 5 is that wiggle, scaled up. Solving for it
    would fit the target through a numerically meaningless direction; both implementations
    must give it gain 0, pick it last and gain nothing from picking it."""
    rng = np.random.default_rng(60 + block)
    channels, rows = 6, 300
    b = channel_data(rng, rows, channels, block, rank_fraction=1.0).reshape(rows, channels, block)
    wiggle = rng.standard_normal((rows, block))
    b[:, 5] = b[:, 2] + 1e-6 * wiggle
    a = b.copy()
    a[:, 5] = 3.0 * wiggle
    w = rng.standard_normal((channels * block + 1, 3))
    p = problem(b.reshape(rows, -1), w, block, a=a.reshape(rows, -1))
    order, errors = assert_same_greedy([p], channels)
    assert order[-1] == 5
    assert errors[-1] == pytest.approx(errors[-2], rel=1e-9)
    assert errors[-1] > 0.01 * p.target            # the wiggle's share of the target stays unexplained


def test_fixed_features_are_always_kept():
    """A consumer reading other (unprunable) channels too: they start in the kept set."""
    rng = np.random.default_rng(80)
    channels, block, rows = 7, 2, 300
    b = channel_data(rng, rows, channels, block)
    extra = b[:, :3] @ rng.standard_normal((3, 4)) + 0.5 * rng.standard_normal((rows, 4))   # correlated
    w = rng.standard_normal((channels * block + 4 + 1, 3))
    p = problem(b, w, block, extra=extra)
    order, errors = assert_same_greedy([p], channels - 2)
    kept = [np.arange(c * block, (c + 1) * block) for c in order]
    cols = np.concatenate(kept + [np.arange(channels * block, p.gram.shape[0])])
    design = np.hstack([b, extra, np.ones((rows, 1))])
    y = design @ w
    fit = design[:, cols] @ np.linalg.lstsq(design[:, cols], y, rcond=None)[0]
    assert errors[-1] == pytest.approx(float(np.sum((y - fit) ** 2)), rel=1e-6, abs=1e-9 * p.target)


def test_consumers_seeing_different_channels_of_the_group():
    """After a Split each consumer sees some of the channels; picks of unseen ones are no-ops."""
    rng = np.random.default_rng(90)
    first = problem(channel_data(rng, 200, 3, 1), rng.standard_normal((4, 2)), 1, members=[0, 1, 2], channels=8)
    second = problem(channel_data(rng, 200, 4, 3), rng.standard_normal((13, 3)), 3, members=[3, 4, 6, 7], channels=8)
    order, _ = assert_same_greedy([first, second], 7)
    assert 5 not in order                                   # seen by no consumer: never worth a pick


@settings(max_examples=25, deadline=None)
@given(channels=st.integers(2, 9), block=st.sampled_from([1, 2, 5]), outputs=st.integers(1, 6),
       consumers=st.integers(1, 3), asym=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_equal_to_reference_on_random_problems(channels, block, outputs, consumers, asym, seed):
    rng = np.random.default_rng(seed)
    problems = []
    for _ in range(consumers):
        b = channel_data(rng, 6 * channels * block + 20, channels, block)
        a = b + 0.2 * rng.standard_normal(b.shape) if asym else None
        problems.append(problem(b, rng.standard_normal((channels * block + 1, outputs)), block, a=a))
    assert_same_greedy(problems, int(rng.integers(1, channels + 1)))


@pytest.mark.parametrize("block, channels", [(1, 96), (3, 40)])
def test_same_picks_and_errors_while_picked_blocks_are_dropped(block, channels):
    """Enough picks for the factor to drop picked blocks' columns several times (with a fixed
    feature and a second consumer seeing part of the group), and still match the reference."""
    rng = np.random.default_rng(100 + block)
    b = channel_data(rng, 8 * channels * block, channels, block)
    extra = b[:, :2] @ rng.standard_normal((2, 2)) + 0.5 * rng.standard_normal((b.shape[0], 2))
    first = problem(b, rng.standard_normal((channels * block + 3, 5)), block, extra=extra)
    half = np.arange(0, channels, 2)
    seen = b.reshape(b.shape[0], channels, block)[:, half].reshape(b.shape[0], -1)
    second = problem(seen, rng.standard_normal((half.size * block + 1, 2)), block, members=half, channels=channels)
    assert_same_greedy([first, second], channels - 3)
    state = _Factor(first, channels - 3, np)
    for c in range(channels // 2):
        state.pick(c)
    held = state.held.tolist()
    assert held == sorted(held) and set(range(channels // 2, channels)) <= set(held)
    assert len(held) - (channels - channels // 2) < COMPACT_FRACTION * len(held) + 1       # the picked ones dropped...
    assert state.z.shape[1] == state.t.shape[0] == len(held) * block          # ...and the fixed features


def test_on_step_reports_every_pick_in_order():
    rng = np.random.default_rng(50)
    b = channel_data(rng, 200, 8, 2)
    steps = []
    order, errors = greedy_order([problem(b, rng.standard_normal((17, 3)), 2)], 5, np, on_step=steps.append)
    assert steps == [1, 2, 3, 4, 5] and len(order) == 5 and len(errors) == 6
    assert all(e1 <= e0 + 1e-9 * errors[0] for e0, e1 in zip(errors, errors[1:]))   # monotone


def test_cupy_matches_the_numpy_reference():
    """Same picks and errors on the GPU, for blocks and joint consumers (skipped without one)."""
    from onnxprune.solve.xp import cupy_or_none

    cupy = cupy_or_none()
    if cupy is None:
        pytest.skip("needs CuPy and an NVIDIA GPU")
    rng = np.random.default_rng(70)
    channels = 10
    problems = [problem(channel_data(rng, 300, channels, block), rng.standard_normal((channels * block + 1, 4)), block)
                for block in (1, 9)]
    on_gpu = [dataclasses.replace(p, gram=cupy.asarray(p.gram), h=cupy.asarray(p.h), weight=cupy.asarray(p.weight))
              for p in problems]
    order, errors = greedy_order(on_gpu, channels - 1, cupy)
    ref_order, ref_errors = reference_greedy_order(problems, channels - 1, np)
    assert order == ref_order
    np.testing.assert_allclose(errors, ref_errors, rtol=1e-9, atol=1e-9 * sum(p.target for p in problems))
