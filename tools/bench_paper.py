"""The paper's experiment without fine-tuning: top-1 vs compression for every method, with and
without reweighting, on the ../shared benchmark models (protocol: DESIGN.md section 5).

    python tools/bench_paper.py run --model lenet_mnist --model resnet56_cifar10 --seeds 0,1,2
    python tools/bench_paper.py run --model resnet56_cifar10 --seeds 0 --reweight yes --refit all \
        --log .bench/paper_refit.jsonl        # the grid with every drifted layer refitted (issue 13)
    python tools/bench_paper.py calib-size --model resnet56_cifar10 --sizes 128,512,2048,5000
    python tools/bench_paper.py report            # markdown tables + docs/paper_<model>.png
    python tools/bench_paper.py peers --include .bench/onnxsim.jsonl   # peer rows beside ours

`run` prunes in-process through the Python API, one `Workspace` per (model, seed) so that
layer-mode runs share their capture and greedy orders as `onnxprune sweep` does; the seconds
are each run's own (budget, capture, select, reweight, rewrite, verify), excluding loading.
Seed s calibrates on images [512 s, 512 (s + 1)) of the 5000 calibration images. Every run
appends one JSON line to .bench/paper.jsonl; runs already there are skipped, so an
interrupted benchmark resumes. Unreachable ratios are recorded as such. `report` prints
mean ± std over seeds and draws one plot per model (matplotlib: pip install "onnxprune[plot]").
Configurations (label = method, or greedy-<mode>; non-greedy methods refit in asym mode, and
data-free ones without refitting run in layer mode, which gives the same model faster):
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxprune.errors import OnnxPruneError
from onnxprune.run.pipeline import PruneOptions, Workspace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import DATASET, ROOT, SHARED, model_input  # noqa: E402

LOG = ROOT / ".bench" / "paper.jsonl"
CONFIGS = {  # label -> (method, mode)
    "greedy-layer": ("greedy", "layer"), "greedy-seq": ("greedy", "seq"), "greedy-asym": ("greedy", "asym"),
    "weight-norm": ("weight-norm", "asym"), "random": ("random", "asym"), "random-global": ("random-global", "asym"),
    "sampling": ("sampling", "asym"), "coreset": ("coreset", "asym"),
}
# Selections that do not look at the data: without refitting, the pruned model is the same in
# every mode (the statistics only feed the report's rel_error), so they run in layer mode.
DATA_FREE = ("weight-norm", "random", "random-global", "coreset")
__doc__ += "".join(f"\n    {k:<14} --method {m} --mode {d}" for k, (m, d) in CONFIGS.items())


def calibration(dataset: str, start: int, samples: int) -> np.ndarray:
    x = np.load(SHARED / "data" / f"{dataset}_calib.npz")["x"]
    if start + samples > len(x):
        raise SystemExit(f"{dataset}_calib.npz has {len(x)} images, asked for [{start}, {start + samples})")
    return model_input(x[start:start + samples])


class TestSet:
    def __init__(self, dataset: str):
        test = np.load(SHARED / "data" / f"{dataset}_test.npz")
        self.x, self.y = model_input(test["x"]), test["y"]

    def top1(self, model) -> float:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        pred = np.concatenate([sess.run(None, {name: self.x[i:i + 1000]})[0].argmax(1)
                               for i in range(0, len(self.x), 1000)])
        return float(np.mean(pred == self.y))


def done_keys(log: Path) -> set:
    if not log.exists():
        return set()
    return {_key(json.loads(line)) for line in log.read_text().splitlines() if line.strip()}


def _key(r: dict) -> tuple:
    return (r["model"], r["label"], r["reweight"], r["seed"], r["samples"], r["target"], r.get("allocation", "uniform"),
            r.get("refit", "consumers"))


def refit_of(reweight: bool, mode: str, refit: str) -> str:
    """The refit a run gets: `all` needs reweighting and seq/asym (rows logged before the option
    existed carry no refit and were `consumers`)."""
    return refit if reweight and mode != "layer" else "consumers"


def _mode(label: str, reweight: bool) -> str:
    method, mode = CONFIGS[label]
    # same model in every mode without refitting; layer mode reuses the cached statistics
    return "layer" if not reweight and method in DATA_FREE else mode


def one_run(ws: Workspace, test: TestSet, base: dict, label: str, reweight: bool, ratio: float,
            allocation: str = "uniform", refit: str = "consumers") -> dict:
    method, mode = CONFIGS[label][0], _mode(label, reweight)
    refit = refit_of(reweight, mode, refit)
    opts = PruneOptions.of(compression=ratio, method=method, mode=mode, reweight=reweight, allocation=allocation,
                           seed=base["seed"], refit=refit if reweight else None)
    row = {**base, "label": label, "method": method, "mode": mode, "reweight": reweight, "target": ratio,
           "allocation": allocation, "refit": refit}
    try:
        ws.check_budget(opts)
    except OnnxPruneError as exc:
        return {**row, "unreachable": str(exc)}
    t = time.perf_counter()
    pruned, report = ws.prune(opts, include_setup=False)
    seconds = time.perf_counter() - t
    d = report.to_dict()
    return {**row, "ratio": d["compression"], "flops_ratio": d["flops_ratio"], "top1": test.top1(pruned),
            "seconds": round(seconds, 2), "kept": [g["channels_after"] for g in d["groups"]]}


def run(args) -> None:
    done = done_keys(args.log)
    ratios = [float(r) for r in args.ratios.split(",")]
    labels = args.configs.split(",")
    for name in args.model:
        dataset = DATASET[name]
        test = TestSet(dataset)
        for seed in [int(s) for s in args.seeds.split(",")]:
            base = {"model": name, "seed": seed, "samples": args.samples}
            todo = [(lab, rw, r, al) for r in ratios for lab in labels for rw in _reweights(args.reweight)
                    for al in args.allocation.split(",")
                    if _key({**base, "label": lab, "reweight": rw, "target": r, "allocation": al,
                             "refit": refit_of(rw, _mode(lab, rw), args.refit)}) not in done]
            if not todo:
                continue
            calib = {"input": calibration(dataset, seed * args.samples, args.samples)}
            ws = Workspace(str(SHARED / "models" / f"{name}.onnx"), calib, PruneOptions(samples=args.samples))
            for label, reweight, ratio, allocation in todo:
                row = one_run(ws, test, base, label, reweight, ratio, allocation, args.refit)
                _append(args.log, row)
                print(_line(row), flush=True)


def calib_size(args) -> None:
    """greedy asym at one ratio as the number of calibration images grows (seed 0 window)."""
    done = done_keys(args.log)
    for name in args.model:
        dataset = DATASET[name]
        test = TestSet(dataset)
        for n in [int(s) for s in args.sizes.split(",")]:
            base = {"model": name, "seed": 0, "samples": n}
            if _key({**base, "label": "greedy-asym", "reweight": True, "target": args.ratio,
                     "allocation": "uniform"}) in done:
                continue
            ws = Workspace(str(SHARED / "models" / f"{name}.onnx"), {"input": calibration(dataset, 0, n)},
                           PruneOptions(samples=n))
            row = one_run(ws, test, base, "greedy-asym", True, args.ratio)
            _append(args.log, row)
            print(_line(row), flush=True)


def _reweights(choice: str) -> list:
    return {"yes": [True], "no": [False], "both": [True, False]}[choice]


def _append(log: Path, row: dict) -> None:
    log.parent.mkdir(exist_ok=True)
    with open(log, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def _line(r: dict) -> str:
    head = f"{r['model']} {r['label']} reweight={r['reweight']} {r['allocation']} seed={r['seed']} " \
           f"n={r['samples']} target={r['target']:g}"
    if "unreachable" in r:
        return f"{head}: unreachable"
    return f"{head}: ratio {r['ratio']:.2f} FLOPs {r['flops_ratio']:.2f} top-1 {r['top1']:.4f} {r['seconds']:.1f} s"


# -- report --------------------------------------------------------------------------------

def _mean_std(values: list) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def load(log: Path) -> list:
    """Logged runs; `--refit all` runs are labelled apart so both show side by side."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [{**r, "label": r["label"] + " refit-all"} if r.get("refit") == "all" else r for r in rows]


def load_peers(logs: list) -> list:
    """Peer runs (e.g. onnxsim's logs), labelled by method where they carry no label."""
    return [{**r, "label": r.get("label", r["method"]), "peer": True} for log in logs for r in load(log)]


def _greedy_asym_reference(r: dict) -> bool:
    """Our reference configuration: greedy asym with reweighting, seed 0, uniform, completed."""
    return (r["label"] == "greedy-asym" and r["reweight"] and r["seed"] == 0
            and r.get("allocation", "uniform") == "uniform" and "top1" in r)


def report(args) -> None:
    rows = load(args.log) + load_peers(args.include)
    by_model = defaultdict(list)
    for r in rows:
        by_model[r["model"]].append(r)
    for model, rs in by_model.items():
        main = [r for r in rs if (r["samples"] == 512 or r.get("peer")) and r.get("allocation") in ("uniform", None)]
        print(f"\n### {model}\n")
        pivot(main)
        print("\n<details><summary>every run: realised ratios, FLOPs, seconds</summary>\n")
        print("| method | reweight | target | ratio | FLOPs ratio | top-1 (mean ± std) | seeds | prune s |")
        print("|---|---|---|---|---|---|---|---|")
        groups = defaultdict(list)
        for r in main:
            groups[(r["target"], r["label"], r["reweight"])].append(r)
        for (target, label, reweight), g in sorted(groups.items(), key=lambda kv: (kv[0][0], _order(kv[0][1]),
                                                                                     not kv[0][2])):
            ok = [r for r in g if "top1" in r]
            if not ok:
                print(f"| {label} | {'yes' if reweight else 'no'} | {target:g} | unreachable | | | {len(g)} | |")
                continue
            print(f"| {label} | {'yes' if reweight else 'no'} | {target:g} | {statistics.mean(r['ratio'] for r in ok):.2f} "
                  f"| {_fmt(statistics.mean(r['flops_ratio'] for r in ok if r['flops_ratio']) if any(r['flops_ratio'] for r in ok) else None)} "
                  f"| {_mean_std([r['top1'] for r in ok])} | {len(ok)} | {statistics.mean(r['seconds'] for r in ok):.1f} |")
        print("\n</details>")
        sizes = sorted((r for r in rs if _greedy_asym_reference(r) and r["target"] == 4), key=lambda r: r["samples"])
        if len({r["samples"] for r in sizes}) > 1:
            print(f"\n#### calibration size: {model}\n")
            print("| calibration images | method | target | ratio | top-1 | prune s |\n|---|---|---|---|---|---|")
            for r in sizes:
                print(f"| {r['samples']} | {r['label']} | {r['target']:g} | {r['ratio']:.2f} | {r['top1']:.4f} | "
                      f"{r['seconds']:.1f} |")
        error = [r for r in rs if r.get("allocation") == "error" and "top1" in r]
        if error:
            print(f"\n#### allocation: {model}\n")
            print("| method | target | allocation | ratio | FLOPs ratio | top-1 | seed | prune s |")
            print("|---|---|---|---|---|---|---|---|")
            pairs = [u for u in main if "top1" in u and any(_same_run(u, e) for e in error)] + error
            for r in sorted(pairs, key=lambda r: (r["target"], r["label"], r["seed"], r["allocation"] != "uniform")):
                print(f"| {r['label']} | {r['target']:g} | {r['allocation']} | {r['ratio']:.2f} | "
                      f"{_fmt(r['flops_ratio'])} | {r['top1']:.4f} | {r['seed']} | {r['seconds']:.1f} |")
        if args.plot:
            plot(model, main, args.plot_dir / f"paper_{model}.png")


def peers(args) -> None:
    """Each peer run (e.g. onnxsim's log) beside our greedy asym with reweighting at the same
    target, seed 0, with our realised ratio."""
    ours = {(r["model"], r["target"]): r for r in load(args.log) if _greedy_asym_reference(r) and r["samples"] == 512}
    models = list(DATASET)
    rows = load_peers(args.include)
    rows.sort(key=lambda r: (models.index(r["model"]), r["label"].split("+")[0], r["target"], "+" in r["label"]))
    print("| model | method | target | ratio | FLOPs ratio | top-1 | ours at the same target: greedy asym + reweight |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        o = ours.get((r["model"], r["target"]))
        mine = f"{o['top1']:.4f} ({o['ratio']:.2f}x)" if o else "not run"
        print(f"| {r['model']} | {r['label']} | {r['target']:g} | {r['ratio']:.2f} | {_fmt(r['flops_ratio'])} | "
              f"{r['top1']:.4f} | {mine} |")


def pivot(rows: list) -> None:
    """top-1 (mean ± std over seeds) with one column per target ratio."""
    targets = sorted({r["target"] for r in rows})
    cells = defaultdict(list)
    for r in rows:
        if "top1" in r:
            cells[(r["label"], r["reweight"], r["target"])].append(r["top1"])
    keys = sorted({(r["label"], r["reweight"]) for r in rows}, key=lambda k: (not k[1], _order(k[0]), k[0]))
    print("| method | reweight | " + " | ".join(f"{t:g}x" for t in targets) + " |")
    print("|---|---|" + "---|" * len(targets))
    for label, reweight in keys:
        vals = [_mean_std(cells[(label, reweight, t)]) if cells[(label, reweight, t)] else "–" for t in targets]
        print(f"| {label} | {'yes' if reweight else 'no'} | " + " | ".join(vals) + " |")


def _same_run(a: dict, b: dict) -> bool:
    """Same configuration but for the allocation."""
    return all(a[k] == b[k] for k in ("label", "reweight", "seed", "samples", "target"))


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _order(label: str) -> int:
    names, base = list(CONFIGS), label.split(" ")[0]
    return names.index(base) if base in names else len(names)


def plot(model: str, rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, reweight in zip(axes, (True, False)):
        lines = defaultdict(lambda: defaultdict(list))
        for r in rows:
            if r["reweight"] == reweight and "top1" in r:
                lines[r["label"]][r["target"]].append(r)
        for label in sorted(lines, key=_order):
            pts = sorted(lines[label].items())
            x = [statistics.mean(r["ratio"] for r in rs) for _, rs in pts]
            y = [statistics.mean(r["top1"] for r in rs) for _, rs in pts]
            err = [statistics.stdev([r["top1"] for r in rs]) if len(rs) > 1 else 0.0 for _, rs in pts]
            ax.errorbar(x, y, yerr=err, marker="o", ms=3, capsize=2, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("compression (parameters original / pruned)")
        ax.set_title(f"{model}: {'with' if reweight else 'without'} reweighting")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("top-1 (no fine-tuning)")
    for ax in axes:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nwrote {path}", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="accuracy vs compression for every configuration")
    r.add_argument("--model", action="append", required=True, choices=sorted(DATASET))
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--ratios", default="2,4,8,16,32")
    r.add_argument("--configs", default=",".join(CONFIGS))
    r.add_argument("--reweight", choices=["yes", "no", "both"], default="both")
    r.add_argument("--allocation", default="uniform", help="uniform, error or uniform,error")
    r.add_argument("--samples", type=int, default=512)
    r.add_argument("--refit", choices=["consumers", "all"], default="consumers",
                   help="refit of the reweighting seq/asym runs (the tables before issue 13 are consumers)")
    c = sub.add_parser("calib-size", help="greedy asym at one ratio for several calibration sizes")
    c.add_argument("--model", action="append", required=True, choices=sorted(DATASET))
    c.add_argument("--sizes", default="128,512,2048,5000")
    c.add_argument("--ratio", type=float, default=4.0)
    t = sub.add_parser("report", help="markdown tables and plots from the log")
    t.add_argument("--plot", action="store_true", help="also draw docs/paper_<model>.png")
    t.add_argument("--plot-dir", type=Path, default=ROOT / "docs")
    t.add_argument("--include", type=Path, action="append", default=[], help="more JSON-lines logs (e.g. onnxsim)")
    q = sub.add_parser("peers", help="peer runs beside our greedy asym at the same target (seed 0)")
    q.add_argument("--include", type=Path, action="append", required=True, help="the peers' JSON-lines logs")
    for s in (r, c, t, q):
        s.add_argument("--log", type=Path, default=LOG)
    a = p.parse_args()
    {"run": run, "calib-size": calib_size, "report": report, "peers": peers}[a.command](a)


if __name__ == "__main__":
    main()
