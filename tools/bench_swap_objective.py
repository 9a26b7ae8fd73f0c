"""Per-group objective of greedy vs greedy + swap search on ResNet-56, in layer mode (the
statistics of the original model, captured once and shared by every ratio): the report's
`search` entries, plus the select time of each run.

    python tools/bench_swap_objective.py --samples 128 --compression 2 --compression 4 --compression 8
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bench_accuracy import SHARED, model_input
from onnxprune.run.pipeline import PruneOptions, Workspace


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--compression", type=float, action="append", default=[])
    p.add_argument("--log", type=Path)
    a = p.parse_args()
    x = np.load(SHARED / "data" / "cifar10_calib.npz")["x"][a.offset:a.offset + a.samples]
    base = PruneOptions.of(compression=(a.compression or [4.0])[0], mode="layer", samples=a.samples)
    ws = Workspace(str(SHARED / "models" / "resnet56_cifar10.onnx"), {"input": model_input(x)}, base)
    for ratio in a.compression or [4.0]:
        for search in ("none", "swap"):
            t = time.perf_counter()
            _, report = ws.prune(PruneOptions.of(compression=ratio, mode="layer", samples=a.samples, search=search))
            d = report.to_dict()
            groups = [g for g in d["groups"] if g["channels_after"] < g["channels_before"]]
            row = {"ratio": ratio, "search": search, "compression": d["compression"], "select_s": d["seconds"]["select"],
                   "total_s": d["seconds"]["total"], "wall_s": time.perf_counter() - t,
                   "rel_error": [g["rel_error"] for g in groups],
                   "search_entries": [g.get("search") for g in groups], "names": [g["name"] for g in groups],
                   "output_rel_error": d["verify"].get("output_rel_error")}
            print(json.dumps(row), flush=True)
            if a.log:
                with a.log.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
