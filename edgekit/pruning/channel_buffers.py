"""Per-channel buffers (a registered `[1, C, 1, 1]` scale, FrozenBatchNorm2d's statistics), cut with the
channels they belong to.

Torch-Pruning follows channels through autograd, and a buffer takes no gradient, so it never sees one: a conv
whose output is multiplied by a registered per-channel scale was cut, the buffer kept its C values, the model
stopped running ("size of tensor a (24) must match ... (32)") and the step kept the conv whole. Held as
parameters that take a gradient while the dependency graph is traced, such buffers are parameters of no layer,
which Torch-Pruning cuts along their one channel axis; edgekit checks each cut as it checks every other. The
prune stage does this only after a step failed on a size one of them has (`matching`), so a model that prunes
without it is traced as before; the pruned model gets them back as buffers, as frozen as they were.
"""
from __future__ import annotations

import contextlib
import re

MARK = "_edgekit_buffers"  # on the module holding them: {name: persistent}, kept by deep copies


def _handled_by_torch_pruning(m) -> bool:
    """A layer whose buffers Torch-Pruning cuts itself (BatchNorm's running statistics)."""
    import torch.nn as nn

    return isinstance(m, nn.modules.batchnorm._NormBase)


def _channels(t) -> int | None:
    """The size of a tensor's one non-singleton axis, or None (a scalar, or more than one such axis)."""
    big = [s for s in t.shape if s > 1]
    return big[0] if len(big) == 1 else None


def candidates(model) -> dict:
    """{qualified name: channel count} of the float buffers with one non-singleton axis that no layer
    Torch-Pruning knows holds."""
    out = {}
    for mname, m in model.named_modules():
        if _handled_by_torch_pruning(m):
            continue
        for bname, b in m._buffers.items():
            if b is None or not b.is_floating_point():
                continue
            c = _channels(b)
            if c is not None:
                out[f"{mname}.{bname}" if mname else bname] = c
    return out


def matching(model, reason: str) -> list:
    """The candidate buffers whose channel count a failed run's message names (a size mismatch of the
    pruned channels against the buffer's)."""
    sizes = {int(n) for n in re.findall(r"\((\d+)\)", reason or "")}
    return sorted(n for n, c in candidates(model).items() if c in sizes)


def as_parameters(model, names) -> None:
    """Hold buffers `names` of `model` as parameters (in place; no gradient outside `traced`)."""
    import torch.nn as nn

    mods = dict(model.named_modules())
    for name in names:
        parent, _, leaf = name.rpartition(".")
        m = mods.get(parent)
        if m is None or m._buffers.get(leaf) is None:
            continue
        persistent = leaf not in m._non_persistent_buffers_set
        t = m._buffers.pop(leaf)
        m._non_persistent_buffers_set.discard(leaf)
        m._parameters[leaf] = nn.Parameter(t.detach().clone(), requires_grad=False)
        m.__dict__.setdefault(MARK, {})[leaf] = persistent


def _held(model):
    for m in model.modules():
        for leaf in m.__dict__.get(MARK, {}):
            p = m._parameters.get(leaf)
            if p is not None:
                yield m, leaf, p


def held(model) -> list:
    """Names of the buffers `model` holds as parameters here."""
    names = {id(m): n for n, m in model.named_modules()}
    return [f"{names[id(m)]}.{leaf}" if names[id(m)] else leaf for m, leaf, _ in _held(model)]


def freeze(model) -> None:
    """No gradient for them: Torch-Pruning's cut makes a new parameter that takes one, and distillation
    trains whatever does."""
    for _m, _leaf, p in _held(model):
        p.requires_grad_(False)


@contextlib.contextmanager
def traced(model):
    """They take a gradient while the dependency graph is built, so it sees them."""
    for _m, _leaf, p in _held(model):
        p.requires_grad_(True)
    try:
        yield
    finally:
        freeze(model)


def as_buffers(model) -> None:
    """Back to buffers (in place), with their cut sizes."""
    for m, leaf, p in list(_held(model)):
        persistent = m.__dict__[MARK][leaf]
        del m._parameters[leaf]
        m.register_buffer(leaf, p.detach(), persistent=persistent)
    for m in model.modules():
        m.__dict__.pop(MARK, None)
