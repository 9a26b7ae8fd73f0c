"""Layer-mode results any run over a session can reuse: consumer statistics of the original
model, what method observers measured on it (sampling's sensitivities), greedy orders
(nested: one order answers every budget) and error-allocation curves. A sweep or a tool
holding one `LayerCache` captures and runs the greedy once for every ratio.
"""
from __future__ import annotations

import hashlib
import time

import numpy as np

from ..graph.layout import Alive
from ..methods.base import ConsumerPart, Selection
from ..rewrite.weights import consumer_matrix
from ..solve.greedy import greedy_order
from ..solve.problem import ChannelView
from .session import Session, capturer as open_capturer


class LayerCache:
    def __init__(self, session: Session):
        self.session = session
        self.stats: dict = {}           # consumer node -> ConsumerStats of the original model
        self._observed: dict = {}       # (method, group) -> what the method's observers measured
        self._orders: dict = {}         # (group, inputs digest) -> (greedy order, errors)
        self._curves: dict = {}         # (min_channels, round_to, ridge) -> error allocation curves

    # what budget.curves.local_curves reads besides the caches
    @property
    def groups(self) -> list:
        return self.session.groups

    @property
    def index(self):
        return self.session.index

    @property
    def xp(self):
        return self.session.xp

    def layer_capture(self, groups, method, clock, progress=None) -> None:
        """Cache original-model statistics of every consumer of `groups` (and what `method`'s
        observers measure on each group, if it has any; None: statistics only): one pass for
        whatever is still missing."""
        s = self.session
        t = time.perf_counter()
        consumers = list({c.node: c for g in groups for c in g.consumers if c.node not in self.stats}.values())
        observers = {}
        if method is not None and method.observes:
            for g in groups:
                if (method.name, g.name) not in self._observed:
                    observers[g.name] = method.observers(
                        [ConsumerPart(c, consumer_matrix(s.index, c),
                                      ChannelView.of(c, set(g.sources), g.channels, Alive())) for c in g.consumers],
                        s.xp)
        if consumers or observers:
            capturer = open_capturer(s, progress)
            try:
                stats = capturer.layer_stats(s.model, consumers, "capture (all layers)",
                                             tuple(o for obs in observers.values() for o in obs))
            finally:
                capturer.close()
            self.stats.update({c.node: st for c, st in zip(consumers, stats)})
            for name, obs in observers.items():
                self._observed[(method.name, name)] = method.combine(obs)
        clock.add("capture", t)

    def observed(self, method, group):
        """What `method`'s observers measured on `group` of the original model (None if nothing)."""
        return self._observed.get((method.name, group.name))

    def greedy_selection(self, g, problems, matrices, keep_rows, k: int, on_step=None) -> Selection:
        """The first k greedy picks on layer-mode problems, computed once per distinct
        problem (same group, consumer weights and surviving rows) and reused as a prefix."""
        key = (g.name,) + tuple(_digest(a) for a in list(matrices) + list(keep_rows))
        order, errors = self._orders.get(key, ((), ()))
        if len(order) < k:
            order, errors = greedy_order(problems, k, self.session.xp, on_step)
            self._orders[key] = (tuple(order), tuple(errors))
        return Selection(np.sort(np.asarray(order[:k], dtype=np.int64)), tuple(order[:k]), tuple(errors[:k + 1]))

    def curves(self, key, build):
        """Error-allocation curves for `key`, built once by `build()`."""
        if key not in self._curves:
            self._curves[key] = build()
        return self._curves[key]


def _digest(a) -> bytes:
    a = np.ascontiguousarray(a)
    return hashlib.blake2b(a.tobytes(), digest_size=16, person=str(a.shape).encode()[:16]).digest()
