"""Run a torch model over a Dataset and score it the way the evaluate stage scores ONNX files."""
from __future__ import annotations

import numpy as np

from ..entities import tag_scheme
from ..evaluate import LABELLED_TASKS, TOKEN_TASKS, metric_name, position_mask, score
from ..source import DENSE_AXIS
from .graph import first_tensor


def predict(model, data, names, *, batch_size: int = 64, trimmer=None) -> np.ndarray:
    """Outputs in row order; with an (already verified) batching.Trimmer rows go length-sorted and trimmed."""
    import torch

    from .batching import eval_batches, rows

    was_training = model.training
    model.eval()
    lengths = trimmer.lengths if trimmer is not None and trimmer.active else None
    batches = eval_batches(len(data), batch_size, lengths)
    outs = []
    with torch.no_grad():
        for idx in batches:
            feeds = rows(data, idx)
            if lengths is not None:
                feeds = trimmer.trim(feeds)
            out = first_tensor(model(*[torch.from_numpy(np.array(feeds[n])) for n in names]))
            outs.append(out.float().numpy())
    model.train(was_training)
    out = np.concatenate(outs, axis=0)
    order = np.concatenate(batches)
    res = np.empty_like(out)
    res[order] = out
    return res


def labels_cross_entropy(scores, y):
    """Cross-entropy of class scores (classes on axis 1, as torch takes them) against labels, a negative
    label marking a position not scored; None when there are no labels or none is scored. A segmentation map
    smaller than its labels (a Segformer's H/4 x W/4) is upsampled to them first, as transformers computes its
    loss (evaluate.upsampled)."""
    import torch.nn.functional as F

    from ..evaluate import upsampled

    if y is None or not bool((y >= 0).any()):
        return None
    if upsampled(scores.shape, y.shape):
        scores = F.interpolate(scores, size=tuple(y.shape[1:]), mode="bilinear", align_corners=False)
    return F.cross_entropy(scores, y.masked_fill(y < 0, -100), ignore_index=-100)


class TorchMetric:
    """Callable model -> metric value on the eval set: accuracy with labels, else fidelity to a reference model."""

    def __init__(self, data, names, task: str, reference_model=None, tags: list | None = None):
        self.data, self.names, self.task = data, list(names), task
        self.labelled = data.labels is not None and task in LABELLED_TASKS
        # tags: a tagger's class names (SourceModel.entity_tags), scored by entity F1 when they are BIO tags
        self.scheme = tag_scheme(tags) if task == "token-classification" else None
        self.name = metric_name(task, self.labelled, entity=bool(self.scheme))
        self.trimmer = None
        if reference_model is not None:
            from .batching import Trimmer

            self.trimmer = Trimmer(data, names)
            if not self.trimmer.verify(reference_model, data):
                self.trimmer = None
        self.reference = predict(reference_model, data, names, trimmer=self.trimmer) if reference_model is not None else None
        if not self.labelled and self.reference is None:
            raise ValueError("unlabelled evaluation needs a reference model")

    def outputs(self, model) -> np.ndarray:
        return predict(model, self.data, self.names, trimmer=self.trimmer)

    def __call__(self, model, out: np.ndarray | None = None) -> float:
        out = self.outputs(model) if out is None else out
        if self.labelled:
            return score([out], self.task, self.data.labels, scheme=self.scheme)
        return self.agreement(out)

    def progress(self, out: np.ndarray) -> float | None:
        """For an R^2-scored output (task regression, or one value per sample), the unclipped mean R^2 to
        the reference: the metric is clipped to [0, 1] and reads 0.0 for every epoch that is still worse
        than the mean, so early stopping needs this to see training move. None otherwise."""
        if self.labelled or self.reference is None or self.task in ("classification", "multi-label", "embedding",
                                                                    *DENSE_AXIS):
            return None
        ref = np.asarray(self.reference)
        if ref.dtype.kind != "f" or (self.task != "regression" and int(np.prod(ref.shape[1:])) != 1):
            return None
        from ..evaluate import r2_progress

        return r2_progress(np.asarray(out), ref)

    def divergence(self, out: np.ndarray) -> float | None:
        """For class scores, the mean KL divergence of `out`'s softmax from the reference's, per sample (and
        position): continuous where accuracy or top-1 agreement on a small held-out set moves in steps of one
        sample, so early stopping can see a student still learning while the metric stands still (a pruned
        MobileNet-like CNN stopped at 0.933 agreement on 60 samples, 5 flat epochs, its training loss still
        falling 12% an epoch). None for other outputs."""
        if self.reference is None or self.task not in ("classification", *DENSE_AXIS):
            return None
        ref, out = np.asarray(self.reference), np.asarray(out)
        axis = DENSE_AXIS.get(self.task, 1)
        if ref.dtype.kind != "f" or ref.shape != out.shape or ref.ndim < 2 or ref.shape[axis] < 2:
            return None
        # a few samples at a time: a segmentation set's scores can be gigabytes, and this takes three copies
        step = max(1, (1 << 24) // max(1, int(np.prod(ref.shape[1:]))))
        total, count = 0.0, 0
        with np.errstate(all="ignore"):
            for i in range(0, len(ref), step):
                lp, lq = _log_softmax(ref[i:i + step], axis), _log_softmax(out[i:i + step], axis)
                kl = np.sum(np.exp(lp) * (lp - lq), axis=axis)
                total, count = total + float(np.sum(kl, dtype=np.float64)), count + kl.size
        kl = total / max(count, 1)
        return kl if np.isfinite(kl) else None

    def agreement(self, out: np.ndarray) -> float | None:
        """Top-1 agreement (classifiers) or mean cosine (others) with the reference outputs."""
        if self.reference is None:
            return None
        keep = position_mask(self.data, np.shape(out)) if self.task in TOKEN_TASKS else None
        return score([out], self.task, None, [self.reference], scheme=self.scheme, keep=keep)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))
