"""Coverage and output fidelity of pruning on the real-export fixtures (issue 3).

For each model in tests/fixtures: the share of Conv/Gemm/MatMul output channels that are
prunable, then `prune --keep 0.5` with greedy and with weight-norm (both asym + reweight,
same calibration file) and the relative output error ||y - y'||² / ||y||² on 256 *fresh*
inputs drawn like the calibration data (N(0,1) floats; token ids uniform in the vocabulary
with a random 8..16 real-token mask for the BERT model).

    python tools/bench_patterns.py [--keep 0.5] [--mode asym] [--models NAME ...]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxprune import prune
from onnxprune import analyze
from onnxprune.io.calib import input_specs
from onnxprune.graph.index import GraphIndex
from onnxprune.io.modelio import load_model

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
MODELS = ["resnet_proj", "mobilenetv2", "densenet", "bert_tiny", "swiglu_mlp", "nhwc_flatten"]


def fresh_inputs(model, calib: dict, n: int, seed: int) -> dict:
    """Held-out inputs with the calibration data's distribution and per-sample shapes."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in input_specs(model):
        if spec.name == "input_ids":
            out[spec.name] = rng.integers(0, 200, size=(n, 16)).astype(np.int64)
        elif spec.name == "attention_mask":
            lengths = rng.integers(8, 17, size=n)
            out[spec.name] = (np.arange(16)[None, :] < lengths[:, None]).astype(np.int64)
        else:
            out[spec.name] = rng.standard_normal((n, *calib[spec.name].shape[1:])).astype(np.float32)
    return out


def output_error(original, pruned, feeds: dict) -> float:
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    y, z = run(original).astype(np.float64), run(pruned).astype(np.float64)
    return float(np.sum((y - z) ** 2) / np.sum(y ** 2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", type=float, default=0.5)
    p.add_argument("--mode", default="asym")
    p.add_argument("--models", nargs="+", default=MODELS, help="fixture names (tests/fixtures/NAME.onnx)")
    a = p.parse_args()
    print("| model | groups | prunable channels | greedy rel. error | weight-norm rel. error | params kept |")
    print("|---|---|---|---|---|---|")
    for name in a.models:
        model = load_model(FIXTURES / f"{name}.onnx")
        idx = GraphIndex.build(model)
        analysis = analyze(model, index=idx)
        cov = analysis.coverage(idx)
        calib = dict(np.load(FIXTURES / f"{name}_calib.npz"))
        held_out = fresh_inputs(model, calib, 256, seed=1)
        errors, kept = {}, None
        for method in ("greedy", "weight-norm"):
            pruned, report = prune(model, calib, keep=a.keep, method=method, mode=a.mode)
            errors[method] = output_error(model, pruned, held_out)
            kept = report.params_after / report.params_before
        print(f"| {name} | {len(analysis.groups)} | {cov['prunable_channels']}/{cov['total_channels']} "
              f"({100 * cov['share']:.0f}%) | {errors['greedy']:.3g} | {errors['weight-norm']:.3g} | {kept:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
