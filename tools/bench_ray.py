"""Capture time with and without Ray workers (issue 18), on a ../shared benchmark model.

Protocol as tools/bench_accuracy.py (DESIGN.md section 5): the first --samples images of
*_calib.npz, greedy asym (the CLI's defaults, so --refit all) at --compression. Every
configuration runs in this process through the Python API, one after another:

    one   --workers 1: no Ray (today's code path)
    ray1  one Ray worker (ray_address="local"): the same work through Ray, i.e. Ray's overhead
    ray2  --workers 2 on a local Ray

    python tools/bench_ray.py --model resnet56_cifar10 --compression 2 --configs one,ray2,ray1

prints one markdown row per configuration (setup = load, analysis and Ray start; capture;
total), the per-step Ray numbers (wall of a step minus its busiest worker = what distribution
costs; the workers' time before their first batch), and whether the models agree.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import DATASET, ROOT, SHARED, calibration_file  # noqa: E402

from onnxprune.run.pipeline import PruneOptions, Workspace  # noqa: E402

CONFIGS = {"one": {}, "ray1": {"workers": 1, "ray_address": "local"}, "ray2": {"workers": 2}}


def run(model: Path, calib: Path, config: str, args) -> dict:
    opts = PruneOptions.of(compression=args.compression, method="greedy", mode=args.mode, samples=args.samples,
                           device="cpu", refit=args.refit, **CONFIGS[config])
    opts.validate()
    start = time.perf_counter()
    ws = Workspace(str(model), str(calib), opts)
    setup = time.perf_counter() - start
    try:
        pruned, report = ws.prune(opts, None)
        timings = list(ws.session.pool.timings) if ws.session.pool is not None else []
    finally:
        t = time.perf_counter()
        ws.close()
        closing = time.perf_counter() - t
    return {"config": config, "setup_s": setup, "capture_s": report.seconds["capture"],
            "total_s": time.perf_counter() - start, "close_s": closing, "steps": len(timings),
            "timings": timings, "kept": [g["kept"] for g in report.groups], "pruned": pruned}


def step_summary(timings: list) -> dict:
    """Per step: wall - busiest worker (distribution overhead), workers' time before the first
    batch, busiest worker, and the imbalance between workers."""
    if not timings:
        return {}
    overhead = [t["wall"] - max(t["busy"]) for t in timings]
    setup = [max(t["setup"]) for t in timings]
    busy = [max(t["busy"]) for t in timings]
    spread = [max(t["busy"]) - min(t["busy"]) for t in timings]
    return {"overhead_median_s": statistics.median(overhead), "overhead_total_s": sum(overhead),
            "worker_setup_median_s": statistics.median(setup), "worker_setup_total_s": sum(setup),
            "busiest_total_s": sum(busy), "imbalance_total_s": sum(spread), "wall_total_s": sum(t["wall"] for t in timings)}


def weight_diff(a, b) -> float:
    """Largest |a - b| / max|a| over the initializers (inf if the models differ in structure)."""
    wa = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    if list(a.graph.node) != list(b.graph.node) or list(wa) != list(wb):
        return float("inf")
    worst = 0.0
    for k, x in wa.items():
        if x.size and x.dtype.kind == "f":
            worst = max(worst, float(np.abs(x.astype(np.float64) - wb[k]).max() / max(1e-30, np.abs(x).max())))
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet56_cifar10", choices=sorted(DATASET))
    p.add_argument("--compression", type=float, default=2.0)
    p.add_argument("--mode", default="asym")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--refit", choices=("consumers", "all"), help="[the CLI's default: all in asym]")
    p.add_argument("--configs", default="one,ray2,ray1", help=f"comma list of {', '.join(CONFIGS)}")
    p.add_argument("--log", type=Path, help="append the results as JSON lines")
    a = p.parse_args()
    model = SHARED / "models" / f"{a.model}.onnx"
    work = ROOT / ".bench"
    work.mkdir(exist_ok=True)
    calib = calibration_file(DATASET[a.model], a.samples, 0, work)
    print("| config | setup s | capture s | total s | close s | steps | same kept as first | max rel weight diff |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    base = None
    for config in a.configs.split(","):
        r = run(model, calib, config, a)
        base = base or r
        print(f"| {r['config']} | {r['setup_s']:.1f} | {r['capture_s']:.1f} | {r['total_s']:.1f} | {r['close_s']:.1f} | "
              f"{r['steps']} | {r['kept'] == base['kept']} | {weight_diff(base['pruned'], r['pruned']):.2e} |")
        summary = step_summary(r["timings"])
        if summary:
            print(f"  {r['config']} per step: " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items()))
        sys.stdout.flush()
        if a.log:
            with a.log.open("a") as fh:
                row = {k: v for k, v in r.items() if k not in ("pruned", "kept", "timings")}
                fh.write(json.dumps({**row, **summary, "model": a.model, "samples": a.samples, "refit": a.refit,
                                     "compression": a.compression, "mode": a.mode, "timings": r["timings"]}) + "\n")


if __name__ == "__main__":
    main()
