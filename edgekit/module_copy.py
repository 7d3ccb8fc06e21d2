"""Deep copies of a torch module that survive what its forward() cached on it.

Some models cache derived tensors as plain attributes in eval mode: timm's LeViT keeps its attention
biases per device (`attention_bias_cache`). A forward with autograd on (the pruner's graph trace, the
gradient check) makes those non-leaf tensors, and torch refuses to deep-copy a module holding one ("Only
Tensors created explicitly by the user (graph leaves) support the deepcopy protocol"): `edgekit prune` on
LeViT ended in that internal error.
"""
from __future__ import annotations

import copy

_OWN = ("_parameters", "_buffers", "_modules")


def detach_caches(module) -> None:
    """Detach, in place, attribute tensors (alone, or in a dict, list or tuple) that carry autograd history:
    the same values, without the graph that made them."""
    import torch

    def tracked(v):
        return isinstance(v, torch.Tensor) and v.grad_fn is not None

    def plain(v):
        return v.detach() if tracked(v) else v

    for m in module.modules():
        for k, v in list(vars(m).items()):
            if k in _OWN:
                continue
            if tracked(v):
                m.__dict__[k] = plain(v)
            elif isinstance(v, dict) and any(tracked(x) for x in v.values()):
                m.__dict__[k] = type(v)((kk, plain(x)) for kk, x in v.items())
            elif isinstance(v, (list, tuple)) and any(tracked(x) for x in v):
                m.__dict__[k] = type(v)(plain(x) for x in v)


def clone(module):
    """copy.deepcopy(module), its forward()'s cached tensors detached first."""
    detach_caches(module)
    return copy.deepcopy(module)
