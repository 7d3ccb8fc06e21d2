"""The input convolutions of an image model ("the stem"): the layers INT8 rarely speeds up.

A conv over the raw image has a dot product only C_in * kh * kw long (27 for RGB 3x3), too short for
the 8-bit kernels to pay for quantizing the full-resolution input. Measured with onnxruntime on
EfficientNet-Lite0, its INT8 stem ran 1.2x (AMD AVX-512 VNNI), 1.3x (AMD AVX2) and 1.9-2.0x (Intel
VNNI) slower than FP32, while the rest of the model ran at about half FP32's time
(benchmarks/quantize/RESULTS.md, int8_ceiling.py). The fallback tries such layers in FP32 as one more
candidate and keeps it only if it measures faster (and within tolerance): whether it pays depends on
the host and on where the switch back to INT8 falls.
"""
from __future__ import annotations

# a graph input reaches the stem through normalisation and layout ops: they do not make it deeper
PASS_THROUGH = {"Sub", "Div", "Mul", "Add", "Transpose", "Reshape", "Cast", "Pad", "Identity", "Unsqueeze",
                "Squeeze", "Resize", "Slice", "Clip"}
# image channels: grey, RGB, RGBA
MAX_CHANNELS = 4


def input_convs(model_path, max_channels: int = MAX_CHANNELS) -> list[str]:
    """Names of Conv nodes fed by a graph input (directly or through PASS_THROUGH ops) whose weights
    read at most max_channels channels per group, in graph order."""
    import onnx

    m = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name: i for i in m.graph.initializer}
    reached = {i.name for i in m.graph.input if i.name not in inits}
    out = []
    for n in m.graph.node:  # ONNX graphs are topologically sorted
        if not n.input or n.input[0] not in reached:
            continue
        if n.op_type == "Conv":
            w = inits.get(n.input[1]) if len(n.input) > 1 else None
            if w is not None and len(w.dims) >= 3 and 0 < w.dims[1] <= max_channels and n.name:
                out.append(n.name)
        elif n.op_type in PASS_THROUGH:
            reached.update(o for o in n.output if o)
    return out
