"""The `verify` stage: the pruned model passes the full ONNX checker, loads in onnxruntime,
and we measure how far its outputs moved from the original's on calibration inputs."""
from __future__ import annotations

import numpy as np
import onnx

from . import runtime
from .calib import Calibration
from .largemodel import run_checker


def check(model: onnx.ModelProto) -> None:
    """Full checker (with strict shape inference); a failure here is a bug in onnxprune, so it
    keeps its traceback. Models over 2 GB are checked through their skeleton."""
    run_checker(model, full_check=True)


def output_fidelity(ref, pruned: onnx.ModelProto, calib: Calibration, batch_size: int, device: str) -> dict:
    """Per-output relative squared error and argmax agreement over the given samples;
    `ref` is an onnxruntime session of the original model (made when the run started)."""
    names = [o.name for o in pruned.graph.output]
    new = runtime.session(pruned, device)
    err = {n: 0.0 for n in names}
    energy = {n: 0.0 for n in names}
    agree, count = 0, 0
    for feeds in runtime.batches(calib.arrays, batch_size):
        ys = runtime.run(ref, feeds, names)
        zs = runtime.run(new, feeds, names)
        for n, y, z in zip(names, ys, zs):
            y64, z64 = np.asarray(y, dtype=np.float64), np.asarray(z, dtype=np.float64)
            err[n] += float(np.sum((y64 - z64) ** 2))
            energy[n] += float(np.sum(y64 ** 2))
        first_y, first_z = np.asarray(ys[0]), np.asarray(zs[0])
        if first_y.ndim >= 2:
            agree += int(np.sum(first_y.argmax(-1) == first_z.argmax(-1)))
            count += int(np.prod(first_y.shape[:-1]))
    rel = {n: (err[n] / energy[n] if energy[n] > 0 else err[n]) for n in names}
    return {
        "samples": calib.samples,
        "output_rel_error": rel,
        "argmax_agreement": agree / count if count else None,
    }
