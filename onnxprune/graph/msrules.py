"""Channel rules for the com.microsoft ops onnxruntime's transformer optimizer writes around
a feed-forward block: MatMul -> BiasGelu / FastGelu / Gelu / QuickGelu -> MatMul.

The activations are element-wise, so a hidden unit of the FFN stays one column through them;
BiasGelu's bias (input 1) and FastGelu's optional bias (input 1) hold one value per column and
are sliced with the channels (the optimizer folded the first MatMul's bias Add into them).
The ops that read the model's hidden size (the residual stream) are refused with the reason:
SkipLayerNormalization normalises over it and adds the residual, BiasAdd adds the skip input,
EmbedLayerNormalization / LayerNormalization normalise over it. Anything else of the domain
is refused as unknown. Pure graph work, like oprules.py (which dispatches here).
"""
from __future__ import annotations

from .groups import ParamSite
from .index import GraphIndex
from .roles import Effect, Refusal

MS = "com.microsoft"

# element-wise activations: input 0 the data, input 1 (when listed) a per-column bias
ACTIVATIONS = {"BiasGelu": True, "FastGelu": True, "Gelu": False, "QuickGelu": False}

# ops that read the hidden size as a whole: why their channels cannot be pruned
HIDDEN_READERS = {
    "SkipLayerNormalization": "normalises over the hidden axis and adds the residual stream "
                              "(the hidden size is the model's width, shared by every layer)",
    "SkipSimplifiedLayerNormalization": "normalises over the hidden axis and adds the residual stream "
                                        "(the hidden size is the model's width, shared by every layer)",
    "BiasAdd": "adds the residual stream (skip input) to the channels: the hidden size is the "
               "model's width, shared by every layer",
    "SimplifiedLayerNormalization": "normalises over the channel axis (removing channels would change "
                                    "its statistics)",
    "LayerNormalization": "normalises over the channel axis (removing channels would change its statistics)",
}


def ms_transfer(idx: GraphIndex, node, layouts: dict) -> Effect:
    """The Effect of a com.microsoft `node` on the channel layouts reaching it."""
    op = node.op_type
    if op in HIDDEN_READERS:
        raise Refusal(f"channels reach {MS}.{op} '{node.name}', which {HIDDEN_READERS[op]}")
    if op not in ACTIVATIONS:
        raise Refusal(f"channels reach custom-domain op {MS}.{op} ('{node.name}'), "
                      "which onnxprune does not see through")
    if set(layouts) != {0}:
        raise Refusal(f"channels enter {MS}.{op} '{node.name}' through input "
                      f"{min(i for i in layouts if i)} rather than its data input")
    layout = layouts[0]
    for extra in node.output[1:]:
        if extra and (idx.uses(extra) or extra in idx.graph_outputs):
            raise Refusal(f"{op} node '{node.name}' has a second output in use ({extra})")
    effect = Effect(outputs={node.output[0]: layout})
    extra = [name for name in node.input[1:] if name]
    if extra and not ACTIVATIONS[op]:
        raise Refusal(f"{op} '{node.name}' reads more inputs than its data")
    if extra:
        effect.sites.append(_column_bias(idx, node, extra[0], layout))
    return effect


def _column_bias(idx: GraphIndex, node, name: str, layout) -> ParamSite:
    """The bias input as a ParamSite: a constant [columns] vector this node alone reads, added
    to the channel axis (the last one: both activations add it along the hidden axis)."""
    if len(node.input) > 2:
        raise Refusal(f"{node.op_type} '{node.name}' reads more than a data input and a bias")
    if not idx.is_constant(name):
        raise Refusal(f"{node.op_type} '{node.name}' adds a computed bias '{name}'")
    if len(idx.uses(name)) != 1:
        raise Refusal(f"{node.op_type} '{node.name}' shares its bias '{name}' with another node (tied weights)")
    shape = list(idx.shapes[name])
    width = layout.positions * layout.block
    if layout.axis != layout.rank - 1 or shape != [width]:
        raise Refusal(f"bias '{name}' {shape} of {node.op_type} '{node.name}' is not one value per "
                      f"channel column on the last axis")
    return ParamSite(name, 0, layout)
