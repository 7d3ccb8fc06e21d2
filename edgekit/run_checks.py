"""Checks a compress run makes on the user's model, data and pre/post spec, where a mistake would otherwise
be silent or surface only on the device: each returns notes to print or raises a one-line UsageError."""
from __future__ import annotations

import sys

import numpy as np

from .artifact import Artifact, shape_text
from .errors import UsageError
from .source import DENSE_AXIS


def chance_notes(run, fp32: Artifact) -> list:
    """A source model at chance accuracy is almost always a setup mistake (a forgotten --weights left the
    factory's random initialisation, and the run reported 0.1039 on 10 classes without a word)."""
    from .calibration import labels_hint

    m = fp32.metrics or {}
    if m.get("name") == "r2_labels" and m.get("value") is not None and m["value"] <= 0.0:
        note = ("the source model's r2_labels is 0.0000: it predicts the targets no better than their mean does; "
                "check the weights, and that 'y' holds this model's targets in its output's order and units")
        print(f"edgekit: note: {note}", file=sys.stderr)
        return [note]
    shape = (fp32.outputs[0].get("shape") if fp32.outputs else None) or []
    classes = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
    if m.get("name") != "accuracy" or not classes or classes < 2 or m.get("value") is None \
            or m["value"] > chance_ceiling(run.ctx.eval.labels if run.ctx.eval is not None else None, classes):
        return []
    why = ("no --weights was given, so the model has its factory's initial weights (random unless the factory "
           "loads them)" if run.ctx.source.kind == "torch" and not run.ctx.source.spec.startswith("zoo:")
           and not run.ctx.source.weights
           else f"check the weights, and {labels_hint(run.ctx.eval)}")
    note = f"the source model's accuracy {m['value']:.4f} is at chance level for {classes} classes: {why}"
    print(f"edgekit: note: {note}", file=sys.stderr)
    return [note]


def chance_ceiling(labels, classes: int) -> float:
    """Highest accuracy still read as chance: always guessing the commonest label, plus two standard
    errors of that guess on this many samples (or half of the rest of one class's share, whichever is
    more). A flat 1.5 / C called a working two-class model at 0.67 (majority 0.51) "chance"."""
    y = np.asarray(labels).reshape(-1) if labels is not None else np.zeros(0)
    _, counts = np.unique(y, return_counts=True)
    if len(counts) >= 2:
        p, n = counts.max() / y.size, y.size
    else:  # one class in the labels (or none): guessing it scores 1.0, which says nothing about the model
        p, n = 1.0 / classes, None
    se = 2.0 * float(np.sqrt(p * (1.0 - p) / n)) if n else 0.0
    return float(p + max(se, (1.0 - p) / (2.0 * classes)))


def label_notes(run, fp32: Artifact) -> list:
    """What the --eval labels are scored against, when that is not plain: labels a one-value output
    cannot use (a one-logit binary classifier showed 'fidelity 0.9901', its labels silently unused), or
    the first of several outputs (a model returning (embedding, logits) was scored on the embedding)."""
    ev = run.ctx.eval
    if ev is None or ev.labels is None or not fp32.outputs:
        return []
    first = fp32.outputs[0]
    shape = shape_text(first.get("shape"))
    if run.ctx.source.task in (*DENSE_AXIS, "regression", "multi-label"):
        return []  # per-position classes scored as mean IoU, targets as r2_labels, 0/1 per class as F1
    if run.ctx.source.task != "classification" and getattr(run.ctx.source, "task_given", False):
        note = (f"--eval labels unused: --task {run.ctx.source.task} scores the model's output {first['name']!r} "
                f"{shape} by fidelity to FP32")
    elif run.ctx.source.task != "classification":
        dims = list(first.get("shape") or [])
        one_value = len(dims) <= 1 or all(d == 1 for d in dims[1:])
        if str(first.get("dtype", "float32")).startswith(("int", "uint", "bool")):
            hint = (f" ({first.get('dtype')} values, e.g. class ids: return the class scores as [N, C] to be scored "
                    "on accuracy; ids are held to exact agreement with FP32)")
        elif one_value:
            hint = (" (a one-logit binary classifier: return two logits to be scored on accuracy, or pass --task "
                    "multi-label to score its yes/no by F1 against 0/1 labels)")
        else:
            hint = " (return the class scores as [N, C] to be scored on accuracy)"
        other = _scores_among(fp32.outputs[1:], ev.labels)
        if other:
            # a model returning (features, ..., logits): the scores are there, only not first
            hint = (f" (its output {other['name']!r} {shape_text(other.get('shape'))} fits the labels as class "
                    "scores: return it first to be scored on accuracy)")
        note = (f"--eval labels unused: the model's output {first['name']!r} is {shape}, not [N, C] class scores "
                f"with C >= 2, so metrics are fidelity to FP32{hint}")
    elif len(fp32.outputs) > 1:
        note = (f"accuracy is scored on the first of {len(fp32.outputs)} outputs, {first['name']!r} {shape}; "
                "return the class scores first if that is not them")
    else:
        return []
    print(f"edgekit: note: {note}", file=sys.stderr)
    return [note]


def _scores_among(outputs: list, labels) -> dict | None:
    """The first float output with a class-scores shape [N, C] whose C covers every label, else None."""
    from .loader import class_scores_shape

    top = int(np.max(labels)) if np.size(labels) else 0
    for o in outputs:
        dims = list(o.get("shape") or [])
        if str(o.get("dtype", "float32")).startswith("float") and class_scores_shape(dims) and dims[1] > top:
            return o
    return None


def post_task_notes(task: str, spec, where: str) -> list:
    """A declared post step that reads the first output as another kind of scores than the task: softmax_topk
    ranks a multi-label model's classes as if exclusive (its probabilities sum to 1 over classes that are each a
    yes/no), so the device got neither the decisions edgekit scored nor their probabilities."""
    post = [s.get("op") for s in ((spec or {}).get("post") or []) if isinstance(s, dict)]
    if task == "multi-label" and post[:1] == ["softmax_topk"]:
        return [f"{where}: softmax_topk takes the classes as exclusive, but --task multi-label scores a yes/no per "
                "class; the sigmoid_threshold post step gives the device those decisions ({probs, labels})"]
    return []


def check_post_fits(run, sample, where: str = "--preprocess", *, sess=None) -> None:
    """The declared post-processing run once on the FP32 model's real outputs: a spec that cannot work
    on them (top-k above the class count) would otherwise ship in every bundle and fail on the device.
    sess: a session already open on model.fp32.onnx."""
    post = (run.manifest.prepost or {}).get("post")
    if not post:
        return
    from .onnxutil import run_batches, session
    from .prepost.errors import PrepostError
    from .prepost.pipeline import Pipeline

    fp32 = run.staging / "model.fp32.onnx"
    # one sample, as the device runner post-processes frame by frame: per-image steps (NMS) take one
    one = sample.take(1)
    sess = sess or session(fp32)
    outs = run_batches(fp32, one, sess=sess)
    names = [o.name for o in sess.get_outputs()]
    try:
        Pipeline.from_spec(run.manifest.prepost).postprocess(outs, feeds=dict(one.inputs), names=names)
    except PrepostError as e:
        raise UsageError(f"{where}: the post-processing does not fit {run.cfg.model}'s outputs: "
                         f"{str(e).splitlines()[0]}") from None


def check_rows_follow_batch(path, data, where: str, *, sess=None) -> None:
    """Refuse an ONNX model with an output whose number of rows follows the data (NonZero, NMS in the graph:
    detections [k, 6] for the whole batch). Scoring joins each output's batches and compares them sample by
    sample, so such an output was compared row against unrelated row, or crashed when the INT8 file kept
    another count. Run at the batch sizes the PyTorch loader probes, with its test."""
    from .loader import CHECK_BATCH, PROBE_BATCH, rows_follow_data
    from .onnxutil import fixed_batch, session

    if data is None or len(data) < CHECK_BATCH:
        return
    try:
        sess = sess or session(path)
        if fixed_batch(sess):
            return
        names = {i.name for i in sess.get_inputs()}
        runs = [sess.run(None, {k: np.asarray(v) for k, v in data.take(n).inputs.items() if k in names})
                for n in (PROBE_BATCH, CHECK_BATCH)]
    except Exception:  # a model onnxruntime cannot load or run is named, with its reason, where it is scored
        return
    for o, a, b in zip(sess.get_outputs(), *runs):
        why = rows_follow_data(o.name, np.shape(a), np.shape(b), cause="NonZero or NMS in the graph")
        if why:
            raise UsageError(f"{where}: {why}")


def dtype_notes(inputs: list, sample: dict | None) -> list:
    """Inputs the ONNX model takes in another integer type than the data has (int32 token ids become an
    int64 input: what nn.Embedding and ONNX Gather take by default). edgekit's own runner casts, but an
    application feeding the device model its int32 ids gets onnxruntime's type error: say so here."""
    if not sample:
        return []
    notes = []
    for s in inputs:
        arr = sample.get(s.name)
        if arr is None and len(inputs) == 1 and len(sample) == 1:
            arr = next(iter(sample.values()))
        if arr is None or np.dtype(arr.dtype).kind not in "iu" or np.dtype(s.dtype).kind not in "iub":
            continue
        if np.dtype(arr.dtype) != np.dtype(s.dtype):
            notes.append(f"input {s.name!r} is {s.dtype} in the ONNX model (the data is {np.dtype(arr.dtype)}): "
                         f"an application on the device must feed {s.dtype} (edgekit's runner casts)")
    return notes


def output_name_notes(source) -> list:
    """Outputs renamed on the way to ONNX: a dict key equal to an input's name cannot name an output too."""
    names = getattr(source.module, "edgekit_output_names", None)
    if not names:
        return []
    return [f"output {a!r} is named {b!r} in the ONNX model (an input is called {a!r})"
            for a, b in zip(names, source.outputs) if a != b]

