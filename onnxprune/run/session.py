"""`Session`: what every run over one model shares and never changes: the loaded, analysed
model, its calibration data, the device and array module, the batch size and the reference
onnxruntime session. Built once (`open_session`), then read only, so runs cannot leak state
into each other through it (the reusable layer-mode results live in layercache.py). With
--workers/--ray-address it also holds the Ray workers that capture runs on (`pool`; closed by
`close_session`), and `capturer` hands out the Capturer that uses them.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

import onnx

from ..capture import runtime, shapes
from ..capture.parallel import ParallelCapturer
from ..capture.stats import StatsSettings
from ..capture.stream import Capturer
from ..errors import NothingToPrune, OnnxPruneError
from ..graph.analyze import analyze
from ..graph.index import GraphIndex
from ..io.calib import Calibration, fixed_batch, from_arrays, input_specs, load_calibration, random_calibration
from ..io.sources import SourceRequest, from_feeds, is_feeds
from ..io.largemodel import is_large
from ..io.modelio import check_model, load_model, normalize
from .device import resolve as resolve_device
from .options import PruneOptions
from .rowmask import RowMask, resolve as resolve_row_mask


@dataclass(frozen=True)
class Session:
    source: str | None               # the model's path, for the report
    model: onnx.ModelProto
    index: GraphIndex
    analysis: object                 # graph.groups.Analysis
    groups: list
    calibration: Calibration | None
    batch_size: int
    device: str
    xp: object
    setup_seconds: float
    mask: RowMask = RowMask(None, "none")     # where row_mask came from (run/rowmask.py)
    notes: tuple = ()                # where shapes static inference left unknown came from
    pool: object | None = None       # Ray capture workers (capture/ray_workers.RayPool); None: this process
    stats: StatsSettings = StatsSettings()      # how capture accumulates statistics (capture/stats.py)

    @property
    def row_mask(self) -> str | None:
        """The model input whose 0 entries mark padding tokens (None: no row mask)."""
        return self.mask.name

    @property
    def sample_dims(self) -> dict | None:
        """input -> dims of one calibration sample (what a dynamic sequence length is for FLOPs)."""
        calib = self.calibration
        return None if calib is None else {k: tuple(v.shape[1:]) for k, v in calib.arrays.items()}


def open_session(model, calib, opts: PruneOptions, source: str | None = None) -> Session:
    """Load (or check) `model`, analyse it, load `calib` and check that onnxruntime runs the
    model; raises the user error for anything wrong with them. `source` names an in-memory model."""
    start = time.perf_counter()
    if isinstance(model, (str, os.PathLike)):
        source = str(model)
        model = load_model(model)
    else:
        check_model(model, "the model")
        model = normalize(model)
    index = GraphIndex.build(model)
    notes = shapes.infer_symbolic(model, index)
    analysis = analyze(model, opts.exclude, index)
    if not analysis.groups and not index.unknown_shapes():
        _nothing_to_prune(analysis, index, None)
    calibration = calibration_for(model, calib, opts)
    if calibration is not None and index.unknown_shapes():
        notes += shapes.measure(model, index, calibration)
        analysis = analyze(model, opts.exclude, index)
    groups = list(analysis.groups)
    if not groups:
        _nothing_to_prune(analysis, index, calibration)
    mask = resolve_row_mask([s.name for s in input_specs(model)], calibration, opts.row_mask,
                            getattr(calibration, "row_mask", None))      # text: its attention mask
    batch_size = opts.batch_size
    batch = fixed_batch(input_specs(model))
    if batch is not None:
        if calibration is not None and calibration.samples < batch:
            raise OnnxPruneError(f"the model has a fixed batch of {batch}; give at least {batch} calibration "
                                 "samples")
        if calibration is not None:
            calibration = calibration.head(calibration.samples - calibration.samples % batch)
        batch_size = batch
    device, xp = resolve_device(opts.device)
    runtime.session(model, device)      # fails now, not after the capture, if onnxruntime cannot run it;
    runtime.release_memory()            # not kept: verify makes its own (a session holds a copy of the weights)
    pool = _worker_pool(model, calibration, batch_size, device, xp, opts)
    return Session(source, model, index, analysis, groups, calibration, batch_size, device, xp,
                   time.perf_counter() - start, mask, tuple(notes), pool, opts.stats)


def _worker_pool(model, calibration, batch_size: int, device: str, xp, opts: PruneOptions):
    """The Ray workers capture runs on, started last (everything else has been checked)."""
    if not opts.distributed or calibration is None:
        return None
    if is_large(model):
        raise OnnxPruneError("--workers/--ray-address: models over 2 GB are not shipped to Ray workers yet; "
                             "capture them in one process (drop --workers)")
    from ..capture.ray_workers import RayPool

    return RayPool(calibration, batch_size, opts.workers, opts.ray_address, device, xp.__name__)


def capturer(session: Session, progress=None) -> Capturer:
    """A Capturer over the session's calibration: on its Ray workers when it has them."""
    args = (session.calibration, session.batch_size, session.device, session.xp, progress, session.row_mask,
            session.stats)
    return Capturer(*args) if session.pool is None else ParallelCapturer(session.pool, *args)


def close_session(session: Session) -> None:
    """Stop the session's Ray workers, if any (idempotent)."""
    if session.pool is not None:
        session.pool.close()


def _nothing_to_prune(analysis, index: GraphIndex, calibration) -> None:
    unknown = index.unknown_shapes()
    hint = (f"; {len(unknown)} tensor shape(s) are unknown to static and symbolic inference (with calibration "
            "data onnxprune measures them)" if unknown and calibration is None else "")
    raise NothingToPrune(
        f"nothing to prune: no prunable channel group in the model ({len(analysis.skipped)} "
        f"Conv/Gemm/MatMul left alone); `onnxprune analyze MODEL` says why for each{hint}")


def calibration_for(model: onnx.ModelProto, calib, opts: PruneOptions) -> Calibration | None:
    """The calibration data of `calib` (see `prune`), or None when the run needs none; raises
    the user error when it does need data and none was given."""
    specs = input_specs(model)
    if calib is not None and opts.calib_random is not None:
        raise OnnxPruneError("give either calibration data or --calib-random N, not both")
    if isinstance(calib, SourceRequest):
        return calib.load(specs, opts.samples)
    if isinstance(calib, Calibration):      # a SourceCalibration keeps its row mask and report details
        return replace(calib, arrays=from_arrays(calib.arrays, specs, opts.samples, calib.source).arrays)
    if isinstance(calib, (str, os.PathLike)):
        return load_calibration(calib, specs, opts.samples)
    if is_feeds(calib):
        return from_feeds(calib, specs, opts.samples)
    if calib is not None:
        return from_arrays(calib, specs, opts.samples)
    if opts.calib_random is not None:
        return random_calibration(specs, opts.calib_random, opts.seed)
    if opts.needs_data:
        method = opts.impl
        what = f"--method {opts.method}{' with reweighting' if opts.refits else ''}"
        what += " and --allocation error" if opts.allocation == "error" else ""
        hint = " (or --no-reweight)" if not method.needs_data and opts.allocation != "error" else ""
        raise OnnxPruneError(f"{what} needs calibration inputs: pass --calib FILE.npz{hint} "
                             "(or --calib-random N for a smoke test on random data)")
    return None
