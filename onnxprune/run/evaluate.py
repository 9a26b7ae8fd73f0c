"""`onnxprune eval`: how good a (pruned) model is on a data file.

With labels: top-1 accuracy of the first output's argmax. With a reference model (the
original): per output the relative squared error ||y - y_ref||² / ||y_ref||², cosine
similarity and, for classifier-like outputs, argmax agreement with the reference (metrics.py)
— none needs labels. Padding tokens are left out of token-wise outputs when the data has a
row mask (rowmask.py: `attention_mask` by default).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx

from ..capture import runtime
from ..io.calib import Calibration, from_arrays, input_specs, read_arrays
from ..errors import OnnxPruneError
from .metrics import METRICS, OutputComparison
from .rowmask import report_notes, resolve as resolve_row_mask

__all__ = ["EvalData", "OutputComparison", "evaluate", "load_eval_data"]

LABEL_KEYS = ("label", "labels", "y")


@dataclass(frozen=True)
class EvalData:
    inputs: Calibration
    labels: np.ndarray | None       # (samples,) class indices
    label_key: str | None


def load_eval_data(path: str | os.PathLike, model: onnx.ModelProto, labels: str | None = None,
                   samples: int | None = None) -> EvalData:
    """Model inputs (matched like calibration data) and, if present, labels from a .npz.

    `labels` names the label array; without it the first of LABEL_KEYS that is not a model
    input is used when the file has one. Every sample is used unless `samples` is given.
    """
    arrays = read_arrays(path, "evaluation data")
    specs = input_specs(model)
    names = {s.name for s in specs}
    if labels is not None and labels not in arrays:
        raise OnnxPruneError(f"{path} has no array '{labels}' for --labels (it has {', '.join(sorted(arrays))})")
    key = labels or next((k for k in LABEL_KEYS if k in arrays and k not in names), None)
    y = arrays.pop(key) if key is not None else None
    if not arrays:
        raise OnnxPruneError(f"{path} holds only labels; it needs one array per model input")
    first = next(iter(arrays.values()))
    available = first.shape[0] if first.ndim else 0
    n = available if samples is None else samples
    inputs = from_arrays(arrays, specs, n, str(path))
    return EvalData(inputs, None if y is None else _labels(y, available, path, key)[:inputs.samples], key)


def _labels(y, samples: int, path, key) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)                    # one-hot
    y = y.reshape(-1) if y.ndim == 2 else y
    if y.ndim != 1 or y.shape[0] != samples:
        raise OnnxPruneError(f"{path}: labels '{key}' have shape {np.shape(y)}; expected one class index per "
                             f"sample ({samples})")
    if y.dtype.kind == "f" and not np.all(np.mod(y, 1) == 0):
        raise OnnxPruneError(f"{path}: labels '{key}' are not class indices")
    return y.astype(np.int64)


def evaluate(model: onnx.ModelProto, data: EvalData, reference: onnx.ModelProto | None = None,
             batch_size: int = 256, device: str = "cpu", row_mask=None, metric: str = "auto") -> dict:
    """{"samples", "top1" (None without labels), "reference" (None without a reference),
    "notes"}; `row_mask` and `metric` as the prune options of the same names."""
    if metric not in METRICS:
        raise OnnxPruneError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if data.labels is None and reference is None:
        raise OnnxPruneError("nothing to evaluate: the data has no labels (name them with --labels KEY) and no "
                             "--reference model was given")
    names = [o.name for o in model.graph.output]
    if reference is not None:
        ref_names = [o.name for o in reference.graph.output]
        if ref_names != names:
            raise OnnxPruneError(f"the reference's outputs {ref_names} differ from the model's {names}")
    mask = resolve_row_mask([s.name for s in input_specs(model)], data.inputs, row_mask)
    sess = runtime.session(model, device)
    ref = runtime.session(reference, device) if reference is not None else None
    compare = OutputComparison(names, metric) if reference is not None else None
    correct, start = 0, 0
    for feeds in runtime.batches(data.inputs.arrays, batch_size):
        outputs = runtime.run(sess, feeds, names)
        count = next(iter(feeds.values())).shape[0]
        if data.labels is not None:
            pred = np.asarray(outputs[0]).reshape(count, -1).argmax(axis=1)
            correct += int(np.sum(pred == data.labels[start:start + count]))
        if compare is not None:
            compare.add(runtime.run(ref, feeds, names), outputs, feeds.get(mask.name) if mask.name else None)
        start += count
    notes = report_notes(mask, None) if compare is not None else []
    if compare is not None and mask.origin == "option" and not any(m.masked for m in compare.outputs.values()):
        notes.append(f"--row-mask {mask.name} lines up with no [samples, tokens, ...] output: every output was "
                     "compared whole")
    return {
        "samples": data.inputs.samples,
        "top1": correct / data.inputs.samples if data.labels is not None else None,
        "reference": {**compare.result(), "row_mask": mask.name} if compare is not None else None,
        "notes": notes,
    }
