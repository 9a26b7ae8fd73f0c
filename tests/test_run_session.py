"""The run/ split: the session is read-only, one workspace serves several runs with the same
results as separate `prune` calls, and budget/curves works with any GroupProbe (it no
longer builds a pruner itself)."""
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

import builders as B
from onnxprune import prune
from onnxprune.budget.allocation import Rules
from onnxprune.budget.curves import output_curves
from onnxprune.run.pipeline import PruneOptions, Workspace


def test_session_is_read_only_and_runs_share_it():
    model = B.mlp()
    data = B.random_inputs(model, 24)
    ws = Workspace(model, data, PruneOptions(keep=0.5, mode="layer"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ws.session.batch_size = 3
    assert ws.groups is ws.session.groups and ws.model is ws.session.model
    for method in ("greedy", "sampling", "weight-norm"):
        opts = PruneOptions(keep=0.5, mode="layer", method=method)
        _, shared = ws.prune(opts)
        _, alone = prune(model, data, keep=0.5, mode="layer", method=method)
        assert [g["kept"] for g in shared.groups] == [g["kept"] for g in alone.groups]


def test_output_curves_take_any_probe():
    """A group whose pruning moves the output by twice its local error gets gain 2."""
    groups = [SimpleNamespace(name="g", channels=4)]
    local = {"g": np.array([1.0, 0.5, 0.25, 0.125, 0.0])}
    reference = np.ones((3, 2))

    class Probe:
        original = "original"

        def prune_alone(self, group, k):
            return (group, k)

        def outputs(self, model):
            if model == "original":
                return [reference]
            _, k = model                       # squared error: 2 x local x the reference energy
            return [reference + np.sqrt(2 * local["g"][k])]

    curves = output_curves(groups, local, Rules(), Probe())
    np.testing.assert_allclose(curves["g"], 2 * local["g"])
