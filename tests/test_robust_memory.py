"""Resource bounds: capture holds one batch of activations per consumer and d x d statistics,
never the calibration set's activations (the measured peak RSS is in docs/RELIABILITY.md)."""
import math

import numpy as np
import pytest

import builders as B
from onnxprune import prune
from onnxprune.capture import runtime
from onnxprune.capture.stats import GramAccumulator


@pytest.mark.parametrize("mode", ["layer", "seq", "asym"])
def test_capture_sees_one_batch_at_a_time(monkeypatch, mode):
    model = B.cnn()
    data = B.random_inputs(model, 100)
    batch = 16
    adds, fetched, results = [], [], []
    real_add, real_run, real_result = GramAccumulator.add, runtime.run, GramAccumulator.result

    def add(self, b, a=None, *args, **kwargs):
        adds.append((self.consumer.node, b.shape[0], None if a is None else a.shape[0]))
        return real_add(self, b, a, *args, **kwargs)

    def run(sess, feeds, outputs):
        values = real_run(sess, feeds, outputs)
        fetched.append(max(np.asarray(v).shape[0] for v in values))
        return values

    def result(self):
        stats = real_result(self)
        results.append((stats.features, stats.gram.shape, None if stats.h is None else stats.h.shape))
        return stats

    monkeypatch.setattr(GramAccumulator, "add", add)
    monkeypatch.setattr(GramAccumulator, "result", result)
    monkeypatch.setattr(runtime, "run", run)
    prune(model, data, keep=0.5, mode=mode, batch_size=batch)

    assert fetched and max(fetched) <= batch               # onnxruntime never returns more than a batch
    assert all(n <= batch and (a is None or a == n) for _, n, a in adds)
    per_consumer = {}
    for node, n, _ in adds:
        per_consumer.setdefault(node, []).append(n)
    assert set(per_consumer) == {"conv2", "fc1", "fc2"}
    for sizes in per_consumer.values():                     # streamed once, batch by batch
        assert sum(sizes) == 100 and len(sizes) == math.ceil(100 / batch)
    for d, gram, h in results:                              # only d x d and d x m statistics are kept
        assert gram == (d, d) and (h is None or h[0] == d)
        assert (h is not None) == (mode == "asym")
