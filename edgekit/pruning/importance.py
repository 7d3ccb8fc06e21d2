"""Channel importance criteria (Torch-Pruning's) and the gradients Taylor importance needs."""
from __future__ import annotations

import numpy as np

from .graph import first_tensor

TAYLOR_SAMPLES = 256


def has_batchnorm(model) -> bool:
    import torch.nn as nn

    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def make(method: str, model) -> tuple:
    """(Torch-Pruning importance, notes). 'bn' needs BatchNorm layers; without any it falls back to l2."""
    import torch_pruning as tp

    notes = []
    if method == "bn" and not has_batchnorm(model):
        notes.append("--method bn: the model has no BatchNorm layers; used l2 magnitude instead")
        method = "l2"
    imp = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "bn": lambda: tp.importance.BNScaleImportance(),
        "taylor": lambda: tp.importance.TaylorImportance(),
    }[method]()
    return imp, notes


def accumulate_gradients(model, data, names, task: str, *, samples: int = TAYLOR_SAMPLES, batch_size: int = 32) -> str:
    """Fill .grad for Taylor importance with a loss on real data; returns what loss was used.

    Labels give cross-entropy; without them a classifier uses its own predictions as targets
    (the loss of moving away from what it does now) and other models the output energy.
    """
    import torch
    import torch.nn.functional as F

    model.zero_grad(set_to_none=True)
    was_training = model.training
    model.eval()  # BatchNorm statistics must not move while we only measure
    part = data.take(samples)
    used = "output energy (no labels)"
    for feeds, y in part.labelled_batches(batch_size):
        out = first_tensor(model(*[torch.from_numpy(np.array(feeds[n])) for n in names]))
        if task == "classification" and y is not None:
            loss, used = F.cross_entropy(out, torch.from_numpy(np.asarray(y)).long()), "cross-entropy with labels"
        elif task == "classification":
            loss, used = F.cross_entropy(out, out.detach().argmax(1)), "cross-entropy with own predictions"
        else:
            loss = out.float().pow(2).mean()
        loss.backward()
    model.train(was_training)
    return used
