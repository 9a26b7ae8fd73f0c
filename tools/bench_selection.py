"""Selection speed: onnxprune's greedy against the published per-candidate least squares,
both on the same activations X (rows x D, D = C*κ features plus the intercept).

- ours: the Gram G = XᵀX and H = G W (once), then `greedy_order` on d x d statistics.
  Also timed: `reference_greedy_order` (the full-residual O(kκD²) update the fast version
  replaced) and, for information only, a float32 run of the greedy (how many picks change).
- published: the algorithm of El Halabi et al.'s code written out here (and only here): keep
  the residual activations E = X - proj_S(X) (rows x D); at every step, for every remaining
  channel I, solve the least-squares fit of all residual columns on E_I (SVD of E_I, then
  γ = E_I⁺ E, the rows*κ*D product that dominates) and score ||E_I γ W||²; update E with the
  winner. O(k*C*rows*D) time, O(rows*D) memory. Its per-candidate work does not depend on the
  step (it always solves against all D columns), so a sample predicts the whole run:
  (median candidate time) x (candidates scored over k steps) + k x (median update time), from
  4 candidates and one update at each of the first 3 steps. When that prediction exceeds
  --budget seconds it is reported instead of a full run (marked "extrapolated"); full runs
  print it next to the measured time, as a check of the model, and check the picks.

Activations: ResNet-56 and VGG11 consumers' real inputs (im2col of the consumer Conv) on
CIFAR-10 calibration images via onnxruntime, rows sampled at random; BERT FFN widths from
synthetic token activations (GELU of correlated projections), as no BERT model is in ../shared.
Selection keeps k = C/2 channels (2x per layer), symmetric objective (layer mode).

    OPENBLAS_NUM_THREADS=1 python tools/bench_selection.py        # every configuration
    OPENBLAS_NUM_THREADS=1 python tools/bench_selection.py --only resnet56-c16 --rows 8192

One BLAS thread is how docs/RESULTS.md was measured: on a shared 2-core machine, two-thread
BLAS calls stall whenever another job holds a core, which hits the published algorithm's
thousands of small calls far harder than ours and makes its times (and the ratios)
unrepeatable. Both sides then run on one core.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

from onnxprune import runtime  # noqa: E402
from onnxprune.graph.analyze import analyze  # noqa: E402
from onnxprune.capture.stream import submodel  # noqa: E402
from onnxprune.capture.features import canonical_order, design_rows  # noqa: E402
from onnxprune.graph.index import GraphIndex  # noqa: E402
from onnxprune.io.modelio import load_model, normalize  # noqa: E402
from onnxprune.solve.problem import Problem  # noqa: E402
from onnxprune.solve.greedy import greedy_order, reference_greedy_order  # noqa: E402
from onnxprune.rewrite.weights import consumer_matrix  # noqa: E402


@dataclass(frozen=True)
class Config:
    name: str
    source: str            # "onnx" (real activations) or "ffn" (synthetic)
    rows: tuple
    model: str = ""
    group: str = ""        # producer node of the pruned group (onnx)
    channels: int = 0      # ffn width
    hidden: int = 0        # ffn model width (= consumer outputs)


CONFIGS = (
    Config("resnet56-c16", "onnx", (8192, 65536), "resnet56_cifar10", "/layer1/layer1.0/conv1/Conv"),
    Config("resnet56-c32", "onnx", (8192, 65536), "resnet56_cifar10", "/layer2/layer2.0/conv1/Conv"),
    Config("resnet56-c64", "onnx", (8192, 65536), "resnet56_cifar10", "/layer3/layer3.0/conv1/Conv"),
    Config("vgg11-c512", "onnx", (8192, 65536), "vgg11_bn_cifar10", "/features/features.15/Conv"),
    Config("bert-ffn-1536", "ffn", (8192, 65536), channels=1536, hidden=384),
    Config("bert-ffn-3072", "ffn", (8192, 65536), channels=3072, hidden=768),
)


# --------------------------------------------------------------------------- activations

def onnx_activations(cfg: Config, rows: int, rng) -> tuple:
    """(X rows x (C*κ+1) in channel-block order with the intercept last, W, C, κ, images).

    The consumer's input on the first N calibration images (N >= 512, the protocol's size,
    and enough for `rows`), im2col'ed with its geometry; `rows` of those rows drawn at random.
    """
    model = normalize(load_model(SHARED / "models" / f"{cfg.model}.onnx"))
    group = next(g for g in analyze(model).groups if g.name == cfg.group)
    consumer = group.consumers[0]
    weight = consumer_matrix(GraphIndex.build(model, infer=False), consumer)
    sess = runtime.session(submodel(model, [consumer.input]), "cpu")
    images = np.load(SHARED / "data" / "cifar10_calib.npz")["x"]
    images = images.astype(np.float32).transpose(0, 3, 1, 2) / 255
    first = sess.run([consumer.input], {"input": images[:1]})[0]
    per_image = design_rows(first, consumer, np, np.float32).shape[0]
    n = max(512, math.ceil(rows / per_image))
    if n > len(images):
        raise SystemExit(f"{cfg.name}: {rows} rows need {n} images, the calibration file has {len(images)}")
    acts = np.concatenate([sess.run([consumer.input], {"input": images[i:min(i + 256, n)]})[0]
                           for i in range(0, n, 256)])
    chosen = np.sort(rng.choice(n * per_image, size=rows, replace=False))
    parts = []
    for i in range(0, n, 64):
        design = design_rows(acts[i:i + 64], consumer, np, np.float64)
        lo, hi = np.searchsorted(chosen, [i * per_image, (i + 64) * per_image])
        parts.append(design[chosen[lo:hi] - i * per_image])
    data = np.concatenate(parts)
    order = canonical_order(consumer, data.shape[1])
    if order is not None:
        data = np.ascontiguousarray(data[:, order])
    return data, weight, group.channels, consumer.block, n


def ffn_activations(cfg: Config, rows: int, rng) -> tuple:
    """GELU(Y U + b) for correlated token states Y (rows x hidden): the FFN's inner activations."""
    h, c = cfg.hidden, cfg.channels
    spectrum = 1.0 / np.sqrt(1.0 + np.arange(h))                   # decaying, like real hidden states
    y = (rng.standard_normal((rows, h)) * spectrum) @ np.linalg.qr(rng.standard_normal((h, h)))[0]
    pre = y @ (rng.standard_normal((h, c)) / np.sqrt(h) * 3.0) - 0.5
    gelu = 0.5 * pre * (1.0 + np.tanh(0.7978845608 * (pre + 0.044715 * pre ** 3)))
    data = np.empty((rows, c + 1))
    data[:, :c] = gelu
    data[:, c] = 1.0
    weight = rng.standard_normal((c + 1, h)) / np.sqrt(c)
    return data, weight, c, 1, 0


# --------------------------------------------------------------------------- the published algorithm

class Published:
    """Greedy by per-candidate least squares on the residual activations (El Halabi et al.)."""

    def __init__(self, x: np.ndarray, weight: np.ndarray, channels: int, block: int):
        self.e = x                                         # becomes the residual, in place
        self.e -= self.e.mean(axis=0)                      # the intercept is always kept
        self.w, self.channels, self.block = weight, channels, block
        self.taken = np.zeros(channels, dtype=bool)

    def score(self, c: int) -> tuple:
        """Gain of adding channel c and the least-squares coefficients that give it."""
        r = np.ascontiguousarray(self.e[:, c * self.block:(c + 1) * self.block])
        u, s, vt = np.linalg.svd(r, full_matrices=False)
        keep = s > s[0] * np.finfo(float).eps * max(r.shape) if s[0] > 0 else np.zeros_like(s, dtype=bool)
        if not keep.any():
            return 0.0, None
        u, s, vt = u[:, keep], s[keep], vt[keep]
        gamma = (vt.T / s) @ (u.T @ self.e)                # κ x D: every column fitted on r
        fit = r @ (gamma @ self.w)
        return float(np.sum(fit * fit)), (r, gamma)

    def step(self) -> tuple:
        """Score every remaining channel; (the best, its fit)."""
        best, best_gain, best_fit = -1, -1.0, None
        for c in np.flatnonzero(~self.taken):
            gain, fit = self.score(int(c))
            if gain > best_gain:
                best, best_gain, best_fit = int(c), gain, fit
        return best, best_fit

    def take(self, c: int, fit) -> None:
        if fit is not None:
            r, gamma = fit
            self.e -= r @ gamma
        self.e[:, c * self.block:(c + 1) * self.block] = 0.0
        self.taken[c] = True

    def error(self) -> float:
        y = self.e @ self.w
        return float(np.sum(y * y))


def candidates_scored(channels: int, k: int) -> int:
    return sum(channels - j for j in range(k))


def sample_published(x, weight, channels, block, k, order, rng, probes: int = 4) -> dict:
    """Median time of one candidate's least squares and of one update, sampled over the first
    three steps (advanced with our picks), and the k-step total they imply."""
    pub = Published(x, weight, channels, block)
    pub.score(int(order[0]))                      # warm-up: first touch of the large temporaries
    per_candidate, per_update = [], []                 # (wall, CPU) seconds
    for step in range(min(3, k)):
        rest = np.flatnonzero(~pub.taken)
        for c in rng.choice(rest, size=min(len(rest), probes), replace=False):
            t0, c0 = time.perf_counter(), time.process_time()
            pub.score(int(c))
            per_candidate.append((time.perf_counter() - t0, time.process_time() - c0))
        _, fit = pub.score(order[step])
        t0, c0 = time.perf_counter(), time.process_time()
        pub.take(order[step], fit)
        per_update.append((time.perf_counter() - t0, time.process_time() - c0))
    cand, upd = np.median(per_candidate, axis=0), np.median(per_update, axis=0)
    total = cand * candidates_scored(channels, k) + k * upd
    return {"naive_per_candidate_s": float(cand[0]), "naive_per_update_s": float(upd[0]),
            "naive_samples": len(per_candidate), "naive_model_s": float(total[0]),
            "naive_model_cpu_s": float(total[1])}


def full_published(x, weight, channels, block, k) -> tuple:
    pub = Published(x, weight, channels, block)
    t0, c0 = time.perf_counter(), time.process_time()
    order = []
    for _ in range(k):
        best, fit = pub.step()
        pub.take(best, fit)
        order.append(best)
    return order, time.perf_counter() - t0, time.process_time() - c0, pub.error()


# --------------------------------------------------------------------------- ours

def best_time(fn, repeat: int, patience: float = 20.0) -> tuple:
    """(wall, CPU) seconds of the fastest of `repeat` runs (fewer once `patience` seconds are
    spent) and the last value. CPU time is this process's, all threads."""
    best, value, spent = (math.inf, math.inf), None, 0.0
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        value = fn()
        elapsed = (time.perf_counter() - t0, time.process_time() - c0)
        best, spent = min(best, elapsed), spent + elapsed[0]
        if spent > patience:
            break
    return best, value


def statistics(x, weight, channels, block, xp) -> Problem:
    """What capture would have accumulated from these rows: G = XᵀX, H = G W, ||X W||²."""
    gram = xp.dot(x.T, x)
    h = gram @ weight
    return Problem(gram, h, weight, float(xp.sum(weight * h)), block, channels, fixed=1,
                   members=np.arange(channels))


def float32_problem(p: Problem) -> Problem:
    return dataclasses.replace(p, gram=p.gram.astype("float32"), h=p.h.astype("float32"),
                               weight=p.weight.astype("float32"))


def array_module(device: str):
    if device == "cpu":
        return np
    from onnxprune.solve.xp import cupy_or_none

    cupy = cupy_or_none()
    if cupy is None:
        raise SystemExit("--device cuda needs CuPy and a visible NVIDIA GPU (pip install -e '.[gpu]')")
    return cupy


def synced(fn, xp):
    """fn, then wait for the GPU (a no-op on the CPU) so the time covers the work."""
    def run():
        value = fn()
        if xp is not np:
            xp.cuda.Device().synchronize()
        return value
    return run


def first_difference(a, b):
    return next((j for j, (u, v) in enumerate(zip(a, b)) if u != v), None)


def bench(cfg: Config, rows: int, args) -> dict:
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    make = onnx_activations if cfg.source == "onnx" else ffn_activations
    x, weight, channels, block, images = make(cfg, rows, rng)
    k = channels // 2
    out = {"config": cfg.name, "source": "real activations (onnxruntime, CIFAR-10 calib)" if cfg.source == "onnx"
           else "synthetic FFN activations", "images": images, "C": channels, "kappa": block,
           "D": x.shape[1], "m": weight.shape[1], "rows": x.shape[0], "k": k,
           "prepare_s": time.perf_counter() - t0}
    xp = array_module(args.device)
    x_dev, w_dev = xp.asarray(x), xp.asarray(weight)          # (transfer not timed)
    (out["gram_s"], out["gram_cpu_s"]), p = best_time(synced(lambda: statistics(x_dev, w_dev, channels, block, xp), xp), args.repeat)
    x_dev = None                                              # free the GPU copy
    (out["ours_s"], out["ours_cpu_s"]), (order, errors) = best_time(synced(lambda: greedy_order([p], k, xp), xp), args.repeat)
    if not args.no_reference:
        (out["reference_s"], _), (ref_order, ref_errors) = best_time(
            synced(lambda: reference_greedy_order([p], k, xp), xp), 1)
        out["reference_same_picks"] = ref_order == order
        out["reference_max_rel_error_diff"] = max(abs(a - b) for a, b in zip(errors, ref_errors)) / p.target
    (out["fp32_s"], _), (order32, _) = best_time(synced(lambda: greedy_order([float32_problem(p)], k, xp), xp), 1)
    out["fp32_first_difference"] = first_difference(order, order32)
    out["fp32_kept_sets_differ_by"] = len(set(order) ^ set(order32)) // 2
    out |= sample_published(x.copy(), weight, channels, block, k, order, rng)
    if out["naive_model_s"] > args.budget:
        out |= {"naive_s": out["naive_model_s"], "naive_cpu_s": out["naive_model_cpu_s"], "same_picks": None,
                "naive_how": f"extrapolated from {out['naive_samples']} candidates"}
    else:
        naive_order, naive_s, naive_cpu_s, naive_error = full_published(x, weight, channels, block, k)
        out["naive_s"], out["naive_cpu_s"] = naive_s, naive_cpu_s
        out["naive_how"] = f"full run; model said {out['naive_model_s']:.3g}"
        out["same_picks"] = naive_order == order
        out["naive_first_difference"] = first_difference(naive_order, order)
        out["naive_final_error_rel_diff"] = abs(naive_error - errors[-1]) / p.target
    out["ratio_vs_greedy"] = out["naive_s"] / out["ours_s"]
    out["ratio_vs_gram_and_greedy"] = out["naive_s"] / (out["ours_s"] + out["gram_s"])
    out["cpu_ratio_vs_greedy"] = out["naive_cpu_s"] / out["ours_cpu_s"]
    return out


def markdown_row(r: dict) -> str:
    same = {True: "yes", False: f"no (step {r.get('naive_first_difference')})", None: "not run"}[r.get("same_picks")]
    ref = (f"{r['reference_s']:.3g} ({'same picks' if r['reference_same_picks'] else 'DIFFERENT picks'})"
           if "reference_s" in r else "-")
    fp32 = "none" if r["fp32_first_difference"] is None else \
        f"from step {r['fp32_first_difference']} ({r['fp32_kept_sets_differ_by']} of {r['k']} kept differ)"
    return (f"| {r['config']} | {r['C']} | {r['kappa']} | {r['D']} | {r['m']} | {r['rows']} | {r['k']} | "
            f"{r['ours_s']:.3g} | {r['gram_s']:.3g} | {ref} | {r['naive_s']:.4g} ({r['naive_how']}) | "
            f"{r['ratio_vs_greedy']:,.0f}x ({r['cpu_ratio_vs_greedy']:,.0f}x) | {r['ratio_vs_gram_and_greedy']:,.0f}x | "
            f"{same} | {fp32} |")


HEADER = ("| config | C | κ | D | m | rows | k | ours greedy s | ours Gram s | full-residual greedy s | "
          "published algorithm s | ratio (greedy), wall (CPU) | ratio (Gram + greedy) | same picks | float32 picks |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", default=[], help="configuration name (repeatable)")
    p.add_argument("--rows", type=int, action="append", default=[], help="row counts (default: each config's)")
    p.add_argument("--budget", type=float, default=120.0,
                   help="seconds the published algorithm may run in full; beyond, it is extrapolated")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of our greedy (best is kept)")
    p.add_argument("--no-reference", action="store_true", help="skip the full-residual greedy")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="where our Gram and greedy run (cuda: CuPy); the published algorithm stays on the CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log", type=Path, help="append one JSON line per run")
    a = p.parse_args()
    unknown = set(a.only) - {c.name for c in CONFIGS}
    if unknown:
        raise SystemExit(f"unknown configuration {sorted(unknown)}; choose from {[c.name for c in CONFIGS]}")
    configs = [c for c in CONFIGS if not a.only or c.name in a.only]
    array_module(a.device)                    # fail before any work when the GPU is missing
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"numpy {np.__version__}, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
          f"ours on {a.device}, load average {os.getloadavg()[0]:.1f}", flush=True)
    print(HEADER, flush=True)
    for cfg in configs:
        for rows in a.rows or cfg.rows:
            r = bench(cfg, rows, a) | {"device": a.device, "load_after": os.getloadavg()[0]}
            print(markdown_row(r), flush=True)
            if a.log:
                with open(a.log, "a") as fh:
                    fh.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
