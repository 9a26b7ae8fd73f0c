"""coreset, sampling and random-global: scores against hand computations, exact-k draws,
and importance weights that keep the pruned layer unbiased."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import builders as B
from onnxprune import OnnxPruneError, prune
from onnxprune import analyze
from onnxprune.capture.features import canonical_order, design_rows
from onnxprune.graph.index import GraphIndex
from onnxprune.graph.layout import Alive
from onnxprune.methods import coreset, importance
from onnxprune.methods.base import SelectContext, group_rng
from onnxprune.methods.random_global import random_scores
from onnxprune.methods.sampling import SensitivityAccumulator
from onnxprune.solve.problem import ChannelView
from onnxprune.methods import select
from onnxprune.rewrite.weights import consumer_matrix


def weights(model):
    return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}


def group_inputs(model, name=None):
    """(index, group, consumer matrices, views, candidate rows) of a group, as the pipeline sees them."""
    idx = GraphIndex.build(model)
    groups = analyze(model).groups
    g = groups[0] if name is None else next(x for x in groups if x.name == name)
    matrices = [consumer_matrix(idx, c) for c in g.consumers]
    views = [ChannelView.of(c, set(g.sources), g.channels, Alive()) for c in g.consumers]
    rows = [m[v.candidates.ravel()] for m, v in zip(matrices, views)]
    return idx, g, matrices, views, rows


# -- importance draws --------------------------------------------------------------------

SCORES = np.array([5.0, 3.0, 2.0, 1.0, 1.0, 0.5, 0.3, 0.2])


def test_sampling_probabilities_sum_to_one_and_inclusion_to_k():
    p = importance.probabilities(SCORES)
    assert p.sum() == pytest.approx(1.0) and np.all(p > 0)
    for k in range(1, 8):
        pi = importance.inclusion_probabilities(SCORES, k)
        assert pi.sum() == pytest.approx(k) and np.all(pi <= 1.0)
        free = pi < 1
        ratio = pi[free] / SCORES[free]          # proportional to the scores below the cap
        assert np.allclose(ratio, ratio[0])


@pytest.mark.parametrize("draw", importance.DRAWS)
def test_draws_keep_exactly_k_distinct_channels(draw):
    rng = np.random.default_rng(0)
    for k in (1, 3, 7, 8):
        for _ in range(50):
            kept, w = importance.draw(SCORES, k, rng, draw)
            assert len(kept) == len(set(kept.tolist())) == k and np.all(np.diff(kept) > 0)
            assert np.all(w > 0)


def test_systematic_draw_keeps_each_channel_with_its_inclusion_probability():
    k, n = 3, 6000
    pi = importance.inclusion_probabilities(SCORES, k)
    rng = np.random.default_rng(1)
    hits = np.zeros(SCORES.size)
    for _ in range(n):
        kept, w = importance.draw(SCORES, k, rng)
        hits[kept] += 1
        np.testing.assert_allclose(w, 1 / pi[kept])
    se = np.sqrt(pi * (1 - pi) / n) + 1e-12
    assert np.all(np.abs(hits / n - pi) < 5 * se + 1e-9)


def linear_toy_estimates(draw, n=6000, k=3, seed=2):
    """Outputs W[:, S] diag(w) a_S of the pruned linear layer for n seeded draws, and W a."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(SCORES.size)
    w = rng.standard_normal((4, SCORES.size))
    out = np.empty((n, 4))
    for i in range(n):
        kept, scale = importance.draw(SCORES, k, np.random.default_rng([seed, i]), draw)
        out[i] = w[:, kept] @ (scale * a[kept])
    return out, w @ a


def test_importance_weights_make_the_pruned_linear_layer_unbiased():
    est, full = linear_toy_estimates("systematic")
    se = est.std(axis=0) / np.sqrt(len(est))
    assert np.all(np.abs(est.mean(axis=0) - full) < 4 * se)


def test_the_papers_draw_until_k_distinct_is_biased():
    """c(p)/(m pr(p)) with m the stopping time of k distinct draws: why it is not the default."""
    est, full = linear_toy_estimates("with-replacement")
    se = est.std(axis=0) / np.sqrt(len(est))
    assert np.any(np.abs(est.mean(axis=0) - full) > 6 * se)


def test_zero_scores_are_only_kept_when_needed():
    s = np.array([0.0, 2.0, 0.0, 1.0])
    for draw in importance.DRAWS:
        kept, _ = importance.draw(s, 2, np.random.default_rng(0), draw)
        assert list(kept) == [1, 3]
        kept, w = importance.draw(s, 3, np.random.default_rng(0), draw)
        assert {1, 3} <= set(kept.tolist()) and len(kept) == 3


# -- coreset -----------------------------------------------------------------------------

def test_coreset_sensitivity_is_consumer_max_times_point_norm():
    model = B.mlp(widths=(6, 10, 3))
    idx, g, _, _, rows = group_inputs(model)
    w = weights(model)
    w1, b1 = w[model.graph.node[0].input[1]], w[model.graph.node[0].input[2]]    # (10, 6) with transB
    w2 = w[model.graph.node[2].input[1]]                                          # (3, 10)
    expected = np.abs(w2).max(axis=0) * np.sqrt((w1 ** 2).sum(axis=1) + b1 ** 2)
    np.testing.assert_allclose(coreset.sensitivities(idx, g, Alive(), rows, beta=3.0), 3.0 * expected)


def test_coreset_reduces_conv_consumers_with_an_l1_norm_over_the_kernel():
    model = B.cnn()
    idx, g, _, _, rows = group_inputs(model, "conv2")
    w = weights(model)
    conv2 = idx.nodes["conv2"]
    fc1 = idx.nodes["fc1"]
    wc, bc = w[conv2.input[1]], w[conv2.input[2]]                                 # (6, 8, 3, 3)
    wf = w[fc1.input[1]].reshape(10, 6, 16)                                       # transB: (out, ch*16)
    expected = np.abs(wf).sum(axis=2).max(axis=0) * np.sqrt((wc.reshape(6, -1) ** 2).sum(axis=1) + bc ** 2)
    np.testing.assert_allclose(coreset.sensitivities(idx, g, Alive(), rows, 1.0), expected)


def test_coreset_sees_an_unfolded_batchnorm_like_its_folded_equivalent():
    model = B.cnn()
    idx, g, _, _, rows = group_inputs(model, "conv1")
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    gamma, beta, mean, var = (idx.array(n).astype(np.float64) for n in bn.input[1:5])
    scale = gamma / np.sqrt(var + 1e-5)
    conv1 = idx.nodes["conv1"]
    wc, bc = idx.array(conv1.input[1]).astype(np.float64), idx.array(conv1.input[2]).astype(np.float64)
    folded_w, folded_b = wc * scale[:, None, None, None], (bc - mean) * scale + beta
    outgoing = np.abs(np.asarray(rows[0])).reshape(8, 9, -1).sum(axis=1).max(axis=1)
    expected = outgoing * np.sqrt((folded_w.reshape(8, -1) ** 2).sum(axis=1) + folded_b ** 2)
    np.testing.assert_allclose(coreset.sensitivities(idx, g, Alive(), rows, 1.0), expected)


def test_coreset_needs_no_data_and_importance_weights_the_kept_consumer_columns():
    model = B.mlp(widths=(6, 10, 3))
    pruned, report = prune(model, None, keep=0.4, method="coreset", seed=5)
    assert report.reweight is False and report.calibration is None and report.notes
    g = report.groups[0]
    kept = np.array(g["kept"])
    idx, group, _, _, rows = group_inputs(model)
    pi = importance.inclusion_probabilities(coreset.sensitivities(idx, group, Alive(), rows, 1.0), 4)
    w2 = weights(model)[model.graph.node[2].input[1]]
    new = weights(pruned)[pruned.graph.node[2].input[1]]
    np.testing.assert_allclose(new, w2[:, kept] / pi[kept], rtol=1e-6)


def test_coreset_with_explicit_reweighting_needs_data():
    with pytest.raises(OnnxPruneError, match="--no-reweight"):
        prune(B.mlp(), None, keep=0.5, method="coreset", reweight=True)


def test_coreset_is_seeded():
    model = B.cnn()
    a, _ = prune(model, None, keep=0.5, method="coreset", seed=1)
    b, _ = prune(model, None, keep=0.5, method="coreset", seed=1)
    assert a.SerializeToString() == b.SerializeToString()


# -- sampling ----------------------------------------------------------------------------

def brute_force_sensitivity(x_rows, w, candidates):
    """max over rows, outputs and sign of a channel's share of the positive/negative sum."""
    contrib = x_rows[:, :, None] * w[None, :, :]                     # (rows, features, outputs)
    out = np.zeros(candidates.shape[0])
    for part in (np.maximum(contrib, 0), np.maximum(-contrib, 0)):
        total = part.sum(axis=1)
        for p, feats in enumerate(candidates):
            share = np.where(total > 0, part[:, feats].sum(axis=1) / np.where(total > 0, total, 1), 0)
            out[p] = max(out[p], share.max())
    return out


@pytest.mark.parametrize("nonnegative", [False, True], ids=["signed", "post-relu"])
@pytest.mark.parametrize("name, shape", [("fc1", None), ("conv1", (5, 8, 4, 4)), ("conv2", (5, 96))])
def test_sampling_sensitivity_matches_brute_force_and_ignores_batching(name, shape, nonnegative):
    model = B.cnn()
    idx, g, matrices, views, _ = group_inputs(model, name)
    c, m, v = g.consumers[0], matrices[0], views[0]
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape or (5, 10)).astype(np.float32)
    x = np.abs(x) if nonnegative else x                              # the negative parts vanish
    whole = SensitivityAccumulator(c, m, v, np)
    whole.add(x)
    split = SensitivityAccumulator(c, m, v, np)
    split.add(x[:2])
    split.add(x[2:])
    rows = design_rows(x.astype(np.float64), c, np, np.float64)
    order = canonical_order(c, rows.shape[1])
    rows = (rows[:, order] if order is not None else rows)[:, :-1]
    expected = brute_force_sensitivity(rows, m[:-1], v.candidates)
    np.testing.assert_allclose(whole.result(), expected, rtol=1e-5)   # float32 sums
    np.testing.assert_allclose(split.result(), expected, rtol=1e-5)
    assert np.all((expected > 0) & (expected <= 1 + 1e-12))


def test_sampling_sensitivity_ignores_subnormal_totals():
    """A pre-activation whose positive part underflows to a subnormal float32 must not turn
    the other channels' zero shares into 0 * inf = NaN."""
    model = B.cnn()
    _, g, matrices, views, _ = group_inputs(model, "fc1")
    c, v = g.consumers[0], views[0]
    m = np.zeros_like(matrices[0])
    first, second = v.candidates[0, 0], v.candidates[1, 0]
    m[first, 0], m[second, 0] = 1e-25, 1.0
    x = np.zeros((2, m.shape[0] - 1), dtype=np.float32)
    x[0, first] = 1e-20                         # total 1e-45: subnormal, its reciprocal overflows
    x[1, first], x[1, second] = 1.0, 3.0        # shares of output 0: 3e-26 and 1
    acc = SensitivityAccumulator(c, m, v, np)
    acc.add(x)
    got = acc.result()
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[[0, 1]], [0.0, 1.0], atol=1e-6)


def test_sampling_sensitivity_skips_fully_masked_batches():
    model = B.cnn()
    _, g, matrices, views, _ = group_inputs(model, "fc1")
    c, m, v = g.consumers[0], matrices[0], views[0]
    x = np.random.default_rng(0).standard_normal((4, m.shape[0] - 1)).astype(np.float32)
    acc = SensitivityAccumulator(c, m, v, np)
    acc.add(x[:2], None, np.zeros((2, 1)))          # every row is padding: nothing to count
    assert acc.rows == 0 and not acc.result().any()
    acc.add(x[2:], None, np.ones((2, 1)))
    fresh = SensitivityAccumulator(c, m, v, np)
    fresh.add(x[2:])
    np.testing.assert_array_equal(acc.result(), fresh.result())


@pytest.mark.parametrize("mode", ["layer", "asym"])
def test_sampling_prunes_and_importance_weights_without_reweighting(mode):
    model = B.cnn()
    data = B.random_inputs(model, 48)
    pruned, report = prune(model, data, keep=0.5, method="sampling", mode=mode, reweight=False)
    assert report.params_after < report.params_before
    assert all(g["channels_after"] == max(1, round(g["channels_before"] / 2)) for g in report.groups)
    assert [o.shape for o in B.run(pruned, data)] == [o.shape for o in B.run(model, data)]


def test_sampling_needs_data():
    with pytest.raises(OnnxPruneError, match="calibration"):
        prune(B.mlp(), None, keep=0.5, method="sampling", reweight=False)


# -- random-global -----------------------------------------------------------------------

def test_random_global_keeps_the_top_of_one_ranking_across_groups():
    model = B.cnn()
    _, report = prune(model, None, keep=0.5, method="random-global", reweight=False, seed=4)
    groups = {g.name: g for g in analyze(model).groups}
    kept_scores, dropped_scores = [], []
    for r in report.groups:
        s = random_scores(r["channels_before"], group_rng(4, groups[r["name"]]))
        mask = np.zeros(s.size, dtype=bool)
        mask[r["kept"]] = True
        kept_scores += s[mask].tolist()
        dropped_scores += s[~mask].tolist()
    assert min(kept_scores) > max(dropped_scores)
    assert len(kept_scores) == round(0.5 * (len(kept_scores) + len(dropped_scores)))


def test_select_dispatches_the_new_methods():
    s = select("sampling", 2, SelectContext(4, observed=np.array([1.0, 0, 0, 2.0]), rng=np.random.default_rng(0)))
    assert list(s.kept) == [0, 3] and np.allclose(s.scales, 1.0)
    r = select("random-global", 2, SelectContext(5, rng=np.random.default_rng(9)))
    expected = np.sort(np.argsort(-np.random.default_rng(9).random(5))[:2])
    assert list(r.kept) == list(expected) and r.scales is None


@pytest.mark.parametrize("name", ["mlp_transb0", "cnn_gap", "matmul_tokens"])
@pytest.mark.parametrize("method", ["random-global", "sampling", "coreset"])
@pytest.mark.parametrize("reweight", [True, False])
def test_new_methods_give_valid_smaller_models(name, method, reweight):
    from test_prune import MODELS

    model = MODELS[name]()
    data = B.random_inputs(model, 48)
    pruned, report = prune(model, data, keep=0.5, method=method, reweight=reweight, mode="asym")
    onnx.checker.check_model(pruned, full_check=True)
    assert [o.shape for o in B.run(pruned, data)] == [o.shape for o in B.run(model, data)]
    assert report.params_after < report.params_before
    for g in report.groups:                # a refit is never worse than the intercept alone
        assert len(g["kept"]) == g["channels_after"] and g["rel_error"] >= 0.0
        assert g["rel_error"] <= 1.0 + 1e-9 or not reweight


def test_coreset_points_include_a_bias_the_refit_added_to_a_matmul():
    """A bias-free MatMul that a group's refit gave an intercept (an Add after it) is then a
    producer with that bias: its coreset points are ||[W[:, j], b_j]||, as for a Gemm."""
    b = B.GraphBuilder(3)
    x = b.input("x", ["N", 10])
    x = b.relu(b.matmul(x, 10, 14, bias=False, name="mm1"))
    x = b.relu(b.matmul(x, 14, 12, bias=False, name="mm2"))
    b.output(b.matmul(x, 12, 5, bias=False, name="mm3"))
    model = b.model()
    calib = {"x": np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)}
    pruned, _ = prune(model, calib, keep=0.5, mode="seq", exclude=["mm2"])      # mm1's group only
    idx = GraphIndex.build(pruned)
    (add,) = [n for n in pruned.graph.node if n.op_type == "Add"]           # mm2's refit intercept
    bias = idx.array(add.input[1]).astype(np.float64)
    assert np.abs(bias).max() > 1e-3
    (g2,) = [g for g in analyze(model).groups if [p.node for p in g.producers] == ["mm2"]]
    w2 = idx.array(idx.nodes["mm2"].input[1]).astype(np.float64)            # (7, 12): rows pruned
    want = np.sqrt(np.sum(w2 ** 2, axis=0) + bias ** 2)
    np.testing.assert_allclose(coreset.point_norms(idx, g2, Alive()), want, rtol=1e-12)
