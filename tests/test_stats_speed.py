"""The fast statistics paths (issues 13/15): float32 products summed in float64 with a shift,
H accumulated directly or through the cross Gram, one Gram shared by consumers of a tensor,
row sub-sampling. Each is checked against float64 sums over explicit design rows."""
import numpy as np
import pytest

import builders as B
from onnxprune import prune
from onnxprune.capture import stats as stats_module
from onnxprune.capture.features import im2col
from onnxprune.capture.shared import shared_accumulators, split_results
from onnxprune.capture.stats import GramAccumulator, StatsSettings
from onnxprune.errors import OnnxPruneError
from onnxprune.graph.groups import ConvGeometry, Consumer
from onnxprune.graph.layout import Layout, Segment


def matmul(node="m", d=6):
    return Consumer(node=node, op="MatMul", input="x", weight="w", weight_axis=0,
                    layout=Layout(2, 3, (Segment("p", 0, d),)))


def conv(node="c", channels=3, **geometry):
    geom = ConvGeometry(kernel=geometry.get("kernel", (3, 3)), strides=geometry.get("strides", (1, 1)),
                        pads=geometry.get("pads", (1, 1, 1, 1)), dilations=geometry.get("dilations", (1, 1)),
                        auto_pad="NOTSET")
    return Consumer(node=node, op="Conv", input="x", weight="w", weight_axis=1,
                    layout=Layout(1, 4, (Segment("p", 0, channels),)), conv=geom)


def augmented(x):
    return np.hstack([x.reshape(-1, x.shape[-1]), np.ones((x[..., 0].size, 1))])


def accumulate(c, batches, asym=True, w=None, **settings):
    acc = GramAccumulator(c, np, asym=asym, weight=w, settings=StatsSettings(**settings))
    for b, a in batches:
        acc.add(b, a)
    return acc.result()


def offset_batches(rng, n=4, shape=(16, 5, 6), mean=50.0):
    """Activations with a large common mean (where float32 without a shift loses the variance)."""
    return [((mean + rng.standard_normal(shape)).astype(np.float32),
             (mean + rng.standard_normal(shape)).astype(np.float32)) for _ in range(n)]


@pytest.mark.parametrize("m", [2, 20])          # m < d_A: H directly; m > d_A: through the cross Gram
def test_float32_products_match_float64_sums(m):
    rng = np.random.default_rng(0)
    batches = offset_batches(rng)
    w = rng.standard_normal((7, m))
    x = augmented(np.concatenate([b for b, _ in batches]).astype(np.float64))
    xa = augmented(np.concatenate([a for _, a in batches]).astype(np.float64))
    exact_gram, exact_h = x.T @ x, x.T @ (xa @ w)
    for dtype, tol in (("float64", 1e-12), ("float32", 1e-6)):
        s = accumulate(matmul(), batches, w=w, dtype=dtype)
        assert s.gram.dtype == np.float64 and s.h.dtype == np.float64
        np.testing.assert_allclose(s.gram, exact_gram, rtol=tol)
        np.testing.assert_allclose(s.h, exact_h, rtol=tol, atol=tol * np.abs(exact_h).max())
        assert s.target == pytest.approx(float(np.sum((xa @ w) ** 2)), rel=tol)
        # the variance around the mean (what the greedy sees once the intercept is kept)
        # survives the mean of 50: relative error far below float32's 50² / 1 cancellation
        n = s.gram[-1, -1]
        cov = s.gram[:-1, :-1] - np.outer(s.gram[:-1, -1], s.gram[-1, :-1]) / n
        want = exact_gram[:-1, :-1] - np.outer(exact_gram[:-1, -1], exact_gram[-1, :-1]) / n
        np.testing.assert_allclose(cov, want, rtol=50 * tol, atol=50 * tol * np.abs(want).max())


def test_float32_conv_statistics_match_float64():
    rng = np.random.default_rng(1)
    c = conv(pads=(1, 0, 1, 2), strides=(2, 1))
    batches = [(rng.random((4, 3, 7, 6), dtype=np.float32), rng.random((4, 3, 7, 6), dtype=np.float32))
               for _ in range(3)]
    w = rng.standard_normal((28, 4))
    s64 = accumulate(c, batches, w=w, dtype="float64")
    s32 = accumulate(c, batches, w=w, dtype="float32")
    np.testing.assert_allclose(s32.gram, s64.gram, rtol=1e-6, atol=1e-6 * np.abs(s64.gram).max())
    np.testing.assert_allclose(s32.h, s64.h, rtol=1e-6, atol=1e-6 * np.abs(s64.h).max())
    rows = im2col(np.concatenate([b for b, _ in batches]).astype(np.float64), c.conv, np, np.float64,
                  intercept=True)
    from onnxprune.capture.features import canonical_order
    rows = rows[:, canonical_order(c, rows.shape[1])]
    np.testing.assert_allclose(s64.gram, rows.T @ rows, rtol=1e-12)


def test_gathered_patches_are_the_im2col_rows():
    rng = np.random.default_rng(2)
    for geometry in ({}, {"strides": (2, 2), "pads": (0, 1, 2, 0)}, {"dilations": (2, 1), "pads": (2, 1, 2, 1)}):
        c = conv(**geometry)
        x = rng.standard_normal((3, 3, 8, 7))
        full = im2col(x, c.conv, np, np.float64)
        rows = np.sort(rng.choice(full.shape[0], size=full.shape[0] // 2, replace=False))
        np.testing.assert_array_equal(im2col(x, c.conv, np, np.float64, rows=rows), full[rows])


def test_consumers_of_one_tensor_share_a_gram_with_the_same_statistics():
    rng = np.random.default_rng(3)
    first, second = matmul("m1"), matmul("m2")
    targets = {"m1": rng.standard_normal((7, 3)), "m2": rng.standard_normal((7, 5))}
    batches = offset_batches(rng, n=2, mean=1.0)
    shared = shared_accumulators([first, second], np, targets, StatsSettings())
    assert len(shared) == 1                                  # one Gram for both
    for b, a in batches:
        shared[0][1].add(b, a)
    together = split_results(shared, [first, second], targets)
    for c, got in zip((first, second), together):
        alone = accumulate(c, batches, w=targets[c.node])
        assert got.consumer is c
        np.testing.assert_array_equal(got.gram, alone.gram)
        np.testing.assert_allclose(got.h, alone.h, rtol=1e-6, atol=1e-6 * np.abs(alone.h).max())
        assert got.target == pytest.approx(alone.target, rel=1e-6)
        np.testing.assert_allclose(got.column_target, alone.column_target, rtol=1e-6)


def test_row_subsampling_is_deterministic_weighted_and_unbiased():
    rng = np.random.default_rng(4)
    batches = offset_batches(rng, n=3, shape=(8, 10, 6), mean=0.5)          # 80 rows a batch
    w = rng.standard_normal((7, 2))
    full = accumulate(matmul(), batches, w=w, dtype="float64")
    one = accumulate(matmul(), batches, w=w, dtype="float64", max_rows=20)
    again = accumulate(matmul(), batches, w=w, dtype="float64", max_rows=20)
    np.testing.assert_array_equal(one.gram, again.gram)
    assert one.rows == 60 and one.sampled and not full.sampled
    assert one.gram[-1, -1] == pytest.approx(full.gram[-1, -1])             # weights restore the count
    assert not np.allclose(one.gram, full.gram)
    draws = [accumulate(matmul(), batches, w=w, dtype="float64", max_rows=20, seed=s).gram for s in range(300)]
    mean = np.mean(draws, axis=0)
    spread = np.std(draws, axis=0) / np.sqrt(len(draws))
    assert np.all(np.abs(mean - full.gram) <= 5 * spread + 1e-9)           # unbiased within 5 standard errors
    unlimited = accumulate(matmul(), batches, w=w, dtype="float64", max_rows=80)
    np.testing.assert_array_equal(unlimited.gram, full.gram)


def test_auto_row_limit_samples_only_layers_with_far_more_rows_than_features(monkeypatch):
    monkeypatch.setattr(stats_module, "AUTO_ROWS_FLOOR", 40)     # the floor (4096) scaled to a test's batches
    monkeypatch.setattr(stats_module, "AUTO_ROWS_PER_FEATURE", 4)
    auto = StatsSettings(max_rows="auto")
    assert auto.row_limit(6) == 40 and auto.row_limit(20) == 84 and StatsSettings().row_limit(6) is None
    rng = np.random.default_rng(5)
    w = rng.standard_normal((7, 2))
    many = offset_batches(rng, n=2, shape=(8, 10, 6), mean=0.5)              # 80 rows a batch > 40
    few = [(b[:4], a[:4]) for b, a in many]                                   # 40 rows a batch
    sampled = accumulate(matmul(), many, w=w, dtype="float64", max_rows="auto")
    assert sampled.sampled and sampled.rows == 80
    np.testing.assert_array_equal(sampled.gram, accumulate(matmul(), many, w=w, dtype="float64", max_rows=40).gram)
    whole = accumulate(matmul(), few, w=w, dtype="float64", max_rows="auto")
    assert not whole.sampled
    np.testing.assert_array_equal(whole.gram, accumulate(matmul(), few, w=w, dtype="float64").gram)


def test_row_subsampling_of_a_conv_uses_the_chosen_patches():
    rng = np.random.default_rng(5)
    c = conv()
    x = rng.random((2, 3, 5, 5), dtype=np.float32)
    s = accumulate(c, [(x, x)], w=rng.standard_normal((28, 2)), dtype="float64", max_rows=7)
    again = accumulate(c, [(x, x)], w=rng.standard_normal((28, 2)), dtype="float64", max_rows=7)
    assert s.rows == 7 and s.gram[-1, -1] == pytest.approx(50.0)
    np.testing.assert_array_equal(s.gram, again.gram)


def test_chunking_does_not_change_float32_statistics(monkeypatch):
    rng = np.random.default_rng(6)
    batches = offset_batches(rng, n=2)
    w = rng.standard_normal((7, 3))
    whole = accumulate(matmul(), batches, w=w)
    monkeypatch.setattr(stats_module, "CHUNK_ELEMENTS", 20)
    chunked = accumulate(matmul(), batches, w=w)
    np.testing.assert_allclose(chunked.gram, whole.gram, rtol=1e-6)
    np.testing.assert_allclose(chunked.h, whole.h, rtol=1e-6, atol=1e-6 * np.abs(whole.h).max())


@pytest.mark.parametrize("m", [2, 20])
@pytest.mark.parametrize("max_rows", [None, 50])
def test_a_batch_adds_the_same_numbers_on_whichever_worker_runs_it(m, max_rows):
    """Sharded capture: batches 0-1 on one accumulator, 2-3 on another (first_batch=2), their
    partial sums absorbed, equal one accumulator over all four up to float64 summation order
    (float32 products, batch means far apart, row sub-sampling drawn by calibration index);
    one partial absorbed alone reproduces its accumulator bit for bit."""
    rng = np.random.default_rng(8)
    batches = [((mean + rng.standard_normal((16, 5, 6))).astype(np.float32),
                (mean + rng.standard_normal((16, 5, 6))).astype(np.float32)) for mean in (50.0, -3.0, 80.0, 0.0)]
    w = rng.standard_normal((7, m))
    settings = StatsSettings(max_rows=max_rows)
    whole = accumulate(matmul(), batches, w=w, max_rows=max_rows)
    shards = []
    for first in (0, 2):
        acc = GramAccumulator(matmul(), np, asym=True, weight=w, settings=settings, first_batch=first)
        for b, a in batches[first:first + 2]:
            acc.add(b, a)
        shards.append(acc)
    merged = GramAccumulator(matmul(), np, asym=True)
    for acc in shards:
        merged.absorb(acc.partial())
    got = merged.result()
    assert got.rows == whole.rows and got.sampled == (max_rows is not None)
    for x, y in ((got.gram, whole.gram), (got.h, whole.h), (got.column_target, whole.column_target)):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-12 * np.abs(y).max())
    alone = GramAccumulator(matmul(), np, asym=True)
    alone.absorb(shards[1].partial())
    for x, y in zip(_arrays(alone.result()), _arrays(shards[1].result())):
        np.testing.assert_array_equal(x, y)
    if max_rows is not None:         # the draw follows the calibration index, not the accumulator
        shifted = GramAccumulator(matmul(), np, asym=True, weight=w, settings=settings, first_batch=0)
        for b, a in batches[2:]:
            shifted.add(b, a)
        assert not np.array_equal(shifted.result().gram, shards[1].result().gram)


def _arrays(s):
    return (s.gram, s.h, s.column_target, np.float64(s.target), np.float64(s.rows))


def test_float32_statistics_select_as_well_as_float64():
    """Greedy on float32-product statistics vs float64: the picks, judged by exact float64
    statistics, leave the same error up to float32's resolution (about 1e-6 of the target
    energy: a near-lossless group may pick another near-equivalent set, see RESULTS.md)."""
    from onnxprune.graph.layout import Alive
    from onnxprune.solve.greedy import greedy_order
    from onnxprune.solve.problem import ChannelView, Problem
    from onnxprune.solve.reweight import least_squares
    rng = np.random.default_rng(7)
    channels, block = 12, 1
    latent = rng.standard_normal((2000, 6))
    b = np.maximum(latent @ rng.standard_normal((6, channels)) + 0.3 * rng.standard_normal((2000, channels)), 0)
    a = b + 0.05 * rng.standard_normal(b.shape)
    w = rng.standard_normal((channels + 1, 4))
    c = Consumer(node="c", op="MatMul", input="x", weight="w", weight_axis=0,
                 layout=Layout(1, 2, (Segment("p", 0, channels),), block=block))
    view = ChannelView.of(c, {"p"}, channels, Alive())
    problems = {}
    for dtype in ("float32", "float64"):
        batches = [(b[i:i + 500].astype(np.float32), a[i:i + 500].astype(np.float32)) for i in range(0, 2000, 500)]
        stats = accumulate(c, batches, w=w, dtype=dtype)
        problems[dtype] = Problem.build(stats, w, view, np)
    exact = problems["float64"]
    for k in (3, 6, 9):
        errors = {}
        for dtype, p in problems.items():
            kept, _ = greedy_order([p], k, np)
            errors[dtype] = exact.error(kept, least_squares(exact, kept, 1e-6, np), np) / exact.target
        assert errors["float32"] <= errors["float64"] + 1e-5


def test_bad_statistics_options_are_refused():
    model = B.cnn()
    data = B.random_inputs(model, 8)
    for bad in (0, "some"):
        with pytest.raises(OnnxPruneError, match="max-rows"):
            prune(model, data, keep=0.5, max_rows=bad)
    with pytest.raises(OnnxPruneError, match="ridge"):
        prune(model, data, keep=0.5, ridge="high")
    with pytest.raises(OnnxPruneError, match="stats dtype"):
        prune(model, data, keep=0.5, stats_dtype="float16")
