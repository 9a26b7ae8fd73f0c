"""The `verify` stage: the pruned model passes the full ONNX checker, loads in onnxruntime,
and we measure how far its outputs moved from the original's on calibration inputs."""
from __future__ import annotations

import onnx

from ..capture import runtime
from ..io.calib import Calibration
from .evaluate import OutputComparison
from ..io.largemodel import run_checker


def check(model: onnx.ModelProto) -> None:
    """Full checker (with strict shape inference); a failure here is a bug in onnxprune, so it
    keeps its traceback. Models over 2 GB are checked through their skeleton."""
    run_checker(model, full_check=True)


def output_fidelity(ref, pruned: onnx.ModelProto, calib: Calibration, batch_size: int, device: str) -> dict:
    """Per-output relative squared error and argmax agreement over the given samples;
    `ref` is an onnxruntime session of the original model (made when the run started)."""
    names = [o.name for o in pruned.graph.output]
    new = runtime.session(pruned, device)
    compare = OutputComparison(names)
    for feeds in runtime.batches(calib.arrays, batch_size):
        compare.add(runtime.run(ref, feeds, names), runtime.run(new, feeds, names))
    return {"samples": calib.samples, **compare.result()}
