"""--task multi-label: one independent yes/no per class (a sigmoid per column, BCEWithLogitsLoss), [N, C].

Scored by micro-averaged F1 of the decisions: against 0/1 labels 'y' [N, C] (f1_micro), else against the FP32
model's own decisions (f1_agreement). Taken as class scores, such an output was scored by top-1 agreement,
which sees only each sample's strongest class: a second label switched on or off never counted. A column's
decision is logit > 0, or probability > 0.5 for an output already through its sigmoid (every value in [0, 1]),
read from the reference outputs where there are some so that FP32 and its variants are cut alike.
"""
from __future__ import annotations

import numpy as np

from .entities import f1
from .errors import CalibrationError

TASK = "multi-label"


def is_probability(a) -> bool:
    a = np.asarray(a)
    return a.size > 0 and a.dtype.kind == "f" and float(np.nanmin(a)) >= 0.0 and float(np.nanmax(a)) <= 1.0


def threshold(reference) -> float:
    return 0.5 if is_probability(reference) else 0.0


def decisions(out, reference=None) -> np.ndarray:
    """[N, C] booleans: each column on or off (see threshold)."""
    out = np.asarray(out)
    return out.reshape(len(out), -1) > threshold(out if reference is None else reference)


def f1_micro(pred, true) -> float:
    """Micro-averaged F1 over every (sample, class) decision: 2 TP / (2 TP + FP + FN); 1.0 when neither side
    switches any class on (nothing to find, nothing found)."""
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    return f1(int(pred.sum()), int(true.sum()), int(np.sum(pred & true)))


def f1_labels(out, labels) -> float:
    return f1_micro(decisions(out), np.asarray(labels).reshape(len(labels), -1) > 0)


def f1_agreement(out, reference) -> float:
    return f1_micro(decisions(out, reference), decisions(reference))


def check_labels(labels, out_shape, where: str) -> None:
    """Labels 'y' [N, C] of 0/1, one column per output column."""
    y = np.asarray(labels)
    shape = list(out_shape)
    columns = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if y.ndim == 1 and columns == 1:  # one logit per sample: a binary classifier's 0/1 labels
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] != columns:
        raise CalibrationError(f"{where}: --task multi-label needs labels 'y' of shape [N, {columns}] (0/1 per "
                               f"class of the model's first output {shape}); got {list(y.shape)}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        i = int(np.argmax(bad.any(1)))
        raise CalibrationError(f"{where}: --task multi-label needs labels 'y' of 0 or 1; sample {i} holds "
                               f"{y[i][bad[i]][0]!r}")


def distill_loss(s, t, y, temperature: float, alpha: float, probabilities: bool):
    """Binary cross-entropy per class to the teacher's soft decisions (sigmoid at temperature T, times T^2 as
    the softmax KD loss is), plus binary cross-entropy with 0/1 labels when given. An output already through
    its sigmoid is matched as probabilities, without temperature."""
    import torch.nn.functional as F

    s, t = s.reshape(len(s), -1).float(), t.reshape(len(t), -1).float()
    if probabilities:
        kd = labels_loss(s, t.clamp(0, 1), True)  # the teacher's probabilities as soft labels
    else:
        T = temperature
        kd = F.binary_cross_entropy_with_logits(s / T, (t / T).sigmoid()) * T * T
    return kd if y is None else alpha * kd + (1.0 - alpha) * labels_loss(s, y, probabilities)


EPS = 1e-6  # probabilities are kept off 0 and 1, where binary cross-entropy's log is infinite


def labels_loss(s, y, probabilities: bool):
    """Binary cross-entropy of the scores `s` ([N, C] logits, or probabilities) with 0/1 labels `y`."""
    import torch.nn.functional as F

    s, y = s.reshape(len(s), -1).float(), y.reshape(len(y), -1).float()
    if probabilities:
        return F.binary_cross_entropy(s.clamp(EPS, 1 - EPS), y)
    return F.binary_cross_entropy_with_logits(s, y)

