"""Accuracy / size / time / memory of `onnxprune prune` on the ../shared benchmark models.

Runs the real CLI in a subprocess (so wall time and peak RSS are what a user sees), then
scores top-1 on the whole test set with onnxruntime. Protocol: DESIGN.md section 5 (first
512 images of *_calib.npz for calibration, all of *_test.npz for test).

    python tools/bench_accuracy.py --model resnet56_cifar10 --compression 2 \\
        --method greedy --method weight-norm --mode asym --allocation uniform --allocation error

prints one markdown table row per run (and appends JSON lines to --log if given).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATASET = {"lenet_mnist": "mnist", "resnet56_cifar10": "cifar10", "vgg11_bn_cifar10": "cifar10"}


def model_input(x: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 NCHW in [0, 1] (the models normalise internally)."""
    x = x.astype(np.float32) / 255
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)


def calibration_file(dataset: str, samples: int, offset: int, workdir: Path) -> Path:
    path = workdir / f"{dataset}_calib_{offset}_{samples}.npz"
    if not path.exists():
        x = np.load(SHARED / "data" / f"{dataset}_calib.npz")["x"][offset:offset + samples]
        np.savez(path, input=model_input(x))
    return path


def top1(model_path: Path, dataset: str) -> float:
    test = np.load(SHARED / "data" / f"{dataset}_test.npz")
    x, y = model_input(test["x"]), test["y"]
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    pred = np.concatenate([sess.run(None, {"input": x[i:i + 1000]})[0].argmax(1) for i in range(0, len(x), 1000)])
    return float(np.mean(pred == y))


# Linux carries a process's peak RSS across exec: a CLI forked straight from this process (which
# holds the test set and a session) would report at least our size. A small launcher forks it.
_LAUNCHER = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); _, s, u = os.wait4(p.pid, 0); "
             "sys.stderr.write(f'\\npeak_rss_kb {u.ru_maxrss}\\n'); sys.exit(os.waitstatus_to_exitcode(s))")


def measured(cmd: list, stdout, stderr) -> tuple:
    """(exit code, peak RSS in MB) of `cmd` run to completion; its stderr gets one extra line."""
    code = subprocess.call([sys.executable, "-c", _LAUNCHER, *cmd], stdout=stdout, stderr=stderr)
    stderr.seek(0)
    last = stderr.read().rstrip().rsplit("\n", 1)[-1]
    return code, int(last.split()[1]) / 1024


def run_prune(model: Path, calib: Path | None, out: Path, args: list) -> tuple:
    """(report, wall seconds, peak RSS in MB of the pruning process); calib None: data-free."""
    data = ["--calib", str(calib)] if calib is not None else []
    cmd = [sys.executable, "-m", "onnxprune.cli", "prune", str(model), *data, "-o", str(out),
           "--force", "--json", "--quiet", *args]
    with tempfile.TemporaryFile("w+") as out_fh, tempfile.TemporaryFile("w+") as err_fh:
        start = time.perf_counter()
        code, peak_mb = measured(cmd, out_fh, err_fh)
        wall = time.perf_counter() - start
        out_fh.seek(0)
        err_fh.seek(0)
        if code != 0:
            raise SystemExit(f"prune failed: {' '.join(cmd)}\n{err_fh.read()}")
        return json.loads(out_fh.read()), wall, peak_mb


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=sorted(DATASET))
    p.add_argument("--compression", type=float, action="append", default=[])
    p.add_argument("--method", action="append", default=[])
    p.add_argument("--mode", action="append", default=[])
    p.add_argument("--allocation", action="append", default=[], help="uniform (default) and/or error")
    p.add_argument("--reweight", choices=("yes", "no", "both"), default="yes",
                   help="refit the consumers (yes), not (no), or run every configuration both ways")
    p.add_argument("--no-reweight", action="store_true", help="same as --reweight both")
    p.add_argument("--refit", action="append", default=[], choices=("consumers", "all"),
                   help="seq/asym: refit the consumers only and/or every drifted layer [the CLI's default]")
    p.add_argument("--samples", type=int, default=512)
    p.add_argument("--offset", type=int, default=0, help="first calibration image (seeds pick other windows)")
    p.add_argument("--data-free", action="store_true",
                   help="no --calib (data-free selections without refit: same models, no statistics to capture)")
    p.add_argument("--extra", default="", help="extra arguments for onnxprune prune, e.g. '--ridge 1e-3'")
    p.add_argument("--log", type=Path, help="append one JSON line per run")
    a = p.parse_args()
    dataset = DATASET[a.model]
    model = SHARED / "models" / f"{a.model}.onnx"
    work = ROOT / ".bench"
    work.mkdir(exist_ok=True)
    calib = calibration_file(dataset, a.samples, a.offset, work)
    print("| model | method | mode | reweight | allocation | target | ratio | FLOPs ratio | top-1 | prune s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {a.model} | original | | | | | 1.00 | 1.00 | {top1(model, dataset):.4f} | | |", flush=True)
    reweights = {"yes": [True], "no": [False], "both": [True, False]}["both" if a.no_reweight else a.reweight]
    configs = [(ratio, method, mode, rw, alloc, refit) for ratio in a.compression or [2.0]
               for method in a.method or ["greedy"] for mode in a.mode or ["asym"] for rw in reweights
               for alloc in a.allocation or ["uniform"] for refit in a.refit or [None]]
    for ratio, method, mode, rw, alloc, refit in configs:
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            out = Path(tmp) / "pruned.onnx"
            extra = ["--compression", str(ratio), "--method", method, "--mode", mode,
                     "--reweight" if rw else "--no-reweight", "--allocation", alloc,
                     *([] if a.data_free else ["--samples", str(a.samples)]),
                     *([] if refit is None else ["--refit", refit]), *a.extra.split()]
            report, wall, rss = run_prune(model, None if a.data_free else calib, out, extra)
            acc = top1(out, dataset)
        flops = report["flops_ratio"] or float("nan")
        shown = mode if refit is None else f"{mode}, refit {refit}"
        print(f"| {a.model} | {method} | {shown} | {'yes' if rw else 'no'} | {alloc} | {ratio:g} | "
              f"{report['compression']:.2f} | {flops:.2f} | {acc:.4f} | {wall:.1f} | {rss:.0f} |", flush=True)
        if a.log:
            with a.log.open("a") as fh:
                fh.write(json.dumps({"model": a.model, "method": method, "mode": mode, "reweight": rw,
                                     "allocation": alloc, "target": ratio, "ratio": report["compression"],
                                     "flops_ratio": report["flops_ratio"], "top1": acc, "seconds": wall,
                                     "peak_rss_mb": rss, "refit": refit, "extra": a.extra, "offset": a.offset,
                                     "samples": None if a.data_free else a.samples}) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
