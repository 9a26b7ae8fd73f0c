"""Small feed-forward blocks as onnxruntime's transformer optimizer writes them (graph/msrules.py's
tests), built with onnx.helper:

    x [N, T, 16] -> MatMul W1 [16, 32] -> <activation> -> MatMul W2 [32, 16]
      -> com.microsoft.SkipLayerNormalization(skip=x, gamma, beta, bias b2) -> y

The activation is com.microsoft BiasGelu (the first MatMul's bias as its 2nd input), FastGelu
(with or without that bias), Gelu or QuickGelu; options build what must be refused.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from fused_ops import MS, _model

IN, HIDDEN = 16, 32
ACTIVATIONS = ("BiasGelu", "FastGelu", "FastGelu_nobias", "Gelu", "QuickGelu")


def ffn(act="BiasGelu", seed=0, shared_bias=False, computed_bias=False):
    """One FFN block; `shared_bias`: the activation's bias is also added to the output (tied);
    `computed_bias`: the bias comes from a computation on the input."""
    rng = np.random.default_rng(seed)
    inits = {"W1": rng.standard_normal((IN, HIDDEN)) / 4, "b1": rng.standard_normal(HIDDEN) * 0.3,
             "W2": rng.standard_normal((HIDDEN, IN)) / 6, "b2": rng.standard_normal(IN) * 0.1,
             "gamma": rng.random(IN) + 0.5, "beta": rng.standard_normal(IN) * 0.1}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1")]
    op = act.split("_")[0]
    ins = ["h"] if act in ("Gelu", "QuickGelu", "FastGelu_nobias") else ["h", "b1"]
    if computed_bias:
        nodes.append(helper.make_node("ReduceMean", ["W1"], ["b1c"], name="bias_calc", axes=[0], keepdims=0))
        ins = ["h", "b1c"]
    extra = {"alpha": 1.5} if op == "QuickGelu" else {}
    nodes.append(helper.make_node(op, ins, ["a"], name="act", domain=MS, **extra))
    nodes.append(helper.make_node("MatMul", ["a", "W2"], ["f"], name="fc2"))
    nodes.append(helper.make_node("SkipLayerNormalization", ["f", "x", "gamma", "beta", "b2"], ["y"],
                                  name="skip_ln", domain=MS, epsilon=1e-5))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", IN])]
    if shared_bias:
        nodes.append(helper.make_node("Mul", ["b1", "b1"], ["z"], name="tied"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [HIDDEN]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", IN])
    return _model(nodes, inits, [x], outputs)


def inputs(n, seed, seq=5):
    return {"x": np.random.default_rng(seed).standard_normal((n, seq, IN)).astype(np.float32)}
