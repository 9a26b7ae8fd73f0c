"""Row mask on or off (issue #15): prune the bert_tiny fixture's FFNs with its attention_mask as
the row mask (the default) and with --no-row-mask, and compare each pruned model with the
original on held-out samples, padding tokens left out of the comparison.

Two models: the fixture as it is (classifier: `logits` [N, 2], argmax agreement) and the same
encoder cut after its last LayerNorm (`last_hidden_state` [N, T, 32], cosine per real token).
The first --prune samples of tests/fixtures/bert_tiny_calib.npz prune, the rest are held out.

    python tools/bench_rowmask.py [--keep 0.5] [--prune 48]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from onnxprune import prune
from onnxprune.io.calib import Calibration
from onnxprune.run.evaluate import EvalData, evaluate

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
HIDDEN = "/layers.1/ln2/LayerNormalization_output_0"


def encoder(model: onnx.ModelProto) -> onnx.ModelProto:
    """The fixture without its pooling and classifier: the last hidden state is the output."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [n for n in m.graph.node if n.name not in ("/Gather_1", "/classifier/Gemm")]
    keep.append(helper.make_node("Identity", [HIDDEN], ["last_hidden_state"], name="hidden_out"))
    del m.graph.node[:]
    m.graph.node.extend(keep)
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("last_hidden_state", onnx.TensorProto.FLOAT, ["batch", "seq", 32]))
    used = {i for n in m.graph.node for i in n.input}
    kept_inits = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept_inits)
    onnx.checker.check_model(m)
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--prune", type=int, default=48, help="samples that prune; the rest are held out")
    args = ap.parse_args()
    data = dict(np.load(FIXTURES / "bert_tiny_calib.npz"))
    calib = {k: v[:args.prune] for k, v in data.items()}
    held = EvalData(Calibration({k: v[args.prune:] for k, v in data.items()}, "held out"), None, None)
    classifier = onnx.load(FIXTURES / "bert_tiny.onnx")
    print(f"keep {args.keep}, {args.prune} samples prune, {held.inputs.samples} held out "
          f"({int(held.inputs.arrays['attention_mask'].sum())} real tokens)")
    print(f"{'model':<18} {'row mask':<14} {'metric':<7} {'agreement':>9} {'cos mean':>9} {'cos min':>8} "
          f"{'cos p5':>8} {'rel error':>10}")
    for label, model in (("bert_tiny logits", classifier), ("bert_tiny hidden", encoder(classifier))):
        for mask in (None, False):
            pruned, _ = prune(model, calib, keep=args.keep, row_mask=mask)
            ref = evaluate(pruned, held, model, device="cpu")["reference"]
            out = next(iter(ref["outputs"].values()))
            agreement = "-" if out["argmax_agreement"] is None else f"{out['argmax_agreement']:.4f}"
            print(f"{label:<18} {'attention_mask' if mask is None else 'off':<14} {out['metric']:<7} "
                  f"{agreement:>9} {out['cosine_mean']:>9.4f} {out['cosine_min']:>8.4f} {out['cosine_p5']:>8.4f} "
                  f"{out['rel_error']:>10.3e}")


if __name__ == "__main__":
    main()
