"""FP16 conversion for GPU targets, keeping float32 inputs/outputs so callers do not change.

onnxruntime's converter clamps every value beyond float16's range to +-65504 without a word: a box head
scaled by 1e6 came out 15x too small and was still reported "within tolerance" (top-1 agreement cannot
see a scale). Constants and weights beyond the range, and activations that exceed it on sample inputs,
keep their nodes (and the nodes that read them) in FP32 through the converter's node block list.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EdgekitError

FP16_MAX = 65504.0
PROBE_SAMPLES = 8  # activation ranges are probed on this many sample inputs: enough to see a scale


def convert(src, dest, *, keep_io_types: bool = True, feeds: dict | None = None) -> dict:
    """Writes dest; returns {"keep_io_types", "fp32_nodes", "out_of_range"} (the last two may be empty).

    feeds: sample inputs to find activations beyond float16's range; without them only constants are checked.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from ..errors import UsageError
    from ..loader import float_dtype
    from ..onnxutil import topological_sort

    model = onnx.load(str(src))
    if float_dtype(model) == "float16":
        # the converter would insert float32 casts on float16 inputs and build a graph onnxruntime rejects
        raise UsageError(f"{Path(src).name}: already float16; FP16 conversion needs an FP32 model")
    float_only_constants(model)
    big = out_of_range_constants(model)
    big.update(out_of_range_activations(model, feeds))
    block = nodes_to_keep(model.graph, big)
    try:
        m = convert_float_to_float16(model, keep_io_types=keep_io_types, node_block_list=sorted(block))
        bypass_round_trips(m.graph)
        # the converter appends the Casts of the kept float32 inputs after their consumers: onnxruntime
        # re-sorts on load, but the ONNX checker, TensorRT's parser and edgekit itself reject the file
        topological_sort(m.graph)
        onnx.checker.check_model(m)
    except Exception as e:
        raise EdgekitError(f"{Path(src).name}: FP16 conversion failed: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None
    # outside the conversion's error: a full disk is the output's problem, which main_entry names, not the
    # model's (it read 'prep.onnx: FP16 conversion failed: OSError: [Errno 28]', naming a temp file)
    onnx.save(m, str(dest))
    return {"keep_io_types": keep_io_types, "fp32_nodes": sorted(block),
            "out_of_range": {k: float(v) for k, v in sorted(big.items(), key=lambda kv: -kv[1])}}


def float_only_constants(model) -> int:
    """Turn the Constant nodes that feed an input onnxruntime's converter keeps float32 (Resize's scales)
    into initializers, which it leaves as they are; returns how many. As Constant nodes it rounded them to
    float16 and cast them back: F.interpolate(scale_factor=0.8) read 0.7998, and a 20-pixel map came out
    15 pixels wide instead of 16 (onnxruntime then refused the next LayerNorm's shape)."""
    from onnx import TensorProto
    from onnxruntime.transformers.float16 import ALWAYS_FLOAT_INPUTS

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=11)
    positions = {op: list(ix) for op, ix in ALWAYS_FLOAT_INPUTS.items()}
    if opset <= 10:
        positions["Resize"] = [1]
    wanted = {n.input[i] for n in model.graph.node for i in positions.get(n.op_type, ()) if i < len(n.input)}
    wanted.discard("")
    moved = 0
    for n in list(model.graph.node):
        if n.op_type != "Constant" or n.output[0] not in wanted:
            continue
        attr = next((a for a in n.attribute if a.name == "value"), None)
        if attr is None or attr.t.data_type != TensorProto.FLOAT:
            continue
        t = TensorProto()
        t.CopyFrom(attr.t)
        t.name = n.output[0]
        model.graph.initializer.append(t)
        model.graph.node.remove(n)
        moved += 1
    return moved


def _abs_max(a) -> float:
    a = np.asarray(a)
    if a.dtype.kind != "f" or a.size == 0:
        return 0.0
    finite = np.abs(a[np.isfinite(a)])  # an inf (a mask value) is inf in float16 too: nothing is lost
    return float(finite.max()) if finite.size else 0.0


def out_of_range_constants(model) -> dict:
    """{tensor name: largest |value|} for float initializers and Constant outputs beyond float16's range."""
    from onnx import TensorProto, numpy_helper

    big = {}
    for t in model.graph.initializer:
        if t.data_type == TensorProto.FLOAT and (v := _abs_max(numpy_helper.to_array(t))) > FP16_MAX:
            big[t.name] = v
    for n in model.graph.node:
        if n.op_type != "Constant":
            continue
        for a in n.attribute:
            if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                if (v := _abs_max(numpy_helper.to_array(a.t))) > FP16_MAX:
                    big[n.output[0]] = v
            elif a.name in ("value_float", "value_floats") and (v := _abs_max(
                    np.asarray(a.f if a.name == "value_float" else list(a.floats), np.float32))) > FP16_MAX:
                big[n.output[0]] = v
    return big


def out_of_range_activations(model, feeds: dict | None) -> dict:
    """{tensor name: largest |value|} of float intermediate tensors beyond float16's range on feeds.

    Best effort: a graph that cannot be run with every tensor exposed (over 2 GB, no type information)
    is checked on its constants only; the final artifact's numeric comparison with FP32 still applies.
    """
    if not feeds:
        return {}
    import onnx
    import onnxruntime as ort

    try:
        typed = onnx.shape_inference.infer_shapes(model)
        kinds = {v.name: v.type.tensor_type.elem_type
                 for v in (*typed.graph.value_info, *typed.graph.output, *typed.graph.input)}
        m = onnx.ModelProto()
        m.CopyFrom(model)
        have = {o.name for o in m.graph.output}
        names = [o for n in m.graph.node for o in n.output
                 if o and o not in have and kinds.get(o) == onnx.TensorProto.FLOAT]
        m.graph.output.extend(onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in names)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor named
        so.log_severity_level = 3
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        wanted = {i.name for i in sess.get_inputs()}
        res = sess.run(None, {k: v[:PROBE_SAMPLES] for k, v in feeds.items() if k in wanted})
    except Exception:
        return {}
    outs = [o.name for o in sess.get_outputs()]
    return {name: v for name, r in zip(outs, res) if (v := _abs_max(r)) > FP16_MAX}


def nodes_to_keep(graph, big: dict) -> set:
    """Names of the nodes to keep in FP32: those producing a tensor in `big` and those reading one, so the
    value is neither computed nor consumed in float16 (the Casts between FP32 and FP16 nodes would clamp it)."""
    keep = set()
    for n in graph.node:
        if n.name and (any(o in big for o in n.output) or any(i in big for i in n.input)):
            keep.add(n.name)
    return keep


def bypass_round_trips(graph) -> int:
    """Join FP32 nodes the converter left talking through float16: it casts every kept node's output to
    float16 and back for the next kept node or a float32 graph output, which clamps exactly the values the
    node was kept for. Only its own Casts are touched (named "<tensor>_cast_to_fp16_node"); returns how many."""
    from onnx import TensorProto

    def cast_to(n):
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None

    made = {n.output[0]: n for n in graph.node if cast_to(n) == TensorProto.FLOAT16
            and n.name == n.output[0] + "_cast_to_fp16_node" and n.input[0] == n.output[0] + "_cast_to_fp16"}
    joined = 0
    for n in graph.node:
        if cast_to(n) == TensorProto.FLOAT and n.input[0] in made:
            n.input[0] = made[n.input[0]].input[0]  # a Cast to float32 of a float32 tensor: exact
            joined += 1
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dead = [p for t, p in made.items() if t not in used]
    for p in dead:
        graph.node.remove(p)
    return joined


def describe(info: dict, limit: int = 3) -> str:
    """One line for the manifest: what was beyond float16's range and what was kept in FP32."""
    big = info.get("out_of_range") or {}
    if not big:
        return ""
    shown = ", ".join(f"{k} (|x| up to {v:.3g})" for k, v in list(big.items())[:limit])
    more = f" and {len(big) - limit} more" if len(big) > limit else ""
    kept = info.get("fp32_nodes") or []
    return (f"{len(big)} tensors exceed float16's range (+-{FP16_MAX:g}), which FP16 would clamp: {shown}{more}; "
            f"{len(kept)} nodes reading or producing them kept in FP32")
