"""FP16 conversion for GPU targets, keeping float32 inputs/outputs so callers do not change."""
from __future__ import annotations

from pathlib import Path

from ..errors import EdgekitError


def convert(src, dest, *, keep_io_types: bool = True) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        m = convert_float_to_float16(onnx.load(str(src)), keep_io_types=keep_io_types)
        onnx.save(m, str(dest))
    except Exception as e:
        raise EdgekitError(f"{Path(src).name}: FP16 conversion failed: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None
    return {"keep_io_types": keep_io_types}
