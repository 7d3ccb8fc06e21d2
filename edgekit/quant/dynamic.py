"""Dynamic INT8 (weights int8 ahead of time, activations quantized per call): transformers, RNNs."""
from __future__ import annotations

from pathlib import Path

from ..errors import EdgekitError
from .spec import QuantSpec

# MatMul/Gemm/Attention carry the weights of transformers; LSTM/GRU of recurrent nets.
DEFAULT_OPS = ("MatMul", "Gemm", "Attention", "LSTM", "GRU")


def fuse_transformer(src, dest) -> bool:
    """Fuse attention / layer norm / GELU with onnxruntime.transformers; False when the graph is not BERT-like."""
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        m = optimize_model(str(src), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    except Exception:
        return False
    fused = {n.op_type for n in m.model.graph.node} & {"Attention", "MultiHeadAttention", "SkipLayerNormalization"}
    if not fused:
        return False
    m.save_model_to_file(str(dest))
    return True


def quantize(prep_path, dest, spec: QuantSpec) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .static import quiet

    try:
        with quiet():
            quantize_dynamic(str(prep_path), str(dest), op_types_to_quantize=list(spec.op_types or DEFAULT_OPS),
                             per_channel=spec.per_channel, reduce_range=spec.reduce_range,
                             weight_type=QuantType.QInt8 if spec.weight_type == "s8" else QuantType.QUInt8,
                             nodes_to_exclude=list(spec.exclude_nodes) or None,
                             extra_options={"MatMulConstBOnly": True})
    except Exception as e:
        raise EdgekitError(f"{Path(prep_path).name}: dynamic quantization ({spec.name()}) failed: "
                           f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return {"calibration": "none (dynamic)"}
