"""FLOPs of the fused attention ops (budget/attnflops.py), against hand counts.

Per query head QK^T is [S, Dh] x [Dh, T] and AV [S, T] x [T, Dv]: S*T*(Dh+Dv) MACs. The
blocks of fused_ops.py read x [N, T, 16] (T = 5 from the samples) and project to 16 features
per head set; O maps to 8. Before these counts the fused ops counted nothing (or made the
model's FLOPs unknown, so --target flops was refused)."""
import numpy as np
import pytest

import fused_ops as F
from onnxprune import prune
from onnxprune.budget.cost import flops_after
from onnxprune.budget.flops import flops_for_samples, sample_index
from onnxprune.capture.shapes import infer_symbolic
from onnxprune.graph.index import GraphIndex
from onnxprune.io.modelio import normalize
from onnxprune.run.session import open_session
from onnxprune.run.options import PruneOptions

S, IN, OUT = 5, 16, 8


def _macs(q_heads, kv_heads, dh):
    """Hand count for one sample: projections of x (packed in the op or three MatMuls), QK^T + AV
    of every query head, O."""
    qw, kvw = q_heads * dh, kv_heads * dh
    projections = S * IN * (qw + 2 * kvw)
    attention = q_heads * S * S * (dh + dh)
    return projections + attention + S * qw * OUT


BLOCKS = {  # name -> (builder, query heads, kv heads, head size, kept units -> (query heads, kv heads))
    "ms_attention": (F.ms_attention, 4, 4, 4, (2, 2)),
    "ms_mha": (F.ms_mha, 4, 4, 4, (2, 2)),
    "ms_gqa": (F.ms_gqa, 4, 2, 8, (2, 1)),
    "onnx_attention": (F.onnx_attention, 4, 2, 4, (2, 1)),
    "onnx_attention_4d": (F.onnx_attention_4d, 4, 2, 4, (2, 1)),
}


def _flops(model):
    model = normalize(model)
    index = GraphIndex.build(model)
    infer_symbolic(model, index)
    return flops_for_samples(model, index, {"x": (S, IN)})


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_fused_attention_flops_match_a_hand_count(name):
    build, hq, hkv, dh, _ = BLOCKS[name]
    assert _flops(build()) == 2 * _macs(hq, hkv, dh)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_pruned_and_planned_flops_match_a_hand_count(name):
    """Half the units: the report's FLOPs before/after and the budget's plan all equal the hand
    counts at the kept heads."""
    build, hq, hkv, dh, (kq, kkv) = BLOCKS[name]
    model = normalize(build())
    data = F.inputs(model, 24, 1, seq=S)
    pruned, report = prune(model, data, keep=0.5, reweight=False)
    assert report.flops_before == 2 * _macs(hq, hkv, dh)
    assert report.flops_after == _flops(pruned) == 2 * _macs(kq, kkv, dh)
    session = open_session(model, data, PruneOptions.of(keep=0.5))
    static = sample_index(session.model, {"x": (S, IN)}, session.index) or session.index
    counts = {g["name"]: g["channels_after"] for g in report.groups}
    assert flops_after(static, session.groups, counts) == report.flops_after


@pytest.mark.parametrize("name", ["ms_mha", "ms_gqa", "ms_attention"])
def test_target_flops_is_met_on_fused_ops(name):
    model = normalize(BLOCKS[name][0]())
    pruned, report = prune(model, F.inputs(model, 24, 1, seq=S), compression=1.3, target="flops")
    assert report.flops_before / report.flops_after >= 1.3 * 0.99
    assert np.isfinite(report.flops_after)


def _fixture(name):
    from pathlib import Path
    from onnxprune.io.modelio import load_model
    here = Path(__file__).parent / "fixtures" / "transformers"
    calib = dict(np.load(here / "gpt2_tiny_calib.npz"))
    return load_model(str(here / f"{name}.onnx")), {k: calib[k] for k in ("input_ids", "attention_mask")}


def test_measured_sequence_dims_count_flops_as_the_unfused_graph():
    """gpt2_tiny_fused's attention shapes after the mask Where are known only by measuring
    them (a dynamic dim); counted at the calibration sample's length (the first of the two
    measuring runs is one whole sample), its FLOPs before and after pruning equal those of the
    unfused export of the same network, which static inference counts, and the target is met."""
    reports = {}
    for name in ("gpt2_tiny", "gpt2_tiny_fused"):
        model, data = _fixture(name)
        _, reports[name] = prune(model, data, compression=2.0, target="flops", reweight=False)
    fused, plain = reports["gpt2_tiny_fused"], reports["gpt2_tiny"]
    assert fused.flops_before == plain.flops_before and fused.flops_after == plain.flops_after
    assert fused.flops_before / fused.flops_after >= 2.0 * 0.99


def test_measured_shapes_keep_one_samples_dims():
    model, data = _fixture("gpt2_tiny_fused")
    session = open_session(model, data, PruneOptions.of(keep=0.5))
    dynamic = {n: d for n, d in session.index.model_dims.items() if "measured_dynamic" in d}
    assert dynamic, "the fixture no longer has a dim that only measuring finds"
    seq = data["input_ids"].shape[1]
    for name, dims in dynamic.items():
        sample = session.index.sample_dims[name]
        assert len(sample) == len(dims) and sample[0] == 1
        assert all(s == d for s, d in zip(sample, dims) if isinstance(d, int))
        assert all(s == seq for s, d in zip(sample[1:], dims[1:]) if d == "measured_dynamic")
