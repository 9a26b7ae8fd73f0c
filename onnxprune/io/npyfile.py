"""Arrays of .npy / uncompressed .npz files read from disk a slice at a time.

Calibration sets grow to thousands of images; holding them in memory would make the peak
memory of `prune` grow with the sample count. A `StoredArray` knows where its rows sit in the
file and reads them (with plain file reads, not a memory map, so they never count towards the
process's resident memory) only when a batch needs them. Compressed .npz members and
Fortran-ordered arrays cannot be read that way; they are loaded whole.
"""
from __future__ import annotations

import math
import os
import struct
import zipfile
from pathlib import Path

import numpy as np

# Rows read per chunk when a whole array is scanned (value checks): at most 16 MiB.
SCAN_BYTES = 16 * 1024 * 1024


class StoredArray:
    """Rows [start, stop) of an on-disk C-ordered array, converted to `dtype` when read.

    Slicing rows gives another StoredArray (nothing is read); `np.asarray` reads.
    """

    def __init__(self, path: Path, offset: int, shape: tuple, stored: np.dtype, start: int = 0,
                 stop: int | None = None, dtype: np.dtype | None = None):
        self.path, self.offset, self.full_shape, self.stored = Path(path), offset, tuple(shape), np.dtype(stored)
        self.start = start
        self.stop = self.full_shape[0] if stop is None else stop
        self.dtype = np.dtype(dtype) if dtype is not None else self.stored

    @property
    def shape(self) -> tuple:
        return (self.stop - self.start, *self.full_shape[1:])

    @property
    def ndim(self) -> int:
        return len(self.full_shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _row_bytes(self) -> int:
        return math.prod(self.full_shape[1:]) * self.stored.itemsize

    def __getitem__(self, key):
        if isinstance(key, slice) and key.step in (None, 1):
            a, b, _ = key.indices(len(self))
            return StoredArray(self.path, self.offset, self.full_shape, self.stored, self.start + a,
                               self.start + max(a, b), self.dtype)
        return np.asarray(self)[key]

    def astype(self, dtype) -> "StoredArray":
        """A lazy conversion (applied to each slice as it is read)."""
        return StoredArray(self.path, self.offset, self.full_shape, self.stored, self.start, self.stop, dtype)

    def read(self) -> np.ndarray:
        n = len(self) * self._row_bytes()
        buf = bytearray(n)
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + self.start * self._row_bytes())
            if fh.readinto(buf) != n:
                raise OSError(f"{self.path} ends before the array's data does; is it truncated?")
        out = np.frombuffer(buf, dtype=self.stored).reshape(self.shape)
        if self.dtype != self.stored:
            with np.errstate(over="ignore"):       # range problems are checked by the caller
                return out.astype(self.dtype)
        return out

    def __array__(self, dtype=None, copy=None):
        out = self.read()
        return out if dtype is None else out.astype(dtype)

    def chunks(self):
        """Consecutive slices (ndarrays) of at most SCAN_BYTES, for checks over every value."""
        step = max(1, SCAN_BYTES // max(1, self._row_bytes()))
        for a in range(0, len(self), step):
            yield self[a:a + step].read()


def chunks(a):
    """Slices of `a` to scan for value checks: the array itself, or a StoredArray's chunks."""
    return a.chunks() if isinstance(a, StoredArray) else (a,)


def open_arrays(path: Path) -> dict | None:
    """{name: StoredArray} for a .npy ('<array>') or an uncompressed .npz; None when some
    array cannot be read lazily (compressed, Fortran order, object dtype): load it instead."""
    with open(path, "rb") as fh:
        if fh.read(6) == b"\x93NUMPY":
            size = fh.seek(0, os.SEEK_END)
            fh.seek(0)
            found = _header(fh, path, size)
            return None if found is None else {"<array>": found}
    out = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
        size = fh.seek(0, os.SEEK_END)
        for info in zf.infolist():
            if not info.filename.endswith(".npy") or info.compress_type != zipfile.ZIP_STORED:
                return None
            fh.seek(info.header_offset)
            local = fh.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                return None
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            fh.seek(info.header_offset + 30 + name_len + extra_len)
            found = _header(fh, path, size)
            if found is None:
                return None
            out[info.filename[:-4]] = found
    return out


def _header(fh, path: Path, size: int) -> StoredArray | None:
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    version = np.lib.format.read_magic(fh)
    if version not in readers:
        return None
    shape, fortran, dtype = readers[version](fh)
    if fortran or dtype.hasobject or not shape:
        return None
    offset = fh.tell()
    if offset + math.prod(shape) * dtype.itemsize > size:
        raise OSError(f"array data of {math.prod(shape) * dtype.itemsize} bytes exceeds the file")
    return StoredArray(path, offset, shape, dtype)
