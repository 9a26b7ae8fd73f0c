"""CPU seconds of the rewrite stage (graph surgery) inside a prune, and of its gs import and export.

    python tools/bench_rewrite.py chain 60 256 .bench/chain60x256.onnx     # write a test chain
    python tools/bench_rewrite.py time prune .bench/chain60x256.onnx --keep 0.5 --method weight-norm \
        --no-reweight -o .bench/y.onnx --force -q
    python tools/bench_rewrite.py time prune ../shared/models/resnet56_cifar10.onnx --calib-random 64 \
        --compression 2 --method weight-norm --no-reweight -o .bench/x.onnx --force -q

`chain N C OUT`: N x (Conv CxC 3x3 pad 1 + Relu) on an [N, C, 8, 8] input, opset 13 (random
weights, seed 0). `time ARGS`: runs `onnxprune ARGS` in this process with `time.process_time`
accumulators around the runner's `apply_group`, `gs.import_onnx` (as apply.py sees it) and
`apply._export_like`; prints the run's CPU seconds and each part's. To compare two versions,
unpack each commit (`git archive COMMIT | tar -x -C DIR`) and run the same line with
PYTHONPATH=DIR; compare the outputs with cmp.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def chain(n: int, c: int, out: str) -> None:
    rng, nodes, inits, x = np.random.default_rng(0), [], [], "x"
    for i in range(n):
        inits += [numpy_helper.from_array(rng.standard_normal((c, c, 3, 3)).astype(np.float32) * 0.1, f"w{i}"),
                  numpy_helper.from_array(np.zeros(c, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], name=f"conv{i}", pads=[1] * 4),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 8, 8])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", c, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, out)


def timed(args: list) -> None:
    import onnxprune.rewrite.apply as apply
    import onnxprune.run.runner as runner
    from onnxprune.cli import main
    spent = {}

    def wrap(module, name, key):
        real = getattr(module, name)

        def inner(*a, **k):
            t = time.process_time()
            try:
                return real(*a, **k)
            finally:
                spent[key] = spent.get(key, 0.0) + time.process_time() - t
        setattr(module, name, inner)
    wrap(runner, "apply_group", "apply_group")
    wrap(apply.gs, "import_onnx", "import")
    wrap(apply, "_export_like", "export")
    t = time.process_time()
    try:
        main(args, standalone_mode=False)
    except SystemExit:
        pass
    print(f"total CPU {time.process_time() - t:.2f} s, " + ", ".join(f"{k} {v:.2f} s" for k, v in spent.items()))


if __name__ == "__main__":
    if sys.argv[1:2] == ["chain"]:
        chain(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif sys.argv[1:2] == ["time"]:
        timed(sys.argv[2:])
    else:
        sys.exit(__doc__)
