"""Should the `--allocation error` curves be measured with the refit? (issue 13)

The curves scale each group's local greedy error by an output gain measured by pruning the
group alone (budget/curves.py). The shipped probe prunes it in layer mode with only the
consumers refitted (cheap: cached orders). With `--refit all` the real run repairs the drift
downstream, so this bench also runs the probe the way the run itself prunes: asym mode,
every later layer refitted, residual target `sum` (a full asym pass per probe). It then
compares top-1 of greedy asym `--allocation error` runs whose budgets come from either probe.

    python tools/bench_curves.py --model lenet_mnist --seeds 0,1,2 --ratios 4,8,16,32 \\
        --log .bench/curves.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import onnxprune.run.allocate as allocate
from onnxprune.run.pipeline import PruneOptions, Workspace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import DATASET, SHARED  # noqa: E402
from bench_paper import TestSet, calibration  # noqa: E402

_PLAIN_INIT = allocate.AloneProbe.__init__


def _refit_probe_init(self, session, cache, opts):
    _PLAIN_INIT(self, session, cache, opts)
    self.opts = replace(self.opts, mode="asym", refit="all", residual_target="sum")


def use_probe(kind: str) -> None:
    """Make AloneProbe prune as the shipped code does (plain) or as the run itself (refit)."""
    allocate.AloneProbe.__init__ = _PLAIN_INIT if kind == "plain" else _refit_probe_init


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, choices=sorted(DATASET))
    p.add_argument("--seeds", default="0")
    p.add_argument("--ratios", default="4,8")
    p.add_argument("--probes", default="plain,refit")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--log", type=Path, required=True)
    a = p.parse_args()
    for name in a.model:
        test = TestSet(DATASET[name])
        for seed in [int(s) for s in a.seeds.split(",")]:
            calib = {"input": calibration(DATASET[name], seed * a.samples, a.samples)}
            for probe in a.probes.split(","):
                use_probe(probe)          # a fresh Workspace: the curves are cached per workspace
                ws = Workspace(str(SHARED / "models" / f"{name}.onnx"), calib, PruneOptions(samples=a.samples))
                for ratio in [float(r) for r in a.ratios.split(",")]:
                    t = time.perf_counter()
                    model, report = ws.prune(PruneOptions(compression=ratio, allocation="error", seed=seed,
                                                          samples=a.samples))
                    row = {"model": name, "seed": seed, "probe": probe, "target": ratio,
                           "ratio": report.to_dict()["compression"], "top1": test.top1(model),
                           "seconds": round(time.perf_counter() - t, 1),
                           "kept": [g["channels_after"] for g in report.to_dict()["groups"]]}
                    with a.log.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(json.dumps({k: v for k, v in row.items() if k != "kept"}), flush=True)


if __name__ == "__main__":
    main()
