"""The surgery check of every prune (run/surgery.py): it passes on correct surgery, and a wrong
surgery (the wrong rows of NHWC-flattened channels; producers keeping other channels than the
consumers' rows) stops the run with an internal error naming the group, and nothing is written.
A model onnxprune built that onnxruntime rejects is an internal error too, never 'cannot run
this model'."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import builders as B
from onnxprune import prune
from onnxprune.cli import main
from onnxprune.errors import InternalError
from onnxprune.graph import layout
from onnxprune.rewrite import apply as rewrite_apply
from onnxprune.run import runner, surgery

FIXTURES = Path(__file__).parent / "fixtures"


def nhwc_fixture():
    data = dict(np.load(FIXTURES / "nhwc_flatten_calib.npz"))
    return str(FIXTURES / "nhwc_flatten.onnx"), {k: v[:32] for k, v in data.items()}


def test_every_prune_reports_the_check():
    model = B.cnn()
    _, report = prune(model, B.random_inputs(model, 48), keep=0.5)
    check = report.verify["surgery_check"]
    assert check["passed"] and check["samples"] == 8
    assert 0 <= check["max_abs_diff"] < 1e-4


def test_a_scalar_output_is_checked_too():
    """A model that also outputs a scalar (a total over the batch) gets one value per batch."""
    model = B.mlp()
    out = model.graph.output[0].name
    model.graph.node.append(onnx.helper.make_node("ReduceSum", [out], ["total"], keepdims=0))
    model.graph.output.append(onnx.helper.make_tensor_value_info("total", onnx.TensorProto.FLOAT, []))
    pruned, report = prune(model, B.random_inputs(model, 48), keep=0.5)
    check = report.verify["surgery_check"]
    assert check["passed"] and check["samples"] == 8
    feeds = B.random_inputs(model, 4, seed=3)
    got, total = B.run(pruned, feeds)
    np.testing.assert_allclose(total, got.sum(), rtol=1e-5)


def test_data_free_runs_check_on_random_inputs():
    _, report = prune(B.cnn(), None, keep=0.5, method="weight-norm", reweight=False)
    assert report.verify["surgery_check"]["samples"] == 8


def test_skipped_with_a_reason_where_no_input_can_be_made():
    model = onnx.load(FIXTURES / "bert_tiny.onnx")
    _, report = prune(model, None, keep=0.5, method="coreset")
    assert "no calibration data" in report.verify["surgery_check"]["skipped"]


def test_wrong_rows_of_nhwc_flattened_channels_are_caught(monkeypatch, tmp_path):
    """The mutation that once left every test green: element_indices without its interleaved
    branch (still a valid model, wrong rows)."""
    def mutated(positions, lay, total_positions):
        return layout.channel_indices(positions, lay.block)
    monkeypatch.setattr(layout, "element_indices", mutated)
    monkeypatch.setattr(rewrite_apply, "element_indices", mutated)
    path, calib = nhwc_fixture()
    with pytest.raises(InternalError, match=r"surgery check: group /conv/Conv .*consumer /fc1/Gemm"):
        prune(path, calib, keep=0.5)

    np.savez(tmp_path / "calib.npz", **calib)
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["prune", path, "--calib", str(tmp_path / "calib.npz"), "--keep", "0.5",
                                       "-o", str(out), "-q"])
    assert result.exit_code != 0 and isinstance(result.exception, InternalError)
    assert "a bug in onnxprune, not in your model; nothing was written" in str(result.exception)
    assert not out.exists()


def test_producers_keeping_other_channels_than_the_consumers_are_caught(monkeypatch):
    real = rewrite_apply.apply_group

    def shifted(model, group, kept, updates, alive):
        wrong = np.sort((np.asarray(kept) + 1) % group.channels)    # producers slice other channels
        return real(model, group, wrong, updates, alive)
    monkeypatch.setattr(runner, "apply_group", shifted)
    monkeypatch.setattr(surgery, "apply_group", shifted)
    model = B.mlp()
    with pytest.raises(InternalError, match="surgery check: group "):
        prune(model, B.random_inputs(model, 32), keep=0.5, method="random")


def test_a_built_model_onnxruntime_rejects_is_an_internal_error(monkeypatch):
    """The pruned model (checker skipped here) that onnxruntime cannot load is our bug."""
    real = rewrite_apply.apply_group

    def broken(model, group, kept, updates, alive):
        out = real(model, group, kept, updates, alive)
        out.graph.node[-1].op_type = "NotAnOperator"
        return out
    monkeypatch.setattr(runner, "apply_group", broken)
    monkeypatch.setattr(runner, "check", lambda model: None)
    model = B.mlp()
    with pytest.raises(InternalError, match="onnxruntime .* rejects the pruned model") as info:
        prune(model, B.random_inputs(model, 32), keep=0.5)
    assert "cannot run this model" not in str(info.value)


def test_the_users_model_onnxruntime_rejects_stays_a_user_error():
    from onnxprune.capture import runtime
    from onnxprune.errors import OnnxPruneError
    model = B.mlp()
    model.graph.node[-1].op_type = "NotAnOperator"
    with pytest.raises(OnnxPruneError, match="cannot run this model"):
        runtime.session(model)
    with pytest.raises(InternalError, match="rejects a region"):
        runtime.session(model, built="a region")


def test_drift_warning_numbers():
    from onnxprune.run.verify import drift_warning
    groups = [{"rel_error": 0.077, "channels_after": 5, "channels_before": 10},
              {"rel_error": None, "channels_after": 3, "channels_before": 3}]
    warning = drift_warning(groups, {"output_rel_error": {"y": 0.956}})
    assert "0.956" in warning and "0.077" in warning
    assert drift_warning(groups, {"output_rel_error": {"y": 0.5}}) is None      # within 10x
    assert drift_warning(groups, {"output_rel_error": {"y": 0.09}}) is None     # below the floor


def test_output_far_off_the_statistics_is_flagged(monkeypatch, tmp_path):
    """Weights written 3x too large after the error was computed: verify sees what the
    statistics cannot, and says so on stderr and in the report."""
    real = runner.consumer_update
    monkeypatch.setattr(runner, "consumer_update", lambda idx, c, matrix: real(idx, c, matrix * 3.0))
    model = B.mlp()
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **B.random_inputs(model, 64))
    result = CliRunner().invoke(main, ["prune", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npz"),
                                       "--keep", "0.5", "-o", str(tmp_path / "out.onnx"), "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert "warning: the pruned model's output y moved" in result.stderr
    assert "far above" in __import__("json").loads(result.stdout)["verify"]["warning"]


def test_a_normal_run_has_no_warning():
    model = B.mlp()
    _, report = prune(model, B.random_inputs(model, 64), keep=0.5)
    assert "warning" not in report.verify
