"""Small facts about ONNX files and onnxruntime sessions used by several stages."""
from __future__ import annotations

import re

import numpy as np

from .artifact import TensorSpec


def graph_facts(path) -> dict:
    """inputs/outputs TensorSpecs (as dicts), opset and parameter count of an ONNX file."""
    import onnx
    from onnx import helper

    m = onnx.load(str(path), load_external_data=False)
    init_names = {i.name for i in m.graph.initializer}

    def spec(v):
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "dim") for d in t.shape.dim]
        return TensorSpec(v.name, dims, str(helper.tensor_dtype_to_np_dtype(t.elem_type))).to_dict()

    params = parameter_count(m.graph)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"inputs": [spec(v) for v in m.graph.input if v.name not in init_names],
            "outputs": [spec(v) for v in m.graph.output], "opset": opset, "params": params,
            "nodes": len(m.graph.node)}


# The inputs of each op that hold learned weights or biases. Not counted: shapes, axes, Resize scales,
# quantization scales / zero points, BatchNormalization's running mean and variance (statistics, not
# parameters), an RNN's initial state. Counting every initializer instead made an INT8 or FP16 model report
# more than its FP32 model (the quantizer and the FP16 converter turn Constant nodes into initializers) and
# an FP32 model with an unfolded BatchNorm more than torch's sum(p.numel() for p in model.parameters()).
_WEIGHT_SLOTS = {
    "Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1), "Einsum": range(8),
    "BatchNormalization": (1, 2), "LayerNormalization": (1, 2), "InstanceNormalization": (1, 2),
    "GroupNormalization": (1, 2), "RMSNormalization": (1,), "PRelu": (1,),
    "LSTM": (1, 2, 3), "GRU": (1, 2, 3), "RNN": (1, 2, 3), "DynamicQuantizeLSTM": (1, 2, 3),
    "Gather": (0,),  # an embedding table: float, dequantized, or a >= 2-d table looked up by non-constant ids
    "ConvInteger": (1,), "MatMulInteger": (0, 1), "QLinearConv": (3, 8), "QLinearMatMul": (0, 3),
    # com.microsoft ops that onnxruntime's quantizer and transformer fusions write
    "DynamicQuantizeMatMul": (1, 4), "MatMulIntegerToFloat": (0, 1, 6), "QGemm": (0, 3, 6),
    "FusedConv": (1, 2), "FusedMatMul": (0, 1), "Attention": (1, 2), "QAttention": (1, 2),
    "SkipLayerNormalization": (2, 3, 4), "SimplifiedLayerNormalization": (1,),
    "SkipSimplifiedLayerNormalization": (2,), "EmbedLayerNormalization": (2, 3, 4, 5, 6),
    "QEmbedLayerNormalization": (2, 3, 4, 5, 6),
    "BiasGelu": (1,), "FastGelu": (1,), "BiasAdd": (1,),
}
# ops that hand a weight on unchanged in value (quantized, cast, re-laid-out) to the op that uses it
# (Slice: a learned table read in part, as a positional embedding cut to the sequence length `pos[:, :T]`, is
# all learned: torch counts the whole Parameter)
_CARRY = {"DequantizeLinear", "QuantizeLinear", "Cast", "Identity", "Transpose", "Reshape", "Squeeze",
          "Unsqueeze", "Flatten", "Slice"}
_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def consumers(graph) -> dict:
    """{tensor name: [nodes that read it]}, in graph order."""
    out: dict = {}
    for n in graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def parameter_count(graph) -> int:
    """Elements of the constants (initializers or Constant nodes) a node uses as a learned weight or bias.

    A constant reaches its op through _CARRY ops (an INT8 weight through its DequantizeLinear), so FP32,
    FP16 and INT8 builds of one network count the same. A bias that is a separate Add after a MatMul /
    Conv (torch's Linear on 3-d input, onnxruntime's dynamic quantization) counts too."""
    consts = {i.name: (tuple(i.dims), i.data_type) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.output:
            t = next((a.t for a in n.attribute if a.name == "value"), None)
            if t is not None:
                consts[n.output[0]] = (tuple(t.dims), t.data_type)
    producer = {o: n for n in graph.node for o in n.output if o}

    def source(name, depth=0):
        """(constant name, went through a DequantizeLinear) when name is a constant carried by _CARRY ops."""
        dq = False
        while name not in consts:
            n = producer.get(name)
            if n is None or n.op_type not in _CARRY or not n.input or depth > 16:
                return None, False
            dq = dq or n.op_type == "DequantizeLinear"
            name, depth = n.input[0], depth + 1
        return name, dq

    def carried(name, depth=0):
        n = producer.get(name)
        while n is not None and n.op_type in _CARRY and n.input and depth < 8:
            n, depth = producer.get(n.input[0]), depth + 1
        return n

    def normalizing_div(n):
        """(x - mean) / sqrt(var + eps): a LayerNorm as exporters below opset 17 write it, whose gamma (a Mul)
        and beta (an Add) follow; they were not counted (a LayerNorm over [48, 4, 4]: 1,536 of 13,048)."""
        if n is None or n.op_type != "Div" or len(n.input) != 2:
            return False
        num, den = producer.get(n.input[0]), carried(n.input[1])
        return num is not None and num.op_type == "Sub" and den is not None and den.op_type == "Sqrt"

    def after_weighted_op(name, depth=0):
        """Whether name is the output of a weighted op, seen through _CARRY ops, a rescaling Mul and bias Adds."""
        while depth <= 16:
            n = producer.get(name)
            if n is None:
                return False
            if (n.op_type in _WEIGHT_SLOTS and n.op_type != "Gather") or normalizing_div(n):
                return True
            if n.op_type == "Gather" and n.input:
                # an embedding lookup: a positional embedding (a learned [1, T, D] parameter) is added to it
                table = source(n.input[0])[0]
                return table is not None and len(consts[table][0]) >= 2
            if n.op_type in ("Mul", "Add", "Sub"):
                # dynamic quantization rescales MatMulInteger's output before the bias Add; a GroupNorm's beta or
                # an earlier bias sits between a layer and a learned table added to its output
                name = next((i for i in n.input if source(i)[0] is None), None)
            elif n.op_type in _CARRY and n.input:
                name = n.input[0]
            else:
                return False
            depth += 1
            if name is None:
                return False
        return False

    users = consumers(graph)

    def scaled_after(name, depth=0):
        """Whether name, through _CARRY ops, is multiplied by a constant: GroupNorm's gamma."""
        for c in users.get(name, ()):
            if c.op_type == "Mul" and any(i != name and source(i)[0] is not None for i in c.input):
                return True
            if c.op_type in _CARRY and c.output and depth < 8 and scaled_after(c.output[0], depth + 1):
                return True
        return False

    def from_normalization(name):
        n = carried(name)
        return (n is not None and n.op_type == "InstanceNormalization") or normalizing_div(n)

    dequantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input}
    learned = set()
    for n in graph.node:
        slots = _WEIGHT_SLOTS.get(n.op_type)
        if n.op_type == "InstanceNormalization" and n.output and scaled_after(n.output[0]):
            # torch's GroupNorm: InstanceNormalization over the groups with constant ones / zeros (not
            # parameters), then its per-channel gamma (a Mul) and beta (an Add) on the channels
            slots = ()
        if n.op_type == "Mul" and len(n.input) == 2:
            srcs = [source(i) for i in n.input]
            slots = [k for k in (0, 1) if srcs[k][0] is not None and srcs[1 - k][0] is None
                     and from_normalization(n.input[1 - k])]
        if n.op_type in ("Add", "Sub") and len(n.input) == 2:
            # a bias applied as its own Add: the constant side counts when the other side is a weighted op's output
            srcs = [source(i) for i in n.input]
            slots = [k for k in (0, 1) if srcs[k][0] is not None and srcs[1 - k][0] is None
                     and after_weighted_op(n.input[1 - k])]
        if not slots:
            continue
        for k in slots:
            if k < len(n.input) and n.input[k]:
                name, dq = source(n.input[k])
                # an integer Gather table or Add operand is an index / shape, unless it is dequantized (an INT8
                # embedding is gathered first and its rows dequantized after)
                # dynamic INT8 gathers uint8 rows straight into MatMulInteger (no DequantizeLinear after): a
                # table of 2+ dims looked up by computed ids is an embedding whatever its type; a 1-d
                # integer one (a shape gathered by a constant index) is not
                table = n.op_type == "Gather" and len(consts[name][0]) >= 2 and len(n.input) > 1 \
                    and source(n.input[1])[0] is None if name is not None else False
                deq = dq or table or (n.op_type == "Gather" and n.output[0] in dequantized)
                if name is not None and (deq or consts[name][1] in _FLOAT_TYPES
                                         or n.op_type not in ("Gather", "Add", "Sub", "Mul")):
                    learned.add(name)
    return sum(int(np.prod(consts[c][0], dtype=np.int64)) for c in learned)


def node_attrs(node) -> dict:
    """An ONNX node's attributes as {name: python value}."""
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def session(path, *, threads: int | None = None, providers=("CPUExecutionProvider",), optimize: bool = True):
    """optimize=False runs a QDQ graph as written (dequantize -> float op -> quantize), the arithmetic a GPU
    INT8 engine follows, instead of fusing it into this CPU's integer kernels (which saturate on AVX2)."""
    from .runner.edgekit_runner import keep_fp_env, open_session, session_options

    if optimize:
        return open_session(path, list(providers), threads)  # path may be bytes: an in-memory model
    import onnxruntime as ort

    so = session_options(threads)
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = path if isinstance(path, bytes) else str(path)
    return keep_fp_env(lambda: ort.InferenceSession(src, so, providers=list(providers)))


def fixed_batch(sess) -> int | None:
    """The batch size a session's graph fixes on its inputs' leading axis, or None when it is dynamic."""
    for i in sess.get_inputs():
        if i.shape and isinstance(i.shape[0], int) and i.shape[0] > 0:
            return int(i.shape[0])
    return None


def run_batches(path, dataset, *, batch_size: int = 64, limit: int | None = None, sess=None) -> list:
    """Run an ONNX model over a Dataset; returns the concatenated outputs (one array per output), in order.

    A graph with a fixed batch B (what torch.onnx.export gives without dynamic_axes) only accepts
    batches of exactly B: the data then goes in chunks of B, and a last partial chunk is padded with
    copies of its last sample whose outputs are cut off again, so every sample is run exactly once.
    """
    sess = sess or session(path)
    names = {i.name for i in sess.get_inputs()}
    fixed = fixed_batch(sess)
    outs = None
    seen = 0
    for feeds in dataset.batches(fixed or batch_size):
        if limit is not None and seen >= limit:
            break
        feeds = {k: v for k, v in feeds.items() if k in names}
        real = len(next(iter(feeds.values())))
        if fixed and real < fixed:
            feeds = {k: np.concatenate([v, np.repeat(v[-1:], fixed - real, axis=0)]) for k, v in feeds.items()}
        res = sess.run(None, feeds)
        if fixed and real < fixed:
            res = [r[:real] if np.ndim(r) and len(r) == fixed else r for r in res]
        outs = [[r] for r in res] if outs is None else [o + [r] for o, r in zip(outs, res)]
        seen += real
    if outs is None:
        return []
    # a 0-d output (a statistic over the whole batch) has no sample axis to join on: one value per batch
    out = [np.stack(o) if o and np.ndim(o[0]) == 0 else np.concatenate(o, axis=0) for o in outs]
    return [o[:limit] for o in out] if limit is not None else out


def _subgraph_inputs(node) -> set:
    """Outer-scope names a node's subgraphs (If/Loop/Scan bodies) read: they order the node like inputs do."""
    import onnx

    names = set()
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for g in graphs:
            local = {i.name for i in g.input} | {i.name for i in g.initializer} | {o for n in g.node for o in n.output}
            for n in g.node:
                names |= ({i for i in n.input if i} | _subgraph_inputs(n)) - local
    return names


def topological_sort(graph) -> bool:
    """Reorder graph.node so every node follows the producers of its inputs (stable: nodes already in
    order keep it). Returns whether anything moved.

    The ONNX checker, TensorRT's parser and onnx.load-based tools need this order; onnxruntime sorts on
    load, so a graph it runs can still violate it (onnxruntime's FP16 converter appends the input Casts last).
    """
    import heapq

    nodes = list(graph.node)
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    deps = [{producer[t] for t in ({i for i in n.input if i} | _subgraph_inputs(n)) if t in producer} - {i}
            for i, n in enumerate(nodes)]
    users = [[] for _ in nodes]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    waiting = [len(d) for d in deps]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ValueError(f"graph {graph.name!r} has a cycle: {len(nodes) - len(order)} nodes cannot be ordered")
    if order == list(range(len(nodes))):
        return False
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
    return True


_ORT_PREFIX = re.compile(r"^\s*\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_ORT_LOAD = re.compile(r"^(Load model from .*? failed:|Exception during initialization:)\s*")
_CXX_SITE = re.compile(r"\S+\.(?:h|hpp|cc|cpp|c):\d+\s+")  # '/onnxruntime_src/.../model_load_utils.h:46 '


def ort_error_text(e: Exception) -> str:
    """onnxruntime's own words in its exception, on one line: without the '[ONNXRuntimeError] : 1 : FAIL :'
    prefix, the 'Load model from X failed:' the caller says better, and the C++ source site and function
    signature that came before the reason (a 300-character cut ended inside that signature)."""
    text = " ".join(str(e).split())
    text = _ORT_LOAD.sub("", _ORT_PREFIX.sub("", text))
    m = _CXX_SITE.match(text)
    if m:
        text = _after_signature(text[m.end():])
    return text or type(e).__name__


def _after_signature(text: str) -> str:
    """text past a C++ signature 'ret ns::f(args...) const' at its start (text as is if none is there)."""
    i = text.find("(")
    if i < 0 or " " not in text[:i] and "::" not in text[:i]:
        return text
    depth = 0
    for j in range(i, len(text)):
        depth += {"(": 1, ")": -1}.get(text[j], 0)
        if depth == 0:
            rest = text[j + 1:].lstrip()
            return (rest[len("const"):].lstrip() if rest.startswith("const ") else rest) or text
    return text


def ort_load_problem(path) -> str | None:
    """Why onnxruntime cannot open the model at path (its first meaningful words), or None if it can."""
    try:
        session(path, optimize=False)
    except Exception as e:
        return ort_error_text(e)
    return None
