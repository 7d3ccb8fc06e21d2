"""Structural re-parameterisation before export.

MobileOne, RepVGG, FastViT, RepViT, RepGhost and their kind train parallel branches (a 3x3 conv, a 1x1
conv and a BatchNorm identity, each with its own BatchNorm) that in eval mode equal one conv. Exported
as trained, every branch runs on the device: timm's MobileOne-S0 ran 3.4x slower in onnxruntime than the
same network folded, FastViT-T8 1.3x. The blocks carry their own folding methods; this calls them, on a
copy, with timm's convention (timm.utils.reparameterize_model): `fuse()` returns the module that replaces
the block, `reparameterize()` and `switch_to_deploy()` change it in place. The export stage then checks
the folded file against the unchanged model, so a fold that changes the function cannot pass unseen.
"""
from __future__ import annotations

import inspect

from ..module_copy import clone

REPLACING = ("fuse",)
IN_PLACE = ("reparameterize", "switch_to_deploy")
# set on a model fold() folded: its copies (a pruned model, each latency-search candidate) are exported many
# times, and each export would otherwise copy the whole model only to find that no block changes
FOLDED = "_edgekit_blocks_folded"


def _method(module, name: str):
    """module.name() when the class defines it as a method callable without arguments, else None: a
    submodule that happens to be called `fuse` (a feature-fusion layer) or a VAE's reparameterize(mu,
    logvar) is not a fold."""
    f = inspect.getattr_static(type(module), name, None)
    if not inspect.isfunction(f):
        return None
    for p in list(inspect.signature(f).parameters.values())[1:]:
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            return None
    return getattr(module, name)


def foldable(module) -> list:
    """Qualified names of the blocks that fold(module) would fold."""
    return [name for name, m in module.named_modules() if name and any(_method(m, n) for n in REPLACING + IN_PLACE)]


def _layout(module) -> list:
    return [(n, tuple(t.shape)) for n, t in list(module.named_parameters()) + list(module.named_buffers())]


def fold(module):
    """(a folded deep copy of module, [(block name, method), ...]); (module itself, []) when nothing folds.
    The user's module is never changed."""
    if getattr(module, FOLDED, False) or not foldable(module):
        return module, []
    folded = clone(module).eval()
    done: list = []
    _walk(folded, "", done)
    if not done:
        return module, []
    setattr(folded, FOLDED, True)
    return folded, done


def _walk(parent, prefix: str, done: list) -> None:
    import torch

    for name, child in list(parent.named_children()):
        where = f"{prefix}{name}"
        for method in REPLACING + IN_PLACE:
            call = _method(child, method)
            if call is None:
                continue
            before = _layout(child)
            with torch.no_grad():
                out = call()
            if method in REPLACING and isinstance(out, torch.nn.Module) and out is not child:
                setattr(parent, name, out)
                child = out
            if _layout(child) != before:  # a block folded already (timm's return early) is not counted
                done.append((where, method))
            break
        _walk(child, f"{where}.", done)
