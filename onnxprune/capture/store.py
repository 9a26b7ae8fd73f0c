"""Where a seq/asym `Stream` keeps its frontier values between steps (see prefix.py).

Every step runs the same batches, so values are kept per batch, keyed by the batch's first
sample. A batch stays in memory while the capture's `MemoryBudget` (shared by its streams)
has room and goes to a plain file otherwise (not a memory map: resident memory stays flat
whatever the calibration size). Writing every frontier to disk cost ViT-S at 256 images 48 s
of its 275 (docs/RESULTS.md "ViT-S speed and memory"); in memory it costs nothing, so disk is
only for what does not fit.

A step frees each batch of a frontier value that no later step reads once it has run it
(`release`), so the budget holds the frontier being read and the one being written, not two
whole frontiers.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from ..errors import InternalError

# Bytes of frontier values one capture keeps in memory (all its streams together).
FRONTIER_MEMORY = 512 * 1024 * 1024


class MemoryBudget:
    """Bytes the stores of one capture may hold in memory."""

    def __init__(self, limit: int | None = None):
        self.limit = FRONTIER_MEMORY if limit is None else limit
        self.used = 0

    def take(self, nbytes: int) -> bool:
        if self.used + nbytes > self.limit:
            return False
        self.used += nbytes
        return True

    def give(self, nbytes: int) -> None:
        self.used -= nbytes


class _Tensor:
    """One stored value: its batches in memory (first sample -> array) or on disk (-> count)."""

    def __init__(self, dtype, shape: tuple, path: str):
        self.dtype, self.shape, self.path = dtype, shape, path
        self.memory: dict = {}
        self.disk: dict = {}

    @property
    def per_sample(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class TensorStore:
    """Sample-major values stored batch by batch and read back by the same batches; and small
    values kept per batch in memory outside the budget (`put`/`get`: shape vectors and the like)."""

    def __init__(self, budget: MemoryBudget | None = None):
        self.dir = tempfile.mkdtemp(prefix="onnxprune-")
        self.budget = budget or MemoryBudget()
        self.tensors: dict = {}      # name -> _Tensor
        self.batched = {}            # name -> {first sample of a batch: array}
        self._count = 0

    def put(self, name: str, start: int, value: np.ndarray) -> None:
        self.batched.setdefault(name, {})[start] = np.array(value)

    def get(self, name: str, start: int) -> np.ndarray:
        return self.batched[name][start]

    def dtypes(self) -> dict:
        """name -> dtype of everything stored."""
        out = {name: t.dtype for name, t in self.tensors.items()}
        out.update((name, next(iter(v.values())).dtype) for name, v in self.batched.items() if v)
        return out

    def append(self, name: str, start: int, batch: np.ndarray) -> None:
        """Store the batch of samples `start`.. of `name`: in memory if the budget allows."""
        t = self.tensors.get(name)
        if t is None:
            self._count += 1
            t = self.tensors[name] = _Tensor(batch.dtype, batch.shape[1:], os.path.join(self.dir, f"t{self._count}.bin"))
        if self.budget.take(batch.nbytes):
            # a copy: onnxruntime's outputs are views of its buffers, and one kept alive keeps
            # the session's whole memory arena alive with it (ViT-S: +300-600 MB a step)
            t.memory[start] = np.array(batch, order="C")
            return
        with open(t.path, "r+b" if os.path.exists(t.path) else "wb") as fh:
            fh.seek(start * t.per_sample)
            np.ascontiguousarray(batch).tofile(fh)
        t.disk[start] = batch.shape[0]

    def read(self, name: str, start: int, count: int) -> np.ndarray:
        t = self.tensors[name]
        if start in t.memory:
            batch = t.memory[start]
        elif start in t.disk:
            with open(t.path, "rb") as fh:
                fh.seek(start * t.per_sample)
                batch = np.fromfile(fh, dtype=t.dtype, count=t.disk[start] * t.per_sample // t.dtype.itemsize)
            batch = batch.reshape((-1, *t.shape))
        else:
            raise InternalError(f"capture read {name} from sample {start}, which no stored batch starts at")
        if batch.shape[0] != count:
            raise InternalError(f"capture read {count} samples of {name} from {start}; the batch stored has "
                                f"{batch.shape[0]}")
        return batch

    def release(self, name: str, start: int) -> None:
        """Forget one batch of `name` (no later step reads it)."""
        t = self.tensors.get(name)
        if t is not None and start in t.memory:
            self.budget.give(t.memory.pop(start).nbytes)

    def keep_only(self, names: set) -> None:
        for name in [n for n in self.tensors if n not in names]:
            self._drop(name)
        for name in list(self.batched):
            if name not in names:
                del self.batched[name]

    def _drop(self, name: str) -> None:
        t = self.tensors.pop(name)
        self.budget.give(sum(b.nbytes for b in t.memory.values()))
        if os.path.exists(t.path):
            os.unlink(t.path)

    def close(self) -> None:
        for name in list(self.tensors):
            self._drop(name)
        shutil.rmtree(self.dir, ignore_errors=True)
