"""Loading, normalising and atomically saving ONNX models (the `load` stage).

Every check on the input model happens here, before any slow work, and turns into an
OnnxPruneError with a one-line message.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import OnnxPruneError, first_line

# Protobuf cannot serialise a message of 2 GiB or more; stay well clear of it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read, validate and normalise a model file; never modifies the file."""
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
    except OSError as exc:
        raise OnnxPruneError(f"cannot read {path}: {exc.strerror or exc}") from None
    if model.ir_version <= 0 or not model.opset_import or len(model.graph.node) == 0:
        raise OnnxPruneError(f"{path} is not an ONNX model (no IR version, opset or nodes)")
    check_model(model, str(path))
    return normalize(model)


def check_model(model: onnx.ModelProto, where: str) -> None:
    """Run onnx.checker; a failure is the user's model problem, reported in one line."""
    try:
        if _payload_bytes(model) >= EXTERNAL_DATA_THRESHOLD:
            return  # the in-memory checker cannot take >2 GB protos; onnxruntime checks it later
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise OnnxPruneError(f"{where} fails onnx.checker: {first_line(exc)}") from None


def normalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name and move Constant-node tensors to initializers.

    Both are semantics-preserving and let later stages address weights and nodes by name.
    """
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
    keep = []
    for node in graph.node:
        value = [a for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR]
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
    return model


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
        raise OnnxPruneError(f"output directory {parent} is not writable")
    return out


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write atomically: a temporary file in the target directory, then a rename.

    Models too big for one protobuf go out with external data in `<name>.data` beside it.
    """
    path = Path(path)
    if _payload_bytes(model) >= EXTERNAL_DATA_THRESHOLD:
        _save_external(model, path)
        return
    data = model.SerializeToString()
    write_bytes_atomic(path, data)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """All-or-nothing file write (used for models and reports)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise OnnxPruneError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _save_external(model: onnx.ModelProto, path: Path) -> None:
    data_name = f"{path.name}.data"
    tmpdir = tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        tmp_model = Path(tmpdir) / path.name
        onnx.save_model(model, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        os.replace(Path(tmpdir) / data_name, path.parent / data_name)
        os.replace(tmp_model, path)
    except OSError as exc:
        raise OnnxPruneError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        for leftover in Path(tmpdir).glob("*"):
            _unlink_quietly(leftover)
        os.rmdir(tmpdir)


def _payload_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) + 4 * len(t.float_data) + 8 * len(t.double_data) for t in model.graph.initializer)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

