"""Residual Adds before LayerNormalization written as Sum, so onnxruntime does not fuse them.

onnxruntime fuses Add -> LayerNormalization into SkipLayerNormalization when it loads a model. On CPU
that kernel ran slower than the two ops it replaces: on MiniLM's dynamic INT8 graph (seq 128, 2 threads)
its six SkipLayerNormalization nodes took 0.69 ms of 4.6 ms, 0.115 ms each, where one
LayerNormalization took 0.017 ms; written as Sum the whole model ran 0.466x FP32 instead of 0.520x
(AMD EPYC AVX-512; benchmarks/quantize/RESULTS.md). Sum of two inputs is Add (same broadcasting) and
onnxruntime has no fusion for it. The tuner tries this as its own candidate and keeps it only if faster.
"""
from __future__ import annotations

from pathlib import Path

from ..onnxutil import consumers


def residual_adds_as_sum(path) -> int:
    """Rewrite path in place; the number of Add nodes turned into Sum (0: nothing to do, file untouched)."""
    import onnx

    path = Path(path)
    m = onnx.load(str(path))
    users = consumers(m.graph)
    graph_outputs = {o.name for o in m.graph.output}
    done = 0
    for n in m.graph.node:
        if (n.op_type == "Add" and n.domain in ("", "ai.onnx") and len(n.input) == 2 and len(n.output) == 1
                and n.output[0] not in graph_outputs
                and [u.op_type for u in users.get(n.output[0], [])] == ["LayerNormalization"]):
            n.op_type = "Sum"
            done += 1
    if done:
        tmp = path.with_name(path.name + ".sum.tmp")
        onnx.save(m, str(tmp))
        tmp.replace(path)
    return done
