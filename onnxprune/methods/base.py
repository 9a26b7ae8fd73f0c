"""The one interface every channel-selection method implements, and the records it is handed.

A method says whether it needs calibration data, which observers (if any) must watch the
consumers' inputs during capture, how it picks k channels from a `SelectContext`, and
optionally its own budget allocation. The runner and the budget stage ask the method instead
of testing its name, so adding a method touches one module plus one registry line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Selection:
    kept: np.ndarray                 # sorted channel indices
    order: tuple | None = None       # greedy pick order (nested for every budget)
    errors: tuple | None = None      # greedy: reconstruction error after 0, 1, ..., k picks
    scales: np.ndarray | None = None  # importance weights of the kept channels (sampling, coreset)
    search: dict | None = None       # greedy --search swap: objective before/after, swaps (solve/swap.py)


@dataclass
class ConsumerPart:
    """One consumer of the group being pruned, with everything derived for it; replaces
    parallel lists that had to be zipped in step (problem is None without calibration data)."""
    consumer: object                 # graph.groups.Consumer
    matrix: np.ndarray               # consumer weights in weight-row order (rewrite.weights.consumer_matrix)
    view: object                     # solve.problem.ChannelView of the group's channels
    problem: object | None = None    # solve.problem.Problem (least squares on the captured statistics)
    keep_rows: np.ndarray | None = None     # layer mode: rows of the original statistics still present

    def dense_rows(self):
        return self.view.dense_rows(self.matrix)


@dataclass
class SelectContext:
    """What a method may read to keep k of a group's `channels` (each method reads its part)."""
    channels: int
    parts: list = ()                 # ConsumerPart per consumer
    problems: list | None = None     # the parts' Problems (None without calibration data)
    rows: list | None = None         # each consumer's weight rows of the channels (default: from parts)
    xp: object = np
    rng: np.random.Generator | None = None
    on_step: Callable | None = None  # progress per greedy pick
    observed: object = None          # what the method's capture observers measured (sampling)
    draw: str = "systematic"         # importance draw (sampling, coreset)
    coreset_beta: float = 1.0
    group: object = None             # graph.groups.Group; with idx and alive for coreset's producers
    idx: object = None               # GraphIndex of the current model
    alive: object = None             # graph.layout.Alive: channels already removed
    cached_greedy: Callable | None = None    # layer mode: (k, on_step) -> Selection from cached orders
    search: str = "none"             # greedy: local search after the picks (none | swap)

    def weight_rows(self) -> list:
        return self.rows if self.rows is not None else [p.dense_rows() for p in self.parts]


class Method:
    """Base class: a data-free method without observers or its own allocation."""
    name: str = ""
    needs_data = False       # needs calibration data even without reweighting
    data_free = False        # without calibration data an unset --reweight means off (not an error)
    ranks_globally = False   # allocates the budget itself from `global_scores` (no --allocation)
    observes = False         # has capture observers (so layer mode builds them only when needed)

    def observers(self, parts: list, xp) -> tuple:
        """Accumulators fed each batch of the consumers' inputs during capture (`add`, `result`)."""
        return ()

    def combine(self, observers: tuple):
        """One group's measurement from its observers (None without observers)."""
        return None

    def global_scores(self, group, seed: int) -> np.ndarray:
        """Scores ranked across every group to allocate the budget (ranks_globally only)."""
        raise NotImplementedError

    def select(self, k: int, ctx: SelectContext) -> Selection:
        raise NotImplementedError


def group_rng(seed: int, group) -> np.random.Generator:
    """The random stream of one group (random, random-global, sampling, coreset draws)."""
    return np.random.default_rng([seed, group.position])
