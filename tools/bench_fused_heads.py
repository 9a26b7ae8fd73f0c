"""Head pruning of the BERT fixture and its onnxruntime-optimized variants (docs/RESULTS.md,
"Fused attention ops"): same heads and same outputs expected with the refit of O.

    python tools/bench_fused_heads.py                   # half the heads, FFNs whole
    python tools/bench_fused_heads.py --budget keep     # half of every group: heads and FFN units
    python tools/bench_fused_heads.py --budget flops    # --compression 1.5 --target flops
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxprune import prune
from onnxprune.io.modelio import load_model

HERE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "transformers"
MODELS = ("bert_hf", "bert_hf_attention", "bert_hf_mha")
BUDGETS = {"heads": dict(heads_keep=0.5, ffn_keep=1.0), "keep": dict(keep=0.5),
           "flops": dict(compression=1.5, target="flops")}


def run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="heads")
    budget = BUDGETS[parser.parse_args().budget]
    data = {k: v for k, v in np.load(HERE / "bert_hf_calib.npz").items() if not k.startswith("expected_")}
    calib, check = {k: v[:24] for k, v in data.items()}, {k: v[24:] for k, v in data.items()}
    base = run(load_model(HERE / "bert_hf.onnx"), check)
    print("| model | refit | kept (pruned groups) | params | FLOPs | rel. error | vs export | wall |")
    for refit in ("consumers", "all"):
        ref = None
        for name in MODELS:
            start = time.perf_counter()
            pruned, report = prune(load_model(HERE / f"{name}.onnx"), calib, refit=refit, **budget)
            wall = time.perf_counter() - start
            out = run(pruned, check)
            ref = out if ref is None else ref
            kept = [f"{len(g['kept'])}/{g['channels_before']}" if len(g["kept"]) > 8 else g["kept"]
                    for g in report.groups if len(g["kept"]) < g["channels_before"]]
            print(f"| {name} | {refit} | {kept} | {report.params_before:,} -> {report.params_after:,} | "
                  f"{report.flops_before:,} -> {report.flops_after:,} | "
                  f"{np.abs(out - base).max() / np.abs(base).max():.4f} | {np.abs(out - ref).max():.1e} | {wall:.1f} s |")


if __name__ == "__main__":
    main()
