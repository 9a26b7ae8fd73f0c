"""Files on disk: atomic writes, a full disk, Ctrl-C, and byte-identical reruns."""
import errno
import json
import os
import subprocess
import sys
import tempfile

import onnx
import pytest
from click.testing import CliRunner

from onnxprune.io import atomic
from onnxprune.io import largemodel
from onnxprune.cli import main
from test_robust_inputs import files, snapshot  # noqa: F401 - `files` is a fixture


def command(tmp, *extra):
    return ["prune", str(tmp / "model.onnx"), "--calib", str(tmp / "calib.npz"), "-o", str(tmp / "out.onnx"),
            "--report", str(tmp / "report.json"), "--keep", "0.5", "-q", *map(str, extra)]


def invoke(args):
    return CliRunner().invoke(main, args)


# --- atomic writes ---------------------------------------------------------------------------

def test_outputs_are_written_to_temporaries_then_renamed_together(files, monkeypatch):
    renames = []
    real = os.replace

    def spy(src, dst):
        # at each rename, every staged temporary is complete and no final file exists yet
        renames.append((src, dst, sorted(p.name for p in files.iterdir())))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    r = invoke(command(files))
    assert r.exit_code == 0, r.output
    assert [os.path.basename(d) for _, d, _ in renames] == ["out.onnx", "report.json"]
    for src, dst, _ in renames:
        assert os.path.dirname(src) == os.path.dirname(dst) == str(files)
        assert os.path.basename(src).startswith("." + os.path.basename(dst) + ".") and src.endswith(".tmp")
    first_listing = renames[0][2]
    assert "out.onnx" not in first_listing and "report.json" not in first_listing
    assert sum(name.endswith(".tmp") for name in first_listing) == 2     # both staged before any rename
    assert not [p for p in files.iterdir() if p.name.endswith(".tmp")]
    assert (files / "out.onnx").stat().st_mode & 0o777 == 0o666 & ~_umask()
    onnx.checker.check_model(onnx.load(files / "out.onnx"), full_check=True)
    assert json.loads((files / "report.json").read_text())["output"] == str(files / "out.onnx")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_staged_files_are_discarded_on_error(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic.Staged() as staged:
            staged.add_bytes(tmp_path / "a.bin", b"new")
            staged.add_bytes(tmp_path / "b.bin", b"new")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"] and (tmp_path / "a.bin").read_bytes() == b"old"


# --- a full disk and Ctrl-C while writing -----------------------------------------------------

def full_disk_after(calls_before_failure: int):
    """A write_all that writes half of the failing chunk, then raises ENOSPC."""
    count = {"n": 0}

    def write(fh, data):
        count["n"] += 1
        if count["n"] > calls_before_failure:
            fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fh.write(data)

    return write


@pytest.mark.parametrize("failing_write", [0, 1], ids=["model", "report"])
def test_disk_full_leaves_previous_outputs_and_no_partial_file(files, monkeypatch, failing_write):
    (files / "out.onnx").write_bytes(b"previous model")
    (files / "report.json").write_bytes(b"previous report")
    before = snapshot(files)
    monkeypatch.setattr(atomic, "write_all", full_disk_after(failing_write))
    r = invoke(command(files, "--force"))
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.output
    assert r.stderr.startswith("error: cannot write") and "No space left on device" in r.stderr
    assert snapshot(files) == before


def test_disk_full_while_writing_external_data(files, monkeypatch):
    monkeypatch.setattr(largemodel, "EXTERNAL_DATA_THRESHOLD", 1000)
    monkeypatch.setattr(largemodel, "LARGE_TENSOR_BYTES", 64)
    before = snapshot(files)
    monkeypatch.setattr(atomic, "write_all", full_disk_after(1))
    r = invoke(command(files))
    assert r.exit_code == 1 and "No space left on device" in r.stderr, r.output
    assert snapshot(files) == before


def test_ctrl_c_while_writing(files, monkeypatch):
    def interrupted(fh, data):
        fh.write(data[:10])
        raise KeyboardInterrupt

    before = snapshot(files)
    monkeypatch.setattr(atomic, "write_all", interrupted)
    r = invoke(command(files))
    assert r.exit_code == 130 and "nothing was written" in r.stderr
    assert snapshot(files) == before


# --- Ctrl-C during capture ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["asym", "layer"])
def test_ctrl_c_during_capture(files, monkeypatch, mode):
    """Interrupt inside the capture loop of the second group (asym: frontier files on disk by
    then): exit 130, no output, and the frontier store's temporary directory is gone."""
    scratch = files / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    seen = {}

    class InterruptingProgress:
        def __init__(self, **kwargs):
            self.captures = 0

        def __call__(self, stage, done, total):
            if stage.startswith("capture") and done == 0:
                self.captures += 1
            if stage.startswith("capture") and done > 0 and self.captures == (2 if mode == "asym" else 1):
                seen["scratch"] = [p.name for p in scratch.rglob("*")]
                raise KeyboardInterrupt

    monkeypatch.setattr("onnxprune.cli.StderrProgress", InterruptingProgress)
    before = snapshot(files)
    r = invoke(command(files, "--mode", mode))
    assert r.exit_code == 130 and "interrupted: nothing was written" in r.stderr, r.output
    assert snapshot(files) == before
    assert list(scratch.iterdir()) == []
    if mode == "asym":
        assert any(name.startswith("onnxprune-") for name in seen["scratch"])   # the store existed


# --- determinism ---------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [["--method", "random", "--seed", "7", "--mode", "seq"],
                                   ["--mode", "asym", "--seed", "3"]], ids=["random-seq", "greedy-asym"])
def test_same_command_gives_identical_files(files, extra):
    args = command(files, "--no-timings", "--force", *extra)
    results = []
    for _ in range(2):
        r = invoke(args)
        assert r.exit_code == 0, r.output
        results.append(((files / "out.onnx").read_bytes(), (files / "report.json").read_bytes()))
    assert results[0] == results[1]
    assert json.loads(results[0][1])["seconds"] is None


def test_reports_keep_timings_by_default(files):
    r = invoke(command(files))
    assert r.exit_code == 0, r.output
    seconds = json.loads((files / "report.json").read_text())["seconds"]
    assert set(seconds) >= {"analyze", "capture", "select", "reweight", "rewrite", "verify", "total"}


def test_identical_across_processes_and_hash_seeds(files):
    """Set iteration order changes with PYTHONHASHSEED; nothing we write may depend on it."""
    outputs = []
    for hash_seed in ("1", "2"):
        out = files / f"out{hash_seed}"
        out.mkdir()
        args = ["prune", str(files / "model.onnx"), "--calib", str(files / "calib.npz"), "-o", str(out / "m.onnx"),
                "--report", str(out / "r.json"), "--keep", "0.5", "--no-timings", "-q", "--device", "cpu"]
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        subprocess.run([sys.executable, "-m", "onnxprune.cli", *args], check=True, env=env, cwd=files)
        report = json.loads((out / "r.json").read_text())
        report.pop("output")
        outputs.append(((out / "m.onnx").read_bytes(), report))
    assert outputs[0] == outputs[1]
