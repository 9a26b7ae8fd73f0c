"""Issue #15: attention_mask is the row mask by default (statistics and output comparison),
`--no-row-mask` turns it off; the verify/eval metric fits the output (argmax agreement for
classifiers, cosine + relative error for embeddings), values checked by hand."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto

import builders as B
from onnxprune import OnnxPruneError, prune
from onnxprune.cli import main
from onnxprune.run.metrics import OutputComparison, OutputMetric
from onnxprune.run.rowmask import default_candidate

FIXTURES = Path(__file__).parent / "fixtures"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def encoder(mask_name="attention_mask", extra_inputs=()):
    """An FFN on [N, 5, 6] token vectors whose output is the hidden state (an embedding
    model); the mask input is read only by a second, token-free output."""
    b = B.GraphBuilder(3)
    x = b.input("x", ["N", 5, 6])
    b.input(mask_name, ["N", 5], elem=TensorProto.INT64)
    for name in extra_inputs:
        b.input(name, ["N", 5], elem=TensorProto.INT64)
    h = b.relu(b.matmul(x, 6, 10, name="up"))
    b.output(b.matmul(h, 10, 6, name="down"), "last_hidden_state")
    b.output(b.node("ReduceSum", [mask_name, b.const(np.array([1]))], keepdims=0), "length", elem=TensorProto.INT64)
    return b.model()


def token_data(n=40, seed=0, noise=100.0):
    """Real tokens N(0, 1); padding positions (mask 0) filled with large garbage."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5, 6)).astype(np.float32)
    mask = (np.arange(5)[None, :] < rng.integers(2, 6, size=n)[:, None]).astype(np.int64)
    x[mask == 0] = noise * rng.standard_normal(x[mask == 0].shape)
    return x, mask


def hand_cosines(y, z):
    y, z = y.astype(np.float64), z.astype(np.float64)
    return np.sum(y * z, axis=1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(z, axis=1))


def test_attention_mask_is_the_default_row_mask_and_cosine_fits_hidden_states():
    model = encoder()
    x, mask = token_data()
    pruned, report = prune(model, {"x": x, "attention_mask": mask}, keep=0.5)
    assert report.calibration["row_mask"] == "attention_mask"
    assert report.calibration["row_mask_origin"] == "default"
    assert report.calibration["masked_consumers"] == ["down"]
    assert any("attention_mask is the row mask by default" in n for n in report.notes)
    # the comparison: cosine per real token row, computed by hand
    feeds = {"x": x, "attention_mask": mask}
    y, z = B.run(model, feeds)[0], B.run(pruned, feeds)[0]
    keep = mask != 0
    cos = hand_cosines(y[keep], z[keep])
    out = report.verify["outputs"]["last_hidden_state"]
    assert report.verify["metric"] == out["metric"] == "cosine" and out["masked"] is True
    assert out["rows"] == int(keep.sum())
    assert out["cosine_mean"] == pytest.approx(cos.mean(), rel=1e-9)
    assert out["cosine_min"] == pytest.approx(cos.min(), rel=1e-9)
    assert out["cosine_p5"] == pytest.approx(np.percentile(cos, 5), rel=1e-9)
    rel = np.sum((y[keep].astype(np.float64) - z[keep]) ** 2) / np.sum(y[keep].astype(np.float64) ** 2)
    assert out["rel_error"] == pytest.approx(rel, rel=1e-9)
    assert report.verify["output_rel_error"]["last_hidden_state"] == out["rel_error"]
    assert report.verify["argmax_agreement"] is None and out["argmax_agreement"] is None
    # padding garbage is kept out of the statistics: same channels as with clean padding
    clean = x.copy()
    clean[mask == 0] = 0
    _, clean_report = prune(model, {"x": clean, "attention_mask": mask}, keep=0.5)
    assert clean_report.groups[0]["kept"] == report.groups[0]["kept"]


def test_no_row_mask_counts_padding_in_the_statistics_and_the_comparison():
    model = encoder()
    x, mask = token_data()
    _, masked = prune(model, {"x": x, "attention_mask": mask}, keep=0.5)
    pruned, plain = prune(model, {"x": x, "attention_mask": mask}, keep=0.5, row_mask=False)
    assert plain.calibration["row_mask"] is None and plain.calibration["row_mask_origin"] == "off"
    assert plain.calibration["masked_consumers"] == []
    assert any(n.startswith("--no-row-mask") for n in plain.notes)
    assert plain.groups[0]["kept"] != masked.groups[0]["kept"]
    out = plain.verify["outputs"]["last_hidden_state"]
    assert out["masked"] is False and out["rows"] == 40 * 5
    feeds = {"x": x, "attention_mask": mask}
    y, z = B.run(model, feeds)[0].reshape(-1, 6), B.run(pruned, feeds)[0].reshape(-1, 6)
    assert out["cosine_mean"] == pytest.approx(hand_cosines(y, z).mean(), rel=1e-9)


def test_classifier_output_still_reports_argmax_agreement():
    model = B.mlp()
    x = B.random_inputs(model, 64)["x"]
    pruned, report = prune(model, x, keep=0.5)
    y, z = B.run(model, {"x": x})[0], B.run(pruned, {"x": x})[0]
    out = report.verify["outputs"]["y"]
    assert report.verify["metric"] == out["metric"] == "argmax"
    assert report.verify["argmax_agreement"] == pytest.approx(np.mean(y.argmax(1) == z.argmax(1)))
    assert out["cosine_mean"] == pytest.approx(hand_cosines(y, z).mean(), rel=1e-6)
    assert "row_mask" not in report.calibration          # no mask input: nothing about masks
    # --metric cosine overrides the shape rule
    _, forced = prune(model, x, keep=0.5, metric="cosine")
    assert forced.verify["metric"] == "cosine" and forced.verify["argmax_agreement"] is None


def _metric(name, y, mask=None):
    m = OutputMetric(name)
    m.add(y, y + 0.01, mask)
    return m.choose()


def test_auto_metric_rules():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((8, 5))
    probs = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    unit = scores / np.linalg.norm(scores, axis=1, keepdims=True)
    assert _metric("logits", rng.standard_normal((8, 4, 6)))[0] == "argmax"             # name first
    assert _metric("sentence_embedding", scores)[0] == "cosine"
    assert _metric("pooler_output", scores)[0] == "cosine"
    assert _metric("output", probs) == ("argmax", "every row is a probability distribution")
    assert _metric("output", unit)[0] == "cosine" and "unit L2 norm" in _metric("output", unit)[1]
    assert _metric("output", scores)[0] == "argmax"                                      # [N, C] head
    assert _metric("output", rng.standard_normal((8, 4, 6)))[0] == "cosine"             # hidden states
    assert _metric("output", rng.standard_normal((8, 3, 4, 4)))[0] == "cosine"          # feature maps
    m = OutputMetric("output")
    m.add(scores, scores)
    assert m.choose("cosine") == ("cosine", "--metric cosine")


def test_token_logits_argmax_per_real_token():
    rng = np.random.default_rng(1)
    y, z = rng.standard_normal((6, 5, 3)), rng.standard_normal((6, 5, 3))
    mask = (np.arange(5)[None, :] < np.array([1, 2, 3, 4, 5, 2])[:, None]).astype(np.int64)
    compare = OutputComparison(["token_logits"])
    compare.add([y[:3]], [z[:3]], mask[:3])
    compare.add([y[3:]], [z[3:]], mask[3:])
    result = compare.result()
    keep = mask != 0
    assert result["metric"] == "argmax" and result["outputs"]["token_logits"]["masked"]
    assert result["argmax_agreement"] == pytest.approx(np.mean(y[keep].argmax(1) == z[keep].argmax(1)))
    # without a mask every position counts
    compare = OutputComparison(["token_logits"])
    compare.add([y], [z])
    assert compare.result()["argmax_agreement"] == pytest.approx(np.mean(y.argmax(2) == z.argmax(2)))


def test_default_candidate_is_only_an_unambiguous_name():
    assert default_candidate(["input_ids", "attention_mask"]) == ("attention_mask", None)
    assert default_candidate(["input_ids", "input_mask", "segment_ids"]) == ("input_mask", None)
    name, why = default_candidate(["input_ids", "attention_mask", "decoder_attention_mask"])
    assert name is None and "several attention-mask inputs" in why
    assert default_candidate(["x", "mask"]) == (None, None)


def test_ambiguous_masks_are_not_used_by_default():
    model = encoder(extra_inputs=("decoder_attention_mask",))
    x, mask = token_data()
    _, report = prune(model, {"x": x, "attention_mask": mask, "decoder_attention_mask": mask}, keep=0.5)
    assert "row_mask" not in report.calibration
    assert any("several attention-mask inputs" in n for n in report.notes)
    _, named = prune(model, {"x": x, "attention_mask": mask, "decoder_attention_mask": mask}, keep=0.5,
                     row_mask="attention_mask")
    assert named.calibration["masked_consumers"] == ["down"]


def test_a_default_mask_that_is_not_0_1_is_a_note_an_explicit_one_an_error():
    model = encoder()
    x, mask = token_data()
    additive = (1 - mask) * -10000                  # an additive mask, not 0/1
    _, report = prune(model, {"x": x, "attention_mask": additive}, keep=0.5)
    assert report.calibration["row_mask"] is None and report.calibration["masked_consumers"] == []
    assert any("must hold only 0 (padding) and 1" in n and "not used" in n for n in report.notes)
    with pytest.raises(OnnxPruneError, match="--row-mask attention_mask must hold only 0"):
        prune(model, {"x": x, "attention_mask": additive}, keep=0.5, row_mask="attention_mask")
    with pytest.raises(OnnxPruneError, match="marks no token as real"):
        prune(model, {"x": x, "attention_mask": 0 * mask}, keep=0.5, row_mask="attention_mask")
    with pytest.raises(OnnxPruneError, match="row_mask must be"):
        prune(model, {"x": x, "attention_mask": mask}, keep=0.5, row_mask=True)


def test_an_explicit_mask_that_fits_no_layer_is_an_error():
    """A [N, 4] mask cannot mark the 5 token rows of the FFN: asked for, it is an error."""
    b = B.GraphBuilder(3)
    x = b.input("x", ["N", 5, 6])
    b.input("mask", ["N", 4], elem=TensorProto.INT64)
    b.output(b.matmul(b.relu(b.matmul(x, 6, 10, name="up")), 10, 6, name="down"), "last_hidden_state")
    b.output(b.node("ReduceSum", ["mask", b.const(np.array([1]))], keepdims=0), "length", elem=TensorProto.INT64)
    model = b.model()
    data = {"x": token_data()[0], "mask": np.ones((40, 4), np.int64)}
    with pytest.raises(OnnxPruneError, match="--row-mask mask lines up with no token-wise"):
        prune(model, data, keep=0.5, row_mask="mask")


def _bert_report(tmp_path, *flags):
    out = tmp_path / "out.onnx"
    r = invoke("prune", FIXTURES / "bert_tiny.onnx", "--calib", FIXTURES / "bert_tiny_calib.npz", "--keep", "0.5",
               "-o", out, "--force", "-q", "--json", *flags)
    return r, out


def test_bert_tiny_masks_by_default_and_no_row_mask_changes_the_statistics(tmp_path):
    r, _ = _bert_report(tmp_path)
    assert r.exit_code == 0, r.output
    default = json.loads(r.stdout)
    assert default["calibration"]["row_mask"] == "attention_mask"
    assert default["calibration"]["row_mask_origin"] == "default"
    assert "/layers.1/ffn_out/MatMul" in default["calibration"]["masked_consumers"]
    assert "note: the model input attention_mask is the row mask by default" in r.stderr
    assert default["verify"]["metric"] == "argmax" and "argmax agreement" in r.stderr.splitlines()[-1]
    r, _ = _bert_report(tmp_path, "--no-row-mask")
    assert r.exit_code == 0, r.output
    plain = json.loads(r.stdout)
    assert plain["calibration"]["row_mask"] is None and plain["calibration"]["masked_consumers"] == []
    assert "note: --no-row-mask" in r.stderr
    assert [g["rel_error"] for g in plain["groups"]] != [g["rel_error"] for g in default["groups"]]


def test_row_mask_and_no_row_mask_together_are_an_error(tmp_path):
    r, out = _bert_report(tmp_path, "--row-mask", "attention_mask", "--no-row-mask")
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr.strip() == "error: give either --row-mask INPUT or --no-row-mask, not both"
    assert not out.exists() and list(tmp_path.iterdir()) == []
    r = invoke("eval", FIXTURES / "bert_tiny.onnx", "--data", FIXTURES / "bert_tiny_calib.npz", "--reference",
               FIXTURES / "bert_tiny.onnx", "--row-mask", "attention_mask", "--no-row-mask")
    assert r.exit_code == 1 and "not both" in r.stderr


def test_summary_line_and_eval_show_cosine_for_an_embedding_model(tmp_path):
    model = encoder()
    x, mask = token_data()
    onnx.save(model, tmp_path / "enc.onnx")
    np.savez(tmp_path / "calib.npz", x=x, attention_mask=mask)
    r = invoke("prune", tmp_path / "enc.onnx", "--calib", tmp_path / "calib.npz", "--keep", "0.5",
               "-o", tmp_path / "small.onnx", "--report", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    last = r.stderr.strip().splitlines()[-1]
    assert "argmax agreement" not in last
    report = json.loads((tmp_path / "r.json").read_text())
    out = report["verify"]["outputs"]["last_hidden_state"]
    assert f"cosine {out['cosine_mean']:.4f} (min {out['cosine_min']:.4f}" in last
    assert f"(last_hidden_state, {out['rows']} token rows without padding)" in last
    r = invoke("eval", tmp_path / "small.onnx", "--data", tmp_path / "calib.npz", "--reference",
               tmp_path / "enc.onnx", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    got = doc["reference"]["outputs"]["last_hidden_state"]
    assert doc["reference"]["row_mask"] == "attention_mask" and doc["reference"]["metric"] == "cosine"
    assert got["cosine_mean"] == pytest.approx(out["cosine_mean"], rel=1e-12)
    assert "padding tokens are left out of the comparison" in doc["notes"][0]
    r = invoke("eval", tmp_path / "small.onnx", "--data", tmp_path / "calib.npz", "--reference",
               tmp_path / "enc.onnx", "--no-row-mask", "--json")
    assert json.loads(r.stdout)["reference"]["outputs"]["last_hidden_state"]["rows"] == 40 * 5
    r = invoke("eval", tmp_path / "small.onnx", "--data", tmp_path / "calib.npz", "--reference",
               tmp_path / "enc.onnx")
    assert r.exit_code == 0 and "vs " in r.stdout and "cosine" in r.stdout and "metric cosine" in r.stdout


def test_sweep_leads_with_cosine_for_an_embedding_model(tmp_path):
    model = encoder()
    x, mask = token_data(n=48)
    onnx.save(model, tmp_path / "enc.onnx")
    np.savez(tmp_path / "calib.npz", x=x, attention_mask=mask)
    r = invoke("sweep", tmp_path / "enc.onnx", "--calib", tmp_path / "calib.npz", "--compression", "1.5",
               "--out", tmp_path / "out", "--holdout", "16", "--no-plot", "--json", "-q")
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)["rows"][0]
    assert row["holdout_agreement"] is None and 0 < row["holdout_cosine"] <= 1
    assert "holdout_cosine" in r.stderr
    pruned = onnx.load(tmp_path / "out" / row["file"])
    feeds = {"x": x[32:], "attention_mask": mask[32:]}
    keep = mask[32:] != 0
    y, z = B.run(model, feeds)[0][keep], B.run(pruned, feeds)[0][keep]
    assert row["holdout_cosine"] == pytest.approx(hand_cosines(y, z).mean(), rel=1e-9)
