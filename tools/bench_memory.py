"""Peak memory (RSS) and wall time of `onnxprune prune` as the calibration set grows.

    python tools/bench_memory.py --model resnet56_cifar10 --samples 512,2048,8192 --mode asym

Runs the real CLI in a subprocess per size (peak RSS of that process from wait4, as
bench_accuracy.py does). The benchmark models have 5000 calibration images; sizes above that
append horizontally flipped copies of the first images (a standard augmentation, so the
statistics stay those of real images) — the memory question is about the count, not the
content. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import DATASET, ROOT, SHARED, model_input, run_prune  # noqa: E402


def calibration_file(dataset: str, samples: int, workdir: Path) -> Path:
    path = workdir / f"{dataset}_calib_flip_{samples}.npz"
    if not path.exists():
        x = np.load(SHARED / "data" / f"{dataset}_calib.npz")["x"]
        while len(x) < samples:
            x = np.concatenate([x, x[: samples - len(x), ..., ::-1, :] if x.ndim == 4 else x[: samples - len(x), :, ::-1]])
        np.savez(path, input=model_input(x[:samples]))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=sorted(DATASET))
    p.add_argument("--samples", default="512,2048,8192")
    p.add_argument("--mode", default="asym")
    p.add_argument("--compression", type=float, default=2.0)
    a = p.parse_args()
    work = ROOT / ".bench"
    work.mkdir(exist_ok=True)
    model = SHARED / "models" / f"{a.model}.onnx"
    print("| model | mode | calibration samples | calibration file MB | ratio | prune s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for n in [int(s) for s in a.samples.split(",")]:
        calib = calibration_file(DATASET[a.model], n, work)
        out = work / "memory_pruned.onnx"
        report, wall, rss = run_prune(model, calib, out, ["--compression", str(a.compression), "--mode", a.mode,
                                                          "--samples", str(n)])
        print(f"| {a.model} | {a.mode} | {n} | {calib.stat().st_size / 2**20:.0f} | {report['compression']:.2f} | "
              f"{wall:.1f} | {rss:.0f} |", flush=True)


if __name__ == "__main__":
    main()
