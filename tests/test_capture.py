"""Capture: incremental streams must give exactly what running from the inputs gives."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import builders as B
from onnxprune import prune
from onnxprune import analyze as analyze_model
from onnxprune.capture import stats as stats_module
from onnxprune.capture.stream import Capturer, Stream
from onnxprune.graph.index import GraphIndex
from onnxprune.graph.groups import Consumer
from onnxprune.graph.layout import Layout, Segment
from onnxprune.capture.prefix import CachePlan, cache_plan, region_model, samples_on_axis0
from onnxprune.capture import prefix as prefix_module
from onnxprune.capture import store as store_module
from onnxprune.capture.store import MemoryBudget, TensorStore
from onnxprune.errors import InternalError
from onnxprune.capture.stats import GramAccumulator


def weights(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("build", [B.cnn, lambda: B.matmul_mlp(tokens=4), B.mlp])
@pytest.mark.parametrize("mode", ["seq", "asym"])
@pytest.mark.parametrize("memory", [None, 0, 1500, 6000])     # frontiers in memory, on disk, or some of each
def test_incremental_capture_equals_capture_from_the_inputs(monkeypatch, build, mode, memory):
    if memory is not None:
        monkeypatch.setattr(store_module, "FRONTIER_MEMORY", memory)
    assert_cache_changes_nothing(monkeypatch, build(), mode)


def assert_cache_changes_nothing(monkeypatch, model, mode):
    """The prune with the frontier cache as planned equals the one that runs every step from
    the inputs."""
    data = B.random_inputs(model, 40)
    fast, fast_report = prune(model, data, keep=0.5, mode=mode, batch_size=16)
    monkeypatch.setattr(Capturer, "_probe_frontiers", lambda self, original: CachePlan(False))
    slow, slow_report = prune(model, data, keep=0.5, mode=mode, batch_size=16)
    assert [g["kept"] for g in fast_report.groups] == [g["kept"] for g in slow_report.groups]
    w_fast, w_slow = weights(fast), weights(slow)
    for name in w_slow:
        np.testing.assert_allclose(w_fast[name], w_slow[name], rtol=1e-5, atol=1e-6)


def _mlp_reading_its_input_shape_at_the_end():
    """B.mlp whose output is reshaped to Shape(x)[0] x 4 at the end: the Shape of the input
    (int64 [2], holding the batch size) is read after every group, so it is on every frontier."""
    b = B.GraphBuilder(0)
    x = b.input("x", ["N", 12])
    shape = b.node("Shape", [x])
    batch = b.node("Gather", [shape, b.const(np.array([0], dtype=np.int64), "i")], axis=0)
    h = b.relu(b.gemm(x, 12, 16, name="fc1"))
    h = b.relu(b.gemm(h, 16, 10, name="fc2"))
    y = b.gemm(h, 10, 4, name="fc3")
    b.output(b.node("Reshape", [y, b.node("Concat", [batch, b.const(np.array([4], dtype=np.int64), "s")], axis=0)]))
    return b.model()


@pytest.mark.parametrize("mode", ["seq", "asym"])
def test_small_frontier_tensors_that_are_not_sample_major_are_kept_per_batch(monkeypatch, mode):
    """Before, such a tensor switched caching off, and every step re-ran the model from its
    inputs (a ViT-S whose decoder reads the image size: step time grew with depth)."""
    monkeypatch.setattr(prefix_module, "RECOMPUTE_OPS", frozenset())     # else Shape/Gather/Concat run again
    plans, probe = [], Capturer._probe_frontiers
    with monkeypatch.context() as patch:
        patch.setattr(Capturer, "_probe_frontiers", lambda self, original: plans.append(probe(self, original)) or plans[-1])
        prune(_mlp_reading_its_input_shape_at_the_end(), B.random_inputs(B.mlp(), 8), keep=0.5, mode=mode)
    assert plans[0].enabled and len(plans[0].per_batch) == 1
    assert_cache_changes_nothing(monkeypatch, _mlp_reading_its_input_shape_at_the_end(), mode)


def test_cache_plan_refuses_what_grows_with_the_batch_off_axis0():
    rng = np.random.default_rng(0)
    tokens_first = rng.standard_normal((5, 2, 3))          # [T, N, H]: not small-and-fixed either
    assert not cache_plan({"t": tokens_first[:, :1]}, {"t": tokens_first}).enabled
    shape_one, shape_two = np.array([1, 12]), np.array([2, 12])
    plan = cache_plan({"s": shape_one, "x": np.ones((1, 3))}, {"s": shape_two, "x": np.ones((2, 3))})
    assert plan.enabled and plan.per_batch == {"s"}
    big = np.zeros(70000)
    assert not cache_plan({"b": big}, {"b": big + 1}).enabled


def test_samples_on_axis0_probe_rejects_batch_on_another_axis():
    rng = np.random.default_rng(0)
    two = rng.standard_normal((2, 3, 4))
    assert samples_on_axis0({"t": two[:1]}, {"t": two})
    tokens_first = rng.standard_normal((5, 2, 3))          # [T, N, H]
    assert not samples_on_axis0({"t": tokens_first[:, :1]}, {"t": tokens_first})
    assert not samples_on_axis0({"t": two[:1]}, {"t": two + 1})  # different values


@pytest.mark.parametrize("limit", [0, 48, 1 << 20])      # all on disk, mixed, all in memory
def test_tensor_store_roundtrip_release_and_eviction(limit):
    """Batches come back as stored whether the budget kept them in memory or not; releasing
    and evicting give the budget back and keep other values (and their files) intact."""
    budget = MemoryBudget(limit)
    store = TensorStore(budget)
    try:
        a = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
        store.append("a", 0, a[:2])
        store.append("a", 2, a[2:])
        store.append("b", 0, a[:, 0])
        store.keep_only({"a"})
        store.append("c", 0, a[:, 1] * 2)          # must not reuse a's file
        np.testing.assert_array_equal(store.read("a", 2, 2), a[2:])
        np.testing.assert_array_equal(store.read("a", 0, 2), a[:2])
        np.testing.assert_array_equal(store.read("c", 0, 4), a[:, 1] * 2)
        with pytest.raises(InternalError):
            store.read("a", 1, 2)                  # no batch starts there
        assert budget.used == sum(b.nbytes for t in store.tensors.values() for b in t.memory.values())
        assert (budget.used > 0) == (limit > 0)
        store.release("a", 0)
        store.release("a", 2)
        store.keep_only({"a"})
        assert budget.used == 0
    finally:
        store.close()


@pytest.mark.parametrize("outputs", [2, 7])        # fewer outputs than inputs: H directly; more: cross Gram
def test_gram_accumulator_targets_on_shifted_rows(monkeypatch, outputs):
    """H, Σ y (H's intercept row) and Σ y² per column equal the brute-force sums, whether the
    layer has fewer outputs than inputs (Y summed as it comes) or more (from X_A's Gram), on
    rows with large means (the per-batch shift), in three batches."""
    monkeypatch.setattr(stats_module, "CHUNK_ELEMENTS", 11)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((12, 3, 4)) + 4.0
    xa = x + 0.3 * rng.standard_normal((12, 3, 4)) - 2.0
    w = rng.standard_normal((5, outputs))
    c = Consumer(node="m", op="MatMul", input="x", weight="w", weight_axis=0,
                 layout=Layout(2, 3, (Segment("p", 0, 4),)))
    acc = GramAccumulator(c, np, asym=True, weight=w)
    for s0, s1 in ((0, 5), (5, 10), (9, 12)):
        acc.add(x[s0:s1], xa[s0:s1])
    assert (acc.cross is not None) == (outputs > 4)
    s = acc.result()
    rows = np.hstack([np.concatenate([x[0:5], x[5:10], x[9:12]]).reshape(-1, 4), np.ones((39, 1))])
    rows_a = np.hstack([np.concatenate([xa[0:5], xa[5:10], xa[9:12]]).reshape(-1, 4), np.ones((39, 1))])
    y = rows_a @ w
    np.testing.assert_allclose(s.h, rows.T @ y, rtol=2e-6, atol=1e-4)
    np.testing.assert_allclose(s.column_target, np.sum(y ** 2, axis=0), rtol=2e-6)
    assert s.target == pytest.approx(float(np.sum(y ** 2)), rel=2e-6)


def test_gram_accumulator_chunking_and_intercept(monkeypatch):
    monkeypatch.setattr(stats_module, "CHUNK_ELEMENTS", 7)        # force many tiny chunks
    rng = np.random.default_rng(0)
    x, xa = rng.standard_normal((10, 3, 4)), rng.standard_normal((10, 3, 4))
    w = rng.standard_normal((5, 2))
    c = Consumer(node="m", op="MatMul", input="x", weight="w", weight_axis=0,
                 layout=Layout(2, 3, (Segment("p", 0, 4),)))
    acc = GramAccumulator(c, np, asym=True, weight=w)
    acc.add(x[:6], xa[:6])
    acc.add(x[6:], xa[6:])
    s = acc.result()
    rows = np.hstack([x.reshape(-1, 4), np.ones((30, 1))])
    rows_a = np.hstack([xa.reshape(-1, 4), np.ones((30, 1))])
    np.testing.assert_allclose(s.gram, rows.T @ rows, rtol=1e-6, atol=1e-5)       # float32 products
    np.testing.assert_allclose(s.h, rows.T @ rows_a @ w, rtol=1e-6, atol=1e-5)
    assert s.target == pytest.approx(float(np.sum((rows_a @ w) ** 2)), rel=1e-6)
    assert s.rows == 30


def test_sessions_give_activations_back_after_each_run():
    """No CPU memory arena (capture/runtime.session): a prune holds several sessions at once,
    and an arena keeps each one's largest batch of activations for the session's life."""
    from onnxprune.capture import runtime
    sess = runtime.session(B.mlp())
    assert sess.get_session_options().enable_cpu_mem_arena is False


def test_a_capture_step_keeps_an_arena_for_its_batches_only(monkeypatch):
    """A seq/asym step's region runs every batch: its session keeps an arena (no page faults
    per run), and finishing the step drops the session with its arena."""
    from onnxprune.capture import runtime, stream
    from onnxprune.io.calib import Calibration
    made = []
    real = runtime.session
    monkeypatch.setattr(stream.runtime, "session", lambda *a, **k: made.append(k.get("arena")) or real(*a, **k))
    model = B.mlp()
    calib = Calibration({"x": np.random.default_rng(0).normal(size=(6, 12)).astype(np.float32)}, "test")
    cap = stream.Capturer(calib, 4, "cpu", np)
    cap.plan(model, ["fc2"])
    (st,) = cap.step_stats(model, [c for g in analyze_model(model).groups for c in g.consumers if c.node == "fc2"], "step")
    assert st.rows == 6
    assert True in made
    assert all(s._session is None for s in cap._streams.values())


def test_the_original_stream_runs_no_node_twice(monkeypatch):
    """asym with --refit all on a ViT-like encoder: every step of the current model resumes
    from its group's boundary (the model changed there), but the original model never changes,
    so its stream resumes where it stopped: across all steps none of its MatMuls, Softmaxes or
    other costly nodes runs twice (it used to run each block's attention and fc1 twice), only
    the cheap nodes behind a lean frontier (a LayerNorm of the stored residual); the current
    stream does re-run costly ones."""
    from test_fixtures_transformers import HERE, calib_and_check
    regions = {"current": [], "original": []}
    prepare, make = Stream.prepare, Capturer._stream

    def tagged(self, key):
        stream = make(self, key)
        stream.key = key
        return stream

    def recorded(self, model, outputs, save):
        prepare(self, model, outputs, save)
        if self._session is not None:
            sub, _ = region_model(model, GraphIndex.build(model, infer=False), self._fetch, self.available)
            regions[self.key].append([n.name for n in sub.graph.node])

    monkeypatch.setattr(Capturer, "_stream", tagged)
    monkeypatch.setattr(Stream, "prepare", recorded)
    calib, _ = calib_and_check("vit_tiny")
    _, report = prune(str(HERE / "vit_tiny.onnx"), calib, heads_keep=0.5, ffn_keep=0.5, mode="asym", refit="all")
    assert report.refits and len(regions["original"]) >= 4
    ops = {n.name: n.op_type for n in onnx.load(str(HERE / "vit_tiny.onnx")).graph.node}
    ran = [n for region in regions["original"] for n in region]
    twice = {n for n in ran if ran.count(n) > 1}
    assert {ops[n] for n in twice} <= prefix_module.RECOMPUTE_OPS and "MatMul" not in prefix_module.RECOMPUTE_OPS
    again = [n for region in regions["current"] for n in region]
    assert {ops[n] for n in again if again.count(n) > 1} - prefix_module.RECOMPUTE_OPS >= {"MatMul", "Softmax"}


def _pre_norm_blocks(fused: bool):
    """Two pre-norm residual MLP blocks on tokens, x + fc2(relu(fc1(LN(x)))), with the
    LayerNorm as one op or decomposed as torch exports it at opset < 17."""
    b = B.GraphBuilder(3)
    x = b.input("x", ["N", 5, 8])
    gamma, beta = b.const(1 + 0.1 * b.randn(8, scale=1)), b.const(0.1 * b.randn(8, scale=1))
    norms = []
    for i in range(2):
        if fused:
            n = b.node("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=1e-5)
        else:
            mean = b.node("ReduceMean", [x], axes=[-1])
            centred = b.node("Sub", [x, mean])
            var = b.node("ReduceMean", [b.node("Pow", [centred, b.const(np.array(2.0), "two")])], axes=[-1])
            std = b.node("Sqrt", [b.node("Add", [var, b.const(np.array(1e-5), "eps")])])
            n = b.node("Add", [b.node("Mul", [b.node("Div", [centred, std]), gamma]), beta])
        norms.append(n)
        h = b.relu(b.matmul(n, 8, 12, name=f"fc1_{i}"))
        x = b.node("Add", [x, b.matmul(h, 12, 8, name=f"fc2_{i}")])
    b.output(x)
    return b.model(opset=17), norms


@pytest.mark.parametrize("fused", [True, False])
def test_lean_frontier_keeps_the_residual_and_computes_its_layernorm_again(monkeypatch, fused):
    """At the second block's fc1 the frontier is the residual stream and its LayerNorm; only
    the residual is stored (the LayerNorm is cheap to run again), never a MatMul's output,
    and the prune is the same as without a cache, in seq and asym."""
    from onnxprune.capture.prefix import frontier, lean_frontier
    model, norms = _pre_norm_blocks(fused)
    idx = GraphIndex.build(model)
    full = frontier(idx, "fc1_1")
    assert norms[1] in full and len(full) == 2
    residual = (full - {norms[1]}).pop()
    assert lean_frontier(idx, full) == {residual}
    assert idx.producer[residual].op_type == "Add"
    matmul_out = idx.nodes["fc2_0"].output[0]
    assert lean_frontier(idx, {matmul_out}) == {matmul_out}          # a MatMul is never run again
    monkeypatch.setattr(prefix_module, "RECOMPUTE_NODES", 3)
    assert lean_frontier(idx, full) == (full if not fused else {residual})   # decomposed: 9 nodes
    monkeypatch.undo()
    for mode in ("seq", "asym"):
        assert_cache_changes_nothing(monkeypatch, model, mode)
