"""`sweep` and `eval` on tiny models: files written, numbers against hand computations."""
import csv
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import builders as B
from onnxprune import prune
from onnxprune import analyze
from onnxprune.run import layercache
from onnxprune.cli import main
from onnxprune.run.sweep import plot_available


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def files(tmp_path):
    model = B.cnn()
    onnx.save(model, tmp_path / "model.onnx")
    x = B.random_inputs(model, 96, seed=3)["x"]
    np.savez(tmp_path / "calib.npz", x=x)
    ref = B.run(model, {"x": x[:40]})[0]
    labels = ref.argmax(1)
    labels[:10] = (labels[:10] + 1) % 3                 # 30 of 40 right for the original
    np.savez(tmp_path / "eval.npz", x=x[:40], label=labels)
    return tmp_path, model


def test_sweep_writes_models_and_tables(files):
    tmp, model = files
    out = tmp / "out"
    r = invoke("sweep", tmp / "model.onnx", "--calib", tmp / "calib.npz", "--compression", "1.5,2",
               "--methods", "greedy,weight-norm", "--out", out, "--holdout", "32", "--eval", tmp / "eval.npz",
               "--no-plot", "--json", "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["sweep.csv", "sweep.json"] + [f"model.{m}.{t}x.onnx" for m in ("greedy", "weight-norm")
                                                          for t in ("1.5", "2")])
    assert json.loads((out / "sweep.json").read_text()) == doc
    assert doc["calibration"] == {"source": str(tmp / "calib.npz"), "samples": 64, "holdout": 32}
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 4 == len(doc["rows"])
    for row, d in zip(rows, doc["rows"]):
        assert float(row["compression"]) >= float(row["target_ratio"])
        pruned = onnx.load(out / row["file"])
        onnx.checker.check_model(pruned, full_check=True)
        held = np.load(tmp / "calib.npz")["x"][-32:]
        y, z = B.run(model, {"x": held})[0], B.run(pruned, {"x": held})[0]
        assert d["holdout_agreement"] == pytest.approx(np.mean(y.argmax(1) == z.argmax(1)))
        assert d["holdout_rel_error"] == pytest.approx(float(np.sum((y - z) ** 2.0) / np.sum(y ** 2.0)), rel=1e-4)
        ev = np.load(tmp / "eval.npz")
        assert d["top1"] == pytest.approx(np.mean(B.run(pruned, {"x": ev["x"]})[0].argmax(1) == ev["label"]))


def test_sweep_layer_greedy_runs_the_greedy_once_for_every_ratio(files, monkeypatch):
    tmp, model = files
    calls = []
    original = layercache.greedy_order

    def counting(problems, k, xp, on_step=None):
        calls.append(k)
        return original(problems, k, xp, on_step)

    monkeypatch.setattr(layercache, "greedy_order", counting)
    r = invoke("sweep", tmp / "model.onnx", "--calib", tmp / "calib.npz", "--compression", "1.5,2,3",
               "--methods", "greedy", "--mode", "layer", "--out", tmp / "o", "--holdout", "16", "--no-plot", "-q")
    assert r.exit_code == 0, r.output
    assert len(calls) == len(analyze(model).groups)    # one greedy per group, the deepest (1.5x) first
    doc = json.loads((tmp / "o" / "sweep.json").read_text())
    data = np.load(tmp / "calib.npz")["x"][:80]
    for row in doc["rows"]:                             # same models as separate prune runs
        alone, report = prune(model, data, compression=row["target_ratio"], mode="layer")
        assert report.params_after == row["params"]
        mine = B.run(onnx.load(tmp / "o" / row["file"]), {"x": data[:8]})[0]
        np.testing.assert_allclose(mine, B.run(alone, {"x": data[:8]})[0], rtol=1e-5, atol=1e-6)


def test_sweep_refuses_bad_setups_before_writing_anything(files):
    tmp, _ = files
    base = ["sweep", tmp / "model.onnx", "--calib", tmp / "calib.npz", "--methods", "greedy", "--no-plot"]
    r = invoke(*base, "--compression", "2", "--out", tmp / "o", "--holdout", "96")
    assert r.exit_code == 1 and "--holdout" in r.stderr and not (tmp / "o").exists()
    r = invoke(*base, "--compression", "2,900", "--out", tmp / "o", "--holdout", "16")
    assert r.exit_code == 1 and "unreachable" in r.stderr and not (tmp / "o").exists()
    r = invoke(*base, "--compression", "2", "--out", tmp / "o", "--holdout", "16", "--methods", "magic")
    assert r.exit_code == 2
    (tmp / "o").mkdir()
    (tmp / "o" / "sweep.csv").write_text("keep me")
    r = invoke(*base, "--compression", "2", "--out", tmp / "o", "--holdout", "16")
    assert r.exit_code == 1 and "--force" in r.stderr and (tmp / "o" / "sweep.csv").read_text() == "keep me"
    r = invoke(*base, "--compression", "2", "--out", tmp / "p", "--holdout", "16", "--eval", tmp / "calib.npz")
    assert r.exit_code == 1 and "no labels" in r.stderr and not (tmp / "p").exists()


@pytest.mark.skipif(plot_available(), reason="matplotlib is installed")
def test_plot_without_matplotlib_is_a_clear_error(files):
    tmp, _ = files
    r = invoke("sweep", tmp / "model.onnx", "--calib", tmp / "calib.npz", "--compression", "2", "--out", tmp / "o",
               "--plot")
    assert r.exit_code == 1 and "pip install 'onnxprune[plot]'" in r.stderr


@pytest.mark.skipif(not plot_available(), reason="matplotlib is not installed")
def test_plot_is_written_with_matplotlib(files):
    tmp, _ = files
    r = invoke("sweep", tmp / "model.onnx", "--calib", tmp / "calib.npz", "--compression", "2", "--out", tmp / "o",
               "--holdout", "16", "--plot", "-q")
    assert r.exit_code == 0, r.output
    assert (tmp / "o" / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_top1_and_reference_numbers(files):
    tmp, model = files
    pruned, _ = prune(model, np.load(tmp / "calib.npz")["x"], keep=0.5)
    onnx.save(pruned, tmp / "pruned.onnx")
    r = invoke("eval", tmp / "model.onnx", "--data", tmp / "eval.npz", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["top1"] == pytest.approx(30 / 40) and doc["samples"] == 40 and doc["labels"] == "label"
    assert doc["reference"] is None
    r = invoke("eval", tmp / "pruned.onnx", "--data", tmp / "eval.npz", "--reference", tmp / "model.onnx", "--json")
    doc = json.loads(r.stdout)
    ev = np.load(tmp / "eval.npz")
    y, z = B.run(model, {"x": ev["x"]})[0], B.run(pruned, {"x": ev["x"]})[0]
    assert doc["top1"] == pytest.approx(np.mean(z.argmax(1) == ev["label"]))
    assert doc["reference"]["argmax_agreement"] == pytest.approx(np.mean(y.argmax(1) == z.argmax(1)))
    rel = float(np.sum((y.astype(np.float64) - z) ** 2) / np.sum(y.astype(np.float64) ** 2))
    assert doc["reference"]["output_rel_error"]["y"] == pytest.approx(rel, rel=1e-6)
    r = invoke("eval", tmp / "pruned.onnx", "--data", tmp / "eval.npz", "--reference", tmp / "model.onnx")
    assert r.exit_code == 0 and "top-1" in r.stdout and "argmax agreement" in r.stdout


def test_eval_errors(files):
    tmp, _ = files
    r = invoke("eval", tmp / "model.onnx", "--data", tmp / "calib.npz")
    assert r.exit_code == 1 and "nothing to evaluate" in r.stderr
    r = invoke("eval", tmp / "model.onnx", "--data", tmp / "eval.npz", "--labels", "nope")
    assert r.exit_code == 1 and "'nope'" in r.stderr
    np.savez(tmp / "bad.npz", x=np.load(tmp / "eval.npz")["x"], label=np.zeros(7))
    r = invoke("eval", tmp / "model.onnx", "--data", tmp / "bad.npz")
    assert r.exit_code == 1 and "one class index per sample" in r.stderr


def test_prune_cli_coreset_without_calibration(files):
    tmp, _ = files
    r = invoke("prune", tmp / "model.onnx", "--method", "coreset", "--compression", "2", "-o", tmp / "c.onnx")
    assert r.exit_code == 0, r.output
    assert "note: coreset without calibration data" in r.stderr
    r = invoke("prune", tmp / "model.onnx", "--method", "coreset", "--reweight", "--compression", "2",
               "-o", tmp / "d.onnx")
    assert r.exit_code == 1 and "--no-reweight" in r.stderr and not (tmp / "d.onnx").exists()
