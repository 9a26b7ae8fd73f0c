"""The ONNX export both model-making tools share (torch 2.13.0; tools only, never the package).

Uses the TorchScript exporter (no onnxscript needed), opset 17, and caps the IR version so
that older onnxruntime releases load the files; checks the result with the full checker.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import onnx
import torch

OPSET = 17
MAX_IR_VERSION = 10


def export_onnx(model: torch.nn.Module, args: tuple, path: Path, input_names: list, dynamic_axes: dict) -> onnx.ModelProto:
    """Export `model` (eval mode) with output `logits`; returns the checked ModelProto."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    model.eval()
    torch.onnx.export(model, args, str(path), opset_version=OPSET, input_names=input_names,
                      output_names=["logits"], dynamic_axes={**dynamic_axes, "logits": {0: "batch"}},
                      do_constant_folding=True, **kwargs)
    m = onnx.load(str(path))
    if m.ir_version > MAX_IR_VERSION:
        m.ir_version = MAX_IR_VERSION
        onnx.save(m, str(path))
    onnx.checker.check_model(m, full_check=True)
    opsets = {o.domain: o.version for o in m.opset_import}
    assert opsets.get("", opsets.get("ai.onnx")) == OPSET, opsets
    return m
