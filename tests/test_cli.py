"""The command line: contract, one-line user errors, and nothing written on failure."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import builders as B
from onnxprune.cli import main


@pytest.fixture
def files(tmp_path):
    model = B.cnn()
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    np.savez(tmp_path / "calib.npz", x=B.random_inputs(model, 64)["x"])
    return tmp_path, path, tmp_path / "calib.npz"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_user_error(result, *words):
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for w in words:
        assert w in lines[0]
    assert "Traceback" not in result.output


def test_prune_writes_model_json_and_report(files):
    tmp, model, calib = files
    out, rep = tmp / "out.onnx", tmp / "report.json"
    before = model.read_bytes()
    r = invoke("prune", model, "--calib", calib, "--keep", "0.5", "-o", out, "--json", "--report", rep)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)                     # exactly one JSON document on stdout
    assert doc["output"] == str(out) and doc["params_after"] < doc["params_before"]
    assert json.loads(rep.read_text()) == doc
    assert "params" in r.stderr.strip().splitlines()[-1]
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert model.read_bytes() == before


def test_analyze_json_lists_groups_and_skipped(files):
    _, model, _ = files
    r = invoke("analyze", model, "--json")
    assert r.exit_code == 0
    doc = json.loads(r.stdout)
    assert [g["name"] for g in doc["groups"]] == ["conv1", "conv2", "fc1"]
    assert doc["skipped"][0]["node"] == "fc2"
    assert {"name", "producers", "passthrough", "consumers", "channels", "block_sizes", "params"} <= set(doc["groups"][0])
    assert doc["coverage"] == {"prunable_channels": 8 + 6 + 10, "total_channels": 8 + 6 + 10 + 3, "share": 0.8889}


def test_analyze_human_output(files):
    _, model, _ = files
    r = invoke("analyze", model)
    assert r.exit_code == 0 and "3 prunable group(s)" in r.stdout and "left alone fc2" in r.stdout


BAD = [
    (lambda t, m, c: ["prune", t / "missing.onnx", "--calib", c, "--keep", "0.5"], ["not found"]),
    (lambda t, m, c: ["prune", c, "--calib", c, "--keep", "0.5"], ["not a readable ONNX model"]),
    (lambda t, m, c: ["prune", t, "--calib", c, "--keep", "0.5"], ["directory"]),
    (lambda t, m, c: ["prune", m, "--calib", c, "--keep", "0"], ["--keep"]),
    (lambda t, m, c: ["prune", m, "--calib", c, "--keep", "1.5"], ["--keep"]),
    (lambda t, m, c: ["prune", m, "--calib", c, "--compression", "0.5"], ["--compression"]),
    (lambda t, m, c: ["prune", m, "--calib", c, "--compression", "500"], ["unreachable"]),
    (lambda t, m, c: ["prune", m, "--calib", c], ["--keep", "--compression"]),
    (lambda t, m, c: ["prune", m, "--calib", c, "--keep", "0.5", "--compression", "2"], ["exactly one"]),
    (lambda t, m, c: ["prune", m, "--calib", t / "nope.npz", "--keep", "0.5"], ["calibration file not found"]),
    (lambda t, m, c: ["prune", m, "--keep", "0.5"], ["needs calibration"]),
    (lambda t, m, c: ["prune", m, "--calib", c, "--keep", "0.5", "--samples", "1000"], ["fewer than --samples"]),
    (lambda t, m, c: ["prune", m, "--calib", c, "--keep", "0.5", "--exclude", "nonode"], ["nonode"]),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input_is_one_line_and_writes_nothing(files, case):
    tmp, model, calib = files
    build, words = BAD[case]
    out = tmp / "out.onnx"
    before = sorted(p.name for p in tmp.iterdir())
    model_bytes = model.read_bytes()
    r = invoke(*build(tmp, model, calib), "-o", out)
    assert_user_error(r, *words)
    assert sorted(p.name for p in tmp.iterdir()) == before
    assert model.read_bytes() == model_bytes


def test_wrong_calibration_name_and_shape(files):
    tmp, model, _ = files
    two = tmp / "two.npz"
    np.savez(two, a=np.zeros((4, 3, 8, 8), np.float32), b=np.zeros((4, 3, 8, 8), np.float32))
    r = invoke("prune", model, "--calib", two, "--keep", "0.5", "-o", tmp / "o.onnx")
    assert_user_error(r, "no array for model input", "x")
    shape = tmp / "shape.npz"
    np.savez(shape, x=np.zeros((4, 3, 9, 8), np.float32))
    r = invoke("prune", model, "--calib", shape, "--keep", "0.5", "-o", tmp / "o.onnx")
    assert_user_error(r, "shape", "[?, 3, 8, 8]")
    rank = tmp / "rank.npy"
    np.save(rank, np.zeros((3, 8, 8), np.float32))
    r = invoke("prune", model, "--calib", rank, "--keep", "0.5", "-o", tmp / "o.onnx")
    assert_user_error(r, "rank 3")
    assert not (tmp / "o.onnx").exists()


def test_existing_output_needs_force(files):
    tmp, model, calib = files
    out = tmp / "out.onnx"
    out.write_bytes(b"keep me")
    r = invoke("prune", model, "--calib", calib, "--keep", "0.5", "-o", out)
    assert_user_error(r, "exists", "--force")
    assert out.read_bytes() == b"keep me"
    r = invoke("prune", model, "--calib", calib, "--keep", "0.5", "-o", out, "--force")
    assert r.exit_code == 0 and onnx.load(out).graph.node


def test_output_equal_to_input_is_refused(files):
    tmp, model, calib = files
    before = model.read_bytes()
    r = invoke("prune", model, "--calib", calib, "--keep", "0.5", "-o", model, "--force")
    assert_user_error(r, "is the input")
    assert model.read_bytes() == before


def test_missing_output_directory(files):
    tmp, model, calib = files
    r = invoke("prune", model, "--calib", calib, "--keep", "0.5", "-o", tmp / "no" / "out.onnx")
    assert_user_error(r, "does not exist")


def test_usage_errors_exit_2(files):
    _, model, calib = files
    r = invoke("prune", model, "--calib", calib, "--keep", "0.5")       # no -o
    assert r.exit_code == 2
    r = invoke("prune", model, "-o", "x.onnx", "--method", "magic", "--keep", "0.5")
    assert r.exit_code == 2
    for option, bad in (("--ridge", "-1"), ("--ridge", "high"), ("--max-rows", "0"), ("--max-rows", "most")):
        r = invoke("prune", model, "--calib", calib, "--keep", "0.5", "-o", "x.onnx", option, bad)
        assert r.exit_code == 2 and option in r.output, (option, bad)


def test_ridge_and_row_limit_choices_reach_the_report(files):
    tmp, model, calib = files
    reports = {}
    for name, extra in (("auto", []), ("fixed", ["--ridge", "1e-3", "--max-rows", "all"]),
                        ("rows", ["--max-rows", "100"])):
        rep = tmp / f"{name}.json"
        r = invoke("prune", model, "--calib", calib, "--keep", "0.5", "-o", tmp / f"{name}.onnx", "--report", rep,
                   *extra)
        assert r.exit_code == 0, r.output
        reports[name] = json.loads(rep.read_text())
    ridges = [v for g in reports["fixed"]["groups"] for v in g["ridge"].values()]
    assert ridges and all(v == 1e-3 for v in ridges)
    assert all(g["ridge"] for g in reports["auto"]["groups"] if g["channels_after"] < g["channels_before"])
