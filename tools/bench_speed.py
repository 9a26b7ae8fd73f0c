"""Time and peak memory of statistic capture, before/after (issues 13 and 15).

    python tools/bench_speed.py --case resnet56 --case vit --before HEAD~3 --repeat 3 \\
        --variant "after=" --variant "after-f64=--stats-dtype float64"

Cases:
  resnet56  ../shared/models/resnet56_cifar10.onnx, first 512 calibration images, greedy asym
            `--compression 2 --refit all` (the default refit), top-1 on all 10,000 test images.
  vit       the ViT-S/16-shaped random-weight model of tools/make_vit_bench.py (run it first with
            the torch venv; .bench/vit_s16/), 256 images, `--keep 0.5` (its prunable groups are
            the 12 FFNs), greedy asym, refit all; no accuracy (random weights): the report's
            output fidelity on the calibration head instead.

`--before REF` exports that commit's package (git archive) to .bench/src-REF and runs it as
"before"; `--variant NAME=ARGS` runs this worktree's code with extra CLI arguments. Runs go
round-robin (before, variants, before, ...) so load changes hit every configuration alike; the
table gives medians over `--repeat`, the process's wall and CPU seconds (user + system, from
wait4: less sensitive to other processes than wall time on a shared machine) and peak RSS.
The load average (`uptime`) is printed before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import ROOT, SHARED, calibration_file, top1  # noqa: E402

_LAUNCHER = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); _, s, u = os.wait4(p.pid, 0); "
             "sys.stderr.write(f'\\nrusage {u.ru_maxrss} {u.ru_utime + u.ru_stime}\\n'); "
             "sys.exit(os.waitstatus_to_exitcode(s))")


def case_args(case: str, work: Path) -> tuple:
    """(model, calibration file, prune arguments, dataset for top-1 or None)."""
    if case == "resnet56":
        calib = calibration_file("cifar10", 512, 0, work)
        return (SHARED / "models" / "resnet56_cifar10.onnx", calib,
                ["--compression", "2", "--mode", "asym", "--samples", "512"], "cifar10")
    vit = work / "vit_s16"
    if not (vit / "model.onnx").exists():
        raise SystemExit("run tools/make_vit_bench.py with the torch venv first")
    return vit / "model.onnx", vit / "calib.npz", ["--keep", "0.5", "--mode", "asym", "--samples", "256"], None


def source(ref: str, work: Path) -> Path:
    """This repository's package at commit `ref`, exported once."""
    sha = subprocess.check_output(["git", "rev-parse", "--short", ref], cwd=ROOT, text=True).strip()
    out = work / f"src-{sha}"
    if not out.exists():
        out.mkdir()
        archive = subprocess.run(["git", "archive", sha, "onnxprune"], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def run(src: Path, model: Path, calib: Path, args: list, out: Path) -> dict:
    cmd = [sys.executable, "-m", "onnxprune.cli", "prune", str(model), "--calib", str(calib), "-o", str(out),
           "--force", "--json", "--quiet", *args]
    env = dict(os.environ, PYTHONPATH=str(src))
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-c", _LAUNCHER, *cmd], stdout=fo, stderr=fe, env=env)
        wall = time.perf_counter() - start
        fo.seek(0)
        fe.seek(0)
        err = fe.read()
        if code != 0:
            raise SystemExit(f"prune failed: {' '.join(cmd)}\n{err}")
        _, rss, cpu = err.rstrip().rsplit("\n", 1)[-1].split()
        report = json.loads(fo.read())
    return {"wall": wall, "cpu": float(cpu), "rss_mb": int(rss) / 1024, "report": report}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", action="append", choices=("resnet56", "vit"), default=[])
    p.add_argument("--before", help="commit to run as 'before'")
    p.add_argument("--variant", action="append", default=[], help="NAME=EXTRA ARGS for this worktree's code")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--log", type=Path, default=ROOT / ".bench" / "speed.jsonl")
    a = p.parse_args()
    work = ROOT / ".bench"
    work.mkdir(exist_ok=True)
    configs = ([("before", source(a.before, work), [])] if a.before else [])
    configs += [(v.split("=", 1)[0], ROOT, v.split("=", 1)[1].split()) for v in a.variant or ["after="]]
    print("load before:", subprocess.check_output(["uptime"], text=True).strip(), flush=True)
    rows = {}
    for case in a.case or ["resnet56"]:
        model, calib, args, dataset = case_args(case, work)
        for i in range(a.repeat):
            for name, src, extra in configs:
                out = work / f"speed_{case}_{name}.onnx"
                r = run(src, model, calib, args + extra, out)
                r["top1"] = top1(out, dataset) if dataset and i == 0 else None
                r["agreement"] = r["report"].get("verify", {}).get("argmax_agreement")
                kept = [g["kept"] for g in r["report"]["groups"]]
                rows.setdefault((case, name), []).append(r)
                with a.log.open("a") as fh:
                    fh.write(json.dumps({"case": case, "config": name, "extra": extra, "run": i, "wall": r["wall"],
                                         "cpu": r["cpu"], "rss_mb": r["rss_mb"], "top1": r["top1"],
                                         "agreement": r["agreement"], "seconds": r["report"].get("seconds"),
                                         "kept": kept, "uptime": os.getloadavg()}) + "\n")
                print(f"{case} {name} run {i}: wall {r['wall']:.1f} s, cpu {r['cpu']:.1f} s, "
                      f"peak RSS {r['rss_mb']:.0f} MB, top-1 {r['top1']}, agreement {r['agreement']}", flush=True)
    print("load after:", subprocess.check_output(["uptime"], text=True).strip())
    print("\n| case | code | runs | wall s (median) | CPU s (median) | peak RSS MB (max) | top-1 | argmax agreement |")
    print("|---|---|---|---|---|---|---|---|")
    for (case, name), rs in rows.items():
        top = rs[0]["top1"]
        print(f"| {case} | {name} | {len(rs)} | {statistics.median(r['wall'] for r in rs):.1f} | "
              f"{statistics.median(r['cpu'] for r in rs):.1f} | {max(r['rss_mb'] for r in rs):.0f} | "
              f"{'' if top is None else f'{top:.4f}'} | {rs[0]['agreement']} |")


if __name__ == "__main__":
    main()
