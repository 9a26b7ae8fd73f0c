"""All-or-nothing output files.

Every output (the pruned model, its external data file, the report) is first written to a
temporary name in its target directory and flushed to disk; only when all of them are
complete are they renamed into place. A failure or Ctrl-C before that leaves no partial file
and the previous contents of a `--force`d target untouched.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import OnnxPruneError
from .largemodel import is_large, set_external, skeleton

_ALIGN = 4096          # tensor offsets in external data files, so runtimes may memory-map them


def write_all(fh, data) -> None:
    """The one place bytes hit an output file (tests simulate a full disk here)."""
    fh.write(data)


class Staged:
    """Output files staged under temporary names, renamed into place by `commit()`.

    Use as a context manager: leaving the block by an exception removes every temporary file.
    """

    def __init__(self):
        self._pending = []          # (temporary path, final path), renamed in this order

    def __enter__(self) -> "Staged":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    def add_bytes(self, path, data: bytes) -> None:
        path = Path(path)
        tmp = self._temp(path)
        self._write(tmp, path, lambda fh: write_all(fh, data))

    def add_model(self, model: onnx.ModelProto, path) -> None:
        """A model; one too large for a single protobuf gets `<name>.data` beside it."""
        path = Path(path)
        if not is_large(model):
            self.add_bytes(path, model.SerializeToString())
            return
        data_path = path.with_name(f"{path.name}.data")
        skel, large = skeleton(model)
        if not large:
            self.add_bytes(path, skel.SerializeToString())
            return
        stubs = {t.name: t for t in skel.graph.initializer}

        def tensors(fh):
            for name, tensor in large.items():
                pad = -fh.tell() % _ALIGN
                if pad:
                    write_all(fh, b"\0" * pad)
                offset = fh.tell()
                write_all(fh, _raw_bytes(tensor))
                set_external(stubs[name], data_path.name, offset, fh.tell() - offset)

        self._write(self._temp(data_path), data_path, tensors)
        self.add_bytes(path, skel.SerializeToString())

    def commit(self) -> None:
        try:
            for tmp, final in self._pending:
                os.replace(tmp, final)
        except OSError as exc:
            self.discard()
            raise OnnxPruneError(f"cannot write {final}: {exc.strerror or exc}") from None
        self._pending = []

    def discard(self) -> None:
        for tmp, _ in self._pending:
            _unlink_quietly(tmp)
        self._pending = []

    def _temp(self, path: Path) -> str:
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as exc:
            self.discard()
            raise OnnxPruneError(f"cannot write {path}: {exc.strerror or exc}") from None
        os.close(fd)
        self._pending.append((tmp, path))
        os.chmod(tmp, _new_file_mode())        # mkstemp makes 0600; outputs get the usual mode
        return tmp

    def _write(self, tmp: str, final: Path, fill) -> None:
        try:
            with open(tmp, "wb") as fh:
                fill(fh)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            self.discard()
            raise OnnxPruneError(f"cannot write {final}: {exc.strerror or exc}; nothing was written") from None
        except BaseException:
            self.discard()
            raise


def write_bytes_atomic(path, data: bytes) -> None:
    with Staged() as staged:
        staged.add_bytes(path, data)


def save_model(model: onnx.ModelProto, path) -> None:
    with Staged() as staged:
        staged.add_model(model, path)


def _new_file_mode() -> int:
    """0666 minus the process umask: the mode open() would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _raw_bytes(t: onnx.TensorProto) -> bytes:
    return t.raw_data if t.HasField("raw_data") else np.ascontiguousarray(numpy_helper.to_array(t)).tobytes()


def _unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
