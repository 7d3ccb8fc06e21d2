"""ONNX conversions for aten operators torch's TorchScript exporter has none for, registered before export.

aten::diff: transformers (5.x) calls torch.diff on position ids in every decoder's attention-mask
builder (masking_utils.find_packed_sequence_indices), so GPT-2, Llama, Qwen ... all failed to export
with "Exporting the operator 'aten::diff' to ONNX opset version 17 is not supported".

aten::cumsum of a bool tensor: torch counts in int64, torch's conversion emits CumSum on the bool itself,
which onnxruntime refuses ("Type 'tensor(bool)' of input parameter ... of operator (CumSum) is invalid");
the same mask builder counts packed sequences that way.
"""
from __future__ import annotations

_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    import torch

    torch.onnx.register_custom_op_symbolic("aten::diff", _diff, 11)
    torch.onnx.register_custom_op_symbolic("aten::cumsum", _cumsum, 11)
    _registered = True


def _diff(g, x, n, dim, prepend, append):
    """x[1:] - x[:-1] along dim, n times, after concatenating prepend and append (as torch.diff does)."""
    import torch
    from torch.onnx import symbolic_helper as sh

    n = sh._maybe_get_const(n, "i")
    dim = sh._maybe_get_const(dim, "i")
    if not isinstance(n, int) or not isinstance(dim, int):
        return sh._unimplemented("diff", "n and dim must be constants")
    parts = [t for t in (prepend, x, append) if not sh._is_none(t)]
    if len(parts) > 1:
        x = g.op("Concat", *parts, axis_i=dim)

    def const(v):
        return g.op("Constant", value_t=torch.tensor([v], dtype=torch.int64))

    big = 2 ** 62
    for _ in range(n):
        later = g.op("Slice", x, const(1), const(big), const(dim))
        earlier = g.op("Slice", x, const(0), const(-1), const(dim))
        x = g.op("Sub", later, earlier)
    return x



# torch's ScalarType numbers (c10/core/ScalarType.h) -> ONNX TensorProto types. Written out: the
# exporter's own table moved between torch releases (torch.onnx.symbolic_helper._type_utils is gone in 2.13,
# which failed timm's EdgeNeXt: its positional encoding counts a bool mask with cumsum(dtype=float32)).
_ONNX_TYPE = {0: 2, 1: 3, 2: 5, 3: 6, 4: 7, 5: 10, 6: 1, 7: 11, 11: 9, 15: 16}


def _cumsum(g, x, dim, dtype):
    """torch.cumsum: bool and other integer types narrower than int64 count in int64, as torch does."""
    import torch
    from torch.onnx import symbolic_helper as sh

    dim = sh._maybe_get_const(dim, "i")
    if not isinstance(dim, int):
        return sh._unimplemented("cumsum", "dim must be a constant")
    if not sh._is_none(dtype):
        to = _ONNX_TYPE.get(sh._get_const(dtype, "i", "dtype"))
        if to is None:
            return sh._unimplemented("cumsum", "dtype must be a real or bool type")
        x = g.op("Cast", x, to_i=to)
    elif x.type().scalarType() in ("Bool", "Byte", "Char", "Short", "Int"):
        x = g.op("Cast", x, to_i=torch.onnx.TensorProtoDataType.INT64)
    return g.op("CumSum", x, g.op("Constant", value_t=torch.tensor(dim, dtype=torch.int64)))
