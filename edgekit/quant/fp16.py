"""FP16 conversion for GPU targets, keeping float32 inputs/outputs so callers do not change."""
from __future__ import annotations

from pathlib import Path

from ..errors import EdgekitError


def convert(src, dest, *, keep_io_types: bool = True) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from ..errors import UsageError
    from ..loader import float_dtype
    from ..onnxutil import topological_sort

    model = onnx.load(str(src))
    if float_dtype(model) == "float16":
        # the converter would insert float32 casts on float16 inputs and build a graph onnxruntime rejects
        raise UsageError(f"{Path(src).name}: already float16; FP16 conversion needs an FP32 model")
    try:
        m = convert_float_to_float16(model, keep_io_types=keep_io_types)
        # the converter appends the Casts of the kept float32 inputs after their consumers: onnxruntime
        # re-sorts on load, but the ONNX checker, TensorRT's parser and edgekit itself reject the file
        topological_sort(m.graph)
        onnx.checker.check_model(m)
        onnx.save(m, str(dest))
    except Exception as e:
        raise EdgekitError(f"{Path(src).name}: FP16 conversion failed: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None
    return {"keep_io_types": keep_io_types}
