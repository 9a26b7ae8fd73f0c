"""A model over 2 GB, end to end through the CLI (input and output with external data).

Slow (about 1.5 minutes) and memory-hungry (about 9 GB peak RSS, see docs/RELIABILITY.md),
so it runs only when asked: `ONNXPRUNE_SLOW=1 python -m pytest -m slow`. The same code paths
run on a tiny model in test_robust_models.py::test_external_data_path_on_a_tiny_model.
"""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import model_zoo as Z
from onnxprune.cli import main

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.environ.get("ONNXPRUNE_SLOW"), reason="set ONNXPRUNE_SLOW=1 to run")]
TABLE_BYTES = 2_200_000_000


def test_model_over_2gb_with_external_data(tmp_path):
    model, calib = Z.big_model_files(tmp_path, TABLE_BYTES)
    inputs = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    out = tmp_path / "out" / "pruned.onnx"
    out.parent.mkdir()
    try:
        r = CliRunner().invoke(main, ["prune", str(model), "--calib", str(calib), "-o", str(out), "--keep", "0.5",
                                      "--report", str(out.parent / "report.json"), "-q"])
        assert r.exit_code == 0, r.output
        assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.iterdir() if p.is_file()} == inputs
        assert sorted(p.name for p in out.parent.iterdir()) == ["pruned.onnx", "pruned.onnx.data", "report.json"]
        assert out.stat().st_size < 100_000 and (out.parent / "pruned.onnx.data").stat().st_size >= TABLE_BYTES
        report = json.loads((out.parent / "report.json").read_text())
        assert [(g["name"], g["channels_after"]) for g in report["groups"]] == [("fc1", 4)]
        skeleton = onnx.load(out, load_external_data=False)
        table = next(t for t in skeleton.graph.initializer if t.name == "table")
        assert {e.key: e.value for e in table.external_data}["location"] == "pruned.onnx.data"
        onnx.checker.check_model(str(out), full_check=True)
        x = np.load(calib)["x"][:8]
        before = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        after = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert after.shape == before.shape and np.isfinite(after).all()
    finally:
        for p in out.parent.iterdir():          # do not leave gigabytes in pytest's kept temp dirs
            p.unlink()
        (tmp_path / "big.onnx.data").unlink()
