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
  vitcls    the real ViT-S/14 classifier of tools/export_vit_probe.py (build/models/vit_probe.onnx),
            256 images of build/models/vit_calib.npz, heads and FFN units together
            (`--heads-keep 0.6667 --ffn-keep 0.6667`), greedy asym, refit all; "top-1" is the
            top-1 agreement with the original on the 256 held-out images (vitcls_heldout.npz).

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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import ROOT, SHARED, calibration_file, top1  # noqa: E402

_LAUNCHER = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); _, s, u = os.wait4(p.pid, 0); "
             "sys.stderr.write(f'\\nrusage {u.ru_maxrss} {u.ru_utime + u.ru_stime}\\n'); "
             "sys.exit(os.waitstatus_to_exitcode(s))")


def case_args(case: str, work: Path, vit_samples: int = 256) -> tuple:
    """(model, calibration file, prune arguments, dataset for top-1 or None)."""
    if case == "resnet56":
        calib = calibration_file("cifar10", 512, 0, work)
        return (SHARED / "models" / "resnet56_cifar10.onnx", calib,
                ["--compression", "2", "--mode", "asym", "--samples", "512"], "cifar10")
    if case == "vitcls":
        models = ROOT / "build" / "models"
        return (models / "vit_probe.onnx", models / "vit_calib.npz",
                ["--heads-keep", "0.6667", "--ffn-keep", "0.6667", "--mode", "asym", "--samples", str(vit_samples)],
                "vitcls")
    vit = work / "vit_s16"
    if not (vit / "model.onnx").exists():
        raise SystemExit("run tools/make_vit_bench.py with the torch venv first")
    return vit / "model.onnx", vit / "calib.npz", ["--keep", "0.5", "--mode", "asym", "--samples", str(vit_samples)], None


def heldout_agreement(pruned: Path, _dataset: str) -> float:
    """Top-1 agreement of the pruned ViT classifier with the original on its held-out images
    (measured as tools/bench_transformer.py measures its vitcls rows)."""
    from bench_transformer import MODELS, compare, outputs
    spec = MODELS["vitcls"]
    data = dict(np.load(spec["heldout"]))
    data.pop("label", None)
    ref, got = outputs(spec["path"], data, spec["batch"]), outputs(pruned, data, spec["batch"])
    return compare(ref, got)["argmax_agreement"]


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
    env = dict(os.environ, PYTHONPATH=str(src))      # and cwd=src: `-m` puts the cwd first on sys.path
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        start = time.perf_counter()
        code = subprocess.call([sys.executable, "-c", _LAUNCHER, *cmd], stdout=fo, stderr=fe, env=env, cwd=src)
        wall = time.perf_counter() - start
        fo.seek(0)
        fe.seek(0)
        err = fe.read()
        if code != 0:
            raise SystemExit(f"prune failed: {' '.join(cmd)}\n{err}")
        _, rss, cpu = err.rstrip().rsplit("\n", 1)[-1].split()
        report = json.loads(fo.read())
    return {"wall": wall, "cpu": float(cpu), "rss_mb": int(rss) / 1024, "report": report}


# Times one GramAccumulator (asym) on layer shapes of the two cases, in the code on PYTHONPATH;
# prints {shape: [cpu seconds, gram, h]} as JSON. Old code has no `settings` and returns `cross`.
_MICRO = r"""
import json, sys, time, numpy as np
from onnxprune.capture.stats import GramAccumulator
from onnxprune.graph.groups import Consumer, ConvGeometry
from onnxprune.graph.layout import Layout, Segment
try:
    from onnxprune.capture.stats import StatsSettings
    kwargs = {"settings": StatsSettings(**json.loads(sys.argv[1]))}
except ImportError:          # code before StatsSettings: float64 only
    kwargs = {}
rng = np.random.default_rng(0)
def case(name):
    if name == "resnet56 stage-1 conv (16 ch, 32x32, 3x3)":
        c = Consumer(node="c", op="Conv", input="x", weight="w", weight_axis=1, layout=Layout(1, 4, (Segment("p", 0, 16),)),
                     conv=ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), "NOTSET"))
        x = np.maximum(rng.standard_normal((32, 16, 32, 32)), 0).astype(np.float32)
        return c, x, rng.standard_normal((145, 16))
    d, m = {"vit fc2 (1536 -> 384, 197 tokens)": (1536, 384), "vit query/key/value (384 -> 3 x 384)": (384, 1152)}[name]
    c = Consumer(node="m", op="MatMul", input="x", weight="w", weight_axis=0, layout=Layout(2, 3, (Segment("p", 0, d),)))
    return c, (rng.standard_normal((32, 197, d)) + 0.5).astype(np.float32), rng.standard_normal((d + 1, m))
out, arrays = {}, {}
for i, name in enumerate( ("resnet56 stage-1 conv (16 ch, 32x32, 3x3)", "vit fc2 (1536 -> 384, 197 tokens)",
             "vit query/key/value (384 -> 3 x 384)")):
    c, x, w = case(name)
    xa = (x + 0.1 * rng.standard_normal(x.shape)).astype(np.float32)
    acc = GramAccumulator(c, np, asym=True, weight=w, **kwargs)
    t = time.process_time()
    for _ in range(4):
        acc.add(x, xa)
    s = acc.result()
    cpu = time.process_time() - t
    h = s.h if getattr(s, "h", None) is not None else s.cross @ w
    out[name] = cpu
    arrays[f"g{i}"], arrays[f"h{i}"] = s.gram, h
np.savez(sys.argv[2], **arrays)
print(json.dumps(out))
"""


def micro(configs: list) -> None:
    """CPU seconds of one accumulator, 4 batches of 32 samples, one BLAS thread, per config;
    and the largest relative difference of G and H from the first config's (float64)."""
    results = {}
    for name, src, extra in configs:
        settings = {"dtype": extra[extra.index("--stats-dtype") + 1]} if "--stats-dtype" in extra else {}
        env = dict(os.environ, PYTHONPATH=str(src), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        path = ROOT / ".bench" / f"micro_{name}.npz"
        cpu = json.loads(subprocess.check_output([sys.executable, "-c", _MICRO, json.dumps(settings), str(path)],
                                                 env=env, text=True, cwd=src))
        results[name] = (cpu, np.load(path))
    first = next(iter(results.values()))
    print("| layer | " + " | ".join(f"{n} CPU s" for n in results) + " | " +
          " | ".join(f"{n}: max rel. diff G / H" for n in list(results)[1:]) + " |")
    print("|---" * (1 + 2 * len(results) - 1) + "|")
    for i, layer in enumerate(first[0]):
        g0, h0 = first[1][f"g{i}"], first[1][f"h{i}"]
        diffs = []
        for _, arrays in list(results.values())[1:]:
            g, h = arrays[f"g{i}"], arrays[f"h{i}"]
            diffs.append(f"{np.abs(g - g0).max() / np.abs(g0).max():.1e} / {np.abs(h - h0).max() / np.abs(h0).max():.1e}")
        print(f"| {layer} | " + " | ".join(f"{cpu[layer]:.2f}" for cpu, _ in results.values()) + " | " +
              " | ".join(diffs) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", action="append", choices=("resnet56", "vit", "vitcls"), default=[])
    p.add_argument("--before", help="commit to run as 'before'")
    p.add_argument("--variant", action="append", default=[], help="NAME=EXTRA ARGS for this worktree's code")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--vit-samples", type=int, default=256, help="calibration images of the vit case")
    p.add_argument("--log", type=Path, default=ROOT / ".bench" / "speed.jsonl")
    p.add_argument("--micro", action="store_true", help="time one accumulator per layer shape instead of whole runs")
    a = p.parse_args()
    work = ROOT / ".bench"
    work.mkdir(exist_ok=True)
    configs = ([("before", source(a.before, work), [])] if a.before else [])
    configs += [(v.split("=", 1)[0], ROOT, v.split("=", 1)[1].split()) for v in a.variant or ["after="]]
    print("load before:", subprocess.check_output(["uptime"], text=True).strip(), flush=True)
    if a.micro:
        micro(configs)
        return
    rows = {}
    for case in a.case or ["resnet56"]:
        model, calib, args, dataset = case_args(case, work, a.vit_samples)
        for i in range(a.repeat):
            for name, src, extra in configs:
                out = work / f"speed_{case}_{name}_{os.getpid()}.onnx"
                r = run(src, model, calib, args + extra, out)
                score = heldout_agreement if dataset == "vitcls" else top1
                r["top1"] = score(out, dataset) if dataset and i == 0 else None
                r["agreement"] = r["report"].get("verify", {}).get("argmax_agreement")
                kept = [g["kept"] for g in r["report"]["groups"]]
                rows.setdefault((case, name), []).append(r)
                with a.log.open("a") as fh:
                    fh.write(json.dumps({"case": case, "samples": args[-1], "config": name, "extra": extra, "run": i, "wall": r["wall"],
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
