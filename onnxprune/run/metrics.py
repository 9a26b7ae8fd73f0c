"""How far a model's outputs are from a reference's, with a metric that fits each output.

Argmax agreement only means something for classifier-like outputs (scores over classes);
for embeddings and hidden states the direction of each vector is what users compare, so
they get cosine similarity (mean, min and 5th percentile over rows) and relative error.

Rows: an output of rank 2 has one row per sample; rank 3 ([samples, tokens, features]) one
row per token, padding tokens left out when a [samples, tokens] row mask lines up with its
first two axes; rank >= 4 one row per sample (everything flattened) for cosine, and one
class vector on axis 1 per sample and position for argmax (NCHW maps); rank <= 1 one value
per sample (no direction: no cosine, no argmax). The relative squared error
||y - y_ref||² / ||y_ref||² is summed over the rows kept.

`--metric auto` decides per output, first rule that applies (`choose`):
  1. name: containing logit, prob, softmax, score or class -> argmax; containing embed,
     hidden, pooler, feature, encoder, vector or represent -> cosine;
  2. values: every reference row non-negative and summing to 1 over the class axis
     (a probability distribution) -> argmax; every row of unit L2 norm -> cosine;
  3. shape: rank 2 with at least 2 columns -> argmax (an [N, C] head is assumed to be a
     classifier: pass --metric cosine for unnamed embeddings); anything else -> cosine.
"""
from __future__ import annotations

import numpy as np

METRICS = ("auto", "argmax", "cosine")
CLASSIFIER_WORDS = ("logit", "prob", "softmax", "score", "class")
EMBEDDING_WORDS = ("embed", "hidden", "pooler", "feature", "encoder", "vector", "represent")
TOLERANCE = 1e-3          # |sum - 1| and |norm - 1| for the value rules


def name_hint(name: str) -> str | None:
    low = name.lower()
    if any(w in low for w in CLASSIFIER_WORDS):
        return "argmax"
    if any(w in low for w in EMBEDDING_WORDS):
        return "cosine"
    return None


def token_keep(shape: tuple, mask) -> np.ndarray | None:
    """Boolean [samples, tokens] of the rows to compare when `mask` lines up with the first
    two axes of a rank >= 3 output; None: compare every row."""
    if mask is None or len(shape) < 3 or tuple(shape[:2]) != tuple(np.shape(mask)):
        return None
    return np.asarray(mask) != 0


def vector_rows(y: np.ndarray, keep) -> np.ndarray:
    """The output's rows for cosine and relative error (see the module doc)."""
    if y.ndim <= 1:
        return y.reshape(-1, 1)
    if y.ndim == 3:
        return y[keep] if keep is not None else y.reshape(-1, y.shape[-1])
    return y.reshape(y.shape[0], -1)


def class_rows(y: np.ndarray, keep) -> np.ndarray | None:
    """The output's class vectors for argmax, one per row (None: rank <= 1)."""
    if y.ndim <= 1:
        return None
    if y.ndim >= 4:                                  # class maps: the classes are axis 1
        return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])
    return vector_rows(y, keep)


def row_cosines(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Cosine of every row pair; 1 when both rows are zero, 0 when only one is."""
    ny, nz = np.linalg.norm(y, axis=1), np.linalg.norm(z, axis=1)
    dot = np.sum(y * z, axis=1)
    both = (ny == 0) & (nz == 0)
    denom = np.where(ny * nz > 0, ny * nz, 1.0)
    return np.where(both, 1.0, np.where(ny * nz > 0, dot / denom, 0.0))


class OutputMetric:
    """Running comparison of one output with the reference's, batch by batch."""

    def __init__(self, name: str):
        self.name = name
        self.err = self.energy = 0.0
        self.cosines = []
        self.agree = self.count = 0
        self.rank = None
        self.row_size = self.classes = 0
        self.probabilities = self.unit_norm = True
        self.masked = False

    def add(self, reference, output, mask=None) -> None:
        y, z = np.asarray(reference, dtype=np.float64), np.asarray(output, dtype=np.float64)
        keep = token_keep(y.shape, mask)
        self.masked |= keep is not None
        self.rank = y.ndim
        vy, vz = vector_rows(y, keep), vector_rows(z, keep)
        self.err += float(np.sum((vy - vz) ** 2))
        self.energy += float(np.sum(vy ** 2))
        self.row_size = vy.shape[1]
        if self.row_size > 1 and len(vy):
            self.cosines.append(row_cosines(vy, vz))
            self.unit_norm &= bool(np.all(np.abs(np.linalg.norm(vy, axis=1) - 1) <= TOLERANCE))
        cy, cz = class_rows(y, keep), class_rows(z, keep)
        if cy is not None and len(cy):
            self.classes = cy.shape[1]
            self.agree += int(np.sum(cy.argmax(axis=1) == cz.argmax(axis=1)))
            self.count += len(cy)
            self.probabilities &= bool(np.all(cy >= -TOLERANCE) and np.all(np.abs(cy.sum(axis=1) - 1) <= TOLERANCE))

    def choose(self, metric: str = "auto") -> tuple:
        """(argmax | cosine, why) for this output; see the module doc for the rules."""
        if metric != "auto":
            return metric, f"--metric {metric}"
        hint = name_hint(self.name)
        if hint:
            return hint, f"output name {self.name!r}"
        if self.classes >= 2 and self.count and self.probabilities:
            return "argmax", "every row is a probability distribution"
        if self.row_size >= 2 and self.cosines and self.unit_norm:
            return "cosine", "every row has unit L2 norm (normalised embeddings)"
        if self.rank == 2 and self.classes >= 2:
            return "argmax", "one score vector per sample (rank 2): a classifier is assumed"
        return "cosine", f"rank-{self.rank} output: compared as vectors"

    def result(self, metric: str = "auto") -> dict:
        kind, why = self.choose(metric)
        cos = np.concatenate(self.cosines) if self.cosines else np.zeros(0)
        stats = {"cosine_mean": float(np.mean(cos)), "cosine_min": float(np.min(cos)),
                 "cosine_p5": float(np.percentile(cos, 5))} if len(cos) else \
            {"cosine_mean": None, "cosine_min": None, "cosine_p5": None}
        return {
            "metric": kind, "why": why, "rows": int(len(cos)) if len(cos) else self.count, "masked": self.masked,
            "rel_error": self.err / self.energy if self.energy > 0 else self.err,
            **stats,
            "argmax_agreement": (self.agree / self.count if self.count else None) if kind == "argmax" else None,
        }


class OutputComparison:
    """Every output of a model against a reference: per-output metrics, plus the first
    output's as the headline (`metric`, and `argmax_agreement` when that is its metric)."""

    def __init__(self, names: list, metric: str = "auto"):
        self.names = list(names)
        self.metric = metric
        self.outputs = {n: OutputMetric(n) for n in self.names}

    def add(self, reference: list, outputs: list, mask=None) -> None:
        for n, y, z in zip(self.names, reference, outputs):
            self.outputs[n].add(y, z, mask)

    def result(self) -> dict:
        per_output = {n: m.result(self.metric) for n, m in self.outputs.items()}
        first = per_output[self.names[0]]
        return {"output_rel_error": {n: r["rel_error"] for n, r in per_output.items()},
                "argmax_agreement": first["argmax_agreement"], "metric": first["metric"], "outputs": per_output}


def headline(fidelity: dict) -> str:
    """The comparison in a few words for the one-line summary: argmax agreement, or cosine
    and relative error, of the first output ('' without a comparison)."""
    outputs = fidelity.get("outputs")
    if not outputs:
        agreement = fidelity.get("argmax_agreement")
        return f"argmax agreement {agreement:.3f}" if agreement is not None else ""
    name, first = next(iter(outputs.items()))
    if first["metric"] == "argmax" and first["argmax_agreement"] is not None:
        return f"argmax agreement {first['argmax_agreement']:.3f}"
    where = f"{name}, {first['rows']} {'token rows without padding' if first['masked'] else 'rows'}"
    if first["cosine_mean"] is None:
        return f"relative error {first['rel_error']:.3g} ({where})"
    return (f"cosine {first['cosine_mean']:.4f} (min {first['cosine_min']:.4f}, 5th pct {first['cosine_p5']:.4f}), "
            f"relative error {first['rel_error']:.3g} ({where})")


def output_line(name: str, r: dict) -> str:
    """Every measure of one output, for `onnxprune eval`'s text output."""
    parts = [f"relative error {r['rel_error']:.3e}"]
    if r["cosine_mean"] is not None:
        parts.append(f"cosine {r['cosine_mean']:.4f} (min {r['cosine_min']:.4f}, 5th pct {r['cosine_p5']:.4f})")
    if r["argmax_agreement"] is not None:
        parts.append(f"argmax agreement {r['argmax_agreement']:.4f}")
    rows = f"{r['rows']} {'token rows without padding' if r['masked'] else 'rows'}"
    return f"{name}: {', '.join(parts)} over {rows} [metric {r['metric']}: {r['why']}]"
