"""Channel importance criteria (Torch-Pruning's) and the gradients Taylor importance needs."""
from __future__ import annotations

import numpy as np

from ..evaluate import LABELLED_TASKS
from ..source import DENSE_AXIS
from .graph import first_tensor
from .metrics import labels_cross_entropy

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
    (the loss of moving away from what it does now). Other unlabelled models (embeddings,
    regressors) have no loss whose gradient means anything at the current weights (the output
    energy of an L2-normalised embedding is constant), so they get output sensitivity instead:
    per batch, the gradient of <output, r> for a fresh Gaussian r, and .grad is the root mean
    square over batches. E[(r.J w)^2] = |J w|^2, so |w * grad| ranks a channel by how far removing
    it moves the outputs (a Fisher / second-order Taylor estimate, as in post-training transformer
    pruning).
    """
    import torch
    import torch.nn.functional as F

    from .batching import Trimmer

    model.zero_grad(set_to_none=True)
    was_training = model.training
    model.eval()  # BatchNorm statistics must not move while we only measure
    part = data.take(samples)
    trimmer = Trimmer(part, names)
    trimmer.verify(model, part)
    # scored by argmax: a cross-entropy gradient; a multi-label output's yes/no per class takes a binary
    # cross-entropy with its 0/1 labels, and without them has no softmax to take its own predictions from
    multi = task == "multi-label" and part.labels is not None
    classes = task in LABELLED_TASKS and task != "multi-label"
    sensitivity = not classes and not multi
    small = max(4, batch_size // 4) if sensitivity else batch_size  # more batches: a better RMS estimate
    used = "output sensitivity |J w| (random projections, no labels)" if sensitivity else ""
    g = torch.Generator().manual_seed(0)
    sq, nb = {}, 0
    for feeds, y in part.labelled_batches(small):
        feeds = trimmer.trim(feeds)
        out = first_tensor(model(*[torch.from_numpy(np.array(feeds[n])) for n in names]))
        if task == "classification":
            out = out.reshape(len(out), -1)  # an all-conv head's [N, C, 1, 1] scores
        elif task in DENSE_AXIS:
            # cross_entropy takes [N, C, d1, ...] against [N, d1, ...], per position: a token classifier's
            # classes come last
            out = out.movedim(DENSE_AXIS[task], 1)
        ce = labels_cross_entropy(out, torch.from_numpy(np.asarray(y)).long()) if classes and y is not None else None
        if multi:
            from .. import multilabel

            loss = multilabel.labels_loss(out, torch.from_numpy(np.asarray(y)),
                                          multilabel.is_probability(out.detach().numpy()))
            used = "binary cross-entropy with labels"
        elif ce is not None:
            loss, used = ce, "cross-entropy with labels"
        elif classes:
            loss, used = F.cross_entropy(out, out.detach().argmax(1)), "cross-entropy with own predictions"
        else:
            r = torch.randn(out.shape, generator=g, dtype=out.dtype)
            loss = (out * r).sum()
        loss.backward()
        if sensitivity:
            nb += 1
            for p in model.parameters():
                if p.grad is not None:
                    sq[p] = sq.get(p, 0) + p.grad.detach().pow(2)
            model.zero_grad(set_to_none=True)
    if sensitivity:
        for p, v in sq.items():
            p.grad = (v / max(nb, 1)).sqrt()
    model.train(was_training)
    return used
