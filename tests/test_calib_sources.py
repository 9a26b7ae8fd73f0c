"""Calibration from loader scripts and feed objects gives exactly the arrays of the equivalent
.npz and the same pruned model; bad scripts and feeds are one-line errors; rows stay on disk.
(Images: test_calib_sources_images.py; text: test_calib_sources_text.py.)"""
import gc
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from calib_util import MNIST_SPECS, arrays, one_line
from onnxprune import prune
from onnxprune.errors import OnnxPruneError
from onnxprune.io import npyfile
from onnxprune.io.calib import InputSpec, input_specs, load_calibration
from onnxprune.io.modelio import load_model
from onnxprune.io.sources import from_feeds, script_calibration


ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "models" / "mnist_cnn.onnx"
MNIST_CALIB = ROOT / "models" / "mnist_cnn_calib.npz"




# --- loader scripts and feed objects --------------------------------------------------------

LOADER = """
import numpy as np

def load_data():
    x = np.load({calib!r})["input"][:{n}]
    for sample in x:
        yield {{"input": sample}}            # one sample: no batch axis

def batches():
    x = np.load({calib!r})["input"][:{n}]
    for start in range(0, len(x), 7):
        yield {{"input": x[start:start + 7].astype(np.float64)}}     # converted to float32
"""


def write_script(tmp_path, body, name="loader.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_a_loader_script_gives_the_npz_arrays_and_the_same_pruned_model(tmp_path):
    n = 64
    script = write_script(tmp_path, LOADER.format(calib=str(MNIST_CALIB), n=n))
    want = np.asarray(load_calibration(MNIST_CALIB, MNIST_SPECS, n).arrays["input"])
    samples = script_calibration(str(script), MNIST_SPECS, n)
    batched = script_calibration(f"{script}:batches", MNIST_SPECS, None)
    assert samples.samples == batched.samples == n
    np.testing.assert_array_equal(arrays(samples)["input"], want)
    np.testing.assert_array_equal(arrays(batched)["input"], want)
    from_script, r1 = prune(str(MNIST), samples, keep=0.5)
    from_npz, r2 = prune(str(MNIST), str(MNIST_CALIB), keep=0.5, samples=n)
    assert from_script.SerializeToString() == from_npz.SerializeToString()
    assert [g["kept"] for g in r1.groups] == [g["kept"] for g in r2.groups]


def test_a_reader_and_an_iterable_give_the_same_arrays_and_nothing_more_is_pulled():
    x = np.asarray(load_calibration(MNIST_CALIB, MNIST_SPECS, 40).arrays["input"])

    class Reader:                                   # onnxruntime's CalibrationDataReader protocol
        def __init__(self):
            self.i = 0

        def get_next(self):
            self.i += 1
            return {"input": x[self.i - 1:self.i]} if self.i <= len(x) else None

    reader, pulled = Reader(), []

    def gen():
        for i in range(0, 40, 8):
            pulled.append(i)
            yield {"input": x[i:i + 8]}

    a = from_feeds(reader, MNIST_SPECS, 20)
    b = from_feeds(gen(), MNIST_SPECS, 20)
    c = from_feeds([{"input": s} for s in x], MNIST_SPECS, None)
    np.testing.assert_array_equal(arrays(a)["input"], x[:20])
    np.testing.assert_array_equal(arrays(b)["input"], x[:20])
    np.testing.assert_array_equal(arrays(c)["input"], x)
    assert reader.i == 20 and pulled == [0, 8, 16]


@pytest.mark.parametrize("body, match", [
    ("def other():\n    pass\n", r"loader.py does not define load_data\(\).*it defines other"),
    ("def load_data():\n    yield [1, 2]\n", "item 1 is a list, not a dict"),
    ("import numpy as np\ndef load_data():\n    yield {'image': np.zeros((1, 1, 28, 28), np.float32)}\n",
     "item 1 has no array for input.s. input; unknown name.s. image"),
    ("import numpy as np\ndef load_data():\n    yield {'input': np.zeros((2, 28, 28, 1), np.float32)}\n",
     r"item 1, input 'input' has shape \(2, 28, 28, 1\); the model expects a batch \[\?, 1, 28, 28\] or one sample"),
    ("import numpy as np\ndef load_data():\n    yield {'input': np.zeros((28, 28), np.float32)}\n",
     r"has shape \(28, 28\); the model expects"),
    ("import numpy as np\ndef load_data():\n    yield {'input': np.zeros((1, 28, 28), np.int64)}\n",
     "input 'input' is int64; the model expects float32"),
    ("def load_data():\n    return 3\n", "gave a int; give an iterable"),
    ("def load_data():\n    return iter(())\n", "yielded no samples"),
])
def test_bad_loader_scripts_are_one_line_errors(tmp_path, body, match):
    script = write_script(tmp_path, body)
    with pytest.raises(OnnxPruneError, match=match) as e:
        script_calibration(str(script), MNIST_SPECS, None)
    one_line(e)


def test_a_missing_script_is_a_one_line_error(tmp_path):
    with pytest.raises(OnnxPruneError, match="calibration script not found") as e:
        script_calibration(str(tmp_path / "nope.py:load"), MNIST_SPECS, None)
    one_line(e)


def test_errors_in_the_users_code_show_their_traceback_only(tmp_path):
    write_script(tmp_path, "def helper(i):\n    return 10 / i\n", name="helpers.py")
    script = write_script(tmp_path, """
        import numpy as np
        from helpers import helper

        def load_data():
            for i in (2, 1, 0):
                yield {"input": np.full((1, 28, 28), helper(i), np.float32)}
        """)
    with pytest.raises(OnnxPruneError) as e:
        script_calibration(str(script), MNIST_SPECS, None)
    message = str(e.value)
    first, *rest = message.splitlines()
    assert first.startswith("the calibration script loader.py failed in load_data(): ZeroDivisionError")
    assert any("loader.py" in line and "load_data" in line for line in rest)
    assert "helper(i)" in message and "onnxprune" not in "\n".join(rest)
    assert "helpers.py" not in message                 # only frames in the user's script
    assert str(tmp_path) not in sys.path               # its folder was on sys.path only while it ran


def test_import_and_syntax_errors_in_the_script_say_so(tmp_path):
    script = write_script(tmp_path, "import numpy as np\nraise RuntimeError('no data here')\n")
    with pytest.raises(OnnxPruneError, match="failed while being imported: RuntimeError: no data here"):
        script_calibration(str(script), MNIST_SPECS, None)
    script = write_script(tmp_path, "def load_data(:\n    pass\n", name="broken.py")
    with pytest.raises(OnnxPruneError, match="broken.py failed while being imported: SyntaxError") as e:
        script_calibration(str(script), MNIST_SPECS, None)
    assert "line 1" in str(e.value)


def test_varying_sequence_lengths_are_refused():
    specs = [InputSpec("ids", np.dtype(np.int64), (None, None))]
    feeds = [{"ids": np.ones((2, 5), np.int64)}, {"ids": np.ones((2, 6), np.int64)}]
    with pytest.raises(OnnxPruneError, match=r"item 2, input 'ids' has sample shape \(6,\); earlier items had \(5,\)") as e:
        from_feeds(feeds, specs, None)
    one_line(e)
    with pytest.raises(OnnxPruneError, match="do not fit int32") as e:
        from_feeds([{"ids": np.array([[2**40]])}], [InputSpec("ids", np.dtype(np.int32), (None, None))], None)
    one_line(e)


# --- memory and temporary files -------------------------------------------------------------

def test_feeds_are_streamed_to_disk_not_held(tmp_path, monkeypatch):
    import tracemalloc

    row = np.ones((1, 1, 28, 28), np.float32)
    monkeypatch.setattr(npyfile, "SCAN_BYTES", 2 * row.nbytes)
    tracemalloc.start()
    try:
        calib = from_feeds(({"input": row * i} for i in range(300)), MNIST_SPECS, 300)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * row.nbytes and calib.samples == 300
    np.testing.assert_array_equal(np.asarray(calib.arrays["input"][299:300]), row * 299)


def test_the_temporary_rows_are_removed_with_the_last_array():
    calib = from_feeds([{"input": np.zeros((3, 1, 28, 28), np.float32)}], MNIST_SPECS, None)
    folder = calib.arrays["input"].path.parent
    part = calib.arrays["input"][1:2]              # a slice keeps the file
    del calib
    gc.collect()
    assert folder.exists() and np.asarray(part).shape == (1, 1, 28, 28)
    del part
    gc.collect()
    assert not folder.exists()


def test_model_specs_from_the_model_file_work_too():
    specs = input_specs(load_model(str(MNIST)))
    assert [(s.name, s.dims) for s in specs] == [(s.name, s.dims) for s in MNIST_SPECS]
