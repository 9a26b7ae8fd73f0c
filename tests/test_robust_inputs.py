"""Bad input, case by case: one `error:` line naming the problem and the fix, a non-zero exit,
no traceback, the inputs untouched and nothing new on disk (not even a temporary file).

test_cli.py holds the first cases (missing/dir/non-ONNX model, --keep/--compression ranges,
calibration names/shape/rank/sample count, output path clashes); this file completes the matrix.
"""
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

import builders as B
from onnxprune.capture import runtime
from onnxprune.cli import EXIT_NOTHING_TO_PRUNE, main


@pytest.fixture
def files(tmp_path):
    model = B.cnn()
    onnx.save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=B.random_inputs(model, 48)["x"])
    return tmp_path


def snapshot(folder):
    """Every file under `folder` (hidden ones too) with its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fails_cleanly(folder, args, *words, code=1):
    """Run the CLI and check the failure contract; returns the error line."""
    before = snapshot(folder)
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == code, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in r.output and r.stdout == ""
    assert snapshot(folder) == before            # inputs untouched, no output, no temp files
    return lines[0]


def prune_args(tmp, model="model.onnx", calib="calib.npz", *extra):
    return ["prune", tmp / model, "--calib", tmp / calib, "-o", tmp / "out.onnx", *extra]


def save_with_versions(model, path, opset, ir):
    model.opset_import[0].version = opset
    model.ir_version = ir
    onnx.save(model, path)


# --- the model file --------------------------------------------------------------------------

def test_truncated_model_file(files):
    data = (files / "model.onnx").read_bytes()
    (files / "cut.onnx").write_bytes(data[: len(data) // 2])
    fails_cleanly(files, prune_args(files, "cut.onnx", "calib.npz", "--keep", "0.5"),
                  "not a readable ONNX model", "truncated")


def test_model_failing_the_checker(files):
    model = B.cnn()
    model.graph.node[0].op_type = "NoSuchOp"
    onnx.save(model, files / "bad.onnx")
    fails_cleanly(files, prune_args(files, "bad.onnx", "calib.npz", "--keep", "0.5"),
                  "fails onnx.checker", "NoSuchOp")


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_damaged_external_data_file(files, damage):
    onnx.save(B.cnn(), files / "ext.onnx", save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    data = files / "ext.onnx.data"
    if damage == "missing":
        data.unlink()
    else:
        data.write_bytes(data.read_bytes()[:500])
    fails_cleanly(files, prune_args(files, "ext.onnx", "calib.npz", "--keep", "0.5"), "ext.onnx")


def test_ir_version_onnxruntime_cannot_run(files):
    """The newest IR version onnx knows; refused before any slow work, naming both versions."""
    model = B.cnn()
    model.ir_version = onnx.IR_VERSION
    if _runs(model):
        pytest.skip(f"this onnxruntime runs IR {onnx.IR_VERSION}")
    onnx.save(model, files / "new_ir.onnx")
    line = fails_cleanly(files, prune_args(files, "new_ir.onnx", "calib.npz", "--keep", "0.5"),
                         f"IR version {onnx.IR_VERSION}", "supports up to IR")
    assert "onnxruntime" in line


def test_opset_newer_than_onnxruntime(files):
    model = B.cnn()
    save_with_versions(model, files / "new_opset.onnx", 30, onnx.IR_VERSION - 1)
    if _runs(model):
        pytest.skip("this onnxruntime runs opset 30")
    fails_cleanly(files, prune_args(files, "new_opset.onnx", "calib.npz", "--keep", "0.5"), "opset", "30")


def test_opset_older_than_onnxruntime_supports(files):
    """Opset 5 (IR 3, initializers listed as inputs): onnxruntime has no Relu-1 kernel."""
    model = B.matmul_mlp(bias=False)
    model.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                             for t in model.graph.initializer)
    save_with_versions(model, files / "old.onnx", 5, 3)
    np.savez(files / "calib10.npz", x=B.random_inputs(model, 16)["x"])
    fails_cleanly(files, prune_args(files, "old.onnx", "calib10.npz", "--keep", "0.5"),
                  "opset 5", f"opset {runtime.MIN_OPSET} and newer", "version_converter")


def _runs(model) -> bool:
    try:
        runtime.session(model)
    except Exception:  # noqa: BLE001
        return False
    return True


# --- nothing to prune ------------------------------------------------------------------------

def one_layer_model():
    b = B.GraphBuilder()
    b.output(b.gemm(b.input("x", ["N", 4]), 4, 3, name="fc"))
    return b.model()


@pytest.mark.parametrize("budget", [["--keep", "0.5"], ["--compression", "2"], ["--keep", "1"]])
def test_no_prunable_layer_exits_3_and_writes_nothing(tmp_path, budget):
    onnx.save(one_layer_model(), tmp_path / "one.onnx")
    np.savez(tmp_path / "c.npz", x=np.ones((8, 4), np.float32))
    fails_cleanly(tmp_path, prune_args(tmp_path, "one.onnx", "c.npz", *budget),
                  "nothing to prune", "onnxprune analyze", code=EXIT_NOTHING_TO_PRUNE)


def test_excluding_every_group_is_nothing_to_prune(files):
    excludes = [a for n in ("conv1", "conv2", "fc1") for a in ("--exclude", n)]
    fails_cleanly(files, prune_args(files, "model.onnx", "calib.npz", "--keep", "0.5", *excludes),
                  "nothing to prune", code=EXIT_NOTHING_TO_PRUNE)


# --- calibration data ------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"x,y\n1,2\n", b"", None])
def test_calibration_not_npz_or_npy(files, content):
    name = "calib.csv"
    if content is None:           # an ONNX model given as calibration data
        name = "model.onnx"
    else:
        (files / name).write_bytes(content)
    fails_cleanly(files, prune_args(files, "model.onnx", name, "--keep", "0.5"), "not a .npz or .npy file",
                  "numpy.savez")


def test_truncated_npz(files):
    data = (files / "calib.npz").read_bytes()
    (files / "cut.npz").write_bytes(data[: len(data) // 2])
    fails_cleanly(files, prune_args(files, "model.onnx", "cut.npz", "--keep", "0.5"), "cut.npz", "truncated")


def test_float64_calibration_is_converted_exactly(files):
    x = np.load(files / "calib.npz")["x"]
    np.savez(files / "c64.npz", x=x.astype(np.float64))
    outs = {}
    for name in ("calib.npz", "c64.npz"):
        out = files / f"out_{name}.onnx"
        r = CliRunner().invoke(main, ["prune", str(files / "model.onnx"), "--calib", str(files / name), "-o", str(out),
                                      "--keep", "0.5", "-q"])
        assert r.exit_code == 0, r.output
        outs[name] = out.read_bytes()
    assert outs["calib.npz"] == outs["c64.npz"]      # float32 -> float64 -> float32 is exact


BAD_DTYPES = {
    "int": (lambda x: (x * 100).astype(np.int32), ["int32", "float32", "astype", "/ 255"]),
    "uint8": (lambda x: np.clip(x * 50 + 100, 0, 255).astype(np.uint8), ["uint8", "astype"]),
    "bool": (lambda x: x > 0, ["bool", "astype"]),
    "str": (lambda x: x.astype(str), ["text", "numeric"]),
    "complex": (lambda x: x.astype(np.complex64), ["complex", "numeric"]),
}


@pytest.mark.parametrize("kind", sorted(BAD_DTYPES))
def test_calibration_dtype_that_does_not_convert(files, kind):
    make, words = BAD_DTYPES[kind]
    np.savez(files / "bad.npz", x=make(np.load(files / "calib.npz")["x"]))
    fails_cleanly(files, prune_args(files, "model.onnx", "bad.npz", "--keep", "0.5"), "input 'x'", *words)


def test_pickled_object_arrays_are_never_loaded(files):
    x = np.load(files / "calib.npz")["x"]
    np.savez(files / "obj.npz", x=x.astype(object))
    fails_cleanly(files, prune_args(files, "model.onnx", "obj.npz", "--keep", "0.5"), "Python objects", "numpy.savez")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_calibration_with_nan_or_inf(files, value):
    x = np.load(files / "calib.npz")["x"]
    x[3, 1, 2, 2] = value
    np.savez(files / "nan.npz", x=x)
    fails_cleanly(files, prune_args(files, "model.onnx", "nan.npz", "--keep", "0.5"), "NaN or Inf", "clean")


def test_values_overflowing_a_float16_input(tmp_path):
    from model_zoo import fp16_cnn

    onnx.save(fp16_cnn(), tmp_path / "m16.onnx")
    x = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    x[0, 0, 0, 0] = 1e6
    np.savez(tmp_path / "c.npz", x=x)
    fails_cleanly(tmp_path, prune_args(tmp_path, "m16.onnx", "c.npz", "--keep", "0.5"), "float16", "range")


def test_zero_samples(files):
    np.savez(files / "empty.npz", x=np.zeros((0, 3, 8, 8), np.float32))
    fails_cleanly(files, prune_args(files, "model.onnx", "empty.npz", "--keep", "0.5"), "zero samples", "axis 0")


# --- options ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0.99", "0", "-2", "nan"])
def test_compression_below_one(files, value):
    fails_cleanly(files, prune_args(files, "model.onnx", "calib.npz", "--compression", value), "--compression", ">= 1")


@pytest.mark.parametrize("value", ["nan", "-0.5"])
def test_keep_not_a_fraction(files, value):
    fails_cleanly(files, prune_args(files, "model.onnx", "calib.npz", "--keep", value), "--keep", "(0, 1]")


def test_device_cuda_without_a_gpu(files):
    if runtime.cuda_provider_usable():
        pytest.skip("a usable CUDA provider is present")
    fails_cleanly(files, prune_args(files, "model.onnx", "calib.npz", "--keep", "0.5", "--device", "cuda"),
                  "--device cuda", "--device cpu")


def test_report_path_equal_to_output(files):
    out = files / "out.onnx"
    fails_cleanly(files, prune_args(files, "model.onnx", "calib.npz", "--keep", "0.5", "--report", out), "report")


# --- output location -------------------------------------------------------------------------

def test_output_directory_not_writable(files, monkeypatch):
    """Checked before any work (os.access is faked: root may write anywhere)."""
    import os

    target = files / "ro"
    target.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(target) else real(p, mode, **kw))
    fails_cleanly(files, ["prune", files / "model.onnx", "--calib", files / "calib.npz", "--keep", "0.5",
                          "-o", target / "o.onnx"], "not writable", "permissions")


def test_output_directory_really_read_only(files):
    import os

    target = files / "ro"
    target.mkdir()
    target.chmod(0o555)
    try:
        if os.access(target, os.W_OK):
            pytest.skip("running as a user who may write to read-only directories (root)")
        fails_cleanly(files, ["prune", files / "model.onnx", "--calib", files / "calib.npz", "--keep", "0.5",
                              "-o", target / "o.onnx"], "not writable")
    finally:
        target.chmod(0o755)


def test_permission_denied_at_write_time(files, monkeypatch):
    """The directory passed the early check but refuses the temporary file (e.g. a read-only
    mount or an ACL): still one line, nothing written."""
    import errno
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    fails_cleanly(files, prune_args(files, "model.onnx", "calib.npz", "--keep", "0.5", "-q"), "cannot write",
                  "Permission denied")


def test_infinite_compression_is_unreachable(files):
    fails_cleanly(files, prune_args(files, "model.onnx", "calib.npz", "--compression", "inf"), "unreachable")
