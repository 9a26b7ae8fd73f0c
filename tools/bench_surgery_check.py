"""What the surgery check (run/surgery.py) costs inside a prune: its seconds next to the whole run's.

    python tools/bench_surgery_check.py [--repeat 3]

Runs `onnxprune.prune` in this process on ResNet-56 (../shared, first 512 calibration images,
greedy asym at 2x) and on the BERT-like fixture (tests/fixtures/bert_tiny, FFN units at keep 0.5),
timing the check with a wrapper; prints a markdown table of medians over --repeat runs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import ROOT, SHARED, calibration_file  # noqa: E402

from onnxprune import prune  # noqa: E402
from onnxprune.run import runner, surgery  # noqa: E402


def cases(work: Path) -> list:
    out = []
    resnet = SHARED / "models" / "resnet56_cifar10.onnx"
    if resnet.exists():
        out.append(("resnet56_cifar10, greedy asym 2x", resnet, str(calibration_file("cifar10", 512, 0, work)),
                    {"compression": 2.0}))
    fixtures = ROOT / "tests" / "fixtures"
    out.append(("bert_tiny fixture, greedy asym keep 0.5", fixtures / "bert_tiny.onnx",
                dict(np.load(fixtures / "bert_tiny_calib.npz")), {"keep": 0.5}))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    work = ROOT / ".bench"
    work.mkdir(exist_ok=True)
    spent = []
    real = surgery.surgery_check

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - t)
    runner.surgery_check = timed
    print("| model | prune s | surgery check s | share |")
    print("|---|---|---|---|")
    for label, model, calib, options in cases(work):
        totals, checks = [], []
        for _ in range(a.repeat):
            spent.clear()
            _, report = prune(str(model), calib, device="cpu", **options)
            totals.append(report.seconds["total"])
            checks.append(spent[0])
        total, check = statistics.median(totals), statistics.median(checks)
        print(f"| {label} | {total:.1f} | {check:.2f} | {100 * check / total:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
