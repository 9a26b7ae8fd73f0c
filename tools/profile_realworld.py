"""Where the time of one real detector prune goes (issue 16): cProfile of `prune()` in this
process, plus how much of the model every capture step re-runs.

Every capture region (capture/prefix.region_model, cut by each seq/asym step and each
`--refit all` layer step, once for the current and once for the original model) is recorded
with the Conv/ConvTranspose/Gemm/MatMul multiply-accumulates it holds, counted on the original
model at the calibration image size (shapes from onnx shape inference with the batch fixed
to 1), as a share of the whole model's. The profile is summed by the part of the pipeline the
functions belong to.

    python tools/profile_realworld.py [--model det] [--samples 64] [--keep 0.5] [--top 25]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BUILT = ROOT / "build" / "models"

from onnxprune import prune  # noqa: E402
from onnxprune.capture import stream as capture_stream  # noqa: E402


def layer_macs(path: Path, shape: tuple) -> dict:
    """Multiply-accumulates per Conv/ConvTranspose/Gemm/MatMul node for one sample of `shape`."""
    model = onnx.load(str(path))
    inp = model.graph.input[0]
    for d, v in zip(inp.type.tensor_type.shape.dim, (1,) + tuple(shape)):
        d.ClearField("dim_param")
        d.dim_value = v
    model = onnx.shape_inference.infer_shapes(model)
    dims = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in list(model.graph.value_info) + list(model.graph.output)}
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    for n in model.graph.node:                               # Constant-node weights
        if n.op_type == "Constant":
            weights[n.output[0]] = list(n.attribute[0].t.dims)
    macs = {}
    for n in model.graph.node:
        if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and n.input[1] in weights:
            w = int(np.prod(weights[n.input[1]]))
            where = n.input[0] if n.op_type == "ConvTranspose" else n.output[0]
            out = dims.get(where) or [1]
            spatial = int(np.prod(out[2:])) if n.op_type.startswith("Conv") else int(np.prod(out[:-1]))
            macs[n.name] = w * max(spatial, 1)
    return macs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="det", choices=["det", "cls"])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    path = BUILT / f"ppocr_{args.model}.onnx"
    calib = {"x": np.load(BUILT / f"{args.model}_calib.npz")["x"][:args.samples]}
    macs = layer_macs(path, calib["x"].shape[1:])
    total = sum(macs.values())
    regions = []
    cut = capture_stream.region_model

    def spy(model, idx, outputs, available):
        sub, inputs = cut(model, idx, outputs, available)
        regions.append((outputs[0], sum(macs.get(n.name, 0) for n in sub.graph.node) / total))
        return sub, inputs

    capture_stream.region_model = spy
    prof = cProfile.Profile()
    t = time.time()
    prof.enable()
    _, report = prune(onnx.load(str(path)), calib, keep=args.keep)
    prof.disable()
    wall = time.time() - t
    shares = np.array([r[1] for r in regions])
    print(f"{path.name}: {args.samples} samples, keep {args.keep}: {wall:.1f} s; stages {report.seconds}")
    print(f"capture regions: {len(regions)} (current + original per step); re-run share of the model's "
          f"MACs per region: mean {shares.mean():.3f}, max {shares.max():.3f}, sum {shares.sum():.2f} "
          f"(= whole-model passes per sample)")
    for name, share in sorted(regions, key=lambda r: -r[1])[:6]:
        print(f"  region up to {name}: {share:.3f} of the model's MACs")
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(args.top)
    print(out.getvalue())
    parts = {}
    for (file, _, func), (_, _, tottime, _, _) in stats.stats.items():
        key = next((k for k in ("onnxruntime", "capture/stats", "capture/features", "capture/prefix",
                                "capture/stream", "solve/", "rewrite/", "graph/", "numpy") if k in file),
                   "built-in" if file == "~" else "other")
        if key == "built-in" and ("matmul" in func or "dot" in func):
            key = "numpy matmul (built-in)"
        parts[key] = parts.get(key, 0.0) + tottime
    for key, sec in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"{key:>28}: {sec:7.1f} s")


if __name__ == "__main__":
    main()
