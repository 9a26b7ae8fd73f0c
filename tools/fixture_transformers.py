"""Build the transformer test fixtures (issue #15) in tests/fixtures/transformers/.

How to run (from the repository root; torch is a tool dependency only)::

    pip install torch==2.13.0 onnx onnxruntime onnxscript
    python tools/fixture_transformers.py                 # all
    python tools/fixture_transformers.py --only gqa_tiny

Models (tools/transformer_models.py, tools/fused_fixtures.py), random weights, hidden 32,
4 heads of 8, 2 layers:

- TorchScript exports (opset 17, batch and sequence axes dynamic): ``bert_hf``, ``vit_tiny``,
  ``gpt2_tiny``, ``llama_tiny``, ``sdpa_encoder`` (``F.scaled_dot_product_attention``
  decomposed into MatMul/Softmax).
- the dynamo exporter at opset 23: ``sdpa_attention23`` (the same encoder; the exporter writes
  ``F.scaled_dot_product_attention`` as an ai.onnx ``Attention`` on 4-D q/k/v).
- onnxruntime's transformer optimizer (``optimize_model``, opt_level 0, i.e. only its Python
  fusions) on those exports: ``bert_hf_attention`` (model_type bert), ``bert_hf_mha``
  (bert with ``use_multi_head_attention``), ``vit_tiny_fused`` (vit), ``gpt2_tiny_fused``
  (gpt2). What it fused is printed and listed in tests/fixtures/README.md.
- onnx.helper (what neither writes): ``gqa_tiny`` (com.microsoft GroupQueryAttention) and
  ``attention23_gqa`` (ai.onnx Attention, opset 23, 3-D q/k/v with q_num_heads/kv_num_heads).

Each ``<name>.onnx`` has a ``<calib>_calib.npz`` (``CALIB`` below; the optimized variants share
their export's file) holding the model inputs (32 token sequences of 12, 8 to 12 real tokens where there is an
attention mask, or 16 images 3x16x16) and ``expected_logits``: the torch model's (or torch
reference's) output on the first 8 samples. The script checks every file with
onnxruntime against torch (max abs diff < 1e-4, also at batch 1 and 3 and a shorter sequence).
Node metadata the dynamo exporter writes (stack traces naming this machine's paths) is removed.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fused_fixtures as FF  # noqa: E402
import transformer_models as TM  # noqa: E402
from make_fixtures import save_npz  # noqa: E402
from torch_export import MAX_IR_VERSION, export_onnx  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "tests" / "fixtures" / "transformers"
TOL = 1e-4
N, T = 32, 12
EXPECTED_N = 8       # expected outputs of the first 8 samples (LM logits are 12 x 100 each)
TOKEN_DYN = {0: "batch", 1: "seq"}

# fixture -> (torch model, kind of calibration data)
TORCH = {
    "bert_hf": (TM.BertHF, "masked_tokens"),
    "vit_tiny": (TM.ViTTiny, "images"),
    "gpt2_tiny": (TM.GPT2Tiny, "masked_tokens"),
    "llama_tiny": (TM.LlamaTiny, "tokens"),
    "sdpa_encoder": (TM.SdpaEncoder, "masked_tokens"),
}
DYNAMO = {"sdpa_attention23": "sdpa_encoder"}
OPTIMIZED = {   # name -> (source export, model_type, use_multi_head_attention)
    "bert_hf_attention": ("bert_hf", "bert", False),
    "bert_hf_mha": ("bert_hf", "bert", True),
    "vit_tiny_fused": ("vit_tiny", "vit", False),
    "gpt2_tiny_fused": ("gpt2_tiny", "gpt2", False),
}
HELPER = {"gqa_tiny": FF.gqa_model, "attention23_gqa": FF.attention23_model}
CALIB = {**{k: k for k in TORCH}, **DYNAMO, **{k: v[0] for k, v in OPTIMIZED.items()},
         "gqa_tiny": "gqa_tiny", "attention23_gqa": "gqa_tiny"}


def calibration(kind: str, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "images":
        return {"pixel_values": rng.standard_normal((16, 3, 16, 16), dtype=np.float32)}
    ids = rng.integers(0, TM.VOCAB, size=(N, T), dtype=np.int64)
    if kind == "tokens":
        return {"input_ids": ids}
    lengths = rng.integers(8, T + 1, size=N)          # 8..12 real tokens, then padding
    return {"input_ids": ids, "attention_mask": (np.arange(T)[None] < lengths[:, None]).astype(np.int64)}


def build_torch(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = TORCH[name][0]()
    TM.randomize_norm_params(model)
    return model.eval()


def export_torchscript(name: str, data: dict, out: Path) -> Path:
    names = list(data)
    args = tuple(torch.from_numpy(data[k][:2]) for k in names)
    dyn = {k: ({0: "batch"} if k == "pixel_values" else TOKEN_DYN) for k in names}
    export_onnx(build_torch(name), args, out / f"{name}.onnx", names, dyn)
    return out / f"{name}.onnx"


def strip_metadata(model: onnx.ModelProto) -> None:
    """Drop exporter metadata (the dynamo exporter stores stack traces with absolute paths)."""
    del model.metadata_props[:]
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        del vi.metadata_props[:]
    for init in model.graph.initializer:
        del init.metadata_props[:]


def export_dynamo(name: str, source: str, data: dict, out: Path) -> Path:
    names = list(data)
    args = tuple(torch.from_numpy(data[k][:2]) for k in names)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=TM.MAX_POS)
    path = out / f"{name}.onnx"
    torch.onnx.export(build_torch(source), args, str(path), dynamo=True, opset_version=23,
                      input_names=names, output_names=["logits"],
                      dynamic_shapes=tuple({0: batch, 1: seq} for _ in names), verbose=False)
    model = onnx.load(str(path), load_external_data=True)
    strip_metadata(model)
    model.producer_name, model.producer_version = "pytorch", torch.__version__
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    for extra in out.glob(f"{name}.onnx.data"):
        extra.unlink()
    return path


def optimize(name: str, out: Path) -> Path:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    source, model_type, mha = OPTIMIZED[name]
    options = FusionOptions(model_type)
    options.use_multi_head_attention = mha
    opt = optimize_model(str(out / f"{source}.onnx"), model_type=model_type, num_heads=TM.HEADS,
                         hidden_size=TM.HIDDEN, opt_level=0, optimization_options=options)
    model = opt.model
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))   # as save_model_to_file does
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out / f"{name}.onnx"))
    return out / f"{name}.onnx"


def torch_reference(name: str):
    """feeds -> expected logits, from the torch model (or the torch reference of a helper model)."""
    if name in HELPER:
        ws = FF.weights(0)
        return lambda feeds: FF.reference(ws, feeds["input_ids"])
    source = CALIB[name] if name not in TORCH else name
    model = build_torch(source)

    def run(feeds):
        with torch.no_grad():
            return model(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    return run


def check(path: Path, data: dict, ref) -> float:
    """Max abs diff onnxruntime vs torch on the data, batch 1 and 3 and a shorter sequence."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    cases = [data] + [{k: v[:b] for k, v in data.items()} for b in (1, 3)]
    if "input_ids" in data:
        cases.append({k: v[:5, :7] for k, v in data.items()})
    worst = 0.0
    for feeds in cases:
        want, got = ref(feeds), sess.run(["logits"], feeds)[0]
        assert got.shape == want.shape, (path.name, got.shape, want.shape)
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def fused_ops(model: onnx.ModelProto) -> dict:
    """Op counts of the com.microsoft nodes and of the attention-relevant ai.onnx ones."""
    keep = {"Attention", "Softmax", "MatMul", "LayerNormalization"}
    return dict(sorted(Counter(
        f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in model.graph.node
        if n.domain == "com.microsoft" or n.op_type in keep).items()))


def build(name: str, out: Path, calib: dict) -> Path:
    if name in TORCH:
        return export_torchscript(name, calib[name], out)
    if name in DYNAMO:
        return export_dynamo(name, DYNAMO[name], calib[CALIB[name]], out)
    if name in OPTIMIZED:
        return optimize(name, out)
    path = out / f"{name}.onnx"
    onnx.save(HELPER[name](FF.weights(0)), str(path))
    return path


def calib_inputs(name: str) -> dict:
    if name in TORCH:
        return calibration(TORCH[name][1], seed=100 + sorted(TORCH).index(name))
    return calibration("tokens", seed=99)


def main() -> None:
    names = list(TORCH) + list(DYNAMO) + list(OPTIMIZED) + list(HELPER)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ap.add_argument("--only", nargs="+", choices=names, metavar="NAME")
    args = ap.parse_args()
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}")
    calib = {c: calib_inputs(c) for c in sorted(set(CALIB.values()))}
    for name in names:            # exports before the optimized variants that read them
        if args.only and name not in args.only:      # an optimized one reads its committed export
            continue
        path = build(name, out, calib)
        data = calib[CALIB[name]]
        ref = torch_reference(name)
        diff = check(path, data, ref)
        assert diff < TOL, f"{name}: onnxruntime vs torch max abs diff {diff}"
        if CALIB[name] == name:
            first = {k: v[:EXPECTED_N] for k, v in data.items()}
            save_npz(out / f"{name}_calib.npz", {**data, "expected_logits": ref(first)})
        model = onnx.load(str(path))
        print(f"\n== {name}: {path.stat().st_size:,} bytes, opsets "
              f"{ {o.domain or 'ai.onnx': o.version for o in model.opset_import} }, "
              f"max abs diff vs torch {diff:.1e}")
        print(f"  {len(model.graph.node)} nodes; {fused_ops(model)}")
    print("\nsha256:")
    for p in sorted(out.glob("*")):
        print(f"  {hashlib.sha256(p.read_bytes()).hexdigest()[:16]}  {p.name} ({p.stat().st_size:,} B)")


if __name__ == "__main__":
    main()
