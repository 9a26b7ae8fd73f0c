"""`prune`: load -> analyze -> budget -> capture -> select -> reweight -> rewrite -> verify -> report.

Every option and input is validated before the first slow stage starts.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import onnx

from . import __version__, runtime
from .analyze import analyze
from .budget import counts_for_compression, counts_for_keep
from .calib import Calibration, fixed_batch, from_arrays, input_specs, load_calibration, random_calibration
from .capture import Capturer
from .errors import NothingToPrune, OnnxPruneError
from .flops import model_flops
from .graph import GraphIndex, float_param_count
from .modelio import load_model, normalize, check_model
from .layout import Alive
from .problem import ChannelView, Problem, original_rows
from .reweight import DEFAULT_RIDGE, least_squares
from .report import GroupReport, Report
from .rewrite import apply_group
from .select import METHODS, select
from .verify import check, output_fidelity
from .weights import consumer_matrix, consumer_update
from .xp import array_module, to_numpy

MODES = ("layer", "seq", "asym")
VERIFY_SAMPLES = 256


@dataclass(frozen=True)
class PruneOptions:
    keep: float | None = None
    compression: float | None = None
    method: str = "greedy"
    mode: str = "asym"
    reweight: bool = True
    seed: int = 0
    exclude: tuple = ()
    samples: int | None = None          # None: first 512, or all when fewer
    batch_size: int = 32
    calib_random: int | None = None
    device: str = "auto"
    ridge: float = DEFAULT_RIDGE
    row_mask: str | None = None         # model input marking real tokens (1) and padding (0)

    def validate(self) -> None:
        if (self.keep is None) == (self.compression is None):
            raise OnnxPruneError("give exactly one budget: --keep FRACTION or --compression RATIO")
        if self.keep is not None and not (0 < self.keep <= 1):
            raise OnnxPruneError(f"--keep must be in (0, 1], got {self.keep}")
        if self.compression is not None and not self.compression >= 1:
            raise OnnxPruneError(f"--compression must be >= 1 (original/pruned parameters), got {self.compression}")
        if self.method not in METHODS:
            raise OnnxPruneError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.mode not in MODES:
            raise OnnxPruneError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.batch_size <= 0:
            raise OnnxPruneError(f"--batch-size must be positive, got {self.batch_size}")
        if self.ridge < 0:
            raise OnnxPruneError(f"--ridge must be >= 0, got {self.ridge}")

    @property
    def needs_data(self) -> bool:
        return self.method == "greedy" or self.reweight


@dataclass
class _Clock:
    seconds: dict = field(default_factory=dict)

    def add(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + (now - since)
        return now


def prune(model, calib=None, *, progress: Callable | None = None, **options):
    """Prune `model` (a path or ModelProto) and return (pruned ModelProto, Report).

    `calib` is a path (.npz/.npy), a dict of arrays per input name, one array, a Calibration,
    or None (then pass calib_random=N, or use a data-free method without reweighting).
    Keyword options are the fields of PruneOptions.
    """
    opts = PruneOptions(**{k: tuple(v) if k == "exclude" else v for k, v in options.items()})
    opts.validate()
    start = time.perf_counter()
    clock = _Clock()
    source = None
    if isinstance(model, (str, os.PathLike)):
        source = str(model)
        model = load_model(model)
    else:
        check_model(model, "the model")
        model = normalize(model)
    t = time.perf_counter()
    index = GraphIndex.build(model)
    analysis = analyze(model, opts.exclude, index)
    groups = list(analysis.groups)
    if not groups:
        raise NothingToPrune(
            f"nothing to prune: no prunable channel group in the model ({len(analysis.skipped)} Conv/Gemm/MatMul "
            "left alone); `onnxprune analyze MODEL` says why for each"
        )
    adds_bias = opts.reweight
    counts = (counts_for_keep(groups, opts.keep) if opts.keep is not None
              else counts_for_compression(index, groups, opts.compression, adds_bias))
    calibration = _calibration(model, calib, opts)
    _check_row_mask(opts.row_mask, calibration)
    batch = fixed_batch(input_specs(model))
    if batch is not None:
        if calibration is not None and calibration.samples < batch:
            raise OnnxPruneError(f"the model has a fixed batch of {batch}; give at least {batch} calibration samples")
        if calibration is not None:
            calibration = calibration.head(calibration.samples - calibration.samples % batch)
        opts = replace(opts, batch_size=batch)
    device = runtime.resolve_device(opts.device)
    xp = array_module(device if opts.device != "auto" else "auto")
    reference = runtime.session(model, device)     # fails now if onnxruntime cannot run the model
    t = clock.add("analyze", t)

    state = _Run(model, opts, calibration, device, xp, clock, progress)
    pruned, group_reports = state.run(groups, counts)
    calibration_info = None
    if calibration is not None:
        calibration_info = {"source": calibration.source, "samples": calibration.samples}
        if opts.row_mask:
            calibration_info.update(row_mask=opts.row_mask, masked_consumers=sorted(state.masked))

    t = time.perf_counter()
    check(pruned)
    verify = {"checker": "passed"}
    if calibration is not None:
        verify.update(output_fidelity(reference, pruned, calibration.head(VERIFY_SAMPLES), opts.batch_size, device))
    del reference
    clock.add("verify", t)
    clock.seconds["total"] = time.perf_counter() - start
    report = Report(
        input=source, output=None, method=opts.method, mode=opts.mode, reweight=opts.reweight, seed=opts.seed,
        device=device,
        calibration=calibration_info,
        budget={"keep": opts.keep, "compression_target": opts.compression},
        params_before=float_param_count(model), params_after=float_param_count(pruned),
        flops_before=model_flops(model, index), flops_after=model_flops(pruned),
        groups=group_reports, skipped=[s.to_dict() for s in analysis.skipped], verify=verify,
        seconds={k: round(v, 3) for k, v in clock.seconds.items()},
        tool={"name": "onnxprune", "version": __version__},
    )
    return pruned, report


def _check_row_mask(name: str | None, calibration: Calibration | None) -> None:
    if name is None:
        return
    if calibration is None or name not in calibration.arrays:
        have = ", ".join(sorted(calibration.arrays)) if calibration else "none"
        raise OnnxPruneError(f"--row-mask {name} is not a model input with calibration data (inputs: {have})")
    if calibration.arrays[name].ndim != 2:
        raise OnnxPruneError(f"--row-mask {name} must be [samples, tokens], got shape "
                             f"{calibration.arrays[name].shape}")


def _calibration(model: onnx.ModelProto, calib, opts: PruneOptions) -> Calibration | None:
    specs = input_specs(model)
    if calib is not None and opts.calib_random is not None:
        raise OnnxPruneError("give either calibration data or --calib-random N, not both")
    if isinstance(calib, Calibration):
        return from_arrays(calib.arrays, specs, opts.samples, calib.source)
    if isinstance(calib, (str, os.PathLike)):
        return load_calibration(calib, specs, opts.samples)
    if calib is not None:
        return from_arrays(calib, specs, opts.samples)
    if opts.calib_random is not None:
        return random_calibration(specs, opts.calib_random, opts.seed)
    if opts.needs_data:
        raise OnnxPruneError(
            f"--method {opts.method}{' with reweighting' if opts.reweight else ''} needs calibration inputs: "
            "pass --calib FILE.npz (or --calib-random N for a smoke test on random data)"
        )
    return None


class _Run:
    """One pruning run over the groups, in topological order of their first producers."""

    def __init__(self, model, opts: PruneOptions, calibration, device, xp, clock: _Clock, progress):
        self.original = model
        self.original_index = GraphIndex.build(model, infer=False)
        self.opts = opts
        self.xp = xp
        self.clock = clock
        self.progress = progress or (lambda stage, done, total: None)
        self.alive = Alive()
        self.capturer = (Capturer(calibration, opts.batch_size, device, xp, self.progress, opts.row_mask)
                         if calibration is not None else None)
        self.masked = set()           # consumers whose padding rows were dropped

    def run(self, groups, counts):
        todo = [g for g in groups if counts[g.name] < g.channels]
        layer_stats = {}
        if self.capturer is not None and todo:       # keep=1 (or rounding) may leave nothing to capture
            if self.opts.mode == "layer":
                layer_stats = self._layer_stats(todo)
            else:
                self.capturer.plan(self.original, [g.boundary for g in todo])
        try:
            return self._run(groups, counts, layer_stats)
        finally:
            if self.capturer is not None:
                self.capturer.close()

    def _run(self, groups, counts, layer_stats):
        current = self.original
        reports = []
        for g in groups:
            k = counts[g.name]
            if k >= g.channels:
                reports.append(asdict(GroupReport(g.name, g.channels, g.channels, list(range(g.channels)), 0.0,
                                                  [c.node for c in g.consumers])))
                continue
            current, report = self._prune_group(current, g, k, layer_stats)
            reports.append(report)
        return current, reports

    def _layer_stats(self, groups) -> dict:
        """Statistics of every distinct consumer from one pass of the original model."""
        t = time.perf_counter()
        consumers = list({c.node: c for g in groups for c in g.consumers}.values())
        stats = self.capturer.layer_stats(self.original, consumers, "capture (all layers)")
        self.clock.add("capture", t)
        return {c.node: s for c, s in zip(consumers, stats)}

    def _prune_group(self, current, g, k: int, layer_stats: dict):
        xp, opts = self.xp, self.opts
        idx = GraphIndex.build(current, infer=False)
        members = set(g.sources)
        matrices = [consumer_matrix(idx, c) for c in g.consumers]
        views = [ChannelView.of(c, members, g.channels, self.alive) for c in g.consumers]
        problems = self._problems(current, g, matrices, views, layer_stats)
        t = time.perf_counter()
        rng = np.random.default_rng([opts.seed, g.position])
        label = f"select {g.name}"
        sel = select(opts.method, k, g.channels, problems=problems,
                     weights=[v.dense_rows(m) for m, v in zip(matrices, views)], xp=xp, rng=rng,
                     on_step=lambda j: self.progress(label, j, k))
        t = self.clock.add("select", t)
        updates, err, energy = [], 0.0, 0.0
        for c, matrix, view, problem in zip(g.consumers, matrices, views,
                                            problems or [None] * len(g.consumers)):
            if problem is not None:
                canonical = (least_squares(problem, sel.kept, opts.ridge, xp) if opts.reweight
                             else to_numpy(problem.weight)[problem.rows(sel.kept)])
                err += problem.error(sel.kept, xp.asarray(canonical), xp)
                energy += problem.target
                rows = view.order[problem.rows(sel.kept)]
                new = canonical[np.argsort(rows)]
            else:
                new = matrix[view.remaining(sel.kept)]
            updates.append(consumer_update(idx, c, new))
        t = self.clock.add("reweight", t)
        pruned = apply_group(current, g, sel.kept, updates, self.alive)
        self.alive.mark(g.sources, g.channels, sel.kept)
        self.clock.add("rewrite", t)
        rel = (err / energy if energy > 0 else 0.0) if problems is not None else None
        return pruned, asdict(GroupReport(g.name, g.channels, k, [int(i) for i in sel.kept], rel,
                                          [c.node for c in g.consumers]))

    def _problems(self, current, g, matrices, views, layer_stats):
        """One least-squares Problem per consumer (None without calibration data)."""
        if self.capturer is None:
            return None
        xp, opts = self.xp, self.opts
        t = time.perf_counter()
        if opts.mode == "layer":
            stats = [layer_stats[c.node] for c in g.consumers]
            keep = [original_rows(c, self.alive) for c in g.consumers]
            targets = [None] * len(g.consumers)
        else:
            targets = [self._target_weight(c) for c in g.consumers] if opts.mode == "asym" else [None] * len(
                g.consumers)
            original = self.original if opts.mode == "asym" else None
            stats = self.capturer.step_stats(current, list(g.consumers), f"capture {g.name}", original,
                                             {c.node: w for c, w in zip(g.consumers, targets)})
            keep = [None] * len(g.consumers)
        self.clock.add("capture", t)
        self.masked.update(s.consumer.node for s in stats if s.masked)
        return [Problem.build(s, m, v, xp, keep_rows=r, target_weight=w)
                for s, m, v, r, w in zip(stats, matrices, views, keep, targets)]

    def _target_weight(self, c):
        """asym target: the original consumer matrix, limited to the outputs still present."""
        matrix = consumer_matrix(self.original_index, c)
        cols = self.alive.kept.get(c.node)
        return matrix if cols is None else matrix[:, cols]
