"""Nodes onnxruntime's quantizer (1.32) cannot quantize in a candidate's form: they stay float in it.

Each was a whole candidate failing on a real model shape, not a node scored worse:
  - LayerNormalization whose scale has rank >= 2 (a LayerNorm over [C, H, W]), per-channel QDQ: the
    quantizer compares each bias channel with a scalar and raises ("The truth value of an array ... is
    ambiguous"); with that step off it writes a bias DequantizeLinear whose scale does not fit the bias.
    Every per-channel S8S8 candidate failed, and --no-tune on a dot-product ARM target stopped with "every
    quantization candidate failed". onnxruntime's CPU kernels run LayerNormalization in float either way.
  - MatMul by a constant of rank >= 3 (a batched weight, e.g. one matrix per head), per-channel dynamic or
    QOperator: the quantizer writes a zero point per channel that MatMulInteger / QLinearMatMul refuse at
    run time ("b zero point is not valid"). Per tensor, and per channel in QDQ, they run.
"""
from __future__ import annotations


def unquantizable(model_path, spec) -> list:
    """Names of the nodes of the model at model_path that spec's form cannot quantize (see above)."""
    if not spec.per_channel or spec.mode not in ("int8", "int8-dynamic"):
        return []
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    rank = {i.name: len(i.dims) for i in m.graph.initializer}
    static_qdq = spec.mode == "int8" and spec.format == "qdq"
    out = []
    for n in m.graph.node:
        if not n.name or len(n.input) < 2:
            continue
        if static_qdq and n.op_type == "LayerNormalization" and rank.get(n.input[1], 1) >= 2:
            out.append(n.name)
        elif not static_qdq and n.op_type == "MatMul" and rank.get(n.input[1], 2) >= 3:
            out.append(n.name)
    return out
