"""`--search swap` through a whole run: the report's search entries, agreement with the
refit's measured error, layer-mode caching, option validation."""
import numpy as np
import pytest

import builders as B
from onnxprune import OnnxPruneError, prune


def calib(model, n=96, seed=1):
    return B.random_inputs(model, n, seed)


@pytest.mark.parametrize("mode", ["layer", "seq", "asym"])
def test_swap_report_matches_the_refit_error(mode):
    model = B.mlp()
    data = calib(model)
    # the swap scores with the greedy's tiny ridge; --ridge auto would refit with another one
    plain, r0 = prune(model, data, keep=0.5, mode=mode, refit="consumers", ridge=1e-6)
    swapped, r1 = prune(model, data, keep=0.5, mode=mode, refit="consumers", search="swap", ridge=1e-6)
    assert all("search" not in g for g in r0.to_dict()["groups"])
    groups = [g for g in r1.to_dict()["groups"] if g["channels_after"] < g["channels_before"]]
    assert groups and all("search" in g for g in groups)
    for g, g0 in zip(groups, [g for g in r0.to_dict()["groups"] if g["channels_after"] < g["channels_before"]]):
        s = g["search"]
        assert s["objective_after"] <= s["objective_before"]
        # the objective is the error the consumers' ridge refit then reaches on the same data
        assert g["rel_error"] == pytest.approx(s["objective_after"], rel=1e-3, abs=1e-9)
        if mode == "layer" or g is groups[0]:     # same statistics as the plain run: same starting point
            assert g0["rel_error"] == pytest.approx(s["objective_before"], rel=1e-3, abs=1e-9)
        assert (s["swaps"] > 0) == (sorted(g["kept"]) != sorted(g0["kept"]))
    assert sum(g["search"]["swaps"] for g in groups) > 0      # this model does get swaps


def test_search_none_is_the_default():
    model = B.cnn()
    data = calib(model)
    a, _ = prune(model, data, keep=0.5)
    b, _ = prune(model, data, keep=0.5, search="none")
    assert a.SerializeToString() == b.SerializeToString()


def test_unknown_search_is_refused():
    model = B.mlp()
    with pytest.raises(OnnxPruneError, match="unknown search"):
        prune(model, calib(model), keep=0.5, search="anneal")
