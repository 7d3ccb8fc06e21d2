"""Unstructured magnitude sparsity and 2:4 semi-structured sparsity (weights set to zero, shapes kept).

Neither makes ONNX Runtime on CPU faster: its Conv/MatMul/Gemm kernels are dense, so the zeros
are multiplied like any other number. What they buy is a smaller file after general-purpose
compression (zip/gzip of the model), and 2:4 is the pattern sparse tensor cores accelerate on GPUs.
"""
from __future__ import annotations

import io
import zlib

NOTE = ("sparse weights are stored dense: ONNX Runtime on CPU does not run them faster; "
        "the saving is in compressed size only (2:4 is accelerated by sparse tensor cores on some GPUs)")


def _prunable(model, skip):
    import torch.nn as nn

    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and m not in skip:
            yield name, m


def magnitude(model, ratio: float, *, skip=()) -> dict:
    """Zero the smallest-|w| fraction `ratio` of the weights, ranked globally over all prunable layers."""
    import torch

    layers = list(_prunable(model, set(skip)))
    if not layers or ratio <= 0:
        return {"zeros": 0, "total": 0}
    allw = torch.cat([m.weight.detach().abs().flatten() for _, m in layers])
    k = int(ratio * allw.numel())
    if k < 1:
        return {"zeros": 0, "total": int(allw.numel())}
    thresh = torch.kthvalue(allw, k).values
    with torch.no_grad():
        for _, m in layers:
            m.weight.mul_((m.weight.abs() > thresh).to(m.weight.dtype))
    return _zeros(layers)


def two_four(model, *, skip=()) -> dict:
    """In every group of 4 consecutive input channels keep the 2 largest weights (NVIDIA's 2:4 pattern).

    Sparse tensor cores run a conv as a GEMM whose reduction axis is (kernel row, kernel column, input
    channel) with the channel innermost (NHWC): a group is 4 input channels at one kernel position, not 4
    neighbours of the flattened in x kh x kw axis (which mixed kernel positions of one channel)."""
    import torch

    layers = []
    with torch.no_grad():
        for name, m in _prunable(model, set(skip)):
            w = m.weight
            if w.dim() < 2 or w.shape[1] % 4:
                continue  # a 3-channel stem or a depthwise conv (1 input channel per group): not applicable
            order = (0, *range(2, w.dim()), 1)  # out, kernel..., in
            wp = w.permute(order).contiguous()
            g = wp.reshape(w.shape[0], -1, 4)
            keep = torch.zeros_like(g, dtype=torch.bool)
            keep.scatter_(2, g.abs().topk(2, dim=2).indices, True)
            back = [order.index(i) for i in range(w.dim())]
            w.copy_((g * keep).reshape(wp.shape).permute(back))
            layers.append((name, m))
    return _zeros(layers)


def _zeros(layers) -> dict:
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    total = sum(int(m.weight.numel()) for _, m in layers)
    return {"zeros": zeros, "total": total, "sparsity": zeros / total if total else 0.0,
            "layers": [n for n, _ in layers]}


def compressed_bytes(model) -> int:
    """Size of the weights after zlib compression: what sparsity saves on disk or over the air."""
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, buf)
    return len(zlib.compress(buf.getvalue(), 6))
