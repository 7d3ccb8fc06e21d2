"""Save and load pruned models as plain tensors plus the pruned structure (no pickled code).

A pruned model no longer matches its factory's shapes, so the file also records every
module's parameter shapes and simple attributes (channel counts, heads). Loading rebuilds
the original architecture, resizes it to those shapes and loads the weights with
torch.load(weights_only=True). Saving the whole module would need pickle and --trust-pickle.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..fsutil import atomic_path

FORMAT = "edgekit.pruned/1"
_SIMPLE = (int, float, bool, str)


def _simple(v):
    if isinstance(v, _SIMPLE) or v is None:
        return True
    return isinstance(v, (tuple, list)) and all(isinstance(x, _SIMPLE) for x in v)


def structure(model) -> dict:
    out = {}
    for name, m in model.named_modules():
        attrs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(m).items()
                 if not k.startswith("_") and k != "training" and _simple(v)}
        shapes = {k: list(p.shape) for k, p in list(m._parameters.items()) + list(m._buffers.items()) if p is not None}
        out[name] = {"attrs": attrs, "shapes": shapes, "tuples": [k for k, v in vars(m).items() if isinstance(v, tuple)],
                     "type": type(m).__name__}
    return out


def _non_persistent(model) -> dict:
    """The per-channel buffers a state dict leaves out: pruning can cut them (channel_buffers.py), and the
    factory's own are of the unpruned size. (Not the others: GPT-2's causal mask is a 1 MB buffer per layer.)"""
    from .channel_buffers import candidates

    per_channel = candidates(model)
    return {f"{n}.{k}" if n else k: m._buffers[k].detach().clone() for n, m in model.named_modules()
            for k in sorted(m._non_persistent_buffers_set) if (f"{n}.{k}" if n else k) in per_channel}


def save(model, dest, *, spec: str, meta: dict | None = None) -> Path:
    import torch

    dest = Path(dest)
    obj = {"format": FORMAT, "spec": spec, "structure": structure(model),
           "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}, "meta": meta or {},
           "buffers": _non_persistent(model)}
    with atomic_path(dest) as tmp:
        torch.save(obj, tmp)
    return dest


def read(path) -> dict:
    import torch

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{p}: not an edgekit pruned-model file: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise InputError(f"{p}: not an edgekit pruned-model file (written by `edgekit prune`)")
    return obj


def apply(base, obj: dict, *, where: str = "pruned model"):
    """Resize `base` (a fresh instance of the original architecture, changed in place) and load the weights."""
    import torch
    import torch.nn as nn

    from . import conv1d

    # a transformers Conv1D pruning worked on as the Linear it computes (conv1d.py): swapped the same way here
    conv1d.swap(base, {n for n, rec in obj["structure"].items() if rec.get("type") == "Linear"})
    mods = dict(base.named_modules())
    for name, rec in obj["structure"].items():
        m = mods.get(name)
        if m is None:
            raise InputError(f"{where}: module {name!r} not in the base architecture (different factory?)")
        for k, v in rec["attrs"].items():
            setattr(m, k, tuple(v) if k in rec.get("tuples", ()) else v)
        for k, shape in rec["shapes"].items():
            # only what pruning resized is replaced: a Parameter the factory shares between modules (tied
            # embedding and output weights; pruning keeps such layers whole) stays one object
            if k in m._parameters and m._parameters[k] is not None:
                old = m._parameters[k]
                if list(old.shape) != list(shape):
                    m._parameters[k] = nn.Parameter(torch.empty(shape, dtype=old.dtype), requires_grad=old.requires_grad)
            elif k in m._buffers and m._buffers[k] is not None and list(m._buffers[k].shape) != list(shape):
                m._buffers[k] = torch.empty(shape, dtype=m._buffers[k].dtype)
        if isinstance(m, nn.RNNBase):
            m._init_flat_weights()  # forward() reads this list of the weights, not the parameters
    try:
        base.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        raise InputError(f"{where}: weights do not fit the architecture: {str(e).splitlines()[0]}") from None
    for name, t in obj.get("buffers", {}).items():
        parent, _, leaf = name.rpartition(".")
        m = mods.get(parent)
        if m is None or leaf not in m._buffers:
            raise InputError(f"{where}: buffer {name!r} not in the base architecture (different factory?)")
        m._buffers[leaf] = t
    return base.eval()
