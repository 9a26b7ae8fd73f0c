"""What every calibration source shares: samples decoded once into a temporary file on disk.

Images, texts and user scripts are turned into model inputs once, row by row, and written to
raw files in a temporary folder; the arrays handed on are `SpooledArray`s (the `StoredArray`
of .npy calibration files) that read a batch of rows from disk when a batch needs them.

Why a file and not a decoder run per batch: a source must be decoded up front anyway, to skip
unreadable files and pick the first N good ones (and count them) and to check every value
before the slow work starts; a user's generator can be iterated only once; and capture, the
output check and the sweep read the samples several times. The rows on disk make all of that
one decode, keep memory flat in the number of samples, and reuse the reading path (and the
checks in `from_arrays`) that .npy/.npz files already use. The cost is disk space in the
temporary folder (TMPDIR), checked before writing; the folder is removed when the last array
that reads from it is garbage-collected, or at exit.
"""
from __future__ import annotations

import errno
import importlib
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ...errors import OnnxPruneError
from ..calib import DEFAULT_SAMPLES, Calibration
from ..npyfile import StoredArray

EXTRAS = {"PIL": ("Pillow", "images"), "tokenizers": ("tokenizers", "text")}


def require(module: str, what: str):
    """Import an optional dependency, or say which extra installs it (one line)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package, extra = EXTRAS[module.split(".")[0]]
        raise OnnxPruneError(f"{what} needs {package}, which is not installed: "
                             f'pip install "onnxprune[{extra}]"') from None


@dataclass(frozen=True)
class SourceCalibration(Calibration):
    """A `Calibration` made from images, texts or feeds, with what the report should say.

    `row_mask`: the model input that holds the attention mask (0 on padding tokens), for the
    run to use as its row mask; `skipped`: files passed over as unreadable; `info`: details
    of how the samples were made (for the report).
    """
    row_mask: str | None = None
    skipped: int = 0
    skipped_files: tuple = ()
    info: dict = field(default_factory=dict)

    def head(self, n: int) -> "SourceCalibration":
        return replace(self, arrays={k: v[:n] for k, v in self.arrays.items()})


def sample_limit(samples: int | None) -> int:
    """How many samples to decode: exactly `samples`, or the first DEFAULT_SAMPLES."""
    if samples is None:
        return DEFAULT_SAMPLES
    if samples <= 0:
        raise OnnxPruneError(f"--samples must be positive, got {samples}")
    return samples


class _Folder:
    """The temporary folder of one source's rows; removed when nothing reads from it."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="onnxprune-calib-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), True)

    def remove(self) -> None:
        self._finalizer()


class SpooledArray(StoredArray):
    """A StoredArray over a temporary file; keeps the file's folder alive while it is used."""

    def __init__(self, *args, folder: _Folder, **kwargs):
        super().__init__(*args, **kwargs)
        self.folder = folder

    def __getitem__(self, key):
        if isinstance(key, slice) and key.step in (None, 1):
            a, b, _ = key.indices(len(self))
            return SpooledArray(self.path, self.offset, self.full_shape, self.stored, self.start + a,
                                self.start + max(a, b), self.dtype, folder=self.folder)
        return np.asarray(self)[key]

    def astype(self, dtype) -> "SpooledArray":
        return SpooledArray(self.path, self.offset, self.full_shape, self.stored, self.start, self.stop,
                            dtype, folder=self.folder)


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


class Spool:
    """Rows of each model input appended to raw files; `arrays()` gives SpooledArrays over them.

    `row_shapes`: input name -> (shape of one sample, dtype). At most `limit` rows are kept.
    """

    def __init__(self, row_shapes: dict, limit: int, what: str):
        self.row_shapes = {k: (tuple(s), np.dtype(d)) for k, (s, d) in row_shapes.items()}
        self.limit, self.what, self.rows = limit, what, 0
        self.folder = _Folder()
        self._check_space()
        self.files = {}
        try:
            for i, name in enumerate(self.row_shapes):
                self.files[name] = open(self.folder.path / f"input{i}.bin", "wb")
        except OSError as exc:
            self.abort()
            raise OnnxPruneError(f"cannot write decoded {what} to {self.folder.path}: {exc.strerror or exc}") from None

    def _row_bytes(self) -> int:
        return sum(int(np.prod(s, dtype=np.int64)) * d.itemsize for s, d in self.row_shapes.values())

    def _check_space(self) -> None:
        need = self._row_bytes() * self.limit
        free = shutil.disk_usage(self.folder.path).free
        if need > free:
            self.abort()
            raise OnnxPruneError(f"{self.limit} decoded samples of {self.what} need {_size(need)} in "
                                 f"{self.folder.path.parent}, which has {_size(free)} free; "
                                 "free some space, point TMPDIR elsewhere or pass fewer --samples")

    @property
    def full(self) -> bool:
        return self.rows >= self.limit

    def append(self, feed: dict) -> int:
        """Write a batch {name: array [n, *row shape]} (already checked and converted); returns
        how many rows were kept (fewer than n once the limit is reached)."""
        n = min(next(iter(feed.values())).shape[0], self.limit - self.rows)
        try:
            for name, fh in self.files.items():
                fh.write(np.ascontiguousarray(feed[name][:n], dtype=self.row_shapes[name][1]).tobytes())
        except OSError as exc:
            self.abort()
            hint = "; free some space or point TMPDIR elsewhere" if exc.errno == errno.ENOSPC else ""
            raise OnnxPruneError(f"cannot write decoded {self.what} to {self.folder.path.parent}: "
                                 f"{exc.strerror or exc}{hint}") from None
        self.rows += n
        return n

    def arrays(self) -> dict:
        for fh in self.files.values():
            fh.close()
        return {name: SpooledArray(fh.name, 0, (self.rows, *self.row_shapes[name][0]), self.row_shapes[name][1],
                                   folder=self.folder)
                for name, fh in self.files.items()}

    def abort(self) -> None:
        for fh in getattr(self, "files", {}).values():
            fh.close()
        self.folder.remove()

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is not None:
            self.abort()
