"""Deployed speed of ONNX models: onnxruntime CPU latency at batch 1 and 64, file size, FLOPs.

    python tools/bench_latency.py ORIGINAL.onnx PRUNED.onnx [...] [--repeats 50] [--threads 2]

Inputs are random with each model's input shapes (dynamic non-batch dims need --shape).
Latency is the median of --repeats timed runs after --warmup runs, single session per model,
all on the CPU execution provider with the given intra-op thread count. Prints a markdown
table; the first model is the reference for the speedup columns.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.io.calib import input_specs
from onnxprune.budget.flops import model_flops


def feeds_for(model: onnx.ModelProto, batch: int, shapes: dict, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for spec in input_specs(model):
        dims = shapes.get(spec.name) or spec.dims[1:]
        if any(d is None for d in dims):
            raise SystemExit(f"input {spec.name} has dynamic dims {spec.dims}; pass --shape {spec.name}=d1,d2,...")
        shape = (batch, *dims)
        out[spec.name] = (rng.integers(0, 2, size=shape) if spec.dtype.kind in "iu"
                          else rng.random(shape)).astype(spec.dtype)
    return out


def latency_ms(sess, feeds: dict, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batches", default="1,64")
    p.add_argument("--shape", action="append", default=[], help="NAME=d1,d2 per-sample dims of a dynamic input")
    a = p.parse_args()
    shapes = {k: tuple(int(d) for d in v.split(",")) for k, v in (s.split("=", 1) for s in a.shape)}
    batches = [int(b) for b in a.batches.split(",")]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.log_severity_level = 3
    rows, ref = [], None
    for path in a.models:
        model = onnx.load(str(path))
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        lat = [latency_ms(sess, feeds_for(model, b, shapes), a.warmup, a.repeats) for b in batches]
        row = (path.name, path.stat().st_size / 1e6, model_flops(model), lat)
        ref = ref or row
        rows.append(row)
    head = " | ".join(f"batch {b} ms | speedup" for b in batches)
    print(f"| model | MB | FLOPs ratio | {head} |")
    print("|---|---|---|" + "---|---|" * len(batches))
    for name, mb, flops, lat in rows:
        ratio = f"{ref[2] / flops:.2f}" if flops and ref[2] else "n/a"
        cells = " | ".join(f"{t:.2f} | {r:.2f}x" for t, r in zip(lat, (a_ / b_ for a_, b_ in zip(ref[3], lat))))
        print(f"| {name} | {mb:.2f} | {ratio} | {cells} |")


if __name__ == "__main__":
    main()
