"""Head pruning of the BERT fixture and its onnxruntime-optimized variants (docs/RESULTS.md,
"Fused attention ops"): same heads and same outputs expected with the refit of O.

    python tools/bench_fused_heads.py
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxprune import prune
from onnxprune.io.modelio import load_model

HERE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "transformers"
MODELS = (("bert_hf", dict(heads_keep=0.5, ffn_keep=1.0)), ("bert_hf_attention", dict(heads_keep=0.5, ffn_keep=1.0)),
          ("bert_hf_mha", dict(heads_keep=0.5, ffn_keep=1.0)))


def run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def main() -> None:
    data = {k: v for k, v in np.load(HERE / "bert_hf_calib.npz").items() if not k.startswith("expected_")}
    calib, check = {k: v[:24] for k, v in data.items()}, {k: v[24:] for k, v in data.items()}
    base = run(load_model(HERE / "bert_hf.onnx"), check)
    print("| model | refit | heads kept | params | rel. error | vs export | wall |")
    for refit in ("consumers", "all"):
        ref = None
        for name, budget in MODELS:
            start = time.perf_counter()
            pruned, report = prune(load_model(HERE / f"{name}.onnx"), calib, refit=refit, **budget)
            wall = time.perf_counter() - start
            out = run(pruned, check)
            ref = out if ref is None else ref
            kept = [g["kept"] for g in report.groups if len(g["kept"]) < g["channels_before"]]
            print(f"| {name} | {refit} | {kept} | {report.params_before:,} -> {report.params_after:,} | "
                  f"{np.abs(out - base).max() / np.abs(base).max():.4f} | {np.abs(out - ref).max():.1e} | {wall:.1f} s |")


if __name__ == "__main__":
    main()
