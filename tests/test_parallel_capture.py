"""Data-parallel capture (capture/parallel.py, capture/ray_workers.py).

The Ray-free part (sharding, per-worker partial sums, their reduction) is checked with
`LocalPool`, which runs the workers in this process: one worker must reproduce the one-process
statistics bit for bit, two must agree to float summation order. The Ray part runs on one
local two-CPU Ray started once for the module; it is skipped when ray is not installed.
"""
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import builders as B
from onnxprune import OnnxPruneError, prune
from onnxprune.capture.parallel import LocalPool, ParallelCapturer, shard_ranges
from onnxprune.capture.stats import StatsSettings
from onnxprune.capture.stream import Capturer
from onnxprune.graph.layout import Alive
from onnxprune.methods.base import ConsumerPart
from onnxprune.rewrite.weights import consumer_matrix
from onnxprune.run.clock import NoClock
from onnxprune.run.pipeline import PruneOptions, Workspace
from onnxprune.solve.problem import ChannelView

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
# Two workers add their partial sums in another order than one process: the float64
# statistics then agree to this relative tolerance (of the largest entry) ...
STATS_RTOL = 1e-12
# ... and the refitted float32 weights, after a ridge solve, to a few float32 ulps.
WEIGHTS_RTOL = 1e-5


def weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def assert_same_model(a: onnx.ModelProto, b: onnx.ModelProto, exact: bool = False) -> None:
    """Same graph (nodes, attributes, initializer names and shapes), weights to WEIGHTS_RTOL."""
    if exact:
        assert a.SerializeToString() == b.SerializeToString()
        return
    assert list(a.graph.node) == list(b.graph.node)
    wa, wb = weights(a), weights(b)
    assert list(wa) == list(wb)
    for name in wa:
        assert wa[name].shape == wb[name].shape, name
        scale = max(1.0, float(np.abs(wa[name]).max())) if wa[name].size else 1.0
        np.testing.assert_allclose(wb[name], wa[name], rtol=0, atol=WEIGHTS_RTOL * scale, err_msg=name)


def assert_same_stats(a: list, b: list, exact: bool = False) -> None:
    for sa, sb in zip(a, b, strict=True):
        assert sa.rows == sb.rows and sa.masked == sb.masked
        assert sa.sampled == sb.sampled
        pairs = [(sa.gram, sb.gram)] + ([(sa.h, sb.h), (sa.column_target, sb.column_target),
                                         (np.float64(sa.target), np.float64(sb.target))] if sa.h is not None else [])
        for x, y in pairs:
            if exact:
                np.testing.assert_array_equal(y, x)
            else:
                np.testing.assert_allclose(y, x, rtol=0, atol=STATS_RTOL * float(np.abs(x).max()))


def kept(report):
    return [g["kept"] for g in report.groups]


# --- without Ray ---------------------------------------------------------------------------

@pytest.mark.parametrize("samples,batch,workers", [(40, 8, 2), (41, 8, 3), (5, 8, 4), (64, 16, 64), (7, 1, 3)])
def test_shards_are_contiguous_whole_batches_covering_every_sample(samples, batch, workers):
    shards = shard_ranges(samples, batch, workers)
    assert shards[0][0] == 0 and shards[-1][1] == samples
    assert all(a[1] == b[0] for a, b in zip(shards, shards[1:]))
    assert all(a % batch == 0 and b > a for a, b in shards)
    assert len(shards) == min(workers, -(-samples // batch))
    sizes = [b - a for a, b in shards[:-1]]
    assert not sizes or max(sizes) - min(sizes) <= batch          # as even as whole batches allow


def _capture(model, data, pool_workers, mode, method="greedy", settings=None):
    """(statistics, what sampling's observers measured) of the first group of `model`."""
    opts = PruneOptions.of(keep=0.5, mode=mode, batch_size=8, method=method, device="cpu")
    ws = Workspace(model, data, opts)
    s = ws.session
    g = s.groups[0]
    observers = ()
    if method == "sampling":
        parts = [ConsumerPart(c, consumer_matrix(s.index, c), ChannelView.of(c, set(g.sources), g.channels, Alive()))
                 for c in g.consumers]
        observers = opts.impl.observers(parts, np)
    args = (s.calibration, s.batch_size, s.device, np)
    cap = (Capturer(*args, settings=settings) if pool_workers is None else
           ParallelCapturer(LocalPool(*args[:2], pool_workers, "cpu", "numpy"), *args, settings=settings))
    try:
        if mode == "layer":
            stats = cap.layer_stats(s.model, list(g.consumers), "t", observers)
        else:
            cap.plan(s.model, [g.boundary])
            weights_ = ({c.node: consumer_matrix(s.index, c) for c in g.consumers} if mode == "asym" else None)
            stats = cap.step_stats(s.model, list(g.consumers), "t", s.model if mode == "asym" else None, weights_,
                                   observers)
    finally:
        cap.close()
    return stats, [o.result() for o in observers]


@pytest.mark.parametrize("mode", ["layer", "asym"])
def test_local_pool_one_worker_is_bit_identical_and_two_agree(mode):
    model = B.cnn()
    data = B.random_inputs(model, 40)
    one, _ = _capture(model, data, None, mode)
    assert_same_stats(one, _capture(model, data, 1, mode)[0], exact=True)
    two, _ = _capture(model, data, 2, mode)
    assert_same_stats(one, two)


@pytest.mark.parametrize("mode", ["layer", "asym"])
def test_local_pool_shards_float32_and_row_subsampling_like_one_process(mode):
    """float32 products and --max-rows: every worker adds the same per-batch numbers (each batch
    is shifted by its own mean; rows are drawn by the batch's calibration index)."""
    model = B.cnn()
    data = B.random_inputs(model, 40)
    for settings in (StatsSettings("float32"), StatsSettings("float32", max_rows=30)):
        one, _ = _capture(model, data, None, mode, settings=settings)
        assert_same_stats(one, _capture(model, data, 1, mode, settings=settings)[0], exact=True)
        for workers in (2, 3):
            assert_same_stats(one, _capture(model, data, workers, mode, settings=settings)[0])
        assert any(s.sampled for s in one) == (settings.max_rows is not None)


def test_local_pool_merges_sampling_observers_exactly():
    model = B.cnn()
    data = B.random_inputs(model, 40)
    _, seen = _capture(model, data, None, "layer", "sampling")
    _, seen3 = _capture(model, data, 3, "layer", "sampling")
    assert seen and all(np.array_equal(a, b) for a, b in zip(seen, seen3))     # a max is exact in any order
    assert all(np.any(a > 0) for a in seen)


def test_missing_ray_is_a_one_line_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)            # `import ray` raises ImportError
    model = B.cnn()
    with pytest.raises(OnnxPruneError, match=r"pip install 'onnxprune\[ray\]'") as err:
        prune(model, B.random_inputs(model, 8), keep=0.5, workers=2)
    assert "\n" not in str(err.value)


def test_cli_without_ray_says_which_extra_and_writes_nothing(monkeypatch, tmp_path):
    from click.testing import CliRunner
    from onnxprune.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)
    out = tmp_path / "out.onnx"
    r = CliRunner().invoke(main, ["prune", str(ROOT / "models" / "mnist_cnn.onnx"), "--calib",
                                  str(ROOT / "models" / "mnist_cnn_calib.npz"), "--keep", "0.5", "-o", str(out),
                                  "--workers", "2"])
    assert r.exit_code == 1 and not out.exists()
    assert r.output.strip().splitlines() == ["error: --workers/--ray-address need Ray, which is not installed: "
                                             "pip install 'onnxprune[ray]'"]


def test_workers_must_be_positive():
    with pytest.raises(OnnxPruneError, match="--workers"):
        PruneOptions.of(keep=0.5, workers=0).validate()


# --- on a local two-CPU Ray ----------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_bundled_model_two_workers_equal_one(ray_local):
    model, calib = ROOT / "models" / "mnist_cnn.onnx", ROOT / "models" / "mnist_cnn_calib.npz"
    options = dict(compression=2)                  # the README Quickstart run
    one, r1 = prune(str(model), str(calib), **options)
    two, r2 = prune(str(model), str(calib), workers=2, **options)
    assert kept(r1) == kept(r2)
    assert_same_model(one, two)
    assert any("2 Ray worker" in n for n in r2.notes) and not any("Ray" in n for n in r1.notes)


def test_fixture_statistics_and_models_two_workers_equal_one(ray_local):
    model, calib = FIXTURES / "resnet_option_a.onnx", FIXTURES / "resnet_option_a_calib.npz"
    stats = []
    for workers in (None, 2):
        ws = Workspace(str(model), str(calib), PruneOptions.of(keep=0.5, mode="layer", batch_size=8, workers=workers))
        try:
            ws.cache.layer_capture(ws.groups, None, NoClock())
            stats.append([ws.cache.stats[c.node] for g in ws.groups for c in g.consumers])
            assert (ws.session.pool is None) == (workers is None)
        finally:
            ws.close()
    assert_same_stats(*stats)
    one, r1 = prune(str(model), str(calib), keep=0.5, mode="asym", batch_size=8)
    two, r2 = prune(str(model), str(calib), keep=0.5, mode="asym", batch_size=8, workers=2)
    assert kept(r1) == kept(r2)
    assert_same_model(one, two)


def test_layer_mode_captures_once_in_parallel_for_every_ratio(ray_local):
    model = B.cnn()
    data = B.random_inputs(model, 32)
    opts = PruneOptions.of(keep=0.5, mode="layer", batch_size=8, workers=2)
    ws = Workspace(model, data, opts)
    try:
        reports = [ws.prune(PruneOptions.of(keep=keep, mode="layer", batch_size=8, workers=2))[1]
                   for keep in (0.25, 0.5, 0.75)]
        assert [t["label"] for t in ws.session.pool.timings] == ["capture (all layers)"]
        assert len(ws.session.pool.timings[0]["busy"]) == 2
    finally:
        ws.close()
    for keep, report in zip((0.25, 0.5, 0.75), reports):
        assert kept(report) == kept(prune(model, data, keep=keep, mode="layer", batch_size=8)[1])


def test_a_killed_worker_is_restarted_and_the_run_completes(ray_local, monkeypatch, tmp_path):
    from onnxprune.capture import ray_workers

    marker = tmp_path / "worker0-died"
    monkeypatch.setattr(ray_workers, "FAIL_ONCE", str(marker))
    model = B.cnn()
    data = B.random_inputs(model, 32)
    two, r2 = prune(model, data, keep=0.5, mode="asym", batch_size=8, workers=2)
    assert marker.exists()                                   # worker 0 did die (os._exit) once
    monkeypatch.setattr(ray_workers, "FAIL_ONCE", None)
    again, r_again = prune(model, data, keep=0.5, mode="asym", batch_size=8, workers=2)
    assert_same_model(again, two, exact=True)                # the same as a run where nothing died
    one, r1 = prune(model, data, keep=0.5, mode="asym", batch_size=8)
    assert kept(r1) == kept(r2)
    assert_same_model(one, two)


def test_a_worker_that_keeps_dying_stops_the_run_with_one_line(ray_local, monkeypatch, tmp_path):
    from onnxprune.capture import ray_workers

    monkeypatch.setattr(ray_workers, "FAIL_ONCE", str(tmp_path / "died"))
    monkeypatch.setattr(ray_workers, "RETRIES", 0)
    model = B.cnn()
    with pytest.raises(OnnxPruneError, match="Ray capture worker was lost") as err:
        prune(model, B.random_inputs(model, 32), keep=0.5, mode="layer", batch_size=8, workers=2)
    assert "\n" not in str(err.value)


def test_interrupt_stops_every_worker(ray_local, monkeypatch):
    from onnxprune.capture import ray_workers

    pids = []
    original_close = ray_workers.RayPool.close

    def close(self):
        pids.extend(ray_local.get([a.pid.remote() for a in self.actors]))
        original_close(self)

    monkeypatch.setattr(ray_workers.RayPool, "close", close)

    def progress(stage, done, total):
        if done:                    # Ctrl-C while the workers capture
            raise KeyboardInterrupt

    model = B.cnn()
    with pytest.raises(KeyboardInterrupt):
        prune(model, B.random_inputs(model, 32), keep=0.5, mode="asym", batch_size=8, workers=2, progress=progress)
    assert len(pids) == 2
    deadline = time.monotonic() + 60
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_cuda_workers_equal_one_gpu_process(ray_local):
    from onnxprune.capture.runtime import cuda_provider_usable
    from onnxprune.solve.xp import cupy_or_none

    if not cuda_provider_usable() or cupy_or_none() is None:
        pytest.skip("no GPU: onnxruntime's CUDA provider and CuPy are needed")
    gpus = int(ray_local.cluster_resources().get("GPU", 0))
    if gpus < 1:
        pytest.skip("the local Ray sees no GPU")
    model = B.cnn()
    data = B.random_inputs(model, 64)
    one, r1 = prune(model, data, keep=0.5, batch_size=8, device="cuda")
    par, rp = prune(model, data, keep=0.5, batch_size=8, device="cuda", workers=min(gpus, 2), ray_address="auto")
    assert kept(r1) == kept(rp)
    assert_same_model(one, par)
