"""Peer comparison: structured channel pruning by the PyPI package onnxsim 0.8.1 on the ../shared models.

For each model (lenet_mnist, resnet56_cifar10), each onnxsim method and each target compression
(2, 4, 8 by default) this finds, by bisection over onnxsim's `sparsity` argument, the smallest
sparsity whose realised compression is >= the target, so the realised ratio is as close to the
target as onnxsim's per-layer rounding allows without going below it. onnxsim only prunes the
producer -> consumer chains it recognises, so a target can be out of reach: the run then uses the
largest sparsity onnxsim accepts (1 - 1e-6; it rejects 1.0) and the note says so.

Methods:
  onnxsim-magnitude            onnxsim.pruning.apply_structured_pruning(model, sparsity)
                               (default importance_norm "l2", per-layer, global_sparsity=False)
  onnxsim-wanda                onnxsim.pruning.apply_structured_wanda_pruning(model, calibration_data,
                               sparsity=...), calibration_data = our 512 calibration images, one batch
  onnxsim-*+finetune           (--finetune) onnxsim.apply_pruning_finetune(original, pruned, our 512
                               images): label-free ridge refit of surviving MatMul/Gemm layers on the
                               pruned model found above; `seconds` = prune + finetune.

Compression ("ratio") is the paper's: elements of every floating-point initializer, plus float
tensors held by Constant nodes, in the original divided by the same count in the pruned model.
flops_ratio: 2 x MACs of Conv/Gemm/MatMul for one sample (shapes by onnx shape inference), original
over pruned, as onnxprune.budget.flops counts them. top-1: the whole test set, onnxruntime CPU, batches of
1000. Also checked: onnx.checker.check_model(full_check=True) and that onnxruntime runs the model.
Protocol as DESIGN.md section 5: seed s calibrates on calib images [512*s, 512*(s+1)).

Runs in its own environment (onnxprune is not needed and not imported), created with

    python -m venv venv-onnxsim && venv-onnxsim/bin/pip install onnxsim==0.8.1 onnxruntime numpy

and is run from the repository root as

    venv-onnxsim/bin/python tools/bench_onnxsim.py [--model lenet_mnist --model resnet56_cifar10]
        [--method magnitude --method wanda] [--compression 2 --compression 4 --compression 8]
        [--seed 0] [--finetune] [--log .bench/onnxsim.jsonl] [--keep DIR]

It prints a markdown table and appends one JSON object per run to --log.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATASET = {"lenet_mnist": "mnist", "resnet56_cifar10": "cifar10", "vgg11_bn_cifar10": "cifar10"}
FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
S_MAX = 1 - 1e-6          # onnxsim requires sparsity in [0, 1)
TOL = 1e-5                # bisection resolution; per-layer step points k/n are >= 1/(120*119) apart here
SAMPLES = 512


def model_input(x: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 NCHW in [0, 1] (the models normalise internally)."""
    x = x.astype(np.float32) / 255
    return x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)


def first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return f"{type(e).__name__}: {text.splitlines()[0]}"[:300]


# ---------------------------------------------------------------- measures

def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    yield from _graphs(g)


def float_elements(model: onnx.ModelProto) -> int:
    """Elements of every floating-point initializer and Constant-node float tensor (all subgraphs)."""
    total = 0
    for g in _graphs(model.graph):
        total += sum(math.prod(t.dims) for t in g.initializer if t.data_type in FLOATS)
        for node in g.node:
            if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
                continue
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in FLOATS:
                    total += math.prod(a.t.dims)
                elif a.name == "value_float":
                    total += 1
                elif a.name == "value_floats":
                    total += len(a.floats)
    return total


def model_flops(model: onnx.ModelProto) -> int | None:
    """2 x MACs of Conv/Gemm/MatMul for one sample; None if a needed shape is unknown."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]                 # a pruner may leave stale intermediate shapes
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:
        return None
    shapes = {t.name: list(t.dims) for t in m.graph.initializer}
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]

    def dims(name):
        d = shapes.get(name)
        if d is None:
            return None
        d = list(d)
        if d and d[0] is None:
            d[0] = 1
        return None if any(v is None for v in d) else d

    total = 0
    for node in m.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.domain not in ("", "ai.onnx"):
            continue
        out, a, b = dims(node.output[0]), dims(node.input[0]), dims(node.input[1])
        if out is None or a is None or b is None:
            return None
        if node.op_type == "Conv":
            macs = math.prod(out) * math.prod(b[1:])
        elif node.op_type == "Gemm":
            trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
            macs = math.prod(out) * (a[0] if trans_a else a[1])
        else:
            macs = math.prod(out) * (a[-1] if len(a) > 1 else a[0])
        total += macs
    return 2 * total


def top1(model_bytes: bytes, x: np.ndarray, y: np.ndarray) -> float:
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    pred = np.concatenate([sess.run(None, {"input": x[i:i + 1000]})[0].argmax(1) for i in range(0, len(x), 1000)])
    return float(np.mean(pred == y))


def checker(path: Path) -> str | None:
    """None if check_model(full_check=True) passes, else the error's first line."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        return None
    except Exception as e:
        return first_line(e)


# ---------------------------------------------------------------- onnxsim calls

def run_onnxsim(method: str, original: bytes, sparsity: float, calib: list) -> tuple:
    """(pruned ModelProto, seconds of the onnxsim call). The input model is loaded fresh each time:
    onnxsim resizes tensors in place."""
    import onnxsim.pruning as P
    model = onnx.load_from_string(original)
    start = time.perf_counter()
    if method == "magnitude":
        pruned = P.apply_structured_pruning(model, sparsity=sparsity)
    else:
        pruned = P.apply_structured_wanda_pruning(model, calibration_data=calib, sparsity=sparsity)
    return pruned, time.perf_counter() - start


def search(method: str, original: bytes, base: int, target: float, calib: list, cache: dict) -> tuple:
    """Smallest sparsity with realised ratio >= target (or S_MAX if unreachable).
    Returns (sparsity, pruned bytes, ratio, seconds, unreachable)."""
    def f(s: float):
        if s not in cache:
            pruned, secs = run_onnxsim(method, original, s, calib)
            data = pruned.SerializeToString()
            cache[s] = (data, base / float_elements(pruned), secs)
        return cache[s]

    top = f(S_MAX)
    if top[1] < target:
        return S_MAX, top[0], top[1], top[2], True
    lo, hi = 0.0, S_MAX
    while hi - lo > TOL:
        mid = (lo + hi) / 2
        if f(mid)[1] >= target:
            hi = mid
        else:
            lo = mid
    data, ratio, secs = f(hi)
    return hi, data, ratio, secs, False


def pruned_layers(original: onnx.ModelProto, pruned: onnx.ModelProto) -> int:
    before = {t.name: tuple(t.dims) for t in original.graph.initializer}
    return sum(1 for t in pruned.graph.initializer if t.name in before and before[t.name] != tuple(t.dims))


# ---------------------------------------------------------------- main

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", choices=sorted(DATASET), help="default: lenet_mnist, resnet56_cifar10")
    p.add_argument("--method", action="append", choices=("magnitude", "wanda"), help="default: both")
    p.add_argument("--compression", action="append", type=float, help="target ratios (default 2, 4, 8)")
    p.add_argument("--seed", action="append", type=int, help="calibration window(s) (default 0)")
    p.add_argument("--finetune", action="store_true", help="also run onnxsim.apply_pruning_finetune on each result")
    p.add_argument("--log", type=Path, default=ROOT / ".bench" / "onnxsim.jsonl", help="JSON lines appended here")
    p.add_argument("--keep", type=Path, help="keep the pruned models in this folder")
    a = p.parse_args()
    import onnxsim
    print(f"onnxsim {getattr(onnxsim, '__version__', '?')}, onnx {onnx.__version__}, onnxruntime {ort.__version__}",
          file=sys.stderr)

    outdir = a.keep or Path(tempfile.mkdtemp(prefix="bench_onnxsim_"))
    outdir.mkdir(parents=True, exist_ok=True)
    a.log.parent.mkdir(parents=True, exist_ok=True)
    rows = ["| model | method | seed | target | sparsity | ratio | FLOPs ratio | top-1 | onnxsim s | file bytes | "
            "checker | ort | note |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)

    def emit(rec: dict, checker_err, ort_err) -> None:
        rec["note"] = "; ".join(x for x in [rec.get("note") or "", ("checker: " + checker_err) if checker_err else "",
                                             ("onnxruntime: " + ort_err) if ort_err else ""] if x) or None
        with a.log.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        fmt = lambda v, spec: "-" if v is None else format(v, spec)
        row = (f"| {rec['model']} | {rec['method']} | {rec['seed']} | {rec['target']:g} | {fmt(rec['sparsity'], '.5f')} | "
               f"{fmt(rec['ratio'], '.3f')} | {fmt(rec['flops_ratio'], '.3f')} | {fmt(rec['top1'], '.4f')} | "
               f"{fmt(rec['seconds'], '.3f')} | {fmt(rec['file_bytes'], 'd')} | {'fail' if checker_err else ('ok' if rec['ratio'] else '-')} | "
               f"{'fail' if ort_err else ('ok' if rec['top1'] is not None else '-')} | {rec['note'] or ''} |")
        rows.append(row)
        print(row, flush=True)

    for name in a.model or ["lenet_mnist", "resnet56_cifar10"]:
        ds = DATASET[name]
        original = (SHARED / "models" / f"{name}.onnx").read_bytes()
        orig_model = onnx.load_from_string(original)
        base, base_flops = float_elements(orig_model), model_flops(orig_model)
        test = np.load(SHARED / "data" / f"{ds}_test.npz")
        x_test, y_test = model_input(test["x"]), test["y"]
        calib_all = np.load(SHARED / "data" / f"{ds}_calib.npz")["x"]
        print(f"{name}: {base} float elements, {base_flops} FLOPs, original top-1 {top1(original, x_test, y_test):.4f}",
              file=sys.stderr, flush=True)
        for seed in a.seed or [0]:
            calib = [{"input": model_input(calib_all[SAMPLES * seed:SAMPLES * (seed + 1)])}]
            for method in a.method or ["magnitude", "wanda"]:
                cache: dict = {}
                for target in a.compression or [2.0, 4.0, 8.0]:
                    rec = {"model": name, "method": f"onnxsim-{method}", "mode": None, "reweight": False,
                           "allocation": None, "seed": seed, "samples": SAMPLES if method == "wanda" else 0,
                           "target": target, "ratio": None, "flops_ratio": None, "top1": None, "seconds": None,
                           "file_bytes": None, "sparsity": None, "note": None}
                    try:
                        s, data, ratio, secs, unreachable = search(method, original, base, target, calib, cache)
                    except Exception as e:
                        rec["note"] = "onnxsim failed: " + first_line(e)
                        emit(rec, None, None)
                        continue
                    variants = [(rec, data, secs, None)]
                    if a.finetune:
                        ft = dict(rec, method=f"onnxsim-{method}+finetune", reweight=True, samples=SAMPLES)
                        try:
                            start = time.perf_counter()
                            tuned = onnxsim.apply_pruning_finetune(onnx.load_from_string(original),
                                                                   onnx.load_from_string(data), calibration_data=calib)
                            ft_secs = time.perf_counter() - start
                            variants.append((ft, tuned.SerializeToString(), secs + ft_secs,
                                             f"finetune {ft_secs:.2f}s of it"))
                        except Exception as e:
                            ft["note"] = "onnxsim finetune failed: " + first_line(e)
                            emit(ft, None, None)
                    for r, blob, total_secs, extra in variants:
                        pm = onnx.load_from_string(blob)
                        path = outdir / f"{name}_{r['method']}_s{seed}_x{target:g}.onnx"
                        path.write_bytes(blob)
                        flops = model_flops(pm)
                        r.update(sparsity=s, ratio=round(base / float_elements(pm), 6), seconds=round(total_secs, 4),
                                 file_bytes=path.stat().st_size,
                                 flops_ratio=round(base_flops / flops, 6) if base_flops and flops else None)
                        notes = [f"{pruned_layers(orig_model, pm)} initializers resized"]
                        if unreachable:
                            notes.append(f"target unreachable: max ratio {ratio:.3f} at sparsity {S_MAX}")
                        if extra:
                            notes.append(extra)
                        r["note"] = "; ".join(notes)
                        ort_err = None
                        try:
                            r["top1"] = top1(blob, x_test, y_test)
                        except Exception as e:
                            ort_err = first_line(e)
                        emit(r, checker(path), ort_err)
    print(f"\npruned models in {outdir}", file=sys.stderr)


if __name__ == "__main__":
    main()
