"""Fold weights computed from constants into initializers (part of `normalize`).

Older CNTK / TensorFlow exports feed a MatMul or Gemm a weight that is a Transpose or Reshape
of an initializer ("MatMul has no constant weight as its second input"). Such a weight is a
constant the graph recomputes every run: it is evaluated once here (onnx's reference
evaluator on the constant-only subgraph) and stored as an initializer under the tensor's own
name, so analysis sees a constant weight and the rewrite can slice it. Nodes left without a
reader are dropped, and so are initializers only they read.

Only weights and biases (inputs 1 and 2) of Conv / ConvTranspose / Gemm / MatMul are folded,
and only through the cheap, exact ops below; a model without such a subgraph is returned
untouched (byte for byte).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

FOLDABLE = {"Transpose", "Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Slice",
            "Gather", "Mul", "Add", "Sub", "Div", "Neg", "Expand", "Tile", "Constant"}
WEIGHTED = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def fold_weights(model: onnx.ModelProto) -> int:
    """Fold computed weights in place; the number of tensors folded."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    runtime = {i.name for i in g.input} - set(inits)
    producer = {o: n for n in g.node for o in n.output if o}
    memo = {}

    def constant(name: str) -> bool:
        if name in memo:
            return memo[name]
        memo[name] = False                  # cycles (invalid graphs) are not constant
        if name in inits:
            result = name not in runtime
        else:
            node = producer.get(name)
            result = (node is not None and node.op_type in FOLDABLE and node.domain in ("", "ai.onnx")
                      and (node.op_type == "Constant" or any(node.input))
                      and all(constant(i) for i in node.input if i))
        memo[name] = result
        return result

    targets = []
    for node in g.node:
        if node.op_type not in WEIGHTED or node.domain not in ("", "ai.onnx"):
            continue
        for i in (1, 2):
            if len(node.input) > i and node.input[i] and node.input[i] not in inits and constant(node.input[i]):
                if node.input[i] not in targets:
                    targets.append(node.input[i])
    if not targets:
        return 0
    needed, stack = set(), list(targets)
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if name in inits or node is None or node.name in needed:
            continue
        needed.add(node.name)
        stack.extend(i for i in node.input if i)
    nodes = [n for n in g.node if n.name in needed]
    used = {i for n in nodes for i in n.input if i}
    sub = helper.make_graph(nodes, "fold", [], [helper.make_tensor_value_info(t, onnx.TensorProto.UNDEFINED, None)
                                                for t in targets],
                            initializer=[inits[n] for n in sorted(used & set(inits))])
    small = helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    from onnx.reference import ReferenceEvaluator

    values = ReferenceEvaluator(small).run(None, {})
    for name, value in zip(targets, values):
        g.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        if model.ir_version < 4:
            g.input.append(helper.make_tensor_value_info(name, g.initializer[-1].data_type, list(value.shape)))
    _drop_dead(model, set(targets), needed)
    return len(targets)


def _drop_dead(model: onnx.ModelProto, folded: set, candidates: set) -> None:
    """Remove the `candidates` nodes nothing reads any more (outputs, subgraphs and other nodes
    count as readers), and the initializers only they read."""
    g = model.graph
    outputs = {o.name for o in g.output}
    outer = set()
    for node in g.node:
        outer |= _subgraph_reads(node)
    while True:
        read = {i for n in g.node for i in n.input if i} | outputs | outer
        # a folded tensor is an initializer now: its node goes whoever reads it
        dead = [n for n in g.node if n.name in candidates and all(o in folded or o not in read for o in n.output)]
        if not dead:
            break
        names = {id(n) for n in dead}
        keep = [n for n in g.node if id(n) not in names]
        del g.node[:]
        g.node.extend(keep)
    read = {i for n in g.node for i in n.input if i} | outputs | outer
    listed = {i.name for i in g.input}
    keep = [t for t in g.initializer if t.name in read or t.name in folded]
    if len(keep) != len(g.initializer):
        gone = {t.name for t in g.initializer} - {t.name for t in keep}
        del g.initializer[:]
        g.initializer.extend(keep)
        if gone & listed:
            inputs = [i for i in g.input if i.name not in gone]
            del g.input[:]
            g.input.extend(inputs)


def _subgraph_reads(node: onnx.NodeProto) -> set:
    reads = set()
    for a in node.attribute:
        for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for n in sub.node:
                reads.update(i for i in n.input if i)
                reads |= _subgraph_reads(n)
    return reads
