"""Shapes that onnx's static inference leaves unknown, from two fallbacks, in this order:

1. onnxruntime's symbolic shape inference (it knows more ops, e.g. com.microsoft ones, and
   follows shape arithmetic further); no data needed.
2. Shapes measured by running the model on calibration data (only when some is given): every
   still-unknown tensor is made a model output and read on two runs that differ in batch size
   (2 samples, then 1) and in every dynamic non-batch input axis (full, then cut to half its
   length). A dim equal in both runs is taken as fixed, one that differs as dynamic; a
   tensor whose rank differs between the runs stays unknown. Where some dim is dynamic, a
   third run on one whole sample gives that sample's dims (GraphIndex.sample_dims), which is
   what FLOPs need (budget/flops.py counts attention over the calibration's sequence length).

Either only fills what is unknown (GraphIndex.fill_shapes), never overrides static shapes,
and records where each filled shape came from (GraphIndex.shape_sources) for the report.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..errors import OnnxPruneError
from ..graph.index import MEASURED_DYNAMIC, GraphIndex
from ..io.calib import Calibration, fixed_batch, input_specs
from . import runtime
from .prefix import typed_info


def infer_symbolic(model: onnx.ModelProto, index: GraphIndex) -> list:
    """Fill unknown shapes of `index` by symbolic inference; returns notes for the report."""
    unknown = index.unknown_shapes()
    if not unknown:
        return []
    try:
        found = runtime.symbolic_shapes(model)
    except OnnxPruneError as exc:
        return [f"{len(unknown)} tensor shape(s) unknown to static inference; {exc}"]
    finally:
        runtime.release_memory()        # its copies of the model
    filled = index.fill_shapes({t: found[t] for t in unknown if t in found}, "symbolic")
    notes = [_filled_note(filled, "came from onnxruntime's symbolic shape inference")] if filled else []
    left = len(index.unknown_shapes())
    if left:
        notes.append(f"{len(unknown)} tensor shape(s) unknown to static inference; symbolic shape inference "
                     f"left {left} of them unknown")
    return notes


def measure(model: onnx.ModelProto, index: GraphIndex, calibration: Calibration) -> list:
    """Fill still-unknown shapes of `index` from two runs on calibration samples; notes."""
    unknown = index.unknown_shapes()
    if not unknown:
        return []
    try:
        sess = _probe_session(model, index, unknown)      # one copy and one session for every run
        two_runs, one_sample = _feeds(model, calibration)
        first, second = (_run(sess, unknown, f) for f in two_runs)
        found = {}
        for name, a, b in zip(unknown, first, second):
            if a is not None and b is not None and a.ndim == b.ndim:
                found[name] = (helper.np_dtype_to_tensor_dtype(a.dtype),
                               tuple(int(x) if x == y else MEASURED_DYNAMIC for x, y in zip(a.shape, b.shape)))
        dynamic = [name for name, (_, dims) in found.items() if MEASURED_DYNAMIC in dims]
        if dynamic:
            index.sample_dims.update((name, tuple(int(x) for x in v.shape))
                                     for name, v in zip(unknown, _run(sess, unknown, one_sample)) if name in dynamic)
    except OnnxPruneError as exc:
        return [f"{len(unknown)} tensor shape(s) unknown to static and symbolic inference were not measured: {exc}"]
    filled = index.fill_shapes(found, "measured")
    return [_filled_note(filled, "were measured on two calibration runs")] if filled else []


def _filled_note(filled: list, how: str) -> str:
    shown = ", ".join(filled[:6]) + (f" and {len(filled) - 6} more" if len(filled) > 6 else "")
    return f"shapes of {len(filled)} tensor(s) unknown to static inference {how}: {shown}"


def _feeds(model: onnx.ModelProto, calibration: Calibration) -> tuple:
    """((first, second), one sample): the feeds of the two runs, (2 samples, full length) and
    (1 other sample, dynamic non-batch axes cut to half: 2L vs L/2, so a batch folded into
    another dim never looks fixed), and the first sample alone at full length, for its dims;
    a model with a fixed batch uses it in every run."""
    specs = input_specs(model)
    batch = fixed_batch(specs)
    first_n, second_n = (batch, batch) if batch else (2, 1)
    if calibration.samples < first_n + second_n:
        raise OnnxPruneError(f"it needs {first_n + second_n} calibration samples, there are {calibration.samples}")
    dynamic = {s.name: [a for a, d in enumerate(s.dims) if a > 0 and d is None] for s in specs}
    first, second = {}, {}
    for name, array in calibration.arrays.items():
        first[name] = np.ascontiguousarray(array[:first_n])
        part = np.asarray(array[first_n:first_n + second_n])
        cut = tuple(slice(None, max(1, part.shape[a] // 2)) if a in dynamic.get(name, ()) else slice(None)
                    for a in range(part.ndim))
        second[name] = np.ascontiguousarray(part[cut])
    one = {name: array[:batch or 1] for name, array in first.items()}
    return (first, second), one


def _probe_session(model: onnx.ModelProto, index: GraphIndex, tensors: list):
    """A CPU session of a copy of `model` that also outputs `tensors`."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    declared = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in declared:
            probe.graph.output.append(typed_info(name, index.elem_types.get(name)))
    return runtime.session(probe, "cpu")


def _run(sess, tensors: list, feeds: dict) -> list:
    """The arrays of `tensors` on one run (None for one that is not a tensor)."""
    try:
        values = runtime.run(sess, feeds, list(tensors))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise OnnxPruneError(f"onnxruntime fails on these calibration samples ({str(exc).splitlines()[0]})") from None
    return [v if isinstance(v, np.ndarray) else None for v in values]
