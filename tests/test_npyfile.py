"""Calibration files are read a batch at a time, never held whole, and give the same numbers."""
import numpy as np
import pytest

import builders as B
from onnxprune import prune
from onnxprune.io import npyfile
from onnxprune.io.calib import input_specs, load_calibration
from onnxprune.io.npyfile import StoredArray, open_arrays


def test_stored_arrays_read_the_same_values_as_numpy(tmp_path):
    rng = np.random.default_rng(0)
    x, m = rng.standard_normal((50, 3, 4)).astype(np.float32), rng.integers(0, 2, (50, 7))
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "xm.npz", x=x, mask=m)
    single = open_arrays(tmp_path / "x.npy")["<array>"]
    both = open_arrays(tmp_path / "xm.npz")
    for stored, want in ((single, x), (both["x"], x), (both["mask"], m)):
        assert isinstance(stored, StoredArray) and stored.shape == want.shape and stored.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(stored), want)
        np.testing.assert_array_equal(np.asarray(stored[7:19][2:5]), want[9:12])
        np.testing.assert_array_equal(np.asarray(stored[45:80]), want[45:])
        np.testing.assert_array_equal(np.asarray(stored.astype(np.float64)[3:4]), want[3:4].astype(np.float64))


def test_scans_cover_every_row_in_bounded_chunks(tmp_path, monkeypatch):
    x = np.arange(40 * 6, dtype=np.float32).reshape(40, 6)
    np.save(tmp_path / "x.npy", x)
    monkeypatch.setattr(npyfile, "SCAN_BYTES", 5 * 6 * 4)      # five rows per chunk
    parts = list(open_arrays(tmp_path / "x.npy")["<array>"].chunks())
    assert [p.shape[0] for p in parts] == [5] * 8
    np.testing.assert_array_equal(np.concatenate(parts), x)


def test_compressed_and_fortran_arrays_are_loaded_whole(tmp_path):
    x = np.ones((4, 3), dtype=np.float32)
    np.savez_compressed(tmp_path / "c.npz", x=x)
    np.save(tmp_path / "f.npy", np.asfortranarray(x))
    assert open_arrays(tmp_path / "c.npz") is None
    assert open_arrays(tmp_path / "f.npy") is None


def test_truncated_data_is_found_when_opening(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((100, 10), dtype=np.float32))
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(data[:-40])
    with pytest.raises(OSError, match="exceeds the file"):
        open_arrays(tmp_path / "x.npy")


def test_calibration_stays_on_disk_and_prunes_identically(tmp_path):
    model = B.cnn()
    data = B.random_inputs(model, 64)
    path = tmp_path / "calib.npz"
    np.savez(path, **{k: v.astype(np.float64) for k, v in data.items()})      # converted on read
    calib = load_calibration(path, input_specs(model), 48)
    assert all(isinstance(a, StoredArray) and a.shape[0] == 48 for a in calib.arrays.values())
    from_file, r1 = prune(model, str(path), keep=0.5, samples=48)
    in_memory, r2 = prune(model, {k: v[:48] for k, v in data.items()}, keep=0.5, samples=48)
    assert from_file.SerializeToString() == in_memory.SerializeToString()
    assert [g["kept"] for g in r1.groups] == [g["kept"] for g in r2.groups]


def _count_reads(monkeypatch) -> list:
    reads = []
    original = StoredArray.read

    def counting(self):
        reads.append((self.start, self.stop))
        return original(self)
    monkeypatch.setattr(StoredArray, "read", counting)
    return reads


def test_a_converted_calibration_file_is_scanned_once(tmp_path, monkeypatch):
    model = B.cnn()
    x = B.random_inputs(model, 30)
    np.savez(tmp_path / "c.npz", **{k: v.astype(np.float64) for k, v in x.items()})
    reads = _count_reads(monkeypatch)
    load_calibration(tmp_path / "c.npz", input_specs(model), None)
    assert len(reads) == len(x)          # one scan per input, on the converted values


def test_nan_in_a_converted_calibration_file_is_named_as_nan(tmp_path):
    from onnxprune.errors import OnnxPruneError

    model = B.cnn()
    x = {k: v.astype(np.float64) for k, v in B.random_inputs(model, 10).items()}
    next(iter(x.values()))[4].flat[3] = np.nan
    np.savez(tmp_path / "c.npz", **x)
    with pytest.raises(OnnxPruneError, match="NaN or Inf"):
        load_calibration(tmp_path / "c.npz", input_specs(model), None)
    next(iter(x.values()))[4].flat[3] = 1e300            # finite in float64, not in float32
    np.savez(tmp_path / "c.npz", **x)
    with pytest.raises(OnnxPruneError, match="outside the range of float32"):
        load_calibration(tmp_path / "c.npz", input_specs(model), None)
