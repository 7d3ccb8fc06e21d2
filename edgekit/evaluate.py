"""The evaluate stage: one metric per artifact on the eval set, higher is better, in [0, 1].

With labels: top-1 accuracy. Without: fidelity to the FP32 model's outputs on the
same inputs — top-1 agreement for classifiers, R^2 (clipped to [0, 1]) for one value per
sample, the mean over targets of each target's R^2 (each clipped to [0, 1]) for a regression of C values
per sample (--task regression), mean cosine similarity for embeddings and anything else (flattened per
sample). A labelled --task regression is scored against its targets instead (r2_labels: the same mean of
clipped R^2, against 'y', with the RMSE beside it). --task segmentation scores class scores [N, C, d1, ...] per
position (argmax over axis 1): mean IoU over the classes against labels [N, d1, ...] (a negative label is not
scored), else against FP32's classes, with pixel accuracy (agreement) beside it: pixel accuracy alone is mostly
background, and a small class INT8 wiped out moved it by less than the tolerance;
--task token-classification the same over a token classifier's [N, L, C] (argmax over the last axis): token
accuracy against labels [N, L] (HuggingFace's -100 for a token not scored), else token agreement (over the
positions its attention_mask keeps, when the data has one); a tagger whose class names are BIO tags (a
HuggingFace config's id2label: B-PER, I-PER, O) is scored by entity F1 instead (entities.py), token accuracy
beside it;
--task multi-label micro-averaged F1 of each class's yes/no against 0/1 labels [N, C], else against FP32's
decisions (multilabel.py). A model
with several outputs: without labels, "fidelity_min", the lowest fidelity over them (each in
metrics["per_output"]); with labels, accuracy on the first and each other output's fidelity to FP32 in
metrics["other_outputs_fidelity"], which tuning holds to the same tolerance.
"""
from __future__ import annotations

import numpy as np

from .dataset import Dataset
from .errors import CalibrationError, InputError
from .fsutil import per_file_version
from .onnxutil import ort_load_problem, run_batches, session
from . import entities, multilabel
from .source import DENSE_AXIS, LABELLED_TASKS


# tasks whose evaluation scores labels when the data has them: a regression's are its targets (r2_labels)
SCORED_ON_LABELS = (*LABELLED_TASKS, "regression")
# (with labels, without) for the tasks scored per position
DENSE_METRICS = {"segmentation": ("miou", "miou_agreement"),
                 "token-classification": ("token_accuracy", "token_agreement"),
                 "causal-lm": ("next_token_accuracy", "next_token_agreement")}
TOKEN_TASKS = ("token-classification", "causal-lm")  # scored per token: padding (attention_mask 0) is no token
ENTITY_METRICS = ("entity_f1", "entity_f1_agreement")  # a token classifier whose classes are BIO tags


def metric_name(task: str, labelled: bool, outputs: int = 1, entity: bool = False) -> str:
    if labelled and task == "classification":
        return "accuracy"
    if entity and task == "token-classification" and (labelled or outputs == 1):
        return ENTITY_METRICS[0 if labelled else 1]
    if labelled and task in DENSE_METRICS:
        return DENSE_METRICS[task][0]
    if labelled and task == multilabel.TASK:
        return "f1_micro"
    if labelled and task == "regression":
        return "r2_labels"  # mean over targets of each one's R^2 against the labels (mean_r2_fidelity)
    if outputs > 1:
        return "fidelity_min"  # the lowest of each output's own fidelity (per_output)
    if task == "classification":
        return "top1_agreement"
    if task in DENSE_METRICS:
        return DENSE_METRICS[task][1]
    if task == multilabel.TASK:
        return "f1_agreement"
    if task == "embedding":
        return "cosine"
    if task == "regression":
        return "r2"  # mean over targets of each one's R^2 to FP32 (mean_r2_fidelity)
    return "fidelity"


def check_labels(labels, n_classes: int, where: str, classes: list | None = None) -> None:
    """Labels must index the model's output columns; anything else would score as silently wrong.
    classes: the class folder names the labels of an image folder come from."""
    y = np.asarray(labels)
    if classes and n_classes >= 2 and len(classes) > n_classes:
        raise CalibrationError(f"{where}: {len(classes)} class folders ({', '.join(classes[:3])}, ...) but the "
                               f"model's output has {n_classes} classes; each subfolder is one class, numbered "
                               "in sorted order: keep one per class the model was trained on")
    if n_classes < 2:
        raise CalibrationError(f"{where}: labels 'y' need a classifier output [N, C] with C >= 2 columns; "
                               f"the model's output has {n_classes}")
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise CalibrationError(f"{where}: label {int(y[i])} (sample {i}) is not a class index in [0, {n_classes}) "
                               f"for the model's {n_classes}-class output; {int(bad.sum())} of {len(y)} labels are "
                               "out of range")


def check_dense_labels(labels, out_shape, where: str, axis: int = 1) -> None:
    """Per-position labels [N, d1, ...] must match the scores (classes on `axis`: [N, C, d1, ...] or
    [N, d1, ..., C]) position for position and index their C classes (a negative label marks a position
    that is not scored)."""
    y = np.asarray(labels)
    shape = tuple(out_shape)
    layout = "[N, C, d1, ...]" if axis == 1 else "[N, d1, ..., C]"
    if len(shape) < 3 or shape[axis] < 2:
        raise CalibrationError(f"{where}: per-position labels need class scores {layout} with C >= 2; the "
                               f"model's first output is {list(shape)}")
    positions = shape[2:] if axis == 1 else shape[1:-1]
    if upsampled(shape, y.shape, axis):
        pass  # a map at a fraction of the labels' size (a Segformer's H/4 x W/4): scored upsampled to them
    elif y.shape[1:] != positions:
        raise CalibrationError(f"{where}: labels 'y' have shape {list(y.shape)}, expected [N, "
                               f"{', '.join(map(str, positions))}] to match the class scores {list(shape)}")
    n_classes = int(shape[axis])
    bad = y >= n_classes
    if bad.any():
        i = int(np.argmax(bad.reshape(len(y), -1).any(1)))
        raise CalibrationError(f"{where}: label {int(y.reshape(-1)[int(np.argmax(bad))])} (sample {i}) is not a class "
                               f"index in [0, {n_classes}) for the model's {n_classes}-class scores; "
                               f"{int(bad.sum())} of {y.size} labels are out of range (negative ones are not scored)")
    if not (y >= 0).any():
        raise CalibrationError(f"{where}: every label in 'y' is negative (not scored): nothing to score")


def check_targets(labels, out_shape, where: str) -> None:
    """Regression targets [N] or [N, C] must give one value per output value of a sample."""
    want = int(np.prod(out_shape[1:])) if len(out_shape) > 1 else 1
    got = int(np.prod(np.shape(labels)[1:])) if np.ndim(labels) > 1 else 1
    if got != want:
        raise CalibrationError(f"{where}: labels 'y' hold {got} target(s) per sample; the model's first output "
                               f"{list(out_shape)} has {want} value(s) per sample")


def _check_any_labels(task: str, labels, first, where: str, classes: list | None = None) -> None:
    if task == "regression":
        check_targets(labels, first.shape, where)
    elif task in DENSE_AXIS:
        check_dense_labels(labels, first.shape, where, DENSE_AXIS[task])
    elif task == multilabel.TASK:
        multilabel.check_labels(labels, first.shape, where)
    else:
        check_labels(labels, int(np.prod(first.shape[1:])) if first.ndim > 1 else 1, where, classes)


def check_training_labels(source, ds) -> None:
    """--train labels must index the PyTorch model's classes too, checked before any work as --eval's
    are: cross-entropy failed mid-run, after pruning, with "IndexError: Target 7 is out of bounds".
    Per-position labels are checked here too, before --task segmentation takes them over (loader.
    take_dense_labels): labels a row short crashed the run with a numpy broadcast error."""
    labels = None if ds is None else ds.labels
    if labels is None and ds is not None and source.task in (*DENSE_AXIS, multilabel.TASK):
        labels = getattr(ds, "dense_labels", None)
    if labels is None or source.kind != "torch" or source.task not in LABELLED_TASKS:
        return
    import torch

    from .pruning.graph import first_tensor

    feeds = ds.take(1).inputs
    with torch.no_grad():
        out = first_tensor(source.module(*[torch.from_numpy(np.array(feeds[s.name])) for s in source.inputs]))
    _check_any_labels(source.task, labels, out, ds.source or "training data", ds.extra.get("classes"))


def dense_argmax(out, axis: int = 1) -> np.ndarray:
    """The class per position of scores with their classes on `axis` ([N, C, d1, ...] or [N, d1, ..., C])."""
    return np.asarray(out).argmax(axis)


def upsampled(out_shape, label_shape, axis: int = 1) -> bool:
    """Whether a segmentation map [N, C, h, w] is scored against labels [N, H, W] of a larger size (each side at
    least its own, one larger): what transformers' Segformer, BEiT and DPT heads give, a quarter of the input's
    side, and how their labels come, at the image's."""
    out_shape, label_shape = tuple(out_shape), tuple(label_shape)
    if axis != 1 or len(out_shape) != 4 or len(label_shape) != 3:
        return False
    small, big = out_shape[2:], label_shape[1:]
    return all(isinstance(s, int) and s <= b for s, b in zip(small, big)) and small != big


def dense_classes(out, label_shape, axis: int = 1) -> np.ndarray:
    """The class per position, at the labels' size: a smaller segmentation map's scores upsampled bilinearly
    first (align_corners False, as transformers' semantic segmentation heads compute their loss and their
    post-processing), a few samples at a time, since the upsampled scores of a set can be gigabytes."""
    out = np.asarray(out)
    if not upsampled(out.shape, label_shape, axis):
        return dense_argmax(out, axis)
    import torch
    import torch.nn.functional as F

    size = tuple(int(d) for d in label_shape[1:])
    step = max(1, (1 << 24) // max(1, out.shape[1] * size[0] * size[1]))
    parts = []
    with torch.no_grad():
        for i in range(0, len(out), step):
            x = torch.from_numpy(np.ascontiguousarray(out[i:i + step], np.float32))
            parts.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False).argmax(1).numpy())
    return np.concatenate(parts) if parts else np.zeros((0, *size), np.int64)


def pixel_accuracy(out, labels, axis: int = 1) -> float:
    """Share of scored positions (label >= 0) whose argmax class is the label."""
    y = np.asarray(labels)
    keep = y >= 0
    return float(np.sum((dense_classes(out, y.shape, axis) == y) & keep) / max(int(keep.sum()), 1))


def pixel_agreement(out, ref, axis: int = 1, keep=None) -> float:
    """Share of positions (those `keep` marks, default all) whose argmax class is FP32's."""
    same = dense_argmax(out, axis) == dense_argmax(ref, axis)
    if keep is None:
        return float(np.mean(same))
    keep = np.asarray(keep, bool)
    return float(np.sum(same & keep) / max(int(keep.sum()), 1))


def entity_scores(out, true, scheme: list, keep=None, axis: int = -1) -> tuple:
    """(entity F1, {type: F1}) of a tagger's scores [N, L, C] against class indices [N, L] (labels, or FP32's
    argmax), over the positions `keep` marks (default: the labels that are not negative)."""
    true = np.asarray(true)
    keep = (true >= 0) if keep is None else np.asarray(keep, bool)
    return entities.scores(dense_argmax(out, axis), true, scheme, keep)


def entity_f1(out, true, scheme: list, keep=None, axis: int = -1) -> float:
    return entity_scores(out, true, scheme, keep, axis)[0]


def position_mask(ds, shape) -> np.ndarray | None:
    """The positions [N, L] a tokenized set's attention_mask keeps, when its inputs have one of the scores'
    [N, L]: padding is no token, and agreeing on it counted as agreement. None otherwise."""
    mask = ds.inputs.get("attention_mask") if ds is not None else None
    if mask is None or tuple(np.shape(mask)) != tuple(shape[:2]):
        return None
    return np.asarray(mask) != 0


def perplexity(logits, labels) -> float | None:
    """exp of the mean cross-entropy of next-token scores [N, L, V] against labels [N, L] (negative: not
    scored), as a language model is judged: lower is better, and it moves where top-1 accuracy does not (the
    right token's probability falling while it stays first). None when no position is scored."""
    labels = np.asarray(labels)
    total, count = 0.0, 0
    for out, lab in zip(logits, labels):  # a sample at a time: [L, V] in float64, not the whole set
        keep = lab >= 0
        if not keep.any():
            continue
        z = np.asarray(out, np.float64)[keep]
        top = z.max(-1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(z - top).sum(-1))
        total += float(np.sum(lse - z[np.arange(len(z)), lab[keep]]))
        count += int(keep.sum())
    return float(np.exp(total / count)) if count else None


def confusion(pred, true, classes: int) -> np.ndarray:
    """[C, C] counts of (label, predicted class) over the positions scored (label >= 0)."""
    t, p = np.asarray(true).reshape(-1), np.asarray(pred).reshape(-1)
    keep = t >= 0
    idx = t[keep].astype(np.int64) * classes + p[keep].astype(np.int64)
    return np.bincount(idx, minlength=classes * classes).reshape(classes, classes)


def mean_iou(pred, true, classes: int) -> float:
    """Mean over classes of |predicted c and labelled c| / |predicted c or labelled c|, counted over the whole
    set, for the classes either side has somewhere (one neither predicts nor labels is not counted); 1.0 when
    nothing is scored."""
    return _iou(confusion(pred, true, classes).astype(np.float64))


def _iou(cm) -> float:
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    present = union > 0
    return float(np.mean(inter[present] / union[present])) if present.any() else 1.0


def miou(out, labels, axis: int = 1) -> float:
    """Mean IoU of the argmax classes of scores `out` against per-position labels (negative: not scored)."""
    return segmentation_scores(out, labels, axis)[0]


def segmentation_scores(out, labels, axis: int = 1) -> tuple:
    """(mean IoU, pixel accuracy) against per-position labels, from one confusion matrix: one argmax (and one
    upsampling) of the scores for both."""
    out, y = np.asarray(out), np.asarray(labels)
    c = int(out.shape[axis])
    cm = confusion(dense_classes(out, y.shape, axis), y, c).astype(np.float64)
    return _iou(cm), float(np.trace(cm) / max(cm.sum(), 1.0))


def miou_agreement(out, ref, axis: int = 1) -> float:
    """Mean IoU of `out`'s argmax classes against the reference's (FP32's)."""
    out = np.asarray(out)
    return mean_iou(dense_argmax(out, axis), dense_argmax(ref, axis), int(out.shape[axis]))


def score(outputs: list, task: str, labels=None, reference: list | None = None, *, scheme: list | None = None,
          keep=None) -> float:
    """The metric over the first output (accuracy with labels); without labels, the lowest fidelity over
    every output the variant and the reference both give in the same shape (see per_output).
    scheme: a token classifier's tags (entities.tag_scheme), scored by entity F1; keep: the positions an
    unlabelled token classifier is scored on (position_mask)."""
    out = np.asarray(outputs[0])
    if labels is not None and task == "classification":
        return float(np.mean(out.reshape(len(out), -1).argmax(1) == np.asarray(labels)))
    if labels is not None and task == "segmentation":
        return miou(out, labels, DENSE_AXIS[task])
    if labels is not None and scheme and task == "token-classification":
        return entity_f1(out, labels, scheme)
    if labels is not None and task in DENSE_AXIS:
        return pixel_accuracy(out, labels, DENSE_AXIS[task])
    if labels is not None and task == multilabel.TASK:
        return multilabel.f1_labels(out, labels)
    if labels is not None and task == "regression":
        return mean_r2_fidelity(out, np.asarray(labels))
    if reference is None:
        raise ValueError("unlabelled evaluation needs reference outputs")
    return min(v for v in per_output(outputs, task, reference, scheme=scheme, keep=keep) if v is not None)


def per_output(outputs: list, task: str, reference: list, *, scheme: list | None = None, keep=None) -> list:
    """Fidelity of each output to the reference: the task's metric for the first, exact agreement for
    integer and boolean outputs, R^2 or cosine (by shape) for the other float ones, since a second head's
    meaning is unknown; None where the shapes differ (a
    variable-length output such as post-NMS boxes cannot be compared element by element)."""
    vals = []
    for j, (o, r) in enumerate(zip(outputs, reference)):
        o, r = np.asarray(o), np.asarray(r)
        if o.shape != r.shape:
            vals.append(None if j else 0.0)
        elif j == 0 and task == "classification":
            vals.append(float(np.mean(o.reshape(len(o), -1).argmax(1) == r.reshape(len(r), -1).argmax(1))))
        elif j == 0 and task == "segmentation" and o.ndim >= 3:
            vals.append(miou_agreement(o, r, DENSE_AXIS[task]))
        elif j == 0 and task == "token-classification" and o.ndim == 3 and scheme:
            vals.append(entity_f1(o, dense_argmax(r, -1), scheme, _keep(keep, o)))
        elif j == 0 and task in DENSE_AXIS and o.ndim >= 3:
            vals.append(pixel_agreement(o, r, DENSE_AXIS[task], _keep(keep, o)))
        elif j == 0 and task == multilabel.TASK:
            vals.append(multilabel.f1_agreement(o, r))
        elif j == 0 and task == "regression":
            vals.append(mean_r2_fidelity(o, r))
        else:
            vals.append(output_fidelity(o, r))
    return vals


def _keep(keep, out) -> np.ndarray | None:
    """keep where it fits the positions of a token classifier's `out` [N, L, C], else None (every position)."""
    if keep is not None and np.shape(keep) == np.shape(out)[:-1]:
        return np.asarray(keep, bool)
    return None


def output_fidelity(out: np.ndarray, ref: np.ndarray) -> float:
    """An output of unknown meaning against its reference (same shape)."""
    if ref.dtype.kind in "iub":
        # class indices, masks, counts: equal or not (R^2 over class ids scored label 3 vs 4 as close)
        return exact_agreement(out, ref)
    return _generic(out, ref)


def exact_agreement(out: np.ndarray, ref: np.ndarray) -> float:
    """Share of samples whose output equals the reference exactly (every element of the sample)."""
    if len(ref) == 0:
        return 1.0
    return float(np.mean(np.all(out.reshape(len(out), -1) == ref.reshape(len(ref), -1), axis=1)))


def _generic(out: np.ndarray, ref: np.ndarray) -> float:
    a = out.reshape(len(out), -1).astype(np.float64)
    b = ref.reshape(len(ref), -1).astype(np.float64)
    if a.shape[1] == 1:
        return r2_fidelity(a[:, 0], b[:, 0])
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(denom > 0, np.sum(a * b, axis=1) / np.maximum(denom, 1e-30), 1.0)
    # an opposite vector is as wrong as an unrelated one: keep every metric in [0, 1]
    return float(np.mean(np.clip(cos, 0.0, 1.0)))


def mean_r2_fidelity(out: np.ndarray, ref: np.ndarray) -> float:
    """C regression targets per sample: each target's R^2 (r2_fidelity, so clipped to [0, 1]) averaged
    over targets, so every target counts alike whatever its scale; a cosine per sample would miss a
    shrunken small-scale target beside a large one. One target: r2_fidelity itself."""
    return _mean_per_target(r2_fidelity, out, ref)


def r2_progress(out: np.ndarray, ref: np.ndarray) -> float:
    """The mean over targets of each target's R^2 to the reference, NOT clipped: what training monitors
    beside an R^2-scored metric, which sits at its floor 0.0 while a fresh student is still worse than the
    mean on every target (the loss fell 10.43 -> 9.59 while 'r2' read 0.0, and early stopping kept epoch 0)."""
    return _mean_per_target(_r2, out, ref)


def _mean_per_target(r2, out: np.ndarray, ref: np.ndarray) -> float:
    a = out.reshape(len(out), -1).astype(np.float64)
    b = ref.reshape(len(ref), -1).astype(np.float64)
    return float(np.mean([r2(a[:, k], b[:, k]) for k in range(b.shape[1])])) if b.shape[1] else 1.0


def r2_fidelity(got: np.ndarray, ref: np.ndarray) -> float:
    """One value per sample (a regression): the coefficient of determination of the reference by the
    variant, clipped to [0, 1]. A per-sample cosine would only see the sign, a cosine over the column
    not the scale (half the output would score 1.0); this sees both, and offsets too."""
    return float(min(1.0, max(0.0, _r2(got, ref))))


def _r2(got: np.ndarray, ref: np.ndarray) -> float:
    sse = float(np.sum((got - ref) ** 2))
    sst = float(np.sum((ref - ref.mean()) ** 2))
    if sst == 0.0:  # a constant reference: exact, or judged against its own magnitude
        sst = float(np.sum(ref ** 2))
        if sst == 0.0:
            return 1.0 if sse == 0.0 else 0.0
    return 1.0 - sse / sst


# ops whose result for one sample depends on the others in its batch: dynamic quantization takes one
# activation scale per call, over the whole batch
BATCH_DEPENDENT_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})
DEPLOY_BATCH = 1  # what the device runner, the self-test and the speed gate run


@per_file_version  # asked several times per scored candidate
def _graph(path) -> tuple:
    """(op types, the batch its inputs fix, as onnxutil.fixed_batch reads it, or None): one load answers both."""
    import onnx

    g = onnx.load(path, load_external_data=False).graph
    init = {i.name for i in g.initializer}
    firsts = [i.type.tensor_type.shape.dim[0] for i in g.input if i.name not in init and i.type.tensor_type.shape.dim]
    fixed = next((int(d.dim_value) for d in firsts if d.HasField("dim_value") and d.dim_value > 0), None)
    return frozenset(n.op_type for n in g.node), fixed


def _op_types(path) -> frozenset:
    return _graph(path)[0]


def batch_dependent(path) -> bool:
    return bool(_op_types(path) & BATCH_DEPENDENT_OPS)


def quantized_graph(path) -> bool:
    return bool(_op_types(path) & {"QuantizeLinear", "DequantizeLinear"})


class Evaluator:
    """Callable: onnx path -> {"name", "value", "n", "data", "batch"}; caches the FP32 reference outputs.

    Batch-dependent graphs (dynamic INT8) are scored at deploy_batch: in batches of 64 a dim sample got the
    activation scale of the brightest one in its batch (digits with 0.05x-20x brightness: 0.8878 at 64 vs
    0.9079 at 1, the batch the device runs), so the verdict could flip either way.
    """

    def __init__(self, eval_ds: Dataset, task: str, reference_path=None, *, batch_size: int = 64,
                 deploy_batch: int = DEPLOY_BATCH, tags: list | None = None):
        self.ds, self.task, self.reference_path, self.batch_size = eval_ds, task, reference_path, batch_size
        self.deploy_batch = deploy_batch
        # quantized graphs run unoptimised: QDQ as exact float arithmetic, as a GPU target runs it
        self.simulate_qdq = False
        self.labelled = eval_ds.labels is not None and task in SCORED_ON_LABELS
        self._refs = {}  # batch size -> FP32 reference outputs
        self._labels_checked = False
        self._outputs = 1  # known after the first call; names the metric (fidelity_min over several)
        # tags: a tagger's class names (SourceModel.entity_tags); BIO ones are scored by entity F1 (entities.py)
        self.scheme = entities.tag_scheme(tags) if task == "token-classification" else None

    def batch_for(self, path) -> int:
        """The batch path is scored at, as recorded: a graph that fixes its batch runs only that one
        (run_batches), which a metric saying 64 hid."""
        return _graph(path)[1] or (self.deploy_batch if batch_dependent(path) else self.batch_size)

    @property
    def name(self) -> str:
        return metric_name(self.task, self.labelled, self._outputs, bool(self.scheme))

    def reference_outputs(self, batch: int | None = None):
        """FP32 outputs at `batch` (default: batch_size), cached per batch size: a candidate is compared with
        the reference run the same way, or an output reduced over the batch (a mean) compared one value per
        64 samples with one per sample and a dynamic INT8 within 0.2% of FP32 scored a 100% drop."""
        batch = batch or self.batch_size
        if batch not in self._refs:
            self._refs[batch] = run_batches(self.reference_path, self.ds, batch_size=batch)
        return self._refs[batch]

    def outputs(self, path):
        return run_batches(path, self.ds, batch_size=self.batch_for(path), sess=self._session(path))

    def _session(self, path):
        if not self.simulate_qdq or not quantized_graph(path):
            return None
        return session(path, optimize=False)

    def __call__(self, path, *, numeric: bool = False, numeric_against=None) -> dict:
        """numeric=True adds "numeric": each output's relative error to FP32 (see numeric_fidelity), what a
        final artifact records besides the metric, which is blind to a scale error (top-1 agreement 1.0 on
        boxes 15x too small). numeric_against: the model to measure that error against instead (the file
        quantized, when it is not the FP32 reference: a distilled model's own distance from FP32 is no
        error of its INT8 version's)."""
        try:
            out = self.outputs(path)
        except Exception as e:
            # onnxruntime refusing these inputs (a token id past the embedding table, a shape the graph
            # cannot take) is a problem with the data for this model: say so in one line, naming both
            if not type(e).__module__.startswith("onnxruntime"):
                raise
            from pathlib import Path

            # a model onnxruntime cannot open at all (opset 99, an op of an unknown domain) is no fault of the
            # data: it was blamed on the calibration file, in a reason cut inside a C++ signature. The user's
            # model is an input error; a candidate edgekit made is a CalibrationError, which tuning moves past,
            # but says what failed (a QLinearAdd reading an int32 bias read "calib.npy: ... cannot run on this
            # data")
            why = ort_load_problem(path)
            if why is not None and str(path) == str(self.reference_path):
                raise InputError(f"{Path(path).name}: onnxruntime cannot load this model: {clip(why, 300)}") from None
            if why is not None:
                raise CalibrationError(f"{Path(path).name}: onnxruntime cannot load this quantized model: "
                                       f"{clip(why, 300)}") from None
            # onnxruntime quotes the absolute path, which for a candidate is a staging folder deleted by then
            msg = " ".join(str(e).replace(str(path), Path(path).name).split())
            raise CalibrationError(f"{self.ds.source or 'eval data'}: {Path(path).name} cannot run on this data: "
                                   f"{clip(msg, 300)}") from None
        if self.labelled and not self._labels_checked:
            _check_any_labels(self.task, self.ds.labels, np.asarray(out[0]), self.ds.source or "eval data",
                              self.ds.extra.get("classes"))
            self._labels_checked = True
        batch = self.batch_for(path)
        ref = None if self.labelled and len(out) == 1 and not numeric else self.reference_outputs(batch)
        first = np.asarray(out[0])
        keep = position_mask(self.ds, first.shape) if self.task in TOKEN_TASKS else None
        seg = ent = None
        if self.labelled and self.task == "segmentation" and first.ndim >= 3:
            # both figures from one confusion matrix: the argmax (and any upsampling) once
            seg = segmentation_scores(first, self.ds.labels, DENSE_AXIS[self.task])
            value = seg[0]
        elif self.scheme and first.ndim == 3 and (self.labelled or (len(out) == 1 and np.shape(ref[0]) == first.shape)):
            # the micro F1 and each type's from one reading of the entities (a Python walk over every token)
            ent = entity_scores(first, self.ds.labels if self.labelled else dense_argmax(ref[0], -1), self.scheme,
                                None if self.labelled else keep)
            value = ent[0]
        else:
            value = score(out, self.task, self.ds.labels if self.labelled else None, ref, scheme=self.scheme,
                          keep=keep)
        self._outputs = len(out)
        res = {"name": self.name, "value": value, "n": len(self.ds),
               "data": self.ds.source, "batch": batch}
        if ent is not None:
            # beside the entity F1, each type's and the share of tokens, as token classifiers were scored before
            res["entity_f1_by_type"] = ent[1]
            if self.labelled:
                res["token_accuracy"] = pixel_accuracy(first, self.ds.labels, -1)
            else:
                res["token_agreement"] = pixel_agreement(first, ref[0], -1, keep)
        if self.task == "segmentation" and first.ndim >= 3:
            # beside the mean IoU, the share of pixels: what it weighs by class size, the IoU does not
            if seg is not None:
                res["pixel_accuracy"] = seg[1]
            elif ref is not None and np.shape(ref[0]) == first.shape:
                res["pixel_agreement"] = pixel_agreement(first, ref[0], DENSE_AXIS[self.task])
        if self.labelled and self.task == "causal-lm" and first.ndim == 3:
            res["perplexity"] = perplexity(first, self.ds.labels)
        if self.labelled and self.task == "regression":  # in the targets' own units, as users judge a regressor
            err = np.asarray(out[0], np.float64).reshape(len(out[0]), -1) \
                - np.asarray(self.ds.labels, np.float64).reshape(len(self.ds.labels), -1)
            res["rmse"] = float(np.sqrt(np.mean(err ** 2)))
        if numeric:
            against = ref if numeric_against is None else run_batches(numeric_against, self.ds, batch_size=batch)
            res["numeric"] = numeric_fidelity(out, against, self.output_names())
        if self.simulate_qdq and quantized_graph(path):
            res["simulated"] = "cpu, graph optimisations off (QDQ arithmetic)"
        if len(out) > 1:
            # the first output read as `value` reads it: by its tags, over the tokens the attention mask keeps
            fid = per_output(out, self.task, ref, scheme=self.scheme, keep=keep)
            if self.labelled:
                # accuracy speaks for the first output only: the others are held to FP32 (fidelity), and
                # the tolerance applies to them too (quant.tuning), so a broken second head is not "accurate"
                res["other_outputs_fidelity"] = fid[1:]
            else:
                res["per_output"] = fid  # value is the lowest of these
        return res


    def output_names(self) -> list:
        import onnx

        return [o.name for o in onnx.load(str(self.reference_path), load_external_data=False).graph.output]


NUMERIC_BLOCK = 0.25  # median relative error per sample above which an artifact is not recommended


def numeric_fidelity(outputs: list, reference: list, names: list | None = None) -> dict:
    """{output name: {"median_rel_err", "max_rel_err", "max_abs_diff"}} of each float output against FP32.

    Relative error per sample (||got - ref|| / ||ref|| over the sample's values), so a sample of small
    values is judged against its own size and a uniform scale error reads as itself (15x too small: 0.93).
    An output whose shape differs, or that is not float, is recorded as such, not scored.
    """
    res = {}
    for j, (o, r) in enumerate(zip(outputs, reference)):
        name = names[j] if names and j < len(names) else str(j)
        o, r = np.asarray(o), np.asarray(r)
        if o.shape != r.shape:
            res[name] = {"skipped": f"shape {list(o.shape)} vs FP32 {list(r.shape)}"}
        elif r.dtype.kind != "f":
            res[name] = {"exact_agreement": exact_agreement(o, r)}
        else:
            res[name] = _rel_err(o, r)
    return res


def _rel_err(out: np.ndarray, ref: np.ndarray) -> dict:
    a = out.reshape(len(out), -1).astype(np.float64) if out.ndim else out.reshape(1, 1).astype(np.float64)
    b = ref.reshape(len(ref), -1).astype(np.float64) if ref.ndim else ref.reshape(1, 1).astype(np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))  # -inf where FP32 has -inf (a mask) is no error
    with np.errstate(invalid="ignore"):  # inf - inf: handled on the next line, not worth a warning
        d = np.where(same, 0.0, np.abs(a - b))
    d = np.where(np.isnan(d), np.inf, d)  # a NaN or inf FP32 does not have is the largest error there is
    bf = np.where(np.isfinite(b), b, 0.0)
    norm = np.linalg.norm(bf, axis=1)
    # a sample whose reference is ~0 is judged against the output's typical size, not divided by ~0
    floor = max(float(np.median(norm)) * 1e-3, 1e-12)
    rel = np.linalg.norm(d, axis=1) / np.maximum(norm, floor)
    return {"median_rel_err": float(np.median(rel)) if len(rel) else 0.0,
            "max_rel_err": float(np.max(rel)) if len(rel) else 0.0,
            "max_abs_diff": float(np.max(d)) if d.size else 0.0}


def numeric_problem(numeric: dict | None, limit: float = NUMERIC_BLOCK) -> str:
    """A one-line reason when an output's median relative error to FP32 exceeds limit, else ''."""
    def far(e):  # "Infinity"/"NaN" as the manifest spells a non-finite error
        return isinstance(e, str) or not e <= limit

    bad = [(k, v["median_rel_err"]) for k, v in (numeric or {}).items()
           if v.get("median_rel_err") is not None and far(v["median_rel_err"])]
    if not bad:
        return ""
    return ("outputs far from FP32's values: "
            + ", ".join(f"'{k}' median relative error {e if isinstance(e, str) else f'{e:.1%}'}" for k, e in bad)
            + f" (above {limit:.0%}; the metric does not see a scale error)")


def clip(text: str, limit: int) -> str:
    """text cut to about limit characters at a word boundary, marked as cut: a message ending mid-word
    ("In Node, (\"0.bia") read as the whole of it."""
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return cut.rstrip(" ,;:") + " ..."


def with_drop(metrics: dict, reference: dict | None) -> dict:
    """Add reference value and absolute/relative drop vs the FP32 metric."""
    m = dict(metrics)
    if reference and reference.get("name") == m.get("name") and reference.get("value") is not None:
        ref = reference["value"]
        m["reference"] = ref
        m["drop_abs"] = ref - m["value"]
        m["drop_rel"] = (ref - m["value"]) / ref if ref else 0.0
    return m
