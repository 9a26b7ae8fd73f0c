"""How per-group budgets compare on the ../shared models: uniform, the shipped `error`
allocation, and the variants it was chosen against, all at the same whole-model target.

Computes the curves once (local: greedy reconstruction error per k; output: the same scaled
by each group's measured output gain, see onnxprune/curves.py), derives every allocation,
prunes with each (same method/mode), and scores top-1 on the whole test set:

- uniform          the same keep fraction everywhere (`--allocation uniform`)
- balanced-local   equal relative reconstruction error in every group (the issue's first idea)
- balanced-output  equal predicted output error in every group
- minsum-local     least summed reconstruction error (marginal analysis)
- minsum-output    least summed predicted output error: what `--allocation error` does

    python tools/bench_allocation.py --model resnet56_cifar10 --compression 4 --compression 8 --mode asym

prints one JSON line per run (counts per group included).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from bench_accuracy import DATASET, ROOT, SHARED, calibration_file, model_input
from onnxprune.budget.allocation import Rules, check_reachable, error_counts, fill, uniform_counts
from onnxprune.budget.curves import local_curves
from onnxprune.run.allocate import error_curves
from onnxprune.run.clock import Clock
from onnxprune.run.pipeline import PruneOptions, Workspace

VARIANTS = ("uniform", "balanced-local", "balanced-output", "minsum-local", "minsum-output")


def balanced(target, ratio, rules, curves) -> dict:
    """Every group keeps the fewest channels whose error is <= a common threshold; the
    smallest threshold that meets the target, then leftover steps by largest error."""
    check_reachable(target, ratio, rules)
    groups = target.groups
    errors = {g.name: np.minimum.accumulate(np.asarray(curves[g.name])) for g in groups}
    choices = {g.name: rules.choices(g.channels) for g in groups}

    def at(tau):
        return {g.name: int(choices[g.name][np.argmax(errors[g.name][choices[g.name]] <= tau)]) for g in groups}

    levels = np.unique(np.concatenate([errors[g.name][choices[g.name]] for g in groups]))[::-1]
    lo, hi = 0, len(levels) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if target.meets(at(levels[mid]), ratio) else (lo, mid - 1)
    return fill(target, ratio, at(levels[lo]), choices, lambda n, k: errors[n][k])


def top1(model, dataset: str) -> float:
    import onnxruntime as ort

    test = np.load(SHARED / "data" / f"{dataset}_test.npz")
    x, y = model_input(test["x"]), test["y"]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    pred = np.concatenate([sess.run(None, {"input": x[i:i + 1000]})[0].argmax(1) for i in range(0, len(x), 1000)])
    return float(np.mean(pred == y))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=sorted(DATASET))
    p.add_argument("--compression", type=float, action="append", required=True)
    p.add_argument("--mode", default="asym")
    p.add_argument("--method", default="greedy")
    p.add_argument("--variant", action="append", choices=VARIANTS, help="default: all")
    p.add_argument("--samples", type=int, default=512)
    a = p.parse_args()
    dataset = DATASET[a.model]
    calib = np.load(calibration_file(dataset, a.samples, 0, ROOT / ".bench"))["input"]
    opts = PruneOptions(compression=a.compression[0], mode=a.mode, method=a.method)
    ws = Workspace(str(SHARED / "models" / f"{a.model}.onnx"), calib, opts)
    t = time.perf_counter()
    local = local_curves(ws.cache, Rules(), Clock())
    t_local = time.perf_counter() - t
    output = error_curves(ws.session, ws.cache, opts, Clock())
    print(json.dumps({"model": a.model, "local_curves_s": round(t_local, 1),
                      "output_curves_s": round(time.perf_counter() - t - t_local, 1)}), flush=True)
    rules = Rules()
    for ratio in a.compression:
        target = ws.target(PruneOptions(compression=ratio))
        plans = {"uniform": lambda: uniform_counts(target, ratio, rules),
                 "balanced-local": lambda: balanced(target, ratio, rules, local),
                 "balanced-output": lambda: balanced(target, ratio, rules, output),
                 "minsum-local": lambda: error_counts(target, ratio, rules, local),
                 "minsum-output": lambda: error_counts(target, ratio, rules, output)}
        for name in a.variant or VARIANTS:
            counts = plans[name]()
            ws.counts = lambda *_, counts=counts, **__: counts
            t = time.perf_counter()
            pruned, report = ws.prune(PruneOptions(compression=ratio, mode=a.mode, method=a.method))
            print(json.dumps({"model": a.model, "method": a.method, "mode": a.mode, "target": ratio,
                              "allocation": name, "ratio": round(report.compression, 4),
                              "flops_ratio": report.to_dict()["flops_ratio"], "top1": top1(pruned, dataset),
                              "seconds": round(time.perf_counter() - t, 1),
                              "counts": [counts[g.name] for g in ws.groups]}), flush=True)


if __name__ == "__main__":
    main()
