"""Calibration from text files (Hugging Face tokenizers) gives exactly the arrays of a hand-built
.npz and names its attention mask as the row mask; bad inputs are one-line errors."""
import sys

import numpy as np
import pytest

from calib_util import MNIST_SPECS, arrays, one_line
from onnxprune import prune
from onnxprune.errors import OnnxPruneError
from onnxprune.io.calib import InputSpec, input_specs, load_calibration
from onnxprune.io.sources import text_calibration

tokenizers = pytest.importorskip("tokenizers")




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
    _, report = prune(model, calib, keep=0.5)                       # no option: the text's mask
    assert report.calibration["row_mask_origin"] == "text" and report.calibration["masked_consumers"] == ["down"]
    assert any("of the calibration text is the row mask" in n for n in report.notes)


def test_missing_tokenizers_names_the_extra(tmp_path, tokenizer_file, monkeypatch):
    (tmp_path / "t.txt").write_text("hello\n")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(OnnxPruneError, match=r'pip install "onnxprune\[text\]"') as e:
        text_calibration(tmp_path / "t.txt", bert_specs(), None, tokenizer_path=tokenizer_file)
    one_line(e)
