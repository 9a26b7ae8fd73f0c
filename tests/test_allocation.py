"""Per-group budgets: every allocation meets the target exactly (never below, maximal), obeys
--round-to / --min-channels, and FLOPs of a plan match the pruned model's."""
import numpy as np
import pytest

import builders as B
from onnxprune import OnnxPruneError, prune
from onnxprune import analyze
from onnxprune.budget.allocation import Rules, Target, error_counts, keep_counts, ranking_counts, uniform_counts
from onnxprune.budget.cost import flops_after, params_after
from onnxprune.budget.curves import local_curves
from onnxprune.graph.index import GraphIndex
from onnxprune.run.allocate import error_curves
from onnxprune.run.clock import Clock
from onnxprune.run.pipeline import PruneOptions, Workspace


def wide_cnn(seed=0):
    """Conv(3->24)-Relu-Conv(24->20)-Relu-GAP-Flatten-Gemm(20->16)-Relu-Gemm(16->4): room to allocate."""
    b = B.GraphBuilder(seed)
    x = b.input("x", ["N", 3, 8, 8])
    x = b.relu(b.conv(x, 3, 24, name="conv1"))
    x = b.relu(b.conv(x, 24, 20, name="conv2"))
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])], axis=1)
    x = b.relu(b.gemm(x, 20, 16, name="fc1"))
    b.output(b.gemm(x, 16, 4, name="fc2"))
    return b.model()


def setup(model, kind="params", adds_bias=True):
    idx = GraphIndex.build(model)
    groups = analyze(model).groups
    return idx, groups, Target(idx, groups, kind, adds_bias)


def curves_for(groups, seed=0):
    """Made-up decreasing error curves (curve[k]: relative error keeping k channels)."""
    rng = np.random.default_rng(seed)
    out = {}
    for g in groups:
        steps = rng.random(g.channels) * rng.uniform(0.1, 3.0)
        out[g.name] = np.append(np.cumsum(steps[::-1])[::-1], 0.0) / steps.sum()
    return out


def allowed(rules, g, k):
    return k in rules.choices(g.channels).tolist()


def step_up(rules, g, k):
    c = rules.choices(g.channels)
    larger = c[c > k]
    return int(larger[0]) if larger.size else None


@pytest.mark.parametrize("kind", ["params", "flops"])
@pytest.mark.parametrize("rules", [Rules(), Rules(round_to=4), Rules(min_channels=6), Rules(3, 8)])
@pytest.mark.parametrize("ratio", [1.5, 2.0, 3.0])
def test_error_allocation_meets_the_target_exactly(kind, rules, ratio):
    _, groups, target = setup(wide_cnn(), kind)
    counts = error_counts(target, ratio, rules, curves_for(groups))
    assert target.ratio(counts) >= ratio
    for g in groups:
        assert allowed(rules, g, counts[g.name])
        more = step_up(rules, g, counts[g.name])
        if more is not None:          # maximal: no group can keep one more allowed step
            assert target.ratio(dict(counts, **{g.name: more})) < ratio


@pytest.mark.parametrize("rules", [Rules(), Rules(round_to=4), Rules(min_channels=5)])
def test_uniform_allocation_is_the_largest_common_fraction(rules):
    _, groups, target = setup(wide_cnn())
    counts = uniform_counts(target, 2.0, rules)
    assert target.ratio(counts) >= 2.0
    assert all(allowed(rules, g, counts[g.name]) for g in groups)
    fractions = [counts[g.name] / g.channels for g in groups]
    # the next larger common fraction (the smallest step any group can take) misses the target
    bigger = min(step_up(rules, g, counts[g.name]) / g.channels for g in groups
                 if step_up(rules, g, counts[g.name]) is not None)
    assert target.ratio(keep_counts(groups, bigger, rules)) < 2.0
    assert max(fractions) <= bigger


def test_error_allocation_prunes_the_group_whose_error_rises_slowest_hardest():
    _, groups, target = setup(wide_cnn())
    curves = {}
    for g in groups:
        k = np.arange(g.channels + 1)
        curves[g.name] = (1 - k / g.channels) ** (4 if g.name == "conv2" else 1)   # conv2 is cheap to prune
    counts = error_counts(target, 2.0, Rules(), curves)
    uniform = uniform_counts(target, 2.0, Rules())
    assert counts["conv2"] < uniform["conv2"]
    assert target.ratio(counts) >= 2.0


def test_error_allocation_is_close_to_the_brute_force_least_summed_error():
    import itertools

    _, groups, target = setup(B.cnn())          # 8 x 6 x 10 plans
    curves = {}
    for i, g in enumerate(groups):              # convex, decreasing, different steepness per group
        k = np.arange(g.channels + 1)
        curves[g.name] = (1 - k / g.channels) ** (1.5 + i) * (1 + i)
    for ratio in (1.5, 2.5):
        counts = error_counts(target, ratio, Rules(), curves)
        mine = sum(curves[n][k] for n, k in counts.items())
        best = min(sum(curves[g.name][k] for g, k in zip(groups, ks))
                   for ks in itertools.product(*(range(1, g.channels + 1) for g in groups))
                   if target.meets(dict(zip([g.name for g in groups], ks)), ratio))
        assert best <= mine <= 1.05 * best + 1e-12


def test_round_to_keeps_multiples_and_small_groups_whole():
    rules = Rules(round_to=8)
    assert rules.choices(20).tolist() == [8, 16, 20]
    assert rules.choices(6).tolist() == [6]
    assert Rules(min_channels=10, round_to=4).choices(20).tolist() == [12, 16, 20]
    assert Rules().nearest(10, 2.5) == 3 and Rules(round_to=4).nearest(10, 5.9) == 4


def test_round_to_and_min_channels_through_prune():
    model = wide_cnn()
    data = B.random_inputs(model, 32)
    for allocation in ("uniform", "error"):
        _, report = prune(model, data, compression=1.6, round_to=4, min_channels=5, allocation=allocation)
        assert report.compression >= 1.6
        for g in report.groups:
            k = g["channels_after"]
            assert k == g["channels_before"] or (k % 4 == 0 and k >= 5)


def test_unreachable_with_rules_says_why():
    _, groups, target = setup(wide_cnn())
    with pytest.raises(OnnxPruneError, match=r"unreachable.*--min-channels/--round-to.*\d\.\d+x"):
        uniform_counts(target, 5.0, Rules(min_channels=12))


def test_ranking_allocation_is_the_longest_prefix_meeting_the_target():
    _, groups, target = setup(wide_cnn())
    rng = np.random.default_rng(0)
    scores = {g.name: rng.random(g.channels) for g in groups}
    counts = ranking_counts(groups, Rules(), scores, target=target, ratio=2.0)
    assert target.ratio(counts) >= 2.0
    threshold = min(np.sort(scores[g.name])[::-1][counts[g.name] - 1] for g in groups)
    longer = {g.name: max(1, int(np.sum(scores[g.name] >= threshold))) for g in groups}
    assert longer == counts                       # everything above the cut is kept, nothing below
    nxt = max(s for g in groups for s in scores[g.name] if s < threshold)
    one_more = {g.name: max(1, int(np.sum(scores[g.name] >= nxt))) for g in groups}
    assert target.ratio(one_more) < 2.0


@pytest.mark.parametrize("build", [B.cnn, wide_cnn, B.mlp, lambda: B.matmul_mlp(tokens=3)])
def test_flops_and_params_of_a_plan_match_the_pruned_model(build):
    model = build()
    idx = GraphIndex.build(model)
    groups = analyze(model).groups
    data = B.random_inputs(model, 16)
    for keep in (0.3, 0.7):
        _, report = prune(model, data, keep=keep, method="weight-norm", reweight=False)
        counts = {g["name"]: g["channels_after"] for g in report.groups}
        assert flops_after(idx, groups, counts) == report.flops_after
        assert params_after(idx, groups, counts, adds_bias=False) == report.params_after


def test_flops_target_through_prune():
    model = wide_cnn()
    _, report = prune(model, B.random_inputs(model, 32), compression=2.0, target="flops")
    assert report.flops_before / report.flops_after >= 2.0
    assert report.budget["target"] == "flops"


def test_error_curves_are_the_greedy_errors_and_end_at_zero():
    model = wide_cnn()
    data = B.random_inputs(model, 64)
    ws = Workspace(model, data, PruneOptions(compression=2.0, mode="layer"))
    curves = local_curves(ws.cache, Rules(), Clock())
    for g in ws.groups:
        c = curves[g.name]
        assert c.shape == (g.channels + 1,) and c[-1] == pytest.approx(0.0, abs=1e-8)
        assert np.all(np.diff(c) <= 1e-9) and 0 < c[0] <= 1 + 1e-9
    # a layer-mode greedy run afterwards reuses the cached orders: its errors are the curve's
    # (with the greedy's own tiny ridge: --ridge auto may trade calibration error for a smoother fit)
    _, report = ws.prune(PruneOptions(compression=2.0, mode="layer", ridge=1e-6))
    for g in report.groups:
        expected = curves[g["name"]][g["channels_after"]]
        assert g["rel_error"] == pytest.approx(expected, rel=1e-4, abs=1e-7)      # up to the refit's ridge


def test_error_allocation_lowers_output_error_on_uneven_layers():
    """conv2's channels are mostly copies, so balancing errors should take them first."""
    model = wide_cnn()
    w = {t.name: t for t in model.graph.initializer}
    from onnx import numpy_helper

    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    weight = numpy_helper.to_array(w[conv2.input[1]]).copy()
    bias = numpy_helper.to_array(w[conv2.input[2]]).copy()
    weight[5:] = weight[np.arange(15) % 5]
    bias[5:] = bias[np.arange(15) % 5]
    w[conv2.input[1]].CopyFrom(numpy_helper.from_array(weight, conv2.input[1]))
    w[conv2.input[2]].CopyFrom(numpy_helper.from_array(bias, conv2.input[2]))
    data = B.random_inputs(model, 128)
    errors = {}
    for allocation in ("uniform", "error"):
        _, report = prune(model, data, compression=1.8, allocation=allocation)
        errors[allocation] = report.verify["output_rel_error"]["y"]
    assert errors["error"] < errors["uniform"]


def test_error_allocation_needs_data_and_a_compression_target():
    with pytest.raises(OnnxPruneError, match="allocation error"):
        prune(B.mlp(), None, compression=1.5, allocation="error", method="weight-norm", reweight=False)
    with pytest.raises(OnnxPruneError, match="--compression"):
        prune(B.mlp(), B.random_inputs(B.mlp(), 8), keep=0.5, allocation="error")


def test_output_curves_scale_the_local_curve_by_the_groups_share_of_the_output():
    """y = fc2(relu(fc1(x))) + skip(x): an error in fc2's output reaches y unchanged, so the
    measured gain is exactly ||fc2 output||² / ||y||²."""
    b = B.GraphBuilder(3)
    x = b.input("x", ["N", 6])
    branch = b.gemm(b.relu(b.gemm(x, 6, 10, name="fc1")), 10, 3, name="fc2")
    skip = b.node("Gemm", [x, b.const(3 * b.randn(3, 6))], name="skip", transB=1)
    b.output(b.node("Add", [branch, skip]))
    model = b.model()
    data = B.random_inputs(model, 100)
    opts = PruneOptions(compression=1.2, ridge=1e-6)     # the probes' refit is the greedy's
    ws = Workspace(model, data, opts)
    local = local_curves(ws.cache, Rules(), Clock())["fc1"]
    predicted = error_curves(ws.session, ws.cache, opts, Clock())["fc1"]
    from onnxprune.capture.stream import submodel

    y, branch_out = B.run(submodel(model, ["y", branch]), data)
    share = np.sum(branch_out.astype(np.float64) ** 2) / np.sum(y.astype(np.float64) ** 2)
    assert 0.01 < share < 0.5
    np.testing.assert_allclose(predicted[1:-1], share * local[1:-1], rtol=1e-3)
