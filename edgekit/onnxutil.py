"""Small facts about ONNX files and onnxruntime sessions used by several stages."""
from __future__ import annotations

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

    # an int32 initializer dequantized by the graph is a quantized bias (a parameter); other int32/int64
    # initializers are shape constants
    dequantized = {n.input[0] for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input}
    params = 0
    for init in m.graph.initializer:
        # count weights, not quantization scales / zero points or shape constants
        if init.name.endswith(("_scale", "_zero_point")) or (init.data_type in (6, 7) and init.name not in dequantized):
            continue
        if not len(init.dims):
            # a 0-d constant (a Clip bound, GELU's sqrt(2), a /255) is no parameter; the quantizer also turns
            # Constant nodes into such initializers, which made INT8 count more than FP32
            continue
        params += int(np.prod(init.dims))
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"inputs": [spec(v) for v in m.graph.input if v.name not in init_names],
            "outputs": [spec(v) for v in m.graph.output], "opset": opset, "params": params,
            "nodes": len(m.graph.node)}


def node_attrs(node) -> dict:
    """An ONNX node's attributes as {name: python value}."""
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def session(path, *, threads: int | None = None, providers=("CPUExecutionProvider",)):
    from .runner.edgekit_runner import open_session

    return open_session(path, list(providers), threads)  # path may be bytes: an in-memory model


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
    out = [np.concatenate(o, axis=0) for o in outs]
    return [o[:limit] for o in out] if limit is not None else out
