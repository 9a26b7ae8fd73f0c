"""The `verify` stage: the pruned model passes the full ONNX checker, loads in onnxruntime,
and we measure how far its outputs moved from the original's on calibration inputs."""
from __future__ import annotations

import onnx

from . import runtime
from .calib import Calibration
from .evaluate import OutputComparison
from .modelio import EXTERNAL_DATA_THRESHOLD


def check(model: onnx.ModelProto) -> None:
    """Full checker (with strict shape inference); a failure here is a bug in onnxprune."""
    if model.ByteSize() < EXTERNAL_DATA_THRESHOLD:
        onnx.checker.check_model(model, full_check=True)


def output_fidelity(original: onnx.ModelProto, pruned: onnx.ModelProto, calib: Calibration,
                    batch_size: int, device: str) -> dict:
    """Per-output relative squared error and argmax agreement over the given samples."""
    names = [o.name for o in original.graph.output]
    ref = runtime.session(original, device)
    new = runtime.session(pruned, device)
    compare = OutputComparison(names)
    for feeds in runtime.batches(calib.arrays, batch_size):
        compare.add(runtime.run(ref, feeds, names), runtime.run(new, feeds, names))
    return {"samples": calib.samples, **compare.result()}
