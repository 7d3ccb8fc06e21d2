"""Export an EmbeddingBag over fixed-length bags as a Gather and a reduction, not torch's Loop.

torch exports nn.EmbeddingBag as a Loop over the bags whose body gathers and reduces. onnxruntime's
quantizer does not enter a Loop, so the table, usually most of such a model's weights, stayed float in the
INT8 file (a digits bag-of-tokens classifier: 99% of its weights, and an INT8 file larger than FP32), and
the Loop took 35% of the FP32 run time. For a [N, L] input without offsets every bag has L rows, and the
bag is F.embedding followed by sum / mean / max over axis 1: one Gather that static and dynamic INT8 both
quantize. The export stage checks the file against the unchanged module, as every export is checked.
"""
from __future__ import annotations

import contextlib


def _fixed_bags_forward(bag):
    import torch
    import torch.nn.functional as F

    plain = type(bag).forward

    def forward(input, offsets=None, per_sample_weights=None):
        if input.dim() != 2 or offsets is not None or per_sample_weights is not None:
            return plain(bag, input, offsets, per_sample_weights)
        rows = F.embedding(input, bag.weight)
        if bag.padding_idx is None:
            return rows.sum(1) if bag.mode == "sum" else rows.mean(1) if bag.mode == "mean" else rows.max(1).values
        # the padding index's rows are left out of the bag, and a bag of padding only is zeros (torch's own
        # exporter refuses an EmbeddingBag with a padding_idx: "embedding_bag with padding_idx")
        keep = (input != bag.padding_idx).unsqueeze(-1)
        if bag.mode == "max":
            top = rows.masked_fill(~keep, float("-inf")).max(1).values
            return torch.where(keep.any(1), top, torch.zeros_like(top))
        total = (rows * keep.to(rows.dtype)).sum(1)
        return total if bag.mode == "sum" else total / keep.to(rows.dtype).sum(1).clamp(min=1.0)

    return forward


def _rewritable(m) -> bool:
    import torch.nn as nn

    # max_norm renormalises the table in place on lookup
    return (isinstance(m, nn.EmbeddingBag) and m.max_norm is None and m.mode in ("sum", "mean", "max")
            and "forward" not in vars(m))


@contextlib.contextmanager
def as_gathers(module):
    """While exporting: each plain EmbeddingBag of module runs fixed-length bags as Gather + reduce. The
    module is the same object before and after (its forward is restored)."""
    bags = [m for m in module.modules() if _rewritable(m)]
    try:
        for m in bags:
            m.forward = _fixed_bags_forward(m)
        yield len(bags)
    finally:
        for m in bags:
            vars(m).pop("forward", None)
