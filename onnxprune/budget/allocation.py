"""Per-group keep counts that meet a whole-model target (`--allocation`, `--target`,
`--min-channels`, `--round-to`).

- uniform: the same keep fraction in every group, the largest one that meets the target.
- error: the least summed predicted output error (curves.py: the nested greedy's error
  for every k, scaled by each group's measured effect on the network output) that meets
  the target, found by marginal analysis; leftover budget then goes, one step at a time,
  to the group with the largest error that still fits.
- ranking (random-global): the channels of all groups ranked by one score; the longest
  prefix of the ranking that meets the target is kept.

Every allocation meets the target (ratio >= target, never below) and is maximal: no group
can keep one more allowed step (uniform: no larger common fraction) without falling below.
Counting is structural (budget.py), so everything but the error curves needs no data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .cost import flops_after, params_after
from ..errors import OnnxPruneError
from .flops import model_flops, sample_index
from ..graph.index import GraphIndex, float_param_count

ALLOCATIONS = ("uniform", "error")
TARGETS = ("params", "flops")
TOLERANCE = 1e-12


@dataclass(frozen=True)
class Rules:
    """Which kept counts are allowed: at least `min_channels`, multiples of `round_to`
    (keeping every channel is always allowed, so small groups may stay whole).

    Groups of attention heads (Group.unit 'head') follow `min_heads` instead (no rounding);
    `heads_keep` / `ffn_keep` fix every head group / every other group at that fraction
    (`--heads-keep`, `--ffn-keep`): their only allowed count is the nearest one, so every
    allocation below spends the budget on the groups left free. Ask per group: `allowed`,
    `nearest_for`."""

    min_channels: int = 1
    round_to: int = 1
    min_heads: int = 1
    heads_keep: float | None = None
    ffn_keep: float | None = None

    def base(self, group) -> "Rules":
        """The plain rules of `group`'s kind (min count, rounding), without fixed fractions."""
        if getattr(group, "unit", "channel") == "head":
            return Rules(self.min_heads, 1)
        return Rules(self.min_channels, self.round_to)

    def fixed(self, group) -> float | None:
        return self.heads_keep if getattr(group, "unit", "channel") == "head" else self.ffn_keep

    def allowed(self, group) -> np.ndarray:
        """Allowed kept counts of `group`, ascending."""
        base, frac = self.base(group), self.fixed(group)
        if frac is not None:
            return np.array([base.nearest(group.channels, frac * group.channels)])
        return base.choices(group.channels)

    def nearest_for(self, group, value: float) -> int:
        c = self.allowed(group)
        return int(c[np.argmin(np.abs(c - value) - 1e-9 * c)])

    def choices(self, channels: int) -> np.ndarray:
        lo = max(1, self.min_channels)
        if lo >= channels:
            return np.array([channels])
        first = math.ceil(lo / self.round_to) * self.round_to
        return np.append(np.arange(first, channels, self.round_to), channels)

    def nearest(self, channels: int, value: float) -> int:
        """The allowed count closest to `value` (ties go up)."""
        c = self.choices(channels)
        return int(c[np.argmin(np.abs(c - value) - 1e-9 * c)])

    @property
    def default(self) -> bool:
        return self.min_channels <= 1 and self.round_to == 1 and self.min_heads <= 1 and \
            self.heads_keep is None and self.ffn_keep is None


class Target:
    """The whole-model ratio (original / pruned) of parameters or FLOPs for a count plan."""

    def __init__(self, idx: GraphIndex, groups, kind: str, adds_bias: bool, sample_dims: dict | None = None):
        """`sample_dims` (input -> dims of one calibration sample) fix the dims a model leaves
        dynamic besides the batch (a sequence length), so that FLOPs can be counted."""
        self.idx, self.groups, self.kind, self.adds_bias = idx, list(groups), kind, adds_bias
        if kind == "params":
            self.before = float_param_count(idx.model)
        else:
            self.before = model_flops(idx.model, idx)
            static = sample_index(idx.model, sample_dims, idx) if not self.before and sample_dims else None
            if static is not None:
                self.idx, self.before = static, model_flops(static.model, static)
            if not self.before:
                raise OnnxPruneError("--target flops needs static shapes (besides the batch); this model's FLOPs "
                                     "cannot be counted, use --target params")

    def after(self, counts: dict) -> int:
        if self.kind == "params":
            return params_after(self.idx, self.groups, counts, self.adds_bias, self.before)
        return flops_after(self.idx, self.groups, counts)

    def ratio(self, counts: dict) -> float:
        after = self.after(counts)
        return self.before / after if after else math.inf

    def meets(self, counts: dict, ratio: float) -> bool:
        return self.ratio(counts) >= ratio * (1 - TOLERANCE)


def keep_counts(groups, keep: float, rules: Rules) -> dict:
    """The allowed count nearest to keep x channels, in every group."""
    return {g.name: rules.nearest_for(g, keep * g.channels) for g in groups}


def uniform_counts(target: Target, ratio: float, rules: Rules) -> dict:
    """The largest common keep fraction whose plan meets `ratio`.

    Counts change only where keep x channels crosses a midpoint between allowed counts, so
    searching those breakpoints finds the exact optimum.
    """
    groups = target.groups
    check_reachable(target, ratio, rules)
    breaks = {0.0}
    for g in groups:
        c = rules.allowed(g)
        breaks.update(((c[:-1] + c[1:]) / 2 / g.channels).tolist())
    fractions = sorted(breaks)
    best = _last_true(len(fractions), lambda i: target.meets(keep_counts(groups, fractions[i], rules), ratio))
    return keep_counts(groups, fractions[best], rules)


def error_counts(target: Target, ratio: float, rules: Rules, curves: dict) -> dict:
    """Least summed error that meets the target; curves[name][k] is the group's (predicted)
    error keeping k channels.

    Starting from every channel kept, repeatedly step down the group whose error rises
    least per unit of cost (parameters or FLOPs) saved, until the target is met; then
    `fill` gives back every step that still fits, largest error first.
    """
    groups = target.groups
    check_reachable(target, ratio, rules)
    errors = {g.name: np.asarray(curves[g.name], dtype=np.float64) for g in groups}
    choices = {g.name: rules.allowed(g) for g in groups}
    counts = {g.name: g.channels for g in groups}
    neighbours = _sharing(groups)
    after = target.after(counts)
    price = {}

    def step(name: str):
        """(error rise per cost saved, smaller count, cost after) of stepping `name` down."""
        c = choices[name]
        lower = c[c < counts[name]]
        if lower.size == 0:
            return None
        k = int(lower[-1])
        cost = target.after(dict(counts, **{name: k}))
        rise = max(errors[name][k] - errors[name][counts[name]], 0.0)
        return (rise / (after - cost) if after > cost else math.inf), k, cost

    for g in groups:
        price[g.name] = step(g.name)
    while target.before / after < ratio * (1 - TOLERANCE):
        name = min((n for n in price if price[n] is not None), key=lambda n: price[n][0])
        _, counts[name], after = price[name]
        for other in neighbours[name]:
            price[other] = step(other)
    return fill(target, ratio, counts, choices, lambda name, k: errors[name][k])


def _sharing(groups) -> dict:
    """group -> the groups (itself included) whose costs change when it changes: those
    sharing an initializer with it."""
    users = {}
    for g in groups:
        for p in g.params:
            users.setdefault(p.name, set()).add(g.name)
    return {g.name: set().union(*(users[p.name] for p in g.params)) | {g.name} for g in groups}


def ranking_counts(groups, rules: Rules, scores: dict, keep: float | None = None, target: Target | None = None,
                   ratio: float | None = None) -> dict:
    """Keep the top of one ranking of all channels (scores[name]: one score per channel):
    the first keep x (all channels), or the longest prefix whose plan meets `ratio`."""
    names = np.concatenate([[g.name] * g.channels for g in groups]) if groups else np.zeros(0, dtype=object)
    ranked = names[np.argsort(-np.concatenate([scores[g.name] for g in groups] or [[]]), kind="stable")]

    def top(n: int) -> dict:
        head = dict(zip(*np.unique(ranked[:n], return_counts=True)))
        out = {}
        for g in groups:
            c = rules.allowed(g)
            out[g.name] = int(c[min(np.searchsorted(c, head.get(g.name, 0)), c.size - 1)])   # smallest allowed >= raw
        return out

    if keep is not None:
        return top(int(round(keep * len(ranked))))
    check_reachable(target, ratio, rules)
    return top(_last_true(len(ranked) + 1, lambda n: target.meets(top(n), ratio)))


def fill(target: Target, ratio: float, counts: dict, choices: dict, error) -> dict:
    """Give leftover budget, one allowed step at a time, to the group with the largest
    current error whose next step still meets the target."""
    counts = dict(counts)
    while True:
        order = sorted(target.groups, key=lambda g: -error(g.name, counts[g.name]))
        for g in order:
            c = choices[g.name]
            larger = c[c > counts[g.name]]
            if larger.size == 0:
                continue
            trial = dict(counts, **{g.name: int(larger[0])})
            if target.meets(trial, ratio):
                counts = trial
                break
        else:
            return counts


def check_reachable(target: Target, ratio: float, rules: Rules) -> None:
    if not target.groups:
        raise OnnxPruneError("nothing to prune: the model has no prunable channel groups (see `onnxprune analyze`)")
    floor = {g.name: int(rules.allowed(g)[0]) for g in target.groups}
    best = target.ratio(floor)
    if best < ratio * (1 - TOLERANCE):
        what = "one channel" if rules.default else ("its smallest allowed count (--min-channels/--round-to/"
                                                    "--min-heads/--heads-keep/--ffn-keep)")
        kind = "" if target.kind == "params" else " (FLOPs)"
        raise OnnxPruneError(f"--compression {ratio:g}{kind} is unreachable: pruning every group to {what} "
                             f"gives {best:.3f}x at most")


def _last_true(n: int, ok) -> int:
    """The largest i in [0, n) with ok(i), for ok true up to some index then false (ok(0) true)."""
    lo, hi = 0, n - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
