"""Calibration from feed dicts: a user's loader script (Polygraphy's --data-loader-script
convention), a CalibrationDataReader-style object (`get_next()` -> dict or None) or any
iterable of dicts {input name: array}, each a batch (leading batch axis) or one sample."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ...errors import OnnxPruneError
from ..calib import from_arrays
from .base import SourceCalibration, Spool, sample_limit

DEFAULT_FUNCTION = "load_data"


def from_feeds(feeds, specs: list, samples: int | None, source: str = "feeds") -> SourceCalibration:
    """The first `samples` samples (None: up to DEFAULT_SAMPLES) of feed dicts.

    `feeds`: an object with `get_next()` returning a dict or None at the end (onnxruntime's
    CalibrationDataReader), an iterable of dicts, or one dict. Each dict maps every model input
    to an array: a batch ([n, ...], the model input's rank) or one sample (one axis fewer).
    Nothing is pulled from `feeds` after the samples needed; rows are written to disk as they
    come, so memory holds one item at a time.
    """
    return _spool_feeds(_items(feeds, source), specs, samples, source, None)


def is_feeds(obj) -> bool:
    """Whether `prune(model, calib=obj)` should read `obj` as feed dicts: a reader with
    `get_next()` or an iterable of dicts (a dict of arrays or one array stays an array input)."""
    if hasattr(obj, "get_next"):
        return True
    return isinstance(obj, Iterable) and not isinstance(obj, (dict, str, bytes, os.PathLike)) \
        and not hasattr(obj, "__array__")


def script_calibration(script: str, specs: list, samples: int | None) -> SourceCalibration:
    """Import FILE.py and calibrate on what FILE.py's function (`FILE.py:func`, default
    load_data) yields: feed dicts as in `from_feeds`. Errors in the script are reported as
    coming from it, with its own traceback."""
    path, func_name = parse_script(script)
    source = f"script:{path}:{func_name}"
    with _on_path(path.parent):
        module = _guarded(path, "while being imported", lambda: _import(path))
        func = getattr(module, func_name, None)
        if not callable(func):
            defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                             and getattr(v, "__module__", None) == module.__name__)
            raise OnnxPruneError(f"{path} does not define {func_name}(); define a function that yields feed dicts "
                                 f"(input name -> array), or name it as {path.name}:FUNC"
                                 + (f" (it defines {', '.join(defined)})" if defined else ""))
        where = f"in {func_name}()"
        result = _guarded(path, where, func)
        items = _guarded(path, where, lambda: _items(result, f"{func_name}() of {path.name}"))
        return _spool_feeds(_guarded_iter(path, where, items), specs, samples, source, path)


def parse_script(script) -> tuple:
    """(path, function name) of 'FILE.py' or 'FILE.py:func'."""
    text = os.fspath(script)
    func = DEFAULT_FUNCTION
    head, sep, tail = text.rpartition(":")
    if sep and tail.isidentifier() and head:
        text, func = head, tail
    path = Path(text)
    if not path.is_file():
        raise OnnxPruneError(f"calibration script not found: {path}"
                             if not path.is_dir() else f"calibration script {path} is a directory; give FILE.py")
    return path.resolve(), func


def _items(feeds, source):
    if isinstance(feeds, Mapping):
        return iter([feeds])
    get_next = getattr(feeds, "get_next", None)
    if callable(get_next):
        return iter(get_next, None)
    try:
        return iter(feeds)
    except TypeError:
        raise OnnxPruneError(f"{source} gave a {type(feeds).__name__}; give an iterable (or generator) of dicts "
                             "input name -> array, or an object with get_next()") from None


def _spool_feeds(items, specs: list, samples: int | None, source: str, script: Path | None) -> SourceCalibration:
    if not specs:
        raise OnnxPruneError("the model has no runtime inputs to calibrate")
    limit = sample_limit(samples)
    names = [s.name for s in specs]
    spool, row_shapes, count = None, None, 0
    try:
        for count, feed in enumerate(items, 1):
            batch = _check_feed(feed, specs, names, count, source)
            if batch is None:
                continue
            if spool is None:
                row_shapes = {k: v.shape[1:] for k, v in batch.items()}
                spool = Spool({s.name: (row_shapes[s.name], s.dtype) for s in specs}, limit, source)
            for name, a in batch.items():
                if a.shape[1:] != row_shapes[name]:
                    raise OnnxPruneError(f"{source}: item {count}, input '{name}' has sample shape {a.shape[1:]}; "
                                         f"earlier items had {row_shapes[name]}: give every item the same shape "
                                         "(pad to a common length)")
            spool.append(batch)
            if spool.full:
                break
        if spool is None or spool.rows == 0:
            raise OnnxPruneError(f"{source} yielded no samples; yield dicts input name -> array")
        found = spool.rows
        if samples is not None and found < samples:
            raise OnnxPruneError(f"{source} yielded {found} samples, fewer than --samples {samples}; "
                                 f"pass --samples {found} or yield more")
        calib = from_arrays(spool.arrays(), specs, found, source)
    except BaseException:
        if spool is not None:
            spool.abort()
        raise
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()                   # run the generator's cleanup (finally blocks, open files)
    info = {"kind": "script" if script else "feeds", "items": count, "samples": found}
    if script:
        info["script"] = str(script)
    return SourceCalibration(calib.arrays, source, info=info)


def _check_feed(feed, specs, names, index, source) -> dict | None:
    """The item as {name: array [n, ...]} in the model's dtypes, or None when it has no rows."""
    if not isinstance(feed, Mapping):
        raise OnnxPruneError(f"{source}: item {index} is a {type(feed).__name__}, not a dict "
                             f"input name -> array (the model's inputs: {', '.join(names)})")
    unknown = [str(k) for k in feed if k not in names]
    missing = [n for n in names if n not in feed]
    if unknown or missing:
        parts = ([f"no array for input(s) {', '.join(missing)}"] if missing else []) + \
                ([f"unknown name(s) {', '.join(unknown)}"] if unknown else [])
        raise OnnxPruneError(f"{source}: item {index} has {'; '.join(parts)}; the model's inputs are {', '.join(names)}")
    out = {}
    for spec in specs:
        where = f"{source}: item {index}, input '{spec.name}'"
        try:
            a = np.asarray(feed[spec.name])
        except Exception as exc:  # noqa: BLE001 - whatever the user's object raises
            raise OnnxPruneError(f"{where} is a {type(feed[spec.name]).__name__} that does not convert to an array "
                                 f"({exc})") from None
        rank = len(spec.dims)
        if a.ndim == rank - 1:
            a = a[None]                                   # one sample
        elif a.ndim != rank:
            raise OnnxPruneError(f"{where} has shape {a.shape}; the model expects a batch {_fmt(spec.dims)} or one "
                                 f"sample {_fmt(spec.dims[1:])}")
        bad = [axis for axis, want in enumerate(spec.dims) if axis > 0 and want is not None and a.shape[axis] != want]
        if bad:
            raise OnnxPruneError(f"{where} has shape {a.shape}; the model expects a batch {_fmt(spec.dims)} or one "
                                 f"sample {_fmt(spec.dims[1:])}")
        out[spec.name] = _cast(a, spec.dtype, where)
    rows = {k: v.shape[0] for k, v in out.items()}
    if len(set(rows.values())) != 1:
        raise OnnxPruneError(f"{source}: item {index} has different sample counts per input "
                             f"({', '.join(f'{k}: {n}' for k, n in rows.items())}); give every input the same count")
    return out if next(iter(rows.values())) else None


def _cast(a: np.ndarray, want: np.dtype, where: str) -> np.ndarray:
    """Same-kind conversions only (float64 -> float32; int32 -> int64 when the values fit)."""
    if a.dtype == want:
        return a
    if a.dtype.kind == "f" and want.kind == "f":
        return a.astype(want)
    if a.dtype.kind in "iu" and want.kind in "iu":
        converted = a.astype(want)
        if not np.array_equal(converted, a):
            raise OnnxPruneError(f"{where} has values that do not fit {want}, the model input type")
        return converted
    raise OnnxPruneError(f"{where} is {a.dtype}; the model expects {want}: convert it in the script "
                         f"(x.astype('{want}'))")


def _fmt(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


# --- running the user's code ---------------------------------------------------------------

def _import(path: Path):
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    name = f"onnxprune_calib_script_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise OnnxPruneError(f"{path} cannot be imported as a Python file; give FILE.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


@contextmanager
def _on_path(folder: Path):
    """The script's folder importable (its helper modules) while it runs."""
    entry = str(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def _guarded(script: Path, where: str, call):
    try:
        return call()
    except OnnxPruneError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - anything the user's code raises
        raise user_error(script, where, exc) from None


def _guarded_iter(script: Path, where: str, items):
    """Iterate the user's items, turning their errors into user errors; close() closes them."""
    class Items:
        def __iter__(self):
            return self

        def __next__(self):
            try:
                return next(items)
            except StopIteration:
                raise
            except OnnxPruneError:
                raise
            except (Exception, SystemExit) as exc:  # noqa: BLE001
                raise user_error(script, where, exc) from None

        def close(self):
            close = getattr(items, "close", None)
            if close is not None:
                _guarded(script, f"{where} while closing", close)
    return Items()


def user_error(script: Path, where: str, exc: BaseException) -> OnnxPruneError:
    """An error from the user's script: its first line says so; the traceback that follows
    shows only the frames in the script's own file."""
    real = os.path.realpath(script)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.realpath(f.filename) == real]
    summary = traceback.format_exception_only(type(exc), exc)
    lines = ["Traceback (in the calibration script):\n", *traceback.format_list(frames), *summary]
    last = summary[-1].strip() if summary else type(exc).__name__
    return OnnxPruneError(f"the calibration script {script.name} failed {where}: {last}\n" + "".join(lines).rstrip())
