"""`onnxprune sweep`: one model, several methods x compression ratios, one table.

The calibration file is split: the first samples prune, the last `holdout` ones (never seen
by pruning) measure each pruned model's fidelity to the original. One Workspace serves every
run, so the model is analysed and the calibration loaded once; in layer mode the statistics
are captured and the greedy order computed once for all ratios (its picks are nested), while
seq/asym runs recompute what depends on the earlier groups. Files are written into a
temporary folder inside OUT and moved into place only when every run succeeded.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from ..io.calib import DEFAULT_SAMPLES, Calibration, from_arrays, input_specs, read_arrays
from ..errors import OnnxPruneError
from .evaluate import EvalData, evaluate, load_eval_data
from ..graph.index import float_param_count
from ..io.atomic import save_model
from ..io.modelio import load_model
from .pipeline import PruneOptions, Workspace

SCHEMA_VERSION = 1
COLUMNS = ["method", "mode", "reweight", "allocation", "target_ratio", "compression", "params", "flops",
           "flops_ratio", "seconds", "holdout_rel_error", "holdout_agreement", "holdout_cosine", "top1", "file"]


def plot_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def sweep(model_path, calib_path, ratios: list, methods: list, out_dir, *, holdout: int = 256,
          eval_path=None, labels: str | None = None, plot: bool | None = None, force: bool = False,
          progress=None, **options) -> dict:
    """Run every (method, ratio), write OUT/<stem>.<method>.<ratio>x.onnx, sweep.csv,
    sweep.json and (with matplotlib, unless plot=False) sweep.png; return the JSON document."""
    if not ratios or not methods:
        raise OnnxPruneError("give at least one --compression ratio and one method")
    if plot and not plot_available():
        raise OnnxPruneError("--plot needs matplotlib: pip install 'onnxprune[plot]'")
    plot = plot_available() if plot is None else plot
    methods, ratios = list(dict.fromkeys(methods)), sorted(set(ratios))
    base = PruneOptions.of(method=methods[0], compression=ratios[0], **options)
    runs = [replace(base, method=m, compression=r) for m in methods for r in ratios]
    for opts in runs:
        opts.validate()
    out_dir = Path(out_dir)
    model = load_model(model_path)
    stem = Path(model_path).stem
    files = {_key(o): f"{stem}.{o.method}.{o.compression:g}x.onnx" for o in runs}
    outputs = list(files.values()) + ["sweep.csv", "sweep.json"] + (["sweep.png"] if plot else [])
    _check_out_dir(out_dir, outputs, force, [model_path, calib_path, eval_path])
    prune_part, held_out = _split(model, calib_path, holdout, base.samples)
    eval_data = _eval_data(eval_path, model, labels)
    ws = Workspace(model, prune_part, replace(base, samples=prune_part.samples), source=str(model_path))
    try:
        return _sweep(ws, runs, files, out_dir, held_out, eval_data, plot, progress,
                      lambda rows: _document(model_path, ws, held_out, eval_path, eval_data, base, rows))
    finally:
        ws.close()              # the Ray capture workers, if any


def _sweep(ws, runs, files, out_dir: Path, held_out, eval_data, plot: bool, progress, document) -> dict:
    for opts in runs:
        ws.check_budget(opts)
    created = not out_dir.exists()
    out_dir.mkdir(exist_ok=True)
    try:
        return _run(ws, runs, files, out_dir, held_out, eval_data, plot, progress, document)
    except BaseException:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise


def _run(ws, runs, files, out_dir: Path, held_out, eval_data, plot: bool, progress, document) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".sweep-") as tmp:
        for opts in runs:
            t = time.perf_counter()
            pruned, report = ws.prune(opts, progress, include_setup=False)
            seconds = time.perf_counter() - t
            fidelity = evaluate(pruned, EvalData(held_out, None, None), ws.model, ws.batch_size, ws.device,
                                row_mask=ws.row_mask or False, metric=opts.metric)
            top1 = evaluate(pruned, eval_data, None, ws.batch_size, ws.device)["top1"] if eval_data else None
            save_model(pruned, Path(tmp) / files[_key(opts)])
            rows.append(_row(opts, report, seconds, fidelity["reference"], top1, files[_key(opts)]))
        doc = document(rows)
        _write_table(Path(tmp), rows, doc)
        if plot:
            write_plot(rows, Path(tmp) / "sweep.png", headline_column(doc))
        for path in sorted(Path(tmp).iterdir()):      # models, their external data, tables, plot
            os.replace(path, out_dir / path.name)
    return doc


def headline_column(doc: dict) -> str:
    """The column the table and plot lead with: top-1 with --eval, else held-out argmax
    agreement for classifier-like outputs and held-out cosine for the others (metrics.py)."""
    if doc["eval"]:
        return "top1"
    return "holdout_agreement" if any(r["holdout_agreement"] is not None for r in doc["rows"]) else "holdout_cosine"


def _key(opts: PruneOptions) -> tuple:
    return opts.method, opts.compression


def _split(model: onnx.ModelProto, calib_path, holdout: int, samples: int | None) -> tuple:
    """(pruning part: the first `samples` [512], held-out part: the last `holdout` samples)."""
    if holdout < 1:
        raise OnnxPruneError(f"--holdout must be at least 1, got {holdout}")
    arrays = read_arrays(calib_path)
    first = next(iter(arrays.values())) if arrays else np.zeros(())
    total = first.shape[0] if first.ndim else 0
    if total <= holdout:
        raise OnnxPruneError(f"{calib_path} has {total} samples; the sweep keeps the last --holdout {holdout} for "
                             "measuring fidelity and needs more to prune with (lower --holdout or add samples)")
    available = total - holdout
    if samples is not None and samples > available:
        raise OnnxPruneError(f"--samples {samples} overlaps the last --holdout {holdout} of the {total} samples in "
                             f"{calib_path}; use --samples {available} or less")
    everything = from_arrays(arrays, input_specs(model), total, str(calib_path))
    held_out = Calibration({k: v[total - holdout:] for k, v in everything.arrays.items()},
                           f"{calib_path} (last {holdout})")
    return everything.head(min(samples or DEFAULT_SAMPLES, available)), held_out


def _eval_data(path, model, labels) -> EvalData | None:
    if path is None:
        return None
    data = load_eval_data(path, model, labels)
    if data.labels is None:
        raise OnnxPruneError(f"--eval {path} has no labels (arrays 'label', 'labels' or 'y', or name one with "
                             "--labels KEY)")
    return data


def _check_out_dir(out_dir: Path, names: list, force: bool, inputs: list) -> None:
    """OUT is a writable directory (or can be created in one) and holds none of `names`
    unless --force; it is created only after every other check passed."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OnnxPruneError(f"--out {out_dir} exists and is not a directory")
    folder = out_dir if out_dir.exists() else out_dir.parent
    if not folder.is_dir():
        raise OnnxPruneError(f"--out {out_dir}: its parent directory {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise OnnxPruneError(f"--out {out_dir}: {folder} is not writable")
    resolved = {Path(p).resolve() for p in inputs if p is not None}
    for name in names:
        path = out_dir / name
        if path.resolve() in resolved:
            raise OnnxPruneError(f"{path} is an input of the sweep; choose another --out")
        if path.exists() and not force:
            raise OnnxPruneError(f"{path} exists; pass --force to overwrite it")


def _row(opts, report, seconds, fidelity, top1, file) -> dict:
    first = next(iter(fidelity["output_rel_error"].values()))
    cosine = next(iter(fidelity["outputs"].values()))["cosine_mean"]
    d = report.to_dict()
    return {
        "method": opts.method, "mode": opts.mode, "reweight": report.reweight, "allocation": d["budget"]["allocation"],
        "target_ratio": opts.compression, "compression": round(report.compression, 4), "params": report.params_after,
        "flops": report.flops_after, "flops_ratio": d["flops_ratio"], "seconds": round(seconds, 3),
        "holdout_rel_error": first, "holdout_agreement": fidelity["argmax_agreement"],
        "holdout_cosine": cosine, "top1": top1, "file": file,
    }


def _document(model_path, ws, held_out, eval_path, eval_data, base, rows) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "input": str(model_path),
        "params_before": float_param_count(ws.model),
        "calibration": {"source": ws.calibration.source, "samples": ws.calibration.samples,
                        "holdout": held_out.samples},
        "eval": {"source": str(eval_path), "samples": eval_data.inputs.samples} if eval_data else None,
        "options": {"mode": base.mode, "reweight": base.reweight, "allocation": base.allocation,
                    "target": base.target, "min_channels": base.min_channels, "round_to": base.round_to,
                    "seed": base.seed, "device": ws.device},
        "setup_seconds": round(ws.setup_seconds, 3),
        "rows": rows,
    }


def _write_table(folder: Path, rows: list, doc: dict) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (folder / "sweep.csv").write_text(buf.getvalue())
    (folder / "sweep.json").write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")


def write_plot(rows: list, path: Path, metric: str) -> None:
    """metric vs realised compression (log x axis), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((r["compression"], r[metric]) for r in rows if r["method"] == method and r[metric] is not None)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("compression (parameters, original / pruned)")
    ax.set_ylabel({"top1": "top-1 accuracy", "holdout_agreement": "argmax agreement with the original "
                   "(held-out)", "holdout_cosine": "cosine with the original (held-out)"}[metric])
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

