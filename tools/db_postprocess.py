"""DBNet post-processing in NumPy (no OpenCV), close to rapidocr's DBPostProcess, and box matching.

rapidocr 1.4.4 (config.yaml, Det): thresh 0.3, box_thresh 0.5, unclip_ratio 1.6, use_dilation
(2x2), score_mode fast, min_size 3. Differences, all applied alike to the original and the
pruned model: a text region is a 4-connected component of the dilated bitmap (OpenCV: a contour
of it), its box the axis-aligned bounding rectangle (OpenCV: the minimum-area rotated rectangle;
the same for horizontal text), scored by the mean probability inside that rectangle, and
unclipped by the same distance area x ratio / perimeter on every side.
"""
from __future__ import annotations

import numpy as np

THRESH, BOX_THRESH, UNCLIP, MIN_SIZE = 0.3, 0.5, 1.6, 3


def dilate2x2(mask: np.ndarray) -> np.ndarray:
    """cv2.dilate with a 2x2 kernel of ones (anchor at the centre, i.e. top-left of the 2x2)."""
    out = mask.copy()
    out[:-1, :] |= mask[1:, :]
    out[:, :-1] |= mask[:, 1:]
    out[:-1, :-1] |= mask[1:, 1:]
    return out


def components(mask: np.ndarray) -> list:
    """4-connected components of a boolean map as arrays of (row, col), by union-find on runs."""
    h, w = mask.shape
    label = -np.ones((h, w), dtype=np.int64)
    parent = []

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for y in range(h):
        row = mask[y]
        if not row.any():
            continue
        edges = np.flatnonzero(np.diff(np.concatenate(([0], row.astype(np.int8), [0]))))
        for start, stop in zip(edges[::2], edges[1::2]):
            lab = len(parent)
            parent.append(lab)
            label[y, start:stop] = lab
            if y:
                for above in np.unique(label[y - 1, start:stop]):
                    if above >= 0:
                        ra, rb = find(int(above)), find(lab)
                        if ra != rb:
                            parent[max(ra, rb)] = min(ra, rb)
    if not parent:
        return []
    roots = np.array([find(i) for i in range(len(parent))])
    ys, xs = np.nonzero(label >= 0)
    owner = roots[label[ys, xs]]
    order = np.argsort(owner, kind="stable")
    cuts = np.flatnonzero(np.diff(owner[order])) + 1
    return [np.stack([ys[idx], xs[idx]], 1) for idx in np.split(order, cuts)]


def boxes(prob: np.ndarray) -> np.ndarray:
    """Text boxes [k, 4] (x0, y0, x1, y1) of one probability map [H, W]."""
    h, w = prob.shape
    out = []
    for pts in components(dilate2x2(prob > THRESH)):
        y0, x0 = pts.min(0)
        y1, x1 = pts.max(0) + 1
        if min(y1 - y0, x1 - x0) < MIN_SIZE:
            continue
        if prob[y0:y1, x0:x1].mean() < BOX_THRESH:
            continue
        bw, bh = x1 - x0, y1 - y0
        d = bw * bh * UNCLIP / (2 * (bw + bh))
        box = np.array([x0 - d, y0 - d, x1 + d, y1 + d])
        if min(box[2] - box[0], box[3] - box[1]) < MIN_SIZE + 2:
            continue
        out.append(np.clip(np.round(box), 0, [w, h, w, h]))
    return np.array(out, dtype=np.float64).reshape(-1, 4)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a [n, 4] and b [m, 4]."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area = lambda z: np.prod(z[:, 2:] - z[:, :2], axis=1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def matches(reference: np.ndarray, found: np.ndarray, threshold: float = 0.5) -> int:
    """Greedy one-to-one matches at IoU >= threshold, best pairs first."""
    if not len(reference) or not len(found):
        return 0
    m = iou(reference, found)
    count = 0
    while True:
        i, j = np.unravel_index(np.argmax(m), m.shape)
        if m[i, j] < threshold:
            return count
        count += 1
        m[i, :] = -1
        m[:, j] = -1


def compare_maps(ref: np.ndarray, got: np.ndarray) -> dict:
    """Boxes of the pruned model against the original's (precision, recall, F1 at IoU 0.5) and
    the pixel IoU of the binarised maps, over maps [N, 1, H, W]."""
    tp = n_ref = n_got = 0
    for r, g in zip(ref[:, 0], got[:, 0]):
        br, bg = boxes(r), boxes(g)
        tp += matches(br, bg)
        n_ref += len(br)
        n_got += len(bg)
    a, b = ref > THRESH, got > THRESH
    precision = tp / n_got if n_got else 1.0
    recall = tp / n_ref if n_ref else 1.0
    return {"boxes_original": n_ref, "boxes_pruned": n_got, "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-12),
            "pixel_iou": float((a & b).sum() / max((a | b).sum(), 1))}
