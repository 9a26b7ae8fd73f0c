"""Worker for tools/bench_transformer.py: onnxsim 0.8.1's attention-head (+ FFN) pruning of one model.

Runs in its own environment (onnxprune is not imported), made with

    python -m venv venv-onnxsim && venv-onnxsim/bin/pip install onnxsim==0.8.1 onnxruntime sympy

onnxsim's head pruning matches fused attention only (com.microsoft::Attention and friends; on the
plain TorchScript export it removes nothing), so the model is first fused with onnxruntime's own
transformer optimizer (optimize_model, model_type bert/vit, opt_level 0), then:

  heads   onnxsim.pruning.apply_attention_head_pruning(model, sparsity=S)            (magnitude)
          or apply_attention_head_wanda_pruning(model, calibration_data, sparsity=S) (--wanda)
  FFN     onnxsim.pruning.apply_structured_pruning(model, sparsity=S)  (or _wanda_, with --wanda)
          with the same S, when --ffn is given (onnxsim picks the chains it recognises).

    venv-onnxsim/bin/python tools/onnxsim_heads.py IN.onnx OUT.onnx --sparsity S --num-heads H \\
        --hidden D --model-type bert [--wanda --calib CALIB.npz --samples N] [--ffn]

Prints one JSON line: seconds, what each step changed (parameter counts) or why it failed.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnx


def params(m: onnx.ModelProto) -> int:
    return int(sum(np.prod(t.dims) for t in m.graph.initializer))


def first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip() or '').splitlines()[0] if str(e).strip() else ''}"[:300]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("output")
    p.add_argument("--sparsity", type=float, required=True)
    p.add_argument("--num-heads", type=int, required=True)
    p.add_argument("--hidden", type=int, required=True)
    p.add_argument("--model-type", default="bert")
    p.add_argument("--wanda", action="store_true")
    p.add_argument("--ffn", action="store_true")
    p.add_argument("--calib")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    a = p.parse_args()
    import onnxsim
    import onnxsim.pruning as P
    from onnxruntime.transformers.optimizer import optimize_model

    t0 = time.time()
    fused = optimize_model(a.model, model_type=a.model_type, num_heads=a.num_heads, hidden_size=a.hidden, opt_level=0).model
    ops = sorted({n.op_type for n in fused.graph.node if n.domain == "com.microsoft"})
    names = {i.name for i in fused.graph.input}
    calib = None
    if a.wanda:
        data = dict(np.load(a.calib))
        n = min(a.samples, len(next(iter(data.values()))))
        calib = [{k: v[i:i + a.batch] for k, v in data.items() if k in names} for i in range(0, n, a.batch)]
    info = {"onnxsim": onnxsim.__version__, "fused_ops": ops, "params_fused": params(fused)}
    m = fused
    try:
        m = (P.apply_attention_head_wanda_pruning(m, calibration_data=calib, sparsity=a.sparsity) if a.wanda
             else P.apply_attention_head_pruning(m, sparsity=a.sparsity))
        info["params_after_heads"] = params(m)
    except Exception as e:               # reported, not hidden: the row says onnxsim refused
        info["heads_error"] = first_line(e)
    if a.ffn:
        try:
            m = (P.apply_structured_wanda_pruning(m, calibration_data=calib, sparsity=a.sparsity) if a.wanda
                 else P.apply_structured_pruning(m, sparsity=a.sparsity))
            info["params_after_ffn"] = params(m)
        except Exception as e:
            info["ffn_error"] = first_line(e)
    info["seconds"] = round(time.time() - t0, 2)
    onnx.save(m, a.output)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
