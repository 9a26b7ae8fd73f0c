"""The `verify` stage: the pruned model passes the full ONNX checker, loads in onnxruntime,
and we measure how far its outputs moved from the original's on calibration inputs."""
from __future__ import annotations

import onnx

from ..capture import runtime
from ..io.calib import Calibration
from .metrics import OutputComparison
from ..io.largemodel import run_checker


def check(model: onnx.ModelProto) -> None:
    """Full checker (with strict shape inference); a failure here is a bug in onnxprune, so it
    keeps its traceback. Models over 2 GB are checked through their skeleton."""
    run_checker(model, full_check=True)


def output_fidelity(original: onnx.ModelProto, pruned: onnx.ModelProto, calib: Calibration, batch_size: int,
                    device: str, row_mask: str | None = None, metric: str = "auto") -> dict:
    """Per-output relative squared error, cosine and (classifier-like outputs) argmax
    agreement over the given samples (run/metrics.py), padding tokens of token-wise outputs
    left out by the input `row_mask`."""
    names = [o.name for o in pruned.graph.output]
    runtime.release_memory()            # the surgery check's sessions, before two of the whole model
    ref = runtime.session(original, device)
    new = runtime.session(pruned, device, built="the pruned model")
    compare = OutputComparison(names, metric)
    for feeds in runtime.batches(calib.arrays, batch_size):
        compare.add(runtime.run(ref, feeds, names), runtime.run(new, feeds, names),
                    feeds.get(row_mask) if row_mask else None)
    return {"samples": calib.samples, **compare.result()}


# The measured output error may exceed what the statistics predict (the groups' summed
# relative reconstruction errors) when later layers amplify it, but not by this much: past
# both bounds something the statistics do not see changed the model (a wrong surgery).
DRIFT_FACTOR, DRIFT_FLOOR = 10.0, 0.1


def drift_warning(groups: list, fidelity: dict) -> str | None:
    """A warning when the measured output error is far above the statistics' prediction."""
    errors = [g["rel_error"] for g in groups
              if g["rel_error"] is not None and g["channels_after"] < g["channels_before"]]
    measured = fidelity.get("output_rel_error") or {}
    if not errors or not measured:
        return None
    predicted, (name, worst) = sum(errors), max(measured.items(), key=lambda kv: kv[1])
    if worst > DRIFT_FLOOR and worst > DRIFT_FACTOR * predicted:
        return (f"the pruned model's output {name} moved by a relative error of {worst:.3g} on the calibration "
                f"samples, far above the {predicted:.3g} the statistics predict (summed over the groups); "
                "check the pruned model before using it, and please report this model")
    return None
