"""Calibration inputs: loading, validating against the model's inputs, or generating them.

Everything is checked here, before any slow work: names, ranks, static dimensions, dtypes,
finite values and sample counts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from ..errors import OnnxPruneError, first_line
from .npyfile import StoredArray, chunks, open_arrays

DEFAULT_SAMPLES = 512
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"      # .npz files are zip archives


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    dims: tuple          # int for static dims, None for dynamic ones


@dataclass(frozen=True)
class Calibration:
    arrays: dict         # model input name -> array, samples on axis 0
    source: str

    @property
    def samples(self) -> int:
        return next(iter(self.arrays.values())).shape[0]

    def head(self, n: int) -> "Calibration":
        return Calibration({k: v[:n] for k, v in self.arrays.items()}, self.source)


def static_dim(dim) -> int | None:
    """A TensorShapeProto dim as onnxruntime reads it: its value when positive, else None
    (dynamic): symbolic, absent, or a non-positive dim_value such as paddle2onnx's -1 batch."""
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None


def input_specs(model: onnx.ModelProto) -> list:
    """The model's runtime inputs (initializers listed as inputs excluded)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        dims = tuple(static_dim(d) for d in tt.shape.dim)
        specs.append(InputSpec(vi.name, dtype, dims))
    return specs


def fixed_batch(specs: list) -> int | None:
    """The batch size a model with a static first dimension insists on (None: dynamic)."""
    sizes = {s.dims[0] for s in specs if s.dims and s.dims[0] is not None}
    if len(sizes) > 1:
        raise OnnxPruneError(f"model inputs disagree on their fixed batch size: {sorted(sizes)}")
    return sizes.pop() if sizes else None


def load_calibration(path: str | os.PathLike, specs: list, samples: int | None) -> Calibration:
    """Read a .npz (one array per input name, or one array for a one-input model) or .npy."""
    return from_arrays(read_arrays(path), specs, samples, str(path))


def read_arrays(path: str | os.PathLike, what: str = "calibration") -> dict:
    """The arrays of a .npz file (by name) or of a .npy file (as '<array>'); uncompressed ones
    as StoredArray (rows read from disk when used)."""
    path = Path(path)
    if not path.exists():
        raise OnnxPruneError(f"{what} file not found: {path}")
    if path.is_dir():
        raise OnnxPruneError(f"{what} path {path} is a directory; give a .npz or .npy file")
    _check_format(path, what)
    try:
        arrays = open_arrays(path)          # read batch by batch later, never held whole
        if arrays is None:
            loaded = np.load(path, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                arrays = {"<array>": loaded}
            else:
                with loaded:
                    arrays = {k: loaded[k] for k in loaded.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise OnnxPruneError(f"{path} holds Python objects (pickled arrays), which are never loaded; "
                                 "save plain numeric arrays with numpy.savez") from None
        raise OnnxPruneError(f"{path} is not a readable .npz/.npy file ({first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - numpy raises OSError/zipfile/EOF errors on damaged files
        raise OnnxPruneError(f"{path} is not a readable .npz/.npy file ({first_line(exc)}); is it truncated?") from None
    return arrays


def _check_format(path: Path, what: str) -> None:
    """Refuse anything that is not a NumPy .npy or .npz file by its first bytes (never its name)."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise OnnxPruneError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    if magic not in (NPY_MAGIC,) and not magic.startswith(ZIP_MAGIC):
        raise OnnxPruneError(f"{path} is not a .npz or .npy file; save {what} inputs with "
                             "numpy.savez(path, <input name>=array) or numpy.save")


def from_arrays(arrays, specs: list, samples: int | None, source: str = "arrays") -> Calibration:
    """Match arrays to model inputs, check them, convert dtypes, take the first `samples`
    (None: the first DEFAULT_SAMPLES, or all when there are fewer)."""
    if isinstance(arrays, np.ndarray):
        arrays = {"<array>": arrays}
    arrays = dict(arrays)
    if not specs:
        raise OnnxPruneError("the model has no runtime inputs to calibrate")
    names = [s.name for s in specs]
    if len(arrays) == 1 and len(specs) == 1 and names[0] not in arrays:
        arrays = {names[0]: next(iter(arrays.values()))}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise OnnxPruneError(
            f"{source}: no array for model input(s) {', '.join(missing)} (found {', '.join(sorted(arrays)) or 'none'}); "
            "name each array after the model input it feeds"
        )
    out = {}
    for spec in specs:
        a = arrays[spec.name]
        out[spec.name] = _check_array(a if isinstance(a, StoredArray) else np.asarray(a), spec, source)
    counts = {a.shape[0] for a in out.values()}
    if len(counts) != 1:
        raise OnnxPruneError(f"{source}: inputs have different sample counts {sorted(counts)}")
    available = counts.pop()
    if available == 0:
        raise OnnxPruneError(f"{source} holds zero samples; give at least one (samples on axis 0)")
    if samples is None:
        out = {k: v[:DEFAULT_SAMPLES] for k, v in out.items()}
    else:
        if samples <= 0:
            raise OnnxPruneError(f"--samples must be positive, got {samples}")
        if samples > available:
            raise OnnxPruneError(f"{source} has {available} samples, fewer than --samples {samples}; "
                                 f"pass --samples {available} or more data")
        out = {k: v[:samples] for k, v in out.items()}
    return Calibration(out, source)


def random_calibration(specs: list, n: int, seed: int) -> Calibration:
    """Standard-normal inputs, for an explicit --calib-random N (a smoke test, not real data)."""
    if n <= 0:
        raise OnnxPruneError(f"--calib-random needs a positive sample count, got {n}")
    rng = np.random.default_rng(seed)
    arrays = {}
    for spec in specs:
        if spec.dtype.kind != "f":
            raise OnnxPruneError(f"--calib-random cannot invent values for {spec.dtype} input '{spec.name}'; "
                                 "give real data with --calib")
        if any(d is None for d in spec.dims[1:]):
            raise OnnxPruneError(f"--calib-random needs static dimensions; input '{spec.name}' has {spec.dims}")
        arrays[spec.name] = rng.standard_normal((n, *spec.dims[1:])).astype(spec.dtype)
    return Calibration(arrays, f"random({n})")


def _check_array(a: np.ndarray, spec: InputSpec, source: str) -> np.ndarray:
    where = f"{source}: array for input '{spec.name}'"
    if a.ndim != len(spec.dims):
        raise OnnxPruneError(f"{where} has rank {a.ndim} {a.shape}; the model expects rank {len(spec.dims)} "
                             f"{_fmt(spec.dims)} with samples on axis 0")
    for axis, (have, want) in enumerate(zip(a.shape, spec.dims)):  # axis 0 is the sample axis
        if axis > 0 and want is not None and have != want:
            raise OnnxPruneError(f"{where} has shape {a.shape}; the model expects {_fmt(spec.dims)}")
    converted = _convert(a, spec, where)
    # One pass over the values: the source is scanned again only to name what went wrong.
    if converted.dtype.kind == "f" and not _all_finite(converted):
        if converted is a or not _all_finite(a):
            raise OnnxPruneError(f"{where} contains NaN or Inf values; clean the data first")
        raise OnnxPruneError(f"{where} has values outside the range of {converted.dtype}, the model input type; "
                             "rescale the data")
    return converted


def _all_finite(a) -> bool:
    return all(np.isfinite(c).all() for c in chunks(a))


def _convert(a: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    """Same-kind conversions only (float64 -> float32, int32 -> int64 when values fit)."""
    want = spec.dtype
    if a.dtype == want:
        return a
    if a.dtype.kind == want.kind or (a.dtype.kind in "ui" and want.kind in "ui"):
        with np.errstate(over="ignore"):          # overflow is reported below as a range error
            converted = a.astype(want)
        if want.kind in "ui" and not all(np.array_equal(c.astype(want), c) for c in chunks(a)):
            raise OnnxPruneError(f"{where} has values that do not fit {want}")
        return converted
    if a.dtype.kind in "ui" and want.kind == "f":
        hint = f"; if that is intended, convert it (e.g. x.astype('{want}') / 255 for 8-bit images)"
    elif a.dtype.kind == "b":
        hint = f"; convert it explicitly (x.astype('{want}')) if 0/1 values are what the model expects"
    else:
        hint = "; give numeric arrays of the model's input type"
    raise OnnxPruneError(f"{where} is {_kind_name(a.dtype)}, the model input is {want}{hint}")


def _kind_name(dtype: np.dtype) -> str:
    names = {"U": "text (str)", "S": "bytes", "O": "Python objects", "b": "bool", "c": "complex", "M": "datetime"}
    return names.get(dtype.kind, str(dtype))


def _fmt(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"

