"""coreset scores of head groups (methods/coreset_heads.py), against hand computations.

A unit's point is its own Q, K and V columns (and biases): sum over the three pieces of
||[W[:, cols], b[cols]]||; its outgoing weight the max over O's outputs of the l1 norm of its
O rows. With a packed [in, 3*H*Dh] weight the pieces are three separate column ranges; before
coreset_heads.py the weight was read as H consecutive row blocks (other heads' Q/K/V mixed)
and a [3*H*Dh] bias as one broadcast value, so these tests failed on every packed form."""
import numpy as np
import pytest

import attention as A
import fused_ops as F
from onnxprune import analyze
from onnxprune.graph.layout import Alive
from onnxprune.io.modelio import normalize
from onnxprune.methods import coreset
from test_methods import group_inputs, weights


def _expected(w, pieces, wo, block):
    """pieces: per unit, a list of (weight name, bias name or None, column indices)."""
    out = []
    for u, unit in enumerate(pieces):
        point = sum(np.sqrt(np.sum(w[wn][:, cols] ** 2) + (np.sum(w[bn][cols] ** 2) if bn else 0.0))
                    for wn, bn, cols in unit)
        outgoing = np.abs(w[wo][u * block:(u + 1) * block]).sum(axis=0).max()
        out.append(point * outgoing)
    return np.array(out)


def _scores(model, beta=1.0):
    model = normalize(model)
    idx, g, _, _, rows = group_inputs(model, next(x.name for x in analyze(model).groups if x.unit == "head"))
    return weights(model), g, coreset.sensitivities(idx, g, Alive(), rows, beta)


def _cols(lo, n):
    return np.arange(lo, lo + n)


def test_packed_unfused_qkv():
    """One QKV MatMul + bias, then Split (GPT-2): head h's Q, K, V columns are h*dh + {0, W, 2W}."""
    heads, dh = 4, 3
    w, g, got = _scores(A.mha(heads=heads, dh=dh, packed=True))
    (p,) = g.producers
    width = heads * dh
    pieces = [[(p.weight, p.bias, _cols(s * width + u * dh, dh)) for s in range(3)] for u in range(heads)]
    np.testing.assert_allclose(got, _expected(w, pieces, g.consumers[0].weight, dh))


def test_packed_fused_attention_weight_and_bias():
    w, g, got = _scores(F.ms_attention())
    pieces = [[("W", "b", _cols(s * 16 + u * 4, 4)) for s in range(3)] for u in range(4)]
    np.testing.assert_allclose(got, _expected(w, pieces, "Wo", 4))


def test_mha_packed_bias_pairs_with_each_projection():
    w, g, got = _scores(F.ms_mha())
    pieces = [[(f"W{p}", None, _cols(u * 4, 4)) for p in "qkv"] for u in range(4)]
    bias = w["bqkv"]
    for u, unit in enumerate(pieces):            # the packed bias's Q/K/V segments
        for s, (wn, _, cols) in enumerate(unit):
            w[f"b_{wn}_{u}"] = np.zeros(48)
            w[f"b_{wn}_{u}"][cols] = bias[s * 16 + cols]
            unit[s] = (wn, f"b_{wn}_{u}", cols)
    np.testing.assert_allclose(got, _expected(w, pieces, "Wo", 4))


def test_unpacked_projections_with_bias_adds():
    w, g, got = _scores(F.ms_mha(packed_bias=False), beta=2.0)
    pieces = [[(f"W{p}", f"b{p}", _cols(u * 4, 4)) for p in "qkv"] for u in range(4)]
    np.testing.assert_allclose(got, 2.0 * _expected(w, pieces, "Wo", 4))


@pytest.mark.parametrize("build", [F.ms_gqa, F.onnx_attention_4d], ids=["gqa", "attention4d"])
def test_kv_groups_score_their_query_heads(build):
    """A unit of grouped-query attention: its 2 query heads' Q columns, its one K and V head."""
    model = build()
    w, g, got = _scores(model)
    dh = 8 if build is F.ms_gqa else 4
    pieces = [[("Wq", "bq", _cols(u * 2 * dh, 2 * dh)), ("Wk", "bk", _cols(u * dh, dh)),
               ("Wv", "bv", _cols(u * dh, dh))] for u in range(2)]
    np.testing.assert_allclose(got, _expected(w, pieces, "Wo", 2 * dh))

