"""The surgery check, run in every prune before anything is written.

Whatever a rule of the analysis or the rewrite gets wrong (a wrong row, a parameter sliced on
the wrong axis, a count left stale), the kept channels then compute something else. So the
groups' surgery is done a second time with the consumers' original weight rows of the kept
channels (no refit), and that model must compute, on a few samples, what the original model
computes when every consumer's rows of the removed channels are zero (rewrite/masked.py).
Both are compared at each pruned group's consumer outputs (the kept output columns where a
consumer is itself pruned later), in topological order, so a failure names the first wrong
group, and then at the model's floating-point outputs. A failure is an InternalError: the
run stops and writes nothing. The refitted model shares every structural step with the model
checked here; only the consumers' weight values differ.
"""
from __future__ import annotations

import numpy as np
import onnx

from ..capture import runtime
from ..errors import InternalError
from ..graph.index import GraphIndex
from ..graph.layout import Alive
from ..io.calib import fixed_batch, input_specs
from ..io.largemodel import is_large
from ..rewrite.apply import apply_group
from ..rewrite.masked import masked_original
from ..rewrite.weights import consumer_matrix, consumer_update
from ..solve.problem import ChannelView

SAMPLES = 8
# Largest |difference| allowed, relative to max(1, largest |value|) of the compared tensor: the
# two models add the same products in a different order (zero rows vs no rows).
TOLERANCE = {np.dtype(np.float16): 1e-2, np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-9}


def surgery_check(session, kept: dict) -> dict:
    """{"samples", "max_abs_diff", "passed"} (or {"skipped": reason}); raises InternalError."""
    groups = [g for g in session.groups if len(kept[g.name]) < g.channels]
    if not groups:
        return {"samples": 0, "max_abs_diff": 0.0, "passed": True}
    feeds, reason = _samples(session)
    if feeds is None:
        return {"skipped": reason}
    structural, alive = _without_refit(session.model, groups, kept)
    reference = masked_original(session.model, groups, kept)
    watched = [(g, c, _output(session.index, c)) for g in groups for c in g.consumers]
    outputs = [o.name for o in session.model.graph.output]
    names = list(dict.fromkeys([name for _, _, name in watched] + outputs))
    got = _run(structural, feeds, names, session.device, session.batch_size)
    want = _run(reference, feeds, names, session.device, session.batch_size)
    worst = 0.0
    for g, c, name in watched:
        mask = alive.kept.get(c.node)
        expected = want[name] if mask is None else np.compress(mask, want[name], axis=_channel_axis(c, want[name]))
        worst = max(worst, _compare(got[name], expected, f"group {g.name} (output of its consumer {c.node})"))
    for name in outputs:
        if np.issubdtype(want[name].dtype, np.floating):
            worst = max(worst, _compare(got[name], want[name], f"model output {name}"))
    return {"samples": len(next(iter(feeds.values()))), "max_abs_diff": worst, "passed": True}


def _samples(session) -> tuple:
    """(feeds, None) of the first SAMPLES calibration samples, or standard-normal inputs for a
    data-free run whose inputs allow it; (None, reason) where the check cannot run."""
    if is_large(session.model):
        return None, "model over 2 GB: the check would hold two more copies of its weights"
    specs = input_specs(session.model)
    count = max(SAMPLES, fixed_batch(specs) or 0)           # a fixed batch: one whole batch
    if session.calibration is not None:
        head = session.calibration.head(min(count, session.calibration.samples))
        return {k: np.asarray(v) for k, v in head.arrays.items()}, None
    feeds, rng = {}, np.random.default_rng(0)
    for spec in specs:
        if spec.dtype.kind != "f" or any(d is None for d in spec.dims[1:]):
            return None, f"no calibration data, and input {spec.name} has no random stand-in (not float or dynamic)"
        feeds[spec.name] = rng.standard_normal((count, *spec.dims[1:])).astype(spec.dtype)
    return feeds, None


def _without_refit(model: onnx.ModelProto, groups: list, kept: dict) -> tuple:
    """The groups' surgery on `model`, as the run did it, keeping the consumers' original rows."""
    current, alive = model, Alive()
    for g in groups:
        idx = GraphIndex.build(current, infer=False)
        updates = []
        for c in g.consumers:
            view = ChannelView.of(c, set(g.sources), g.channels, alive)
            updates.append(consumer_update(idx, c, consumer_matrix(idx, c)[view.remaining(kept[g.name])]))
        current = apply_group(current, g, np.asarray(kept[g.name]), updates, alive)
        alive.mark(g.sources, g.channels, kept[g.name])
    return current, alive


def _output(idx: GraphIndex, c) -> str:
    return idx.nodes[c.node].output[0]


def _channel_axis(c, value: np.ndarray) -> int:
    return 1 if c.conv is not None else value.ndim - 1


def _run(model: onnx.ModelProto, feeds: dict, names: list, device: str, batch_size: int) -> dict:
    """`names` (model outputs or intermediate tensors) computed from `feeds`."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    sess = runtime.session(probe, device, built="the pruned model's surgery check")
    parts = [runtime.run(sess, batch, names) for batch in runtime.batches(feeds, batch_size)]
    # a scalar output (a loss, a total) is one value per batch: stacked, not concatenated
    return {n: np.concatenate([np.atleast_1d(p[i]) for p in parts]) for i, n in enumerate(names)}


def _compare(got: np.ndarray, expected: np.ndarray, where: str) -> float:
    if got.shape != expected.shape:
        raise InternalError(f"surgery check: {where} has shape {got.shape}, expected {expected.shape}")
    diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64)))) if got.size else 0.0
    scale = max(1.0, float(np.max(np.abs(expected))) if expected.size else 0.0)
    if not diff <= TOLERANCE.get(expected.dtype, 1e-4) * scale:
        raise InternalError(f"surgery check: {where} differs from the original with the removed channels' "
                            f"consumer rows zeroed by up to {diff:.3g} (values up to {scale:.3g}); the surgery "
                            "of this group is wrong")
    return diff
