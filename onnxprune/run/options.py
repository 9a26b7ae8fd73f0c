"""`PruneOptions`: every knob of a run, validated before the first slow stage starts.

Method-specific rules (needs data, reweights by default, allocates itself) are asked of the
method (methods/), not tested by name here.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..budget.allocation import ALLOCATIONS, TARGETS, Rules
from ..errors import OnnxPruneError
from ..methods import METHODS, Method, get as get_method
from ..methods.importance import DRAWS
from ..solve.reweight import DEFAULT_RIDGE

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
    ridge: float = DEFAULT_RIDGE
    row_mask: str | None = None         # model input marking real tokens (1) and padding (0)
    allocation: str = "uniform"
    target: str = "params"
    min_channels: int = 1
    round_to: int = 1
    coreset_beta: float = 1.0
    draw: str = "systematic"
    refit: str | None = None            # consumers | all; None: all in seq/asym with data and reweighting
    search: str = "none"                # greedy: none | swap (local search after the picks, solve/swap.py)

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
                                     ("draw", self.draw, DRAWS), ("search", self.search, SEARCHES)):
            if value not in choices:
                raise OnnxPruneError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
        if self.refit not in (None, "consumers", "all"):
            raise OnnxPruneError(f"unknown refit {self.refit!r}; choose one of consumers, all")
        if self.refit == "all" and self.mode == "layer":
            raise OnnxPruneError("--refit all needs --mode seq or asym (layer mode takes every statistic from "
                                 "the original model, so no layer's input drifts)")
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
        if self.impl.ranks_globally and self.allocation != "uniform":
            raise OnnxPruneError(f"{self.method} allocates channels by its own global ranking; drop --allocation")

    @property
    def impl(self) -> Method:
        """The selection method named by `method`."""
        return get_method(self.method)

    @property
    def rules(self) -> Rules:
        return Rules(self.min_channels, self.round_to)

    @property
    def refits(self) -> bool:
        """Whether the consumers get refitted, once an unset --reweight is resolved with data."""
        return self.reweight if self.reweight is not None else True

    @property
    def needs_data(self) -> bool:
        reweight = self.reweight if self.reweight is not None else not self.impl.data_free
        return self.impl.needs_data or reweight or self.allocation == "error"
