"""Models near or over protobuf's 2 GB limit.

A ModelProto can hold more than 2 GB in memory, but it cannot be serialised, measured with
ByteSize(), appended to a repeated field, or handed to shape inference, the checker,
onnx-graphsurgeon or onnxruntime as bytes. Every stage that needs one of those works on a
*skeleton* instead: the same model with its large initializers replaced by external-data
stubs (name, type and dims only). The tensors themselves are copied back afterwards, or
written tensor by tensor to an external data file, without ever serialising the whole model
or copying it.
"""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

# Protobuf cannot serialise a message of 2 GiB or more; stay well clear of it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
# In a large model, initializers of at least this size become stubs / go to the data file.
LARGE_TENSOR_BYTES = 1024


def tensor_bytes(t: onnx.TensorProto) -> int:
    """Payload size from dims and element type (never touches the data itself)."""
    if t.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):      # an element type numpy cannot name
        return t.ByteSize()
    return int(np.prod(t.dims, dtype=np.int64)) * itemsize


def payload_bytes(model: onnx.ModelProto) -> int:
    return sum(tensor_bytes(t) for t in model.graph.initializer)


def is_large(model: onnx.ModelProto) -> bool:
    """True when the model must be handled through a skeleton and external data."""
    return payload_bytes(model) >= EXTERNAL_DATA_THRESHOLD


def with_graph(model: onnx.ModelProto, graph: onnx.GraphProto | None = None) -> onnx.ModelProto:
    """A new model with `model`'s version, opsets and metadata and a copy of `graph`,
    without copying `model.graph` (which may be gigabytes)."""
    out = onnx.ModelProto()
    _copy_fields(model, out, skip="graph")
    if graph is not None:
        out.graph.CopyFrom(graph)
    return out


def skeleton(model: onnx.ModelProto, keep=()) -> tuple:
    """(model with large initializers as external-data stubs, {name: original tensor}).

    Initializers named in `keep` are copied in full whatever their size.
    """
    out = with_graph(model)
    _copy_fields(model.graph, out.graph, skip="initializer")
    large = {}
    for t in model.graph.initializer:
        if t.name not in keep and tensor_bytes(t) >= LARGE_TENSOR_BYTES:
            stub = out.graph.initializer.add()
            stub.name, stub.data_type = t.name, t.data_type
            stub.dims.extend(t.dims)
            stub.data_location = onnx.TensorProto.EXTERNAL
            set_external(stub, _placeholder(len(large)), 0, tensor_bytes(t))
            large[t.name] = t
        else:
            out.graph.initializer.add().CopyFrom(t)
    return out, large


def restore(model: onnx.ModelProto, large: dict) -> None:
    """Replace the stubs `skeleton` made (by name) with the original tensors, in place."""
    for t in model.graph.initializer:
        if t.name in large and t.data_location == onnx.TensorProto.EXTERNAL:
            t.CopyFrom(large[t.name])


def run_checker(model: onnx.ModelProto, full_check: bool) -> None:
    """onnx.checker on any model; one too large to serialise is checked through `checkable`."""
    if is_large(model):
        with checkable(model) as path:
            onnx.checker.check_model(path, full_check=full_check)
    else:
        onnx.checker.check_model(model, full_check=full_check)


@contextmanager
def checkable(model: onnx.ModelProto):
    """A path to the model's skeleton beside empty placeholder data files: what onnx.checker
    needs to check structure and shapes of a model too large to serialise."""
    skel, large = skeleton(model)
    with tempfile.TemporaryDirectory(prefix="onnxprune-check-") as tmp:
        for i in range(len(large)):
            Path(tmp, _placeholder(i)).touch()
        path = Path(tmp, "model.onnx")
        path.write_bytes(skel.SerializeToString())
        yield str(path)


def _placeholder(i: int) -> str:
    return f"stub{i}.bin"


def set_external(t: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del t.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value


def _copy_fields(src, dst, skip: str) -> None:
    """Field-by-field copy of a message except `skip` (protobuf has no partial CopyFrom)."""
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        repeated = getattr(fd, "is_repeated", None)      # protobuf >= 5; older: label
        if repeated is None:
            repeated = fd.label == fd.LABEL_REPEATED
        if repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)
