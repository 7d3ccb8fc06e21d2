"""How much of an INT8 file's weights is still float, and in which ops: said when it is most of them.

`--quantize int8-dynamic` on a two-layer GRU classifier wrote a file 0.1% smaller than FP32: onnxruntime has
no INT8 GRU kernel, so 95% of the weights (the GRU's) stayed float, and only the profile's "still FP32: GRU
43%" of the run time hinted at it. A weight here is a constant of rank >= 2 (a matrix or kernel: biases,
scales and zero points are rank 0 or 1); int8 / uint8 ones are quantized, float ones are not.
"""
from __future__ import annotations

from collections import Counter

# where onnxruntime (1.32) quantizes no weights of an op, and what does
_WHY = {
    "GRU": "onnxruntime has no INT8 GRU kernel",
    "RNN": "onnxruntime has no INT8 RNN kernel",
    # read inside the body: torch exports an EmbeddingBag as a Loop over the bags, and onnxruntime's
    # quantizer does not enter subgraphs
    "Loop": "inside a Loop's body, where onnxruntime's quantizer does not go; torch exports an EmbeddingBag so",
    "If": "inside an If's branches, where onnxruntime's quantizer does not go",
    "Scan": "inside a Scan's body, where onnxruntime's quantizer does not go",
}
_STATIC_ONLY_DYNAMIC = {"LSTM": "onnxruntime's static INT8 has no LSTM; --quantize int8-dynamic quantizes it"}
MOST = 0.5  # the share of float weight elements from which the note is written


def census(path) -> dict:
    """{"float": elements, "int8": elements, "float_by_op": {op type: elements}} of the file's weights."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    g = m.graph
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    ints = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
    tensors = {i.name: i for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.output:
            t = next((a.t for a in n.attribute if a.name == "value" and a.HasField("t")), None)
            if t is not None:
                tensors[n.output[0]] = t
    readers: dict = {}
    for n in g.node:
        for i in list(n.input) + sorted(_subgraph_inputs(n)):
            readers.setdefault(i, []).append(n.op_type)
    out = {"float": 0, "int8": 0, "float_by_op": Counter()}
    for name, t in tensors.items():
        if len(t.dims) < 2:
            continue
        size = 1
        for d in t.dims:
            size *= d
        if t.data_type in ints:
            out["int8"] += size
        elif t.data_type in floats and name in readers:
            out["float"] += size
            for op in dict.fromkeys(readers[name]):
                out["float_by_op"][op] += size
    out["float_by_op"] = dict(out["float_by_op"].most_common())
    return out


def _subgraph_inputs(node) -> set:
    """Names the node's subgraphs (a Loop's body, an If's branches) read, at any depth."""
    import onnx

    out: set = set()
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for n in g.node:
                out.update(n.input)
                out |= _subgraph_inputs(n)
    return out


def note(path, mode: str, kept_nodes=()) -> str | None:
    """One line when most weights of the INT8 file at path are float, naming the ops that hold them and why
    they were not quantized where that is known; None otherwise."""
    c = census(path)
    total = c["float"] + c["int8"]
    if not total or c["float"] / total < MOST:
        return None
    parts = []
    for op, n in list(c["float_by_op"].items())[:3]:
        why = _WHY.get(op) or (_STATIC_ONLY_DYNAMIC.get(op) if mode == "int8" else None)
        parts.append(f"{op} ({n:,}" + (f"; {why})" if why else ")"))
    kept = f"; the fallback kept {len(kept_nodes)} node(s) in FP32" if kept_nodes else ""
    return (f"most weights stay float in this {mode} file: {c['float']:,} of {total:,} weight elements "
            f"({c['float'] / total:.0%}), read by {', '.join(parts)}{kept}")
