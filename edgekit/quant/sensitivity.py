"""Per-node sensitivity: quantize one node at a time and measure how far the outputs move from FP32.

Each candidate node is quantized alone (onnxruntime's nodes_to_quantize, with the cached
calibration ranges), the rest of the graph stays FP32; the score is the signal-to-
quantization-noise ratio (dB) of the model outputs vs FP32 on a small sample. The lowest
SQNR is the node that hurts most: the tuning loop keeps those in FP32 first.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ..onnxutil import consumers, run_batches, session
from . import static
from .spec import QuantSpec

SAMPLES = 32
MAX_NODES = 96
# compute ops first: they hold the weights and most of the quantization error
PRIORITY = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Attention")


# activations onnxruntime folds into the preceding op's quantized output range (QDQ "removable activations")
FUSABLE_ACTIVATIONS = ("Relu", "Clip")


def fused_activations(model_path) -> dict:
    """{node name: [names of Relu/Clip nodes that are its output's only consumers]}."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    users = consumers(m.graph)
    out = {}
    for n in m.graph.node:
        if not n.output:
            continue
        us = users.get(n.output[0], [])
        if len(us) == 1 and us[0].op_type in FUSABLE_ACTIVATIONS:
            out[n.name] = [us[0].name]
    return out


def with_activations(nodes, fused: dict) -> list:
    """nodes plus their fused activations, in order, without duplicates."""
    seen, out = set(), []
    for n in nodes:
        for x in [n] + fused.get(n, []):
            if x not in seen:
                seen.add(x)
                out.append(x)
    return out


def quantizable_types(op_types=()) -> set:
    """The op types onnxruntime's static quantization quantizes: the spec's, else its own default set."""
    if op_types:
        return set(op_types)
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return set(QLinearOpsRegistry) | set(QDQRegistry)


def quantized_nodes(qdq_path, float_node_names, op_types=()) -> list:
    """Names of original nodes that the QDQ model quantizes: fed with dequantized tensors, and of a type it
    quantizes. A float op that merely reads a quantized neighbour's output (a Gelu's Div after an INT8 Gemm)
    changes nothing when "kept in FP32": ranked, it padded the fallback's node count, and half of a tabular
    MLP's ranked nodes were then both its Gemms, so its "INT8" candidate had no INT8 node left."""
    import onnx

    types = quantizable_types(op_types)
    m = onnx.load(str(qdq_path), load_external_data=False)
    dq_out = {o for n in m.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    names = [n.name for n in m.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
             and n.op_type in types and any(i in dq_out for i in n.input)]
    return [n for n in names if n in float_node_names]


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64).ravel()
    err = np.linalg.norm(ref - np.asarray(out, np.float64).ravel())
    if err == 0:
        return 120.0
    return float(20 * math.log10(max(np.linalg.norm(ref), 1e-30) / err))


def measure(prep_path, base_qdq_path, spec: QuantSpec, calib, data, *, workdir, calib_size, input_names,
            cache_root=None, deadline_s: float | None = None, progress=None, source_for=None,
            simulate: bool = False) -> list:
    """[{node, op_type, sqnr_db}] worst first.

    simulate: run each one-node QDQ graph unoptimised (dequantize -> float op -> quantize), as a GPU target
    is scored, so the ranking is of the error the target will see, not of this CPU's integer kernels.

    source_for(nodes) -> (model path, TensorQuantOverrides, model whose ranges it shares) gives the
    model to quantize those nodes of (e.g. with their GPTQ-rounded weights); default: prep_path as it is.
    """
    import onnx

    fm = onnx.load(str(prep_path), load_external_data=False)
    op_of = {n.name: n.op_type for n in fm.graph.node}
    nodes = quantized_nodes(base_qdq_path, set(op_of), spec.op_types)
    fused = fused_activations(prep_path)
    fused_by = {a for acts in fused.values() for a in acts}  # measured together with their producer
    nodes.sort(key=lambda n: (PRIORITY.index(op_of[n]) if op_of[n] in PRIORITY else len(PRIORITY)))
    nodes = [n for n in nodes if op_of[n] not in FUSABLE_ACTIVATIONS or n not in fused_by][:MAX_NODES]
    sample = data.take(static.whole_batches(prep_path, min(SAMPLES, len(data))))  # a fixed batch takes no short one
    ref = run_batches(prep_path, sample, batch_size=static.batch_size_for(prep_path))
    t0 = time.perf_counter()
    out = []
    for i, name in enumerate(nodes):
        if deadline_s is not None and time.perf_counter() - t0 > deadline_s:
            break
        dest = Path(workdir) / f"sens_{i}.onnx"
        only = with_activations([name], fused)
        src, overrides, ranges_of = source_for(only) if source_for else (prep_path, None, None)
        static.quantize(src, dest, calib, spec.replace(exclude_nodes=()), calib_size=calib_size,
                        input_names=input_names, cache_root=cache_root, only_nodes=only, overrides=overrides,
                        calib_model=ranges_of)
        got = run_batches(dest, sample, batch_size=static.batch_size_for(prep_path), sess=session(dest, optimize=not simulate))
        score = min(sqnr_db(r, g) for r, g in zip(ref, got))
        out.append({"node": name, "op_type": op_of[name], "sqnr_db": round(score, 2)})
        dest.unlink(missing_ok=True)
        if progress:
            progress(i + 1, len(nodes))
    out.sort(key=lambda d: d["sqnr_db"])
    return out
