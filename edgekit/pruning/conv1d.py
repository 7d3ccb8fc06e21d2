"""transformers' Conv1D (GPT-2, DistilGPT2, DialoGPT): a Linear whose weight is stored [in, out].

Torch-Pruning has no pruner for it, so a GPT-2 was "nothing in this model can be pruned" with 58% of its
parameters in these layers. Pruning works on a copy where each is the nn.Linear it computes (the weight
transposed, the same bias); a pruned model's file records the swap by the module's type, so rebuilding it
from the original architecture swaps the same modules (serialize.apply).
"""
from __future__ import annotations


def is_conv1d(m) -> bool:
    w = getattr(m, "weight", None)
    return type(m).__name__ == "Conv1D" and isinstance(getattr(m, "nf", None), int) and w is not None \
        and w.dim() == 2


def linear_of(m):
    """The nn.Linear computing what Conv1D `m` does: x @ W + b is x @ (W^T)^T + b."""
    import torch
    import torch.nn as nn

    nx, nf = m.weight.shape
    lin = nn.Linear(nx, nf, bias=m.bias is not None, dtype=m.weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(m.weight.t())
        if m.bias is not None:
            lin.bias.copy_(m.bias)
    return lin.train(m.training)


def swap(model, names=None) -> list:
    """Replace, in place, every Conv1D of `model` (or those named) by its Linear; the names replaced."""
    mods = dict(model.named_modules())
    done = []
    for name, m in list(mods.items()):
        if not name or not is_conv1d(m) or (names is not None and name not in names):
            continue
        parent, _, attr = name.rpartition(".")
        setattr(mods[parent] if parent else model, attr, linear_of(m))
        done.append(name)
    return done


def with_linears(model):
    """`model` itself when it has no Conv1D, else a copy with each swapped for its Linear."""
    if not any(is_conv1d(m) for m in model.modules()):
        return model
    from ..module_copy import clone

    copy = clone(model)
    swap(copy)
    return copy
