"""A read-only index over an ONNX graph: who produces and consumes each tensor, which
tensors are constants, and the shapes shape inference could work out."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..io.calib import static_dim
from ..io.largemodel import is_large, skeleton


def attr(node: onnx.NodeProto, name: str, default=None):
    """A node attribute's Python value, or `default` when absent."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference that never raises: a model it cannot type is analysed without shapes.

    A model over protobuf's 2 GB limit is inferred from its skeleton (large initializers as
    type-and-dims stubs), since inference serialises the model.
    """
    try:
        if is_large(model):
            model = skeleton(model)[0]
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort
        return model


def unknown_dim(dim) -> bool:
    """A dim with neither a value nor a name, or one onnx's inference named 'unk__<n>' for
    "unknown" (not a symbol of the model, such as a batch or sequence length)."""
    return dim is None or (isinstance(dim, str) and dim.startswith("unk__"))


def opset_version(model: onnx.ModelProto, default: int = 1) -> int:
    """The model's default-domain (ai.onnx) opset version; `default` when it imports none."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default)


def _value_info_dims(value_info: onnx.ValueInfoProto) -> tuple | None:
    t = value_info.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return tuple(static_dim(d) for d in t.tensor_type.shape.dim)


# A dim capture/shapes.py measured with two sizes on its two runs (a sequence length).
MEASURED_DYNAMIC = "measured_dynamic"


def _named(dims) -> list:
    """Dims for a value_info: ints and real symbols; an unknown or merely measured-as-dynamic
    dim has no name, so no two of them are equated."""
    return [None if unknown_dim(d) or d == MEASURED_DYNAMIC else d for d in dims]


def _symbolic_dims(value_info: onnx.ValueInfoProto) -> tuple:
    return tuple((d.dim_param or None) if static_dim(d) is None else static_dim(d)
                 for d in value_info.type.tensor_type.shape.dim)


@dataclass
class GraphIndex:
    model: onnx.ModelProto
    producer: dict = field(default_factory=dict)       # tensor -> node
    consumers: dict = field(default_factory=dict)      # tensor -> [(node, input index)]
    nodes: dict = field(default_factory=dict)          # name -> node
    order: dict = field(default_factory=dict)          # node name -> topological position
    initializers: dict = field(default_factory=dict)   # name -> TensorProto
    shapes: dict = field(default_factory=dict)         # tensor -> tuple of dims (None = unknown)
    elem_types: dict = field(default_factory=dict)     # tensor -> onnx elem type
    graph_inputs: list = field(default_factory=list)   # runtime inputs (not initializers)
    graph_outputs: set = field(default_factory=set)
    outer_reads: dict = field(default_factory=dict)    # node with subgraphs -> outer tensors read
    model_dims: dict = field(default_factory=dict)     # tensor -> dims with symbolic names kept
    folded: dict = field(default_factory=dict)         # small tensors computed from constants only
    shape_sources: dict = field(default_factory=dict)  # tensor -> 'symbolic' | 'measured' (fallbacks only)
    sample_dims: dict = field(default_factory=dict)    # measured tensor -> its dims on one calibration sample
    _arrays: dict = field(default_factory=dict)

    @classmethod
    def build(cls, model: onnx.ModelProto, infer: bool = True) -> "GraphIndex":
        """Index `model`; `infer=False` skips shape inference (for weight look-ups only)."""
        idx = cls(model=model)
        g = model.graph
        idx.initializers = {t.name: t for t in g.initializer}
        idx.graph_inputs = [i.name for i in g.input if i.name not in idx.initializers]
        idx.graph_outputs = {o.name for o in g.output}
        for pos, node in enumerate(g.node):
            idx.nodes[node.name] = node
            idx.order[node.name] = pos
            for out in node.output:
                if out:
                    idx.producer[out] = node
            for i, name in enumerate(node.input):
                if name:
                    idx.consumers.setdefault(name, []).append((node, i))
        # Subgraphs (If/Loop/Scan bodies) may read outer tensors: count them as consumers
        # so nothing feeding a subgraph is ever treated as prunable.
        for node in g.node:
            reads = _subgraph_outer_reads(node)
            if reads:
                idx.outer_reads[node.name] = reads
            for outer in reads:
                idx.consumers.setdefault(outer, []).append((node, -1))
        inferred = infer_shapes(model) if infer else model
        for vi in list(inferred.graph.value_info) + list(g.input) + list(g.output):
            dims = _value_info_dims(vi)
            if dims is not None:
                idx.shapes[vi.name] = dims
                idx.model_dims[vi.name] = _symbolic_dims(vi)
            if vi.type.HasField("tensor_type"):
                idx.elem_types[vi.name] = vi.type.tensor_type.elem_type
        for name, t in idx.initializers.items():
            idx.shapes[name] = tuple(t.dims)
            idx.elem_types[name] = t.data_type
        if infer:
            idx.folded = _fold_constants(idx)
        return idx

    def unknown_shapes(self) -> list:
        """Node outputs whose rank or some dim static inference left unknown (the fallbacks in
        capture/shapes.py may fill them)."""
        out = []
        for node in self.model.graph.node:
            for name in node.output:
                dims = self.model_dims.get(name)
                if name and (dims is None or any(unknown_dim(d) for d in dims)):
                    out.append(name)
        return out

    def fill_shapes(self, found: dict, source: str, propagate: bool = True) -> list:
        """Take `found` ({tensor: (elem type, dims)}, a dim an int, a symbol name or None)
        only where shapes are unknown: a missing shape, or an unnamed unknown dim of the same
        rank. Returns the tensors that gained something, recorded as coming from `source`;
        with `propagate`, static inference then runs again from them (`_propagate`)."""
        filled = self._fill(found, source)
        if filled and propagate:
            self._propagate(source)
        return filled

    def _propagate(self, source: str) -> None:
        """ONNX inference stops at an op it does not know (a com.microsoft fused op) and
        onnxruntime's symbolic inference may stop a few ops later; with the filled shapes given
        as value_info, static inference types the standard ops after them too (recorded as
        coming from `source`, their origin). Only for graphs with such ops: elsewhere the
        inferred names (a model input's `batch`) would sit beside the measured ones of the same
        dims, and proofs that compare dim names (a head merge keeping [B, T]) would fail."""
        graph = self.model.graph
        if all(n.domain in ("", "ai.onnx") for n in graph.node):
            return
        before = len(graph.value_info)
        graph.value_info.extend(onnx.helper.make_tensor_value_info(n, self.elem_types[n], _named(self.model_dims[n]))
                                for n in self.shape_sources if self.elem_types.get(n))
        try:
            unknown = set(self.unknown_shapes())
            inferred = infer_shapes(self.model) if unknown else None
        finally:
            del graph.value_info[before:]
        if inferred is None:
            return
        found = {vi.name: (vi.type.tensor_type.elem_type, _symbolic_dims(vi)) for vi in inferred.graph.value_info
                 if vi.name in unknown and _value_info_dims(vi) is not None}
        self._fill(found, source)

    def _fill(self, found: dict, source: str) -> list:
        filled = []
        for name, (elem, dims) in found.items():
            dims = tuple(dims)
            old = self.model_dims.get(name)
            if old is None:
                new = dims
            elif len(old) != len(dims):
                continue                       # disagreement: keep what static inference said
            else:
                new = tuple(d if unknown_dim(o) and not unknown_dim(d) else o for o, d in zip(old, dims))
            if new == old or name in self.initializers:
                continue
            self.model_dims[name] = new
            self.shapes[name] = tuple(d if isinstance(d, int) else None for d in new)
            if elem and not self.elem_types.get(name):
                self.elem_types[name] = elem
            self.shape_sources[name] = source
            filled.append(name)
        return filled

    def is_constant(self, name: str) -> bool:
        return name in self.initializers

    def array(self, name: str) -> np.ndarray:
        """The value of a constant tensor (cached)."""
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self.initializers[name])
        return self._arrays[name]

    def known_value(self, name: str):
        """A tensor's value when it is an initializer or computed from constants only, else None.

        Read-only: folded values are not initializers and cannot be rewritten."""
        if name in self.initializers:
            return self.array(name)
        return self.folded.get(name)

    def dims(self, name: str, batch: int | None = None):
        """A tensor's dims (None for an unknown dim), or None when its shape is unknown.

        With `batch`, a dynamic first (batch) dim counts as `batch` and any other unknown dim
        makes the whole shape unknown: a list of ints, or None."""
        dims = self.shapes.get(name)
        if batch is None or dims is None:
            return dims
        dims = list(dims)
        if dims and dims[0] is None:
            dims[0] = batch
        return None if any(d is None for d in dims) else dims

    def uses(self, name: str) -> list:
        return self.consumers.get(name, [])

    def rank(self, name: str) -> int | None:
        dims = self.shapes.get(name)
        return None if dims is None else len(dims)

    def topo_nodes(self):
        return list(self.model.graph.node)


# Cheap, deterministic ops that shape plumbing is built from (PyTorch exports compute Pad
# amounts and Reshape targets with them).
FOLDABLE = {"Cast", "Concat", "ConstantOfShape", "Reshape", "Slice", "Transpose", "Unsqueeze", "Squeeze",
            "Gather", "Identity", "Add", "Sub", "Mul", "Div", "Neg", "Range", "Flatten", "Expand", "Constant"}
FOLD_LIMIT = 4096


def _fold_constants(idx: "GraphIndex") -> dict:
    """Evaluate small nodes whose inputs are all known, in topological order."""
    from onnx.reference import ReferenceEvaluator

    opset = opset_version(idx.model)
    known = {}
    for node in idx.model.graph.node:
        if node.op_type not in FOLDABLE or node.domain not in ("", "ai.onnx"):
            continue
        names = [i for i in node.input if i]
        if not all(n in idx.initializers and int(np.prod(idx.initializers[n].dims)) <= FOLD_LIMIT or n in known
                   for n in names):
            continue
        values = [known[n] if n in known else numpy_helper.to_array(idx.initializers[n]) for n in names]
        try:
            sub = onnx.helper.make_graph(
                [node], "fold",
                [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                 for n, v in zip(names, values)],
                [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output])
            model = onnx.helper.make_model(sub, opset_imports=[onnx.helper.make_opsetid("", opset)])
            outputs = ReferenceEvaluator(model).run(None, dict(zip(names, values)))
        except Exception:  # noqa: BLE001 - folding is best effort; unknown stays unknown
            continue
        for name, value in zip(node.output, outputs):
            if name and np.asarray(value).size <= FOLD_LIMIT:
                known[name] = np.asarray(value)
    return known


def _subgraph_outer_reads(node: onnx.NodeProto) -> set:
    """Names a node's subgraphs read from the enclosing scope."""
    reads: set = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for sub in graphs:
            local = {t.name for t in sub.initializer} | {i.name for i in sub.input}
            for n in sub.node:
                local.update(o for o in n.output if o)
            for n in sub.node:
                reads.update(i for i in n.input if i and i not in local)
                reads.update(r for r in _subgraph_outer_reads(n) if r not in local)
    return reads


def float_param_count(model: onnx.ModelProto) -> int:
    """Parameters as the paper counts them: every floating-point initializer element."""
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    return sum(int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer if t.data_type in floats)
