"""Loading, validating and normalising ONNX models (the `load` stage), and checking output paths.

Every check on the input model happens here, before any slow work, and turns into an
OnnxPruneError with a one-line message. Writing outputs is atomic.py's job.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from ..errors import OnnxPruneError, first_line
from .fold import fold_weights
from .largemodel import run_checker

# Constant-node attributes that hold a value we can turn into an initializer, with its dtype.
_CONSTANT_VALUES = {"value": None, "value_float": np.float32, "value_floats": np.float32,
                    "value_int": np.int64, "value_ints": np.int64}


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read, validate and normalise a model file (and its external data); never modifies them."""
    path = Path(path)
    if not path.exists():
        raise OnnxPruneError(f"model file not found: {path}")
    if path.is_dir():
        raise OnnxPruneError(f"{path} is a directory, not an ONNX model file")
    try:
        model = onnx.load(str(path))
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise OnnxPruneError(
            f"{path} is not a readable ONNX model ({first_line(exc)}); is the file truncated or of another format?"
        ) from None
    except onnx.checker.ValidationError as exc:       # raised while resolving external data
        raise OnnxPruneError(f"cannot load the external data of {path}: {first_line(exc)}; "
                             "keep the data files where the model's paths point (beside it)") from None
    except OSError as exc:
        raise OnnxPruneError(f"cannot read {exc.filename or path}: {exc.strerror or exc}") from None
    if model.ir_version <= 0 or not model.opset_import or len(model.graph.node) == 0:
        raise OnnxPruneError(f"{path} is not an ONNX model (no IR version, opset or nodes)")
    check_model(model, str(path))
    return normalize(model, copy=False)


def check_model(model: onnx.ModelProto, where: str) -> None:
    """Run onnx.checker; a failure is the user's model problem, reported in one line."""
    try:
        run_checker(model, full_check=False)
    except onnx.checker.ValidationError as exc:
        raise OnnxPruneError(f"{where} fails onnx.checker: {first_line(exc)}") from None


def normalize(model: onnx.ModelProto, copy: bool = True) -> onnx.ModelProto:
    """Give every node a unique name, move Constant-node values to initializers and fold
    weights computed from constants only (fold.py).

    Both are semantics-preserving and let later stages address weights and nodes by name.
    Old IR (< 4) lists every initializer as a graph input too, so moved ones get listed.
    `copy=False` normalises in place (for a model nobody else holds).
    """
    if copy:
        model = _copy(model)
    graph = model.graph
    taken = {n.name for n in graph.node if n.name}
    for i, node in enumerate(graph.node):
        if not node.name:
            base = f"{node.op_type}_{i}"
            name, j = base, 0
            while name in taken:
                j += 1
                name = f"{base}_{j}"
            node.name = name
            taken.add(name)
    outputs = {o.name for o in graph.output}
    keep, moved = [], []
    for node in graph.node:
        tensor = _constant_tensor(node) if node.output[0] not in outputs else None
        if tensor is None:
            keep.append(node)
            continue
        graph.initializer.append(tensor)
        moved.append(tensor)
    if moved:
        del graph.node[:]
        graph.node.extend(keep)
        if model.ir_version < 4:
            graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in moved)
    fold_weights(model)
    return model


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The value of a plain Constant node as a TensorProto named after its output, else None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.attribute) != 1:
        return None
    a = node.attribute[0]
    if a.name not in _CONSTANT_VALUES:
        return None                     # sparse or string constants stay nodes
    if a.name == "value":
        tensor = onnx.TensorProto()
        tensor.CopyFrom(a.t)
        tensor.name = node.output[0]
        return tensor
    value = np.array(helper.get_attribute_value(a), dtype=_CONSTANT_VALUES[a.name])
    return numpy_helper.from_array(value, node.output[0])


def validate_output_path(output: str | os.PathLike, inputs: list[str | os.PathLike], force: bool) -> Path:
    """Refuse an output path that would overwrite an input, exists, or cannot be written."""
    out = Path(output)
    for other in inputs:
        if other is not None and Path(other).exists() and out.exists() and os.path.samefile(out, other):
            raise OnnxPruneError(f"output {out} is the input file; choose another path (the input is never overwritten)")
        if other is not None and out.resolve() == Path(other).resolve():
            raise OnnxPruneError(f"output {out} is the input file; choose another path (the input is never overwritten)")
    if out.is_dir():
        raise OnnxPruneError(f"output {out} is a directory; give a file path")
    if out.exists() and not force:
        raise OnnxPruneError(f"output {out} exists; pass --force to overwrite it")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OnnxPruneError(f"output directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OnnxPruneError(f"output directory {parent} is not writable; choose another directory or fix its permissions")
    return out


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out

