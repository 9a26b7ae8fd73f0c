"""YOLOv8 detections from the raw output, and their agreement with another model's (issue 16).

The output of a YOLOv8 export is [N, 4 + classes, anchors]: box centre x, y, width, height in
input pixels, then one score per class (after the sigmoid). As nudenet (the package the model
comes from) post-processes it: the best class of every anchor with score >= CONF, then
class-agnostic non-maximum suppression at IoU NMS_IOU.

Fidelity of a pruned detector = how well its detections reproduce the original's on the same
images, with the original's detections (score >= CONF) as ground truth:
  map50 / map50_95   COCO-style mean average precision (101-point interpolation) over the
                     classes the original detects, of the pruned model's detections ranked by
                     score (score >= RANK_CONF), at IoU 0.5 and averaged over IoU 0.5:0.95;
  kept               share of the original's detections the pruned model reports at the
                     deployed threshold (same class, IoU >= 0.5, score >= CONF): the measure of
                     the issue's "keeps 12.7% of the original's confident detections";
  precision          share of the pruned model's deployed detections that match one of them.
"""
from __future__ import annotations

import numpy as np

CONF = 0.25          # nudenet's score threshold
NMS_IOU = 0.45       # nudenet's NMS threshold
RANK_CONF = 0.001    # detections ranked for average precision (as COCO evaluation does)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of `boxes`."""
    lt, rb = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: np.prod(b[..., 2:] - b[..., :2], axis=-1)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


def detections(output: np.ndarray, conf: float = CONF) -> list:
    """Per image: (xyxy boxes [k, 4], scores [k], classes [k]) after NMS, best score first."""
    out = []
    for pred in output:                                  # [4 + classes, anchors]
        scores, classes = pred[4:].max(0), pred[4:].argmax(0)
        keep = np.nonzero(scores >= conf)[0]
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        cx, cy, w, h = pred[:4, keep]
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
        chosen = []
        alive = np.ones(len(keep), dtype=bool)
        for i in range(len(keep)):
            if alive[i]:
                chosen.append(i)
                alive[i + 1:] &= iou(boxes[i], boxes[i + 1:]) < NMS_IOU
        out.append((boxes[chosen], scores[keep][chosen], classes[keep][chosen]))
    return out


def _matches(truth: list, found: list, cls: int, threshold: float) -> tuple:
    """For class `cls`: (score, true positive) of every found detection, greedy by score, and the
    number of true boxes."""
    rows, total = [], 0
    for (tb, _, tc), (fb, fs, fc) in zip(truth, found):
        t, f = tb[tc == cls], np.nonzero(fc == cls)[0]
        total += len(t)
        used = np.zeros(len(t), dtype=bool)
        for j in f[np.argsort(-fs[f], kind="stable")]:
            hit = False
            if len(t):
                overlap = np.where(used, -1.0, iou(fb[j], t))
                best = int(np.argmax(overlap))
                if overlap[best] >= threshold:
                    used[best], hit = True, True
            rows.append((float(fs[j]), hit))
    return rows, total


def average_precision(truth: list, found: list, cls: int, threshold: float) -> float:
    """COCO's 101-point interpolated AP of `found` against `truth` for one class."""
    rows, total = _matches(truth, found, cls, threshold)
    if not total:
        return float("nan")
    rows.sort(key=lambda r: -r[0])
    hits = np.array([h for _, h in rows], dtype=float)
    tp, fp = np.cumsum(hits), np.cumsum(1 - hits)
    recall = tp / total
    precision = tp / np.maximum(tp + fp, 1e-12)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    points = np.linspace(0, 1, 101)
    idx = np.searchsorted(recall, points, side="left")
    return float(np.mean([precision[i] if i < len(precision) else 0.0 for i in idx]))


def compare(reference: np.ndarray, pruned: np.ndarray) -> dict:
    """The pruned model's detections against the reference model's on the same images."""
    truth, ranked, deployed = detections(reference), detections(pruned, RANK_CONF), detections(pruned)
    classes = sorted({int(c) for _, _, cs in truth for c in cs})
    ap = {t: [average_precision(truth, ranked, c, t) for c in classes] for t in np.arange(0.5, 0.96, 0.05)}
    kept = sum(sum(h for _, h in _matches(truth, deployed, c, 0.5)[0]) for c in classes)
    boxes = sum(len(b) for b, _, _ in truth)
    found = sum(len(b) for b, _, _ in deployed)
    return {"images": len(truth), "detections_original": boxes, "detections_pruned": found, "classes": len(classes),
            "map50": float(np.mean(ap[0.5])) if classes else None,
            "map50_95": float(np.mean([np.mean(v) for v in ap.values()])) if classes else None,
            "kept": kept / boxes if boxes else None, "precision": kept / found if found else None}
