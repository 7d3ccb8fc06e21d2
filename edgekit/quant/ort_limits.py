"""Nodes onnxruntime's quantizer (1.32) cannot quantize in a candidate's form: they stay float in it.

Each was a whole candidate failing on a real model shape, not a node scored worse:
  - LayerNormalization whose scale has rank >= 2 (a LayerNorm over [C, H, W]), per-channel QDQ: the
    quantizer compares each bias channel with a scalar and raises ("The truth value of an array ... is
    ambiguous"); with that step off it writes a bias DequantizeLinear whose scale does not fit the bias.
    Every per-channel S8S8 candidate failed, and --no-tune on a dot-product ARM target stopped with "every
    quantization candidate failed". onnxruntime's CPU kernels run LayerNormalization in float either way.
  - ConvTranspose with groups > 1, per-channel QDQ: the weight's channel axis holds out_channels / groups
    scales against out_channels biases ("operands could not be broadcast together with shapes (8,) (4,)").
  - MatMul by a constant of rank >= 3 (a batched weight, e.g. one matrix per head), per-channel dynamic or
    QOperator: the quantizer writes a zero point per channel that MatMulInteger / QLinearMatMul refuse at
    run time ("b zero point is not valid"). Per tensor, and per channel in QDQ, they run.
  - Add or Mul feeding a Where (torch.where(x > 0, x, 0.1 * x)), QOperator: the quantizer drops the
    tensor between them ("Invalid model with unknown initializers/tensors"), per channel or not.
"""
from __future__ import annotations

from ..onnxutil import node_attrs


def unquantizable(model_path, spec) -> list:
    """Names of the nodes of the model at model_path that spec's form cannot quantize (see above)."""
    if spec.mode not in ("int8", "int8-dynamic"):
        return []
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    rank = {i.name: len(i.dims) for i in m.graph.initializer}
    qdq = spec.mode == "int8" and spec.format == "qdq"
    qoperator = spec.mode == "int8" and spec.format != "qdq"
    where_inputs = {i for n in m.graph.node if n.op_type == "Where" for i in n.input[1:]}
    out = []
    for n in m.graph.node:
        if not n.name or len(n.input) < 2:
            continue
        if spec.per_channel and qdq and (
                (n.op_type == "LayerNormalization" and rank.get(n.input[1], 1) >= 2)
                or (n.op_type == "ConvTranspose" and int(node_attrs(n).get("group", 1)) > 1)):
            out.append(n.name)
        elif spec.per_channel and not qdq and n.op_type == "MatMul" and rank.get(n.input[1], 2) >= 3:
            out.append(n.name)
        elif qoperator and n.op_type in ("Add", "Mul") and any(o in where_inputs for o in n.output):
            out.append(n.name)
    return out
