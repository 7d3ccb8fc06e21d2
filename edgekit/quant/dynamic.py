"""Dynamic INT8 (weights int8 ahead of time, activations quantized per call): transformers, RNNs."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..errors import EdgekitError
from . import ort_limits
from .spec import QuantSpec

# MatMul/Gemm/Attention carry the weights of transformers; LSTM/GRU of recurrent nets. Gather /
# EmbedLayerNormalization hold the embedding tables (the largest tensor of a small BERT): stored int8
# they shrink the file ~4x, and a looked-up row costs one dequantize.
DEFAULT_OPS = ("MatMul", "Gemm", "Attention", "LSTM", "GRU", "Gather", "EmbedLayerNormalization")


def attention_shape(model) -> tuple[int, int]:
    """(num_heads, hidden) read from the graph, or (0, 0) when it does not look like multi-head attention.

    hidden: the most common square MatMul weight (Q/K/V/output projections are [H, H]). Heads: the
    4-element Reshape targets that split H into (heads, head_dim): whichever of the two is a constant.
    onnxruntime's own detection needs both constant, which exporters with dynamic shapes rarely give.
    """
    from onnx import numpy_helper

    consts = {i.name: i for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = n.attribute[0].t
    prod = {o: n for n in model.graph.node for o in n.output}
    squares = Counter()
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in consts:
            dims = tuple(consts[n.input[1]].dims)
            if len(dims) == 2 and dims[0] == dims[1]:
                squares[dims[0]] += 1
    if not squares:
        return 0, 0
    hidden = squares.most_common(1)[0][0]

    def value(name):
        if name in consts:
            return numpy_helper.to_array(consts[name]).ravel().tolist()
        p = prod.get(name)
        if p is not None and p.op_type in ("Unsqueeze", "Identity", "Cast") and p.input[0] in consts:
            return numpy_helper.to_array(consts[p.input[0]]).ravel().tolist()
        return None

    heads = Counter()
    for n in model.graph.node:
        if n.op_type != "Reshape" or len(n.input) < 2:
            continue
        shape = value(n.input[1])
        if shape is None and n.input[1] in prod and prod[n.input[1]].op_type == "Concat":
            parts = [value(i) for i in prod[n.input[1]].input]
            shape = [p[0] if p and len(p) == 1 else None for p in parts]
        if not shape or len(shape) != 4:
            continue
        nh, hd = shape[2], shape[3]
        if isinstance(nh, int) and nh > 0 and hidden % nh == 0:
            heads[nh] += 1
        elif isinstance(hd, int) and hd > 0 and hidden % hd == 0 and hd < hidden:
            heads[hidden // hd] += 1
    if not heads:
        return 0, 0
    return heads.most_common(1)[0][0], hidden


def fusion_options():
    """Which onnxruntime.transformers fusions to run before dynamic quantization.

    Attention is the one that pays: it becomes QAttention (one INT8 QKV GEMM, no Transpose/Softmax
    chain). SkipLayerNormalization and BiasGelu are left to onnxruntime's own session-time fusions:
    the optimizer's versions absorb the MatMul biases, and on MiniLM (2-core Xeon, seq 128, interleaved)
    the dynamic INT8 model ran 0.59-0.61x FP32 with all four fusions, 0.53-0.56x with Attention and the
    embedding layer norm only, 0.64-0.65x unfused (benchmarks/quantize/fusion_grid.py, RESULTS.md).
    """
    from onnxruntime.transformers.fusion_options import FusionOptions

    fo = FusionOptions("bert")
    fo.enable_skip_layer_norm = False
    fo.enable_bias_skip_layer_norm = False
    fo.enable_bias_gelu = False
    return fo


def fuse_transformer(src, dest, options=None) -> bool:
    """Fuse attention (+ embedding layer norm) with onnxruntime.transformers; False when the graph is not BERT-like."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    from .static import quiet

    nh, hidden = attention_shape(onnx.load(str(src), load_external_data=False))
    try:
        with quiet():
            m = optimize_model(str(src), model_type="bert", num_heads=nh, hidden_size=hidden, opt_level=0,
                               optimization_options=options or fusion_options())
    except Exception:
        return False
    fused = {n.op_type for n in m.model.graph.node} & {"Attention", "MultiHeadAttention"}
    if not fused:
        return False
    m.save_model_to_file(str(dest))
    return True


def quantize(prep_path, dest, spec: QuantSpec) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .static import quiet

    kept = [n for n in ort_limits.unquantizable(prep_path, spec) if n not in spec.exclude_nodes]
    try:
        with quiet():
            quantize_dynamic(str(prep_path), str(dest), op_types_to_quantize=list(spec.op_types or DEFAULT_OPS),
                             per_channel=spec.per_channel, reduce_range=spec.reduce_range,
                             weight_type=QuantType.QInt8 if spec.weight_type == "s8" else QuantType.QUInt8,
                             nodes_to_exclude=list(spec.exclude_nodes) + kept or None,
                             # activation x activation MatMuls (attention scores) too: measured as accurate
                             # and faster than leaving them FP32
                             extra_options={"MatMulConstBOnly": False})
    except Exception as e:
        raise EdgekitError(f"{Path(prep_path).name}: dynamic quantization ({spec.name()}) failed: "
                           f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    info = {"calibration": "none (dynamic)"}
    if kept:
        info["float_for_onnxruntime"] = kept
    return info
