"""`prune`: load -> analyze -> budget -> capture -> select -> reweight -> rewrite -> verify -> report.

Every option and input is validated before the first slow stage starts. A `Workspace` holds
what does not depend on the method or the budget (the analysed model, calibration data,
device) and what layer-mode runs can share, so `sweep` pays for those once.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

import numpy as np
import onnx

from .. import __version__
from ..capture import runtime
from ..budget.allocation import (ALLOCATIONS, TARGETS, Rules, Target, check_reachable, error_counts, keep_counts,
                         ranking_counts, uniform_counts)
from ..graph.analyze import analyze
from ..io.calib import Calibration, fixed_batch, from_arrays, input_specs, load_calibration, random_calibration
from ..capture.stream import Capturer
from ..budget.curves import output_curves
from ..errors import NothingToPrune, OnnxPruneError
from ..budget.flops import model_flops
from ..graph.index import GraphIndex, float_param_count
from ..graph.layout import Alive
from ..methods.importance import DRAWS
from ..methods.random_global import random_scores
from ..methods.sampling import SensitivityAccumulator
from ..io.modelio import check_model, load_model, normalize
from ..solve.problem import ChannelView
from .runner import GroupPruner, group_rng
from .report import Report
from ..solve.reweight import DEFAULT_RIDGE
from ..solve.greedy import METHODS, Selection, greedy_order
from .device import resolve as resolve_device
from .verify import check, output_fidelity
from ..rewrite.weights import consumer_matrix

MODES = ("layer", "seq", "asym")
VERIFY_SAMPLES = 256
DATA_FREE_NOTE = ("coreset without calibration data: the consumers are not refitted (reweighting needs data; "
                  "pass --calib to refit them)")


@dataclass(frozen=True)
class PruneOptions:
    keep: float | None = None
    compression: float | None = None
    method: str = "greedy"
    mode: str = "asym"
    reweight: bool | None = None        # None: on, except for coreset without calibration data
    seed: int = 0
    exclude: tuple = ()
    samples: int | None = None          # None: first 512, or all when fewer
    batch_size: int = 32
    calib_random: int | None = None
    device: str = "auto"
    ridge: float = DEFAULT_RIDGE
    row_mask: str | None = None         # model input marking real tokens (1) and padding (0)
    allocation: str = "uniform"
    target: str = "params"
    min_channels: int = 1
    round_to: int = 1
    coreset_beta: float = 1.0
    draw: str = "systematic"

    @classmethod
    def of(cls, **options) -> "PruneOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}")
        return cls(**{k: tuple(v) if k == "exclude" else v for k, v in options.items()})

    def validate(self) -> None:
        if (self.keep is None) == (self.compression is None):
            raise OnnxPruneError("give exactly one budget: --keep FRACTION or --compression RATIO")
        if self.keep is not None and not (0 < self.keep <= 1):
            raise OnnxPruneError(f"--keep must be in (0, 1], got {self.keep}")
        if self.compression is not None and not self.compression >= 1:
            raise OnnxPruneError(f"--compression must be >= 1 (original/pruned parameters), got {self.compression}")
        for name, value, choices in (("method", self.method, METHODS), ("mode", self.mode, MODES),
                                     ("allocation", self.allocation, ALLOCATIONS), ("target", self.target, TARGETS),
                                     ("draw", self.draw, DRAWS)):
            if value not in choices:
                raise OnnxPruneError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
        if self.batch_size <= 0:
            raise OnnxPruneError(f"--batch-size must be positive, got {self.batch_size}")
        if self.ridge < 0:
            raise OnnxPruneError(f"--ridge must be >= 0, got {self.ridge}")
        if self.min_channels < 1 or self.round_to < 1:
            raise OnnxPruneError(f"--min-channels and --round-to must be >= 1, got {self.min_channels} and "
                                 f"{self.round_to}")
        if not self.coreset_beta > 0:
            raise OnnxPruneError(f"--coreset-beta must be positive, got {self.coreset_beta}")
        if self.keep is not None and (self.allocation != "uniform" or self.target != "params"):
            raise OnnxPruneError("--allocation error and --target flops need a whole-model target: use --compression")
        if self.method == "random-global" and self.allocation != "uniform":
            raise OnnxPruneError("random-global allocates channels by its own global ranking; drop --allocation")

    @property
    def rules(self) -> Rules:
        return Rules(self.min_channels, self.round_to)

    @property
    def refits(self) -> bool:
        """Whether the consumers get refitted, once an unset --reweight is resolved with data."""
        return self.reweight if self.reweight is not None else True

    @property
    def needs_data(self) -> bool:
        reweight = self.reweight if self.reweight is not None else self.method != "coreset"
        return self.method in ("greedy", "sampling") or reweight or self.allocation == "error"


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
    opts = PruneOptions.of(**options)
    opts.validate()
    return Workspace(model, calib, opts).prune(opts, progress)


class Workspace:
    """A loaded, analysed model with its calibration data and device, plus the layer-mode
    results any run over it can reuse: consumer statistics of the original model, sampling
    sensitivities, and greedy orders (nested: one order answers every budget)."""

    def __init__(self, model, calib, opts: PruneOptions):
        start = time.perf_counter()
        self.source = None
        if isinstance(model, (str, os.PathLike)):
            self.source = str(model)
            model = load_model(model)
        else:
            check_model(model, "the model")
            model = normalize(model)
        self.model = model
        self.index = GraphIndex.build(model)
        self.analysis = analyze(model, opts.exclude, self.index)
        self.groups = list(self.analysis.groups)
        if not self.groups:
            raise NothingToPrune(
                f"nothing to prune: no prunable channel group in the model ({len(self.analysis.skipped)} "
                "Conv/Gemm/MatMul left alone); `onnxprune analyze MODEL` says why for each")
        self.calibration = _calibration(model, calib, opts)
        _check_row_mask(opts.row_mask, self.calibration)
        self.row_mask = opts.row_mask
        self.batch_size = opts.batch_size
        batch = fixed_batch(input_specs(model))
        if batch is not None:
            if self.calibration is not None and self.calibration.samples < batch:
                raise OnnxPruneError(f"the model has a fixed batch of {batch}; give at least {batch} calibration "
                                     "samples")
            if self.calibration is not None:
                self.calibration = self.calibration.head(self.calibration.samples - self.calibration.samples % batch)
            self.batch_size = batch
        device = resolve_device(opts.device)
        self.device, self.xp = device.name, device.xp
        self.reference = runtime.session(model, self.device)   # fails now if onnxruntime cannot run the model
        self.stats: dict = {}           # consumer node -> ConsumerStats of the original model
        self.sensitivity: dict = {}     # group -> sampling sensitivities on the original model
        self._orders: dict = {}         # (group, inputs digest) -> (greedy order, errors)
        self._curves: dict = {}         # (min_channels, round_to, ridge) -> error allocation curves
        self.setup_seconds = time.perf_counter() - start

    def prune(self, opts: PruneOptions, progress: Callable | None = None, include_setup: bool = True):
        """One run with `opts` (their data and model options must be the workspace's)."""
        start = time.perf_counter()
        clock = _Clock()
        notes = []
        if opts.reweight is None:
            opts = replace(opts, reweight=not (opts.method == "coreset" and self.calibration is None))
            if not opts.reweight:
                notes.append(DATA_FREE_NOTE)
        if opts.needs_data and self.calibration is None:
            _calibration(self.model, None, opts)            # raises the user error
        t, captured = time.perf_counter(), clock.seconds.get("capture", 0.0)
        counts = self.counts(opts, clock, progress)
        clock.add("budget", t)
        clock.seconds["budget"] -= clock.seconds.get("capture", 0.0) - captured    # reported as capture
        pruner = GroupPruner(self, opts, clock, progress)
        pruned, group_reports = pruner.run(counts)

        t = time.perf_counter()
        check(pruned)
        verify = {"checker": "passed"}
        if self.calibration is not None:
            verify.update(output_fidelity(self.reference, pruned, self.calibration.head(VERIFY_SAMPLES),
                                          self.batch_size, self.device))
        clock.add("verify", t)
        clock.seconds["analyze"] = self.setup_seconds if include_setup else 0.0
        clock.seconds["total"] = time.perf_counter() - start + clock.seconds["analyze"]
        calib = self.calibration
        calibration_info = {"source": calib.source, "samples": calib.samples} if calib else None
        if calib and self.row_mask:
            calibration_info.update(row_mask=self.row_mask, masked_consumers=sorted(pruner.masked))
        report = Report(
            input=self.source, output=None, method=opts.method, mode=opts.mode, reweight=opts.reweight,
            seed=opts.seed, device=self.device,
            calibration=calibration_info,
            budget={"keep": opts.keep, "compression_target": opts.compression,
                    "allocation": "ranking" if opts.method == "random-global" else opts.allocation,
                    "target": opts.target, "min_channels": opts.min_channels, "round_to": opts.round_to},
            params_before=float_param_count(self.model), params_after=float_param_count(pruned),
            flops_before=model_flops(self.model, self.index), flops_after=model_flops(pruned),
            groups=group_reports, skipped=[s.to_dict() for s in self.analysis.skipped], verify=verify,
            seconds={k: round(v, 3) for k, v in clock.seconds.items()},
            tool={"name": "onnxprune", "version": __version__}, notes=notes,
        )
        return pruned, report

    # -- budget ----------------------------------------------------------------------------

    def check_budget(self, opts: PruneOptions) -> None:
        """Raise the user error a run with `opts` would raise for its budget (no data needed)."""
        if opts.compression is not None:
            check_reachable(self.target(opts), opts.compression, opts.rules)

    def target(self, opts: PruneOptions) -> Target:
        return Target(self.index, self.groups, opts.target, adds_bias=opts.refits)

    def counts(self, opts: PruneOptions, clock: _Clock, progress=None) -> dict:
        """Kept channels per group for `opts` (error allocation: from the greedy curves)."""
        rules, groups = opts.rules, self.groups
        if opts.method == "random-global":
            scores = {g.name: random_scores(g.channels, group_rng(opts.seed, g)) for g in groups}
            if opts.keep is not None:
                return ranking_counts(groups, rules, scores, keep=opts.keep)
            return ranking_counts(groups, rules, scores, target=self.target(opts), ratio=opts.compression)
        if opts.keep is not None:
            return keep_counts(groups, opts.keep, rules)
        target = self.target(opts)
        if opts.allocation == "error":
            check_reachable(target, opts.compression, rules)
            key = (opts.min_channels, opts.round_to, opts.ridge)
            if key not in self._curves:
                self._curves[key] = output_curves(self, opts, clock, progress)
            return error_counts(target, opts.compression, rules, self._curves[key])
        return uniform_counts(target, opts.compression, rules)

    # -- layer-mode caches -----------------------------------------------------------------

    def layer_capture(self, groups, sensitivity: bool, clock: _Clock, progress=None) -> None:
        """Cache original-model statistics of every consumer of `groups` (and, for sampling,
        the groups' sensitivities): one pass for whatever is still missing."""
        t = time.perf_counter()
        consumers = list({c.node: c for g in groups for c in g.consumers if c.node not in self.stats}.values())
        observers = {}
        if sensitivity:
            for g in groups:
                if g.name not in self.sensitivity:
                    observers[g.name] = [
                        SensitivityAccumulator(c, consumer_matrix(self.index, c),
                                               ChannelView.of(c, set(g.sources), g.channels, Alive()).candidates,
                                               self.xp)
                        for c in g.consumers]
        if consumers or observers:
            capturer = Capturer(self.calibration, self.batch_size, self.device, self.xp, progress, self.row_mask)
            try:
                stats = capturer.layer_stats(self.model, consumers, "capture (all layers)",
                                             tuple(o for obs in observers.values() for o in obs))
            finally:
                capturer.close()
            self.stats.update({c.node: s for c, s in zip(consumers, stats)})
            for name, obs in observers.items():
                self.sensitivity[name] = np.max([o.result() for o in obs], axis=0)
        clock.add("capture", t)

    def greedy_selection(self, g, problems, matrices, keep_rows, k: int, on_step=None) -> Selection:
        """The first k greedy picks on layer-mode problems, computed once per distinct
        problem (same group, consumer weights and surviving rows) and reused as a prefix."""
        key = (g.name,) + tuple(_digest(a) for a in list(matrices) + list(keep_rows))
        order, errors = self._orders.get(key, ((), ()))
        if len(order) < k:
            order, errors = greedy_order(problems, k, self.xp, on_step)
            self._orders[key] = (tuple(order), tuple(errors))
        return Selection(np.sort(np.asarray(order[:k], dtype=np.int64)), tuple(order[:k]), tuple(errors[:k + 1]))


def _digest(a) -> bytes:
    a = np.ascontiguousarray(a)
    return hashlib.blake2b(a.tobytes(), digest_size=16, person=str(a.shape).encode()[:16]).digest()


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
        what = f"--method {opts.method}{' with reweighting' if opts.refits else ''}"
        what += " and --allocation error" if opts.allocation == "error" else ""
        hint = " (or --no-reweight)" if opts.method not in ("greedy", "sampling") and opts.allocation != "error" else ""
        raise OnnxPruneError(f"{what} needs calibration inputs: pass --calib FILE.npz{hint} "
                             "(or --calib-random N for a smoke test on random data)")
    return None
