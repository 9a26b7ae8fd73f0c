"""The CLI's calibration sources: a folder of PNGs and a loader script prune the bundled model
to the same bytes as the equivalent .npz; one source at a time; settings of another source
are usage errors."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxprune.cli import main

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "mnist_cnn.onnx"
CALIB = ROOT / "models" / "mnist_cnn_calib.npz"
SAMPLES = 40


def _pixels() -> np.ndarray:
    """The bundled calibration images as 8-bit grey pixels [n, 28, 28]."""
    x = np.load(CALIB)
    x = x[x.files[0]][:SAMPLES]
    return np.round(x.reshape(SAMPLES, 28, 28) * 255).astype(np.uint8)


def _prune(tmp_path, name, *args):
    out = tmp_path / f"{name}.onnx"
    result = CliRunner().invoke(main, ["prune", str(MODEL), "-o", str(out), "--keep", "0.5", "--samples", str(SAMPLES),
                                       "--report", str(tmp_path / f"{name}.json"), "--no-timings", "-q", *args])
    assert result.exit_code == 0, result.output
    return out.read_bytes(), json.loads((tmp_path / f"{name}.json").read_text())


@pytest.fixture()
def reference(tmp_path):
    """The run from the equivalent .npz: pixel / 255 as float32 (the 0-1 preset)."""
    path = tmp_path / "ref.npz"
    np.savez(path, input=(_pixels().astype(np.float64) / 255).astype(np.float32)[:, None])
    return _prune(tmp_path, "npz", "--calib", str(path))


def test_png_folder_gives_the_npz_model(tmp_path, reference):
    image = pytest.importorskip("PIL.Image")
    folder = tmp_path / "pngs" / "nested"
    folder.mkdir(parents=True)
    for i, p in enumerate(_pixels()):
        image.fromarray(p, mode="L").save(folder / f"{i:03d}.png")
    (folder / "0000_notes.txt").write_text("not an image")     # sorts among the images
    model, report = _prune(tmp_path, "png", "--calib-images", str(tmp_path / "pngs"), "--preprocess", "0-1")
    assert model == reference[0]
    assert report["calibration"]["kind"] == "images" and report["calibration"]["skipped"] == 1
    assert report["groups"] == reference[1]["groups"]


def test_loader_script_gives_the_npz_model(tmp_path, reference):
    np.save(tmp_path / "pixels.npy", _pixels())
    script = tmp_path / "loader.py"
    script.write_text("import numpy as np\n\n"
                      "def batches():\n"
                      f"    x = np.load({str(tmp_path / 'pixels.npy')!r}).astype(np.float64) / 255\n"
                      "    for i in range(0, len(x), 7):\n"
                      "        yield {'input': x[i:i + 7, None].astype(np.float32)}\n")
    model, report = _prune(tmp_path, "script", "--calib-script", f"{script}:batches")
    assert model == reference[0]


@pytest.mark.parametrize("args,message", [
    (["--calib", "x.npz", "--calib-images", "d"], "give one calibration source, not --calib and --calib-images"),
    (["--calib-random", "8", "--calib-script", "l.py"], "not --calib-random and --calib-script"),
    (["--calib", "x.npz", "--preprocess", "0-1"], "--preprocess only applies to --calib-images"),
    (["--calib-images", "d", "--tokenizer", "t.json"], "--tokenizer only applies to --calib-text"),
    (["--calib-text", "t.txt"], "--calib-text needs --tokenizer"),
])
def test_source_options_are_checked(tmp_path, args, message):
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["prune", str(MODEL), "-o", str(out), "--keep", "0.5", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not out.exists()


def test_missing_image_folder_is_one_line(tmp_path):
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["prune", str(MODEL), "-o", str(out), "--keep", "0.5",
                                       "--calib-images", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert not out.exists()
