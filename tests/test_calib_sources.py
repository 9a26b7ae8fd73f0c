"""Calibration from images, text, loader scripts and feed objects gives exactly the arrays of
the equivalent .npz, and every bad input is a one-line OnnxPruneError."""
import gc
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from onnxprune import prune
from onnxprune.errors import OnnxPruneError
from onnxprune.io import npyfile
from onnxprune.io.calib import InputSpec, input_specs, load_calibration
from onnxprune.io.modelio import load_model
from onnxprune.io.sources import SourceCalibration, from_feeds, images_calibration, script_calibration, text_calibration

Image = pytest.importorskip("PIL.Image")
tokenizers = pytest.importorskip("tokenizers")

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "models" / "mnist_cnn.onnx"
MNIST_CALIB = ROOT / "models" / "mnist_cnn_calib.npz"
MNIST_SPECS = [InputSpec("input", np.dtype(np.float32), (None, 1, 28, 28))]


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    return message


def arrays(calib) -> dict:
    return {k: np.asarray(v) for k, v in calib.arrays.items()}


# --- images ---------------------------------------------------------------------------------

def write_gray_pngs(folder: Path, n: int, seed: int = 0) -> list:
    """n random 28x28 grayscale PNGs in nested folders; returns their pixels in sorted path order."""
    rng = np.random.default_rng(seed)
    written = {}
    for i in range(n):
        pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
        path = folder / f"class{i % 3}" / f"img{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "L").save(path)
        written[path.as_posix()] = pixels
    return [written[k] for k in sorted(written)]


def test_a_png_folder_gives_the_arrays_of_the_equivalent_npz(tmp_path):
    pixels = write_gray_pngs(tmp_path / "imgs", 12)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    (tmp_path / "imgs" / "class1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "imgs" / ".hidden.png").write_bytes(b"ignored, not counted")
    expected = np.stack(pixels).astype(np.float32)[:, None] / 255
    np.savez(tmp_path / "same.npz", input=expected)

    calib = images_calibration(tmp_path / "imgs", MNIST_SPECS, None, preset="0-1")
    assert isinstance(calib, SourceCalibration) and calib.samples == 12
    assert calib.skipped == 2 and any("broken.png" in f for f in calib.skipped_files)
    assert calib.info["layout"] == "NCHW" and calib.info["size"] == [28, 28]
    got = arrays(calib)["input"]
    assert got.dtype == np.float32 and got.shape == (12, 1, 28, 28)
    np.testing.assert_allclose(got, np.asarray(load_calibration(tmp_path / "same.npz", MNIST_SPECS, None)
                                               .arrays["input"]), rtol=0, atol=1e-7)
    assert arrays(calib.head(5))["input"].shape == (5, 1, 28, 28)
    # --samples takes the first files in sorted order; a glob works like the folder
    five = images_calibration(str(tmp_path / "imgs" / "**" / "*.png"), MNIST_SPECS, 5, preset="0-255")
    np.testing.assert_array_equal(arrays(five)["input"], np.stack(pixels[:5]).astype(np.float32)[:, None])


def _resized(im, size, resize):
    """The test's own resize: Pillow bilinear, then a centre crop (torchvision's arithmetic)."""
    h, w = size
    if resize == "exact":
        return np.asarray(im.resize((w, h), Image.BILINEAR))
    iw, ih = im.size
    if h * iw >= w * ih:
        nw, nh = max(w, int(h * iw / ih)), h
    else:
        nw, nh = w, max(h, int(w * ih / iw))
    big = np.asarray(im.resize((nw, nh), Image.BILINEAR))
    top, left = int(round((nh - h) / 2)), int(round((nw - w) / 2))
    return big[top:top + h, left:left + w]


@pytest.mark.parametrize("preset, order, layout, resize", [
    ("imagenet", "RGB", "NCHW", "shorter"),
    ("imagenet", "BGR", "NHWC", "shorter"),
    ("0-1", "RGB", "NHWC", "exact"),
    ("0-255", "BGR", "NCHW", "exact"),
    ("-1-1", "RGB", "NCHW", "shorter"),
])
def test_rgb_images_are_resized_scaled_and_laid_out_like_numpy(tmp_path, preset, order, layout, resize):
    rng = np.random.default_rng(1)
    raw = [rng.integers(0, 256, (20 + 3 * i, 24 + 5 * i, 3), dtype=np.uint8) for i in range(4)]
    for i, a in enumerate(raw):
        Image.fromarray(a, "RGB").save(tmp_path / f"{i}.png")
    dims = (None, 3, 16, 12) if layout == "NCHW" else (None, 16, 12, 3)
    specs = [InputSpec("image", np.dtype(np.float32), dims)]
    calib = images_calibration(tmp_path, specs, 4, preset=preset, channel_order=order, resize=resize)

    x = np.stack([_resized(Image.fromarray(a), (16, 12), resize) for a in raw]).astype(np.float64)
    if order == "BGR":
        x = x[..., ::-1]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    if order == "BGR":
        mean, std = mean[::-1], std[::-1]
    x = {"imagenet": (x / 255 - mean) / std, "0-1": x / 255, "0-255": x, "-1-1": x / 127.5 - 1}[preset]
    if layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(arrays(calib)["image"], x.astype(np.float32), rtol=1e-6, atol=1e-6)


def test_explicit_size_mean_and_std_and_a_dynamic_input(tmp_path):
    a = np.random.default_rng(2).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "x.webp", lossless=True)
    specs = [InputSpec("x", np.dtype(np.float32), (None, 3, None, None))]
    with pytest.raises(OnnxPruneError, match="no fixed height and width") as e:
        images_calibration(tmp_path, specs, None)
    one_line(e)
    calib = images_calibration(tmp_path, specs, None, size=10, preset="0-255", mean=(1, 2, 3), std=2)
    want = (a.astype(np.float64) - [1, 2, 3]) / 2
    np.testing.assert_allclose(arrays(calib)["x"][0], want.transpose(2, 0, 1), atol=1e-5)
    half = images_calibration(tmp_path, specs, None, size=(10, 10), mean=0.5)     # ImageNet std kept
    want = (a / 255 - 0.5) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(arrays(half)["x"][0], want.transpose(2, 0, 1), atol=1e-5)


def test_strict_refuses_what_is_otherwise_skipped(tmp_path):
    write_gray_pngs(tmp_path, 3)
    (tmp_path / "zz.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    assert images_calibration(tmp_path, MNIST_SPECS, None, preset="0-1").skipped == 1
    with pytest.raises(OnnxPruneError, match="zz.jpg is not a readable image") as e:
        images_calibration(tmp_path, MNIST_SPECS, None, preset="0-1", strict=True)
    one_line(e)


@pytest.mark.parametrize("case, match", [
    ("missing", "image folder not found"),
    ("empty", "the folder is empty"),
    ("no_images", "no readable images"),
    ("glob", "no files match"),
    ("too_few", "has 3 readable images .1 file.s. skipped., fewer than --samples 10"),
    ("imagenet_gray", "imagenet preset has a mean and std for 3 colour channels"),
    ("two_inputs", "one image input; this model has 2 inputs"),
    ("not_image", "needs a 4-D float input"),
    ("size_clash", "fixed image size 28x28; the image size 32x32 disagrees"),
    ("bad_preset", "unknown preset 'caffe'"),
    ("no_layout", "cannot tell whether input 'input'"),
    ("bad_mean", "mean has 2 values; the input has 1 channel"),
])
def test_bad_image_inputs_are_one_line_errors(tmp_path, case, match):
    folder = tmp_path / "imgs"
    folder.mkdir()
    specs, kwargs, target = MNIST_SPECS, {"preset": "0-1"}, folder
    if case == "missing":
        target = tmp_path / "nope"
    elif case == "no_images":
        (folder / "a.txt").write_text("x")
    elif case == "glob":
        target = str(folder / "*.png")
    elif case != "empty":
        write_gray_pngs(folder, 3)
        (folder / "junk.png").write_text("x")
    if case == "imagenet_gray":
        kwargs = {}
    elif case == "two_inputs":
        specs = MNIST_SPECS + [InputSpec("scale", np.dtype(np.float32), (None, 1))]
    elif case == "not_image":
        specs = [InputSpec("ids", np.dtype(np.int64), (None, 16))]
    elif case == "size_clash":
        kwargs["size"] = 32
    elif case == "bad_preset":
        kwargs["preset"] = "caffe"
    elif case == "no_layout":
        specs = [InputSpec("input", np.dtype(np.float32), (None, 5, 28, 28))]
    elif case == "bad_mean":
        kwargs["mean"] = (0.5, 0.5)
    with pytest.raises(OnnxPruneError, match=match) as e:
        images_calibration(target, specs, 10 if case == "too_few" else None, **kwargs)
    one_line(e)


def test_missing_pillow_names_the_extra(tmp_path, monkeypatch):
    write_gray_pngs(tmp_path, 2)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)        # import fails as if not installed
    with pytest.raises(OnnxPruneError, match=r'pip install "onnxprune\[images\]"') as e:
        images_calibration(tmp_path, MNIST_SPECS, None, preset="0-1")
    one_line(e)


def test_images_give_bit_identical_arrays_to_the_equivalent_npz(tmp_path):
    """Bit-identical arrays prune identically (the loader-script test below runs prune on that)."""
    pixels = write_gray_pngs(tmp_path / "imgs", 32)
    np.savez(tmp_path / "same.npz", input=np.stack(pixels).astype(np.float32)[:, None] / np.float32(255))
    calib = images_calibration(tmp_path / "imgs", MNIST_SPECS, None, preset="0-1")
    assert np.array_equal(arrays(calib)["input"], np.load(tmp_path / "same.npz")["input"])


# --- text -----------------------------------------------------------------------------------

VOCAB = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "hello": 4, "world": 5, "the": 6, "cat": 7,
         "sat": 8, "##s": 9, "on": 10, "mat": 11}


@pytest.fixture
def tokenizer_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordPiece(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


TEXTS = ["hello world", "the cat sat", "", "cats on the mat", "hello hello hello hello hello hello hello", "dog"]
# [CLS] ... [SEP] padded to 8, the long one truncated (its [SEP] kept); the blank line skipped
IDS = [[2, 4, 5, 3, 0, 0, 0, 0], [2, 6, 7, 8, 3, 0, 0, 0], [2, 7, 9, 10, 6, 11, 3, 0],
       [2, 4, 4, 4, 4, 4, 4, 3], [2, 1, 3, 0, 0, 0, 0, 0]]


def bert_specs(length=8, dtype=np.int64, names=("input_ids", "attention_mask", "token_type_ids")):
    return [InputSpec(n, np.dtype(dtype), (None, length)) for n in names]


def test_a_text_file_gives_the_arrays_of_a_hand_built_npz(tmp_path, tokenizer_file):
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    ids = np.array(IDS, dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    np.savez(tmp_path / "same.npz", input_ids=ids, attention_mask=mask, token_type_ids=np.zeros_like(ids))
    calib = text_calibration(tmp_path / "texts.txt", bert_specs(), None, tokenizer_path=tokenizer_file)
    want = arrays(load_calibration(tmp_path / "same.npz", bert_specs(), None))
    got = arrays(calib)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == np.int64
        np.testing.assert_array_equal(got[k], want[k])
    assert calib.row_mask == "attention_mask" and calib.info["sequence_length"] == 8


def test_jsonl_pairs_a_map_a_dynamic_length_and_int32(tmp_path, tokenizer_file):
    lines = ['{"q": "hello", "c": "the cat", "label": 1}', '{"q": "cat", "c": "hello world"}']
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    specs = [InputSpec(n, np.dtype(np.int32), (None, None)) for n in ("a", "b", "c")]
    calib = text_calibration(tmp_path / "d.jsonl", specs, 2, tokenizer_path=tokenizer_file, field="q,c",
                             input_map={"a": "input_ids", "b": "token_type_ids", "c": "attention_mask"})
    got = arrays(calib)
    np.testing.assert_array_equal(got["a"], [[2, 4, 3, 6, 7, 3], [2, 7, 3, 4, 5, 3]])      # the longest: 6
    np.testing.assert_array_equal(got["b"], [[0, 0, 0, 1, 1, 1]] * 2)
    np.testing.assert_array_equal(got["c"], np.ones((2, 6)))
    assert got["a"].dtype == np.int32 and calib.row_mask == "c"
    fixed = text_calibration(tmp_path / "d.jsonl", specs, None, tokenizer_path=tokenizer_file, field="q",
                             max_length=4, input_map={"a": "input_ids", "b": "token_type_ids", "c": "attention_mask"})
    np.testing.assert_array_equal(arrays(fixed)["a"], [[2, 4, 3, 0], [2, 7, 3, 0]])


@pytest.mark.parametrize("case, match", [
    ("bad_tokenizer", "is not a tokenizers tokenizer.json file"),
    ("no_tokenizer", "tokenizer file not found"),
    ("missing_text", "calibration text file not found"),
    ("empty", "no texts in"),
    ("unknown_input", "cannot tell what model input 'pixels' holds; map it with --map pixels=ROLE"),
    ("bad_role", "unknown role 'labels'"),
    ("bad_map_name", "the model has no input 'nope'"),
    ("length_clash", "fixed sequence length of 8; --max-length 16 disagrees"),
    ("no_field", "has no field 'text'"),
    ("too_few", "has 5 texts, fewer than --samples 9"),
    ("binary", "t.txt is not UTF-8 text"),
])
def test_bad_text_inputs_are_one_line_errors(tmp_path, tokenizer_file, case, match):
    texts = tmp_path / "t.txt"
    texts.write_text("\n".join(TEXTS))
    specs, kwargs, samples = bert_specs(), {"tokenizer_path": tokenizer_file}, None
    if case == "bad_tokenizer":
        (tmp_path / "bad.json").write_text('{"version": "1.0", "model": 3}')
        kwargs["tokenizer_path"] = tmp_path / "bad.json"
    elif case == "no_tokenizer":
        kwargs["tokenizer_path"] = tmp_path / "none.json"
    elif case == "missing_text":
        texts = tmp_path / "none.txt"
    elif case == "empty":
        texts.write_text("\n\n")
    elif case == "unknown_input":
        specs = bert_specs(names=("input_ids", "pixels"))
    elif case == "bad_role":
        kwargs["input_map"] = {"input_ids": "labels"}
    elif case == "bad_map_name":
        kwargs["input_map"] = {"nope": "input_ids"}
    elif case == "length_clash":
        kwargs["max_length"] = 16
    elif case == "no_field":
        texts = tmp_path / "t.jsonl"
        texts.write_text('{"sentence": "hello"}\n')
    elif case == "too_few":
        samples = 9
    elif case == "binary":
        texts.write_bytes(b"hello\n\xff\xfe\x00binary\n")
    with pytest.raises(OnnxPruneError, match=match) as e:
        text_calibration(texts, specs, samples, **kwargs)
    one_line(e)


def tiny_text_model():
    """Embedding (Gather on input_ids) -> FFN, output masked by attention_mask."""
    import builders as B
    from onnx import TensorProto

    b = B.GraphBuilder(4)
    ids = b.input("input_ids", ["N", 8], elem=TensorProto.INT64)
    b.input("attention_mask", ["N", 8], elem=TensorProto.INT64)
    x = b.node("Gather", [b.const(b.randn(len(VOCAB), 6)), ids])
    y = b.matmul(b.relu(b.matmul(x, 6, 10, name="up")), 10, 6, name="down")
    b.output(b.node("Mul", [y, b.node("Cast", [b.node("Unsqueeze", ["attention_mask", b.const(np.array([2]))])],
                                      to=1)]))
    return b.model()


def test_text_calibration_prunes_with_its_attention_mask_as_the_row_mask(tmp_path, tokenizer_file):
    model = tiny_text_model()
    words = [w for w in VOCAB if not w.startswith("[") and not w.startswith("#")]
    rng = np.random.default_rng(5)
    lines = [" ".join(rng.choice(words, rng.integers(1, 7))) for _ in range(40)]
    (tmp_path / "t.txt").write_text("\n".join(lines))
    calib = text_calibration(tmp_path / "t.txt", input_specs(model), None, tokenizer_path=tokenizer_file)
    assert calib.samples == 40 and calib.row_mask == "attention_mask"
    _, report = prune(model, calib, keep=0.5, row_mask=calib.row_mask)
    assert report.calibration["masked_consumers"] == ["down"]


def test_missing_tokenizers_names_the_extra(tmp_path, tokenizer_file, monkeypatch):
    (tmp_path / "t.txt").write_text("hello\n")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(OnnxPruneError, match=r'pip install "onnxprune\[text\]"') as e:
        text_calibration(tmp_path / "t.txt", bert_specs(), None, tokenizer_path=tokenizer_file)
    one_line(e)


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

def test_decoding_holds_one_image_at_a_time(tmp_path, monkeypatch):
    """Memory does not grow with the number of images: each is written to disk when decoded
    (the value checks then read the file back in chunks of SCAN_BYTES, made small here)."""
    import tracemalloc

    rng = np.random.default_rng(3)
    for i in range(150):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i:03d}.png")
    specs = [InputSpec("x", np.dtype(np.float32), (None, 3, 64, 64))]
    one_image = 3 * 64 * 64 * 4
    monkeypatch.setattr(npyfile, "SCAN_BYTES", 2 * one_image)
    tracemalloc.start()
    try:
        calib = images_calibration(tmp_path, specs, None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert calib.samples == 150
    assert peak < 12 * one_image, f"peak {peak} bytes for 150 images of {one_image} bytes"


def test_prune_reads_image_rows_a_batch_at_a_time(tmp_path, monkeypatch):
    """In the style of test_robust_memory: the decoded images are read back one batch at a time."""
    import builders as B
    from onnxprune.io.npyfile import StoredArray

    rng = np.random.default_rng(4)
    for i in range(70):
        Image.fromarray(rng.integers(0, 256, (8 + i % 5, 8 + i % 3, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    model = B.cnn()
    calib = images_calibration(tmp_path, input_specs(model), None)
    monkeypatch.setattr(npyfile, "SCAN_BYTES", 16 * 3 * 8 * 8 * 4)
    reads, original = [], StoredArray.read

    def counting(self):
        reads.append(len(self))
        return original(self)
    monkeypatch.setattr(StoredArray, "read", counting)
    _, report = prune(model, calib, keep=0.5, batch_size=16)
    assert report.calibration["samples"] == 70
    assert reads and max(reads) <= 16 and sum(reads) >= 2 * 70      # the check scan and capture, in batches


def test_jpeg_and_webp_decode_like_pillow(tmp_path):
    rng = np.random.default_rng(6)
    a = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(a).save(tmp_path / "b.webp", quality=90)
    specs = [InputSpec("x", np.dtype(np.float32), (None, 12, 12, 3))]
    calib = images_calibration(tmp_path, specs, None, preset="0-255")
    want = np.stack([np.asarray(Image.open(tmp_path / n).convert("RGB")) for n in ("a.jpg", "b.webp")])
    np.testing.assert_array_equal(arrays(calib)["x"], want.astype(np.float32))
    assert calib.skipped == 0 and calib.info["layout"] == "NHWC"


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


def test_too_little_temporary_space_is_said_before_decoding(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    write_gray_pngs(tmp_path, 3)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(OnnxPruneError, match="3 decoded samples of images need 9.2 KiB in .*which has 1000 bytes free; .*point TMPDIR") as e:
        images_calibration(tmp_path, MNIST_SPECS, None, preset="0-1")
    one_line(e)


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
