"""`onnxprune eval`: how good a (pruned) model is on a data file.

With labels: top-1 accuracy of the first output's argmax. With a reference model (the
original): agreement of the argmax with the reference's and the relative squared error of
every output, ||y - y_ref||² / ||y_ref||² — both need no labels.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx

from ..capture import runtime
from ..io.calib import Calibration, from_arrays, input_specs, read_arrays
from ..errors import OnnxPruneError

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


class OutputComparison:
    """Running relative error per output and argmax agreement of the first output."""

    def __init__(self, names: list):
        self.names = list(names)
        self.err = {n: 0.0 for n in names}
        self.energy = {n: 0.0 for n in names}
        self.agree = self.count = 0

    def add(self, reference: list, outputs: list) -> None:
        for n, y, z in zip(self.names, reference, outputs):
            y64, z64 = np.asarray(y, dtype=np.float64), np.asarray(z, dtype=np.float64)
            self.err[n] += float(np.sum((y64 - z64) ** 2))
            self.energy[n] += float(np.sum(y64 ** 2))
        first_y, first_z = np.asarray(reference[0]), np.asarray(outputs[0])
        if first_y.ndim >= 2:
            self.agree += int(np.sum(first_y.argmax(-1) == first_z.argmax(-1)))
            self.count += int(np.prod(first_y.shape[:-1]))

    def result(self) -> dict:
        rel = {n: (self.err[n] / self.energy[n] if self.energy[n] > 0 else self.err[n]) for n in self.names}
        return {"output_rel_error": rel, "argmax_agreement": self.agree / self.count if self.count else None}


def evaluate(model: onnx.ModelProto, data: EvalData, reference: onnx.ModelProto | None = None,
             batch_size: int = 256, device: str = "cpu") -> dict:
    """{"samples", "top1" (None without labels), "reference" (None without a reference)}."""
    if data.labels is None and reference is None:
        raise OnnxPruneError("nothing to evaluate: the data has no labels (name them with --labels KEY) and no "
                             "--reference model was given")
    names = [o.name for o in model.graph.output]
    if reference is not None:
        ref_names = [o.name for o in reference.graph.output]
        if ref_names != names:
            raise OnnxPruneError(f"the reference's outputs {ref_names} differ from the model's {names}")
    sess = runtime.session(model, device)
    ref = runtime.session(reference, device) if reference is not None else None
    compare = OutputComparison(names) if reference is not None else None
    correct, start = 0, 0
    for feeds in runtime.batches(data.inputs.arrays, batch_size):
        outputs = runtime.run(sess, feeds, names)
        count = next(iter(feeds.values())).shape[0]
        if data.labels is not None:
            pred = np.asarray(outputs[0]).reshape(count, -1).argmax(axis=1)
            correct += int(np.sum(pred == data.labels[start:start + count]))
        if compare is not None:
            compare.add(runtime.run(ref, feeds, names), outputs)
        start += count
    return {
        "samples": data.inputs.samples,
        "top1": correct / data.inputs.samples if data.labels is not None else None,
        "reference": compare.result() if compare is not None else None,
    }
