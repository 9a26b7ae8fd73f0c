"""`PruneOptions`: every knob of a run, validated before the first slow stage starts.

Method-specific rules (needs data, reweights by default, allocates itself) are asked of the
method (methods/), not tested by name here.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..budget.allocation import ALLOCATIONS, TARGETS, Rules
from ..capture.ray_workers import require_ray
from ..capture.stats import DTYPES, StatsSettings
from ..errors import OnnxPruneError
from ..methods import METHODS, Method, get as get_method
from ..methods.importance import DRAWS
from .metrics import METRICS

MODES = ("layer", "seq", "asym")
SEARCHES = ("none", "swap")


@dataclass(frozen=True)
class PruneOptions:
    keep: float | None = None
    compression: float | None = None
    method: str = "greedy"
    mode: str = "asym"
    reweight: bool | None = None        # None: on, except for data-free methods (coreset) without data
    seed: int = 0
    exclude: tuple = ()
    samples: int | None = None          # None: first 512, or all when fewer
    batch_size: int = 32
    calib_random: int | None = None
    device: str = "auto"
    ridge: float | str = "auto"         # relative ridge of every refit, or "auto" (solve/ridge.py)
    row_mask: str | bool | None = None  # input marking real tokens (1) / padding (0); None: automatic, False: off
    stats_dtype: str = "float32"        # precision of each batch's Gram products (sums are float64)
    max_rows: int | str | None = "auto"     # rows per layer and batch kept for the statistics (None: all;
                                            # "auto": StatsSettings.row_limit)
    allocation: str = "uniform"
    target: str = "params"
    min_channels: int = 1
    round_to: int = 1
    coreset_beta: float = 1.0
    draw: str = "systematic"
    refit: str | None = None            # consumers | all; None: all in seq/asym with data and reweighting
    metric: str = "auto"                # how outputs are compared: auto | argmax | cosine (run/metrics.py)
    heads_keep: float | None = None     # fraction of heads kept in every attention block (fixed)
    ffn_keep: float | None = None       # fraction kept in every other group (FFN units, channels) (fixed)
    min_heads: int = 1                  # heads kept at least per attention block
    workers: int | None = None          # capture on N Ray workers; None: 1 (no Ray), or the whole --ray-address cluster
    ray_address: str | None = None      # an existing Ray cluster to capture on
    search: str = "none"                # greedy: none | swap (local search after the picks, solve/swap.py)
    residual_target: str | None = None  # asym: sum | branch; None: sum with --refit all (graph/residual.py)

    @classmethod
    def of(cls, **options) -> "PruneOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}")
        return cls(**{k: tuple(v) if k == "exclude" else v for k, v in options.items()})

    def validate(self) -> None:
        if self.keep is not None and self.compression is not None or \
                self.keep is None and self.compression is None and self.heads_keep is None and self.ffn_keep is None:
            raise OnnxPruneError("give exactly one budget: --keep FRACTION or --compression RATIO "
                                 "(or --heads-keep / --ffn-keep alone)")
        for name, value in (("--heads-keep", self.heads_keep), ("--ffn-keep", self.ffn_keep)):
            if value is not None and not (0 < value <= 1):
                raise OnnxPruneError(f"{name} must be in (0, 1], got {value}")
        if self.min_heads < 1:
            raise OnnxPruneError(f"--min-heads must be >= 1, got {self.min_heads}")
        if self.compression is not None and self.heads_keep is not None and self.ffn_keep is not None:
            raise OnnxPruneError("--compression has nothing left to allocate when both --heads-keep and --ffn-keep "
                                 "are given; drop one of the three")
        if self.keep is not None and not (0 < self.keep <= 1):
            raise OnnxPruneError(f"--keep must be in (0, 1], got {self.keep}")
        if self.compression is not None and not self.compression >= 1:
            raise OnnxPruneError(f"--compression must be >= 1 (original/pruned parameters), got {self.compression}")
        for name, value, choices in (("method", self.method, METHODS), ("mode", self.mode, MODES),
                                     ("allocation", self.allocation, ALLOCATIONS), ("target", self.target, TARGETS),
                                     ("draw", self.draw, DRAWS), ("search", self.search, SEARCHES)):
            if value not in choices:
                raise OnnxPruneError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
        if self.metric not in METRICS:
            raise OnnxPruneError(f"unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}")
        if self.refit not in (None, "consumers", "all"):
            raise OnnxPruneError(f"unknown refit {self.refit!r}; choose one of consumers, all")
        if self.refit == "all" and self.mode == "layer":
            raise OnnxPruneError("--refit all needs --mode seq or asym (layer mode takes every statistic from "
                                 "the original model, so no layer's input drifts)")
        if self.residual_target not in (None, "sum", "branch"):
            raise OnnxPruneError(f"unknown residual target {self.residual_target!r}; choose one of sum, branch")
        if self.residual_target == "sum" and self.mode != "asym":
            raise OnnxPruneError("--residual-target sum needs --mode asym (it compares the skip path with the "
                                 "original model's)")
        if self.workers is not None and self.workers < 1:
            raise OnnxPruneError(f"--workers must be >= 1, got {self.workers}")
        if self.distributed:
            require_ray()
        if self.batch_size <= 0:
            raise OnnxPruneError(f"--batch-size must be positive, got {self.batch_size}")
        if self.stats_dtype not in DTYPES:
            raise OnnxPruneError(f"unknown stats dtype {self.stats_dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.max_rows not in (None, "auto") and not (isinstance(self.max_rows, int) and self.max_rows >= 1):
            raise OnnxPruneError(f"--max-rows must be a positive count, 'auto' or None (all), got {self.max_rows!r}")
        if self.ridge != "auto" and not (isinstance(self.ridge, (int, float)) and self.ridge >= 0):
            raise OnnxPruneError(f"--ridge must be a number >= 0 or 'auto', got {self.ridge!r}")
        if self.min_channels < 1 or self.round_to < 1:
            raise OnnxPruneError(f"--min-channels and --round-to must be >= 1, got {self.min_channels} and "
                                 f"{self.round_to}")
        if not self.coreset_beta > 0:
            raise OnnxPruneError(f"--coreset-beta must be positive, got {self.coreset_beta}")
        if self.compression is None and (self.allocation != "uniform" or self.target != "params"):
            raise OnnxPruneError("--allocation error and --target flops need a whole-model target: use --compression")
        if self.impl.ranks_globally and self.allocation != "uniform":
            raise OnnxPruneError(f"{self.method} allocates channels by its own global ranking; drop --allocation")

    @property
    def impl(self) -> Method:
        """The selection method named by `method`."""
        return get_method(self.method)

    @property
    def stats(self) -> StatsSettings:
        """How capture accumulates statistics (capture/stats.py)."""
        return StatsSettings(self.stats_dtype, self.max_rows)

    @property
    def rules(self) -> Rules:
        return Rules(self.min_channels, self.round_to, self.min_heads, self.heads_keep, self.ffn_keep)

    @property
    def keep_fraction(self) -> float | None:
        """The common keep fraction of the groups not fixed by --heads-keep / --ffn-keep: --keep,
        or everything when only those fixed fractions are given; None with --compression."""
        if self.keep is not None or self.compression is not None:
            return self.keep
        return 1.0

    @property
    def refits(self) -> bool:
        """Whether the consumers get refitted, once an unset --reweight is resolved with data."""
        return self.reweight if self.reweight is not None else True

    @property
    def distributed(self) -> bool:
        """Whether capture runs on Ray workers (--workers above 1, or a --ray-address)."""
        return (self.workers or 1) > 1 or bool(self.ray_address)

    @property
    def needs_data(self) -> bool:
        reweight = self.reweight if self.reweight is not None else not self.impl.data_free
        return self.impl.needs_data or reweight or self.allocation == "error"
