"""The load stage: turn a model spec into a SourceModel.

Specs: zoo:NAME, path/to/file.py:factory (+ --weights), path/to/model.onnx.
Weights load with torch.load(weights_only=True); a pickled full model needs trust_pickle.
"""
from __future__ import annotations

import importlib.util
import inspect
import math
import sys
from pathlib import Path

from .artifact import TensorSpec
from .errors import InputError
from .fsutil import sha256_file
from .source import DENSE_AXIS, LABELLED_TASKS, SourceModel


def load_source(spec: str, *, weights: str | None = None, trust_pickle: bool = False,
                input_shape: tuple | None = None, seed: int = 0, sample_inputs: dict | None = None) -> SourceModel:
    """sample_inputs: {name: array with a leading sample axis} used to infer input specs for user models."""
    if spec.startswith("zoo:"):
        from . import zoo

        if weights:
            raise InputError(f"{weights}: --weights does not apply to zoo models (they bring their own)")
        return zoo.load(spec[4:], seed=seed)
    if spec.endswith(".onnx"):
        if weights:
            raise InputError(f"{weights}: --weights does not apply to an ONNX model")
        return load_onnx(spec)
    if ":" in spec:
        path, _, factory = spec.rpartition(":")
        if path.endswith(".py"):
            return load_python(path, factory, weights=weights, trust_pickle=trust_pickle,
                               input_shape=input_shape, sample_inputs=sample_inputs)
    from . import hf_folder

    if hf_folder.is_model_folder(spec):
        if weights:
            raise InputError(f"{weights}: --weights does not apply to a HuggingFace model folder (its weights are in it)")
        module, arch = hf_folder.build(spec)
        wfile = hf_folder.weights_file(spec)
        src = _from_module(module, spec, f"HuggingFace {arch} from {Path(spec).name or spec}",
                           weights=str(wfile) if wfile else None, weights_sha=sha256_file(wfile) if wfile else None,
                           input_shape=input_shape, sample_inputs=sample_inputs)
        task = hf_folder.task_of(arch, getattr(module, "config", None))
        if task:  # the head says what its output is; --task still overrides it (apply_task)
            src.task, src.task_given, src.task_from = task, True, f"config.json architectures ({arch})"
        return src
    if spec.endswith(".pt2") and Path(spec).is_file():
        # torch.export.save's archive: its graph calls aten ops on bare tensors (no layers left to prune or
        # train), it runs only at the shapes it was exported for, and loading it unpickles
        raise InputError(f"{spec}: a torch.export archive (ExportedProgram), which edgekit cannot prune or distil; "
                         "convert it with torch.onnx.export(torch.export.load(path), f='model.onnx') and pass "
                         "model.onnx, or pass the model as file.py:factory (with --weights for a state dict)")
    if spec.endswith((".pt", ".pth", ".pts", ".ts", ".jit", ".pkl", ".bin")) and Path(spec).is_file():
        kind = "a TorchScript archive, which edgekit cannot prune, distil or re-export" if is_torchscript(spec) \
            else "a PyTorch file, which holds weights, not the code that uses them"
        raise InputError(f"{spec}: {kind}; pass the model as file.py:factory (with --weights for a state dict) "
                         "or export it to ONNX and pass model.onnx")
    raise InputError(f"{spec}: not a model spec (expected zoo:NAME, file.py:factory, model.onnx or a HuggingFace "
                     "model folder holding config.json)")


def load_onnx(path: str) -> SourceModel:
    import onnx

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    try:
        model = onnx.load(str(p), load_external_data=False)
        # by path: the checker then resolves external data next to the file (and allows models over 2 GB)
        onnx.checker.check_model(str(p))
    except Exception as e:  # protobuf decode errors have no common base class
        raise InputError(f"{p}: not a valid ONNX model: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    init = {i.name for i in model.graph.initializer}
    for what, vs in (("input", [v for v in model.graph.input if v.name not in init]), ("output", model.graph.output)):
        for v in vs:
            kind = _non_tensor(v)
            if kind:
                raise InputError(f"{p}: {what} {v.name!r} is {kind}, not a tensor; edgekit quantizes, scores and "
                                 f"profiles models whose inputs and outputs are tensors"
                                 + (_ZIPMAP_HINT if any(n.op_type == "ZipMap" for n in model.graph.node) else ""))
    inputs = [_value_info_spec(v) for v in model.graph.input if v.name not in init]
    outputs = [v.name for v in model.graph.output]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    return SourceModel(spec=str(path), kind="onnx", onnx_path=str(p), inputs=inputs, outputs=outputs,
                       task="classification" if classifier_output(model) else "generic", weights=str(p),
                       weights_sha256=onnx_sha256(p, model), description=f"ONNX model {p.name}", opset=opset)


def onnx_sha256(path, model=None) -> str:
    """SHA-256 naming an ONNX model with its weights: the file's own hash, or, when its tensors live in
    external data files (torch's dynamo exporter writes model.onnx + model.onnx.data), a hash over the
    file's and each data file's hashes. The .onnx alone is the same for any weights of one graph, so two
    different models read as one in `edgekit report`."""
    import hashlib

    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data as ext

    p = Path(path)
    model = model if model is not None else onnx.load(str(p), load_external_data=False)
    locations = sorted({e.value for t in _get_all_tensors(model) if ext(t)
                        for e in t.external_data if e.key == "location"})
    if not locations:
        return sha256_file(p)
    h = hashlib.sha256(f"onnx {sha256_file(p)}\n".encode())
    for loc in locations:
        f = p.parent / loc
        h.update(f"{loc} {sha256_file(f) if f.is_file() else 'missing'}\n".encode())
    return h.hexdigest()


PROTOBUF_LIMIT = 2 ** 31 - 1


def uses_external_data(model) -> bool:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data as ext

    return any(ext(t) for t in _get_all_tensors(model))


def copy_model(src, dest) -> list:
    """Copy an ONNX file so the copy stands on its own; returns the files written (dest first).

    External data lives next to the source (relative paths), so a bare file copy would point at data
    that is not there. Such a model is loaded with its data and saved as one file, or, when that
    cannot fit protobuf's 2 GB, with a single data file of its own next to dest.
    """
    import shutil

    import onnx

    src, dest = Path(src), Path(dest)
    if not uses_external_data(onnx.load(str(src), load_external_data=False)):
        shutil.copyfile(src, dest)
        return [dest]
    try:
        model = onnx.load(str(src))
    except Exception as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{src}: cannot read its external data: {why}") from None
    try:
        size = model.ByteSize()
    except Exception:  # some protobuf builds refuse to size a message past the limit
        size = PROTOBUF_LIMIT
    if size < PROTOBUF_LIMIT:
        onnx.save_model(model, str(dest))
        return [dest]
    data = dest.with_name(dest.name + ".data")
    onnx.save_model(model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    return [dest, data]


def class_scores_shape(shape) -> bool:
    """[N, C] class scores with a fixed C >= 2, or [N, C, 1, ..., 1] (an all-conv classifier's head, a
    1x1 conv after global pooling). A [N, 1] output is a regression or a single logit: argmax over one
    column is always 0, so scoring it as top-1 accuracy would report the share of labels that are 0."""
    return len(shape) >= 2 and isinstance(shape[1], int) and shape[1] >= 2 and all(d == 1 for d in shape[2:])


def classifier_output(model) -> bool:
    """True when the first output is class scores (class_scores_shape)."""
    if not model.graph.output:
        return False
    from onnx import TensorProto

    t = model.graph.output[0].type.tensor_type
    if t.elem_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16):
        return False  # class ids or a mask, not scores
    return class_scores_shape([d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim])


# --task: "auto" keeps the guess from the first output's shape (class scores when float [N, C], C >= 2)
TASK_CHOICES = ("auto", "classification", "multi-label", "regression", "embedding", "segmentation",
                "token-classification", "causal-lm")


def apply_task(src: SourceModel, task: str | None) -> SourceModel:
    """--task overrides the guess: the shape alone cannot tell 4 class scores from 4 regression targets
    (a 4-target regressor was distilled with a softmax loss and scored on argmax agreement, 1.0000 while
    one target's R^2 to FP32 was -5.5)."""
    if task and task != "auto":
        if task not in TASK_CHOICES:
            raise InputError(f"--task {task!r}: expected one of {', '.join(TASK_CHOICES)}")
        src.task, src.task_given, src.task_from = task, True, None
    return src


def guessed_task_note(src: SourceModel, *datasets, distills: bool = True, probe=None) -> str | None:
    """The one-line note for a guessed classifier that no integer labels confirm (labels 'y' are class
    indices; float ones are refused when read), else None. Every command calls it once its data is read
    (after the labels' own checks, which name their file), so it also refuses a --task classification
    that the first output cannot carry. distills: whether this command distils, so the note names only
    what the guess changes here (quantize scores; it trains nothing). probe: data to run the model on when
    the guess is to be checked (else the first of datasets, else the model's own calibration data): a first
    output whose rows have unit length is an L2-normalised embedding, and the guess becomes that."""
    check_class_columns(src, *datasets)
    unused = check_label_kind(src, *datasets)
    if unused:
        return unused
    if not src.task_given and src.task == "generic":
        return dense_scores_note(src, _first_data(datasets))
    if src.task_given or src.task != "classification":
        return None
    if any(d is not None and d.labels is not None for d in datasets):
        return None
    data = next((d for d in (probe, *datasets, src.calib, src.eval) if d is not None and len(d)), None)
    rows = unit_rows(first_output_values(src, data))
    if rows:
        # a face or sentence embedder's output: the argmax of an embedding scored a MiniLM's dynamic INT8 0.85
        # "top-1 agreement" where its cosine to FP32 was 0.991 (benchmarks/tasks/embedding_guess.py)
        src.task, src.task_from = "embedding", "first output rows of unit length"
        return (f"{src.spec}: its first output's rows have unit length on {rows} samples of "
                f"{data.source or 'its data'}: taken as an L2-normalised embedding (scored by cosine similarity to FP32"
                + (", distilled by it" if distills else "") + "); pass --task classification if they are class scores")
    uses = "top-1 agreement, softmax distillation" if distills else "scored by top-1 agreement"
    return (f"{src.spec}: its first output (float [N, C], C >= 2) is taken as class scores ({uses}) since no "
            "labels confirm it; if it is C regression targets pass --task "
            "regression (or --task embedding for a feature vector, --task multi-label for a yes/no per class)")


UNIT_ROWS = 16  # samples a guessed classifier's first output is checked on
UNIT_TOL = 1e-3


def first_output_values(src: SourceModel, data, n: int = UNIT_ROWS):
    """The first output on up to n samples of data, as float64 [samples, values]; None when it cannot be run."""
    import numpy as np

    if data is None or not len(data):
        return None
    try:
        if src.kind == "onnx":
            from .onnxutil import run_batches

            out = run_batches(src.onnx_path, data, batch_size=n, limit=n)[0]
        else:
            out = _torch_first_output(src, data, n).float().numpy()
    except Exception:  # a model that cannot run here is left to the checks that name why
        return None
    out = np.asarray(out, dtype=np.float64)
    return out.reshape(len(out), -1) if out.ndim >= 2 else None


def _torch_first_output(src: SourceModel, data, n: int):
    """The PyTorch model's first output tensor on n samples of data (zeros of the input specs without data)."""
    import torch

    from .pruning.graph import example_inputs, first_tensor

    with torch.no_grad():
        return first_tensor(src.module(*example_inputs(src, data, n=n)))


def unit_rows(values) -> int:
    """How many rows, when every one has unit L2 length and they are not probabilities (a softmax's rows are
    non-negative and sum to 1; a confident one is near one-hot, of unit length too); else 0."""
    import numpy as np

    if values is None or len(values) < 2 or values.shape[1] < 2 or not np.isfinite(values).all():
        return 0
    if not np.allclose(np.linalg.norm(values, axis=1), 1.0, atol=UNIT_TOL):
        return 0
    if (values >= 0).all() and np.allclose(values.sum(axis=1), 1.0, atol=UNIT_TOL):
        return 0
    return len(values)


def dense_scores_note(src: SourceModel, data=None) -> str | None:
    """A first output [N, C, H, W, ...] (C >= 2, positions beyond 1x1) is scored by the cosine of its flattened
    values unless --task says what it is: a note naming --task segmentation, which scores class scores per
    position (a U-Net's INT8 read cosine 0.99998 while 0.10% of its pixels changed class); for [N, L, C] over
    token ids, one naming --task token-classification. None otherwise."""
    shape = first_output_shape(src, data)
    tokens = _token_axis(src, shape, data) if shape and isinstance(shape[-1], int) and shape[-1] >= 2 else None
    config = getattr(src.module, "config", None)
    labels = getattr(config, "num_labels", None)  # a HuggingFace model's classes
    if tokens and getattr(config, "vocab_size", None) == shape[-1]:
        return (f"{src.spec}: its first output {_n_shape(shape)} (axis 1 the length of {tokens!r}, axis 2 the "
                "vocabulary) is scored by the cosine of its flattened values; if it is a language model's next-token "
                "scores, pass --task causal-lm to score each position's prediction against the data's next token")
    if tokens and labels in (None, shape[-1]):  # a BertModel's hidden states [N, L, 384] are no class scores
        return (f"{src.spec}: its first output {_n_shape(shape)} (axis 1 the length of {tokens!r}) is scored by the "
                "cosine of its flattened values; if it holds class scores per token (a token classifier, NER), "
                "pass --task token-classification to score them per token")
    if not shape or len(shape) < 4 or not isinstance(shape[1], int) or shape[1] < 2 \
            or all(d == 1 for d in shape[2:]):
        return None
    return (f"{src.spec}: its first output {_n_shape(shape)} is scored by the cosine of its flattened values; if it "
            "holds class scores per position (a segmentation map), pass --task segmentation to score them per pixel")


def check_label_kind(src: SourceModel, *datasets) -> str | None:
    """Labels 'y' that are not class indices (float regression targets, several columns per sample) are
    refused for a classifier, with the reason read_dataset found; for any other task they are unused, as
    integer labels are: the note saying so, else None."""
    if src.task in ("classification", "token-classification"):
        take_label_names(src, *datasets, per_token=src.task == "token-classification")
    next_tokens = take_next_tokens(src, *datasets) if src.task == "causal-lm" else None
    if src.task in DENSE_AXIS:
        take_dense_labels(*datasets, task=src.task)
    if src.task == "multi-label":
        take_multilabels(*datasets)
    scored = take_targets(datasets[0]) if src.task == "regression" and datasets else None
    if src.task == "token-classification":
        scored = take_tag_names(src, *datasets)
    if next_tokens:
        scored = next_tokens
    bad = [d for d in datasets if d is not None and getattr(d, "label_problem", None)]
    if not bad:
        return scored
    if src.task == "classification":
        from .errors import CalibrationError

        raise CalibrationError(bad[0].label_problem)
    files = ", ".join(d.source or "the data" for d in bad)
    if src.task == "regression" and all(d is not datasets[0] for d in bad):
        # training data: distillation of a regression follows the teacher's outputs (MSE), not the labels
        unused = f"{files}: labels 'y' unused: --task regression distils on the teacher's outputs"
        return f"{scored}; {unused}" if scored else unused
    how = f"--task {src.task} scores" if src.task_given else "its first output is not class scores, so edgekit scores"
    if any(getattr(d, "dense_labels", None) is not None for d in bad):
        hint = "; for one class per position, pass --task segmentation (or token-classification for [N, L, C] scores)"
    elif not src.task_given and src.task not in DENSE_AXIS and any(getattr(d, "targets", None) is not None
                                                                   for d in bad):
        hint = "; to score it against them as targets, pass --task regression"
    else:
        hint = ""
    return (f"{files}: labels 'y' unused: {how} the model's output {src.outputs[0]!r} by fidelity to FP32 (the "
            f"labels hold no class indices{hint})")


def class_names(src: SourceModel) -> list | None:
    """The model's class names by index, from a HuggingFace config's id2label (on the model or a module inside
    a wrapper; for an ONNX file, the config.json beside it, as optimum and transformers' exports leave it),
    unless they are its placeholders LABEL_0, LABEL_1, ...; else None."""
    if src.kind == "onnx" and src.onnx_path:
        return _names_of(_config_beside(src.onnx_path).get("id2label"))
    if src.module is None:
        return None
    for m in src.module.modules():
        id2label = getattr(getattr(m, "config", None), "id2label", None)
        if not isinstance(id2label, dict) or not id2label:
            continue
        return _names_of(id2label)
    return None


def _names_of(id2label) -> list | None:
    """id2label's names in index order (keys as ints, or as JSON's strings of them); None for placeholders
    (LABEL_0, ...), gaps or anything else."""
    if not isinstance(id2label, dict) or not id2label:
        return None
    try:
        by_index = {int(k): str(v) for k, v in id2label.items()}
        names = [by_index[i] for i in range(len(by_index))]
    except (KeyError, TypeError, ValueError):
        return None
    return None if names == [f"LABEL_{i}" for i in range(len(names))] else names


def _config_beside(onnx_path) -> dict:
    """The JSON object in config.json beside an ONNX file, or {} (none, unreadable, or not an object)."""
    import json

    p = Path(onnx_path).parent / "config.json"
    try:
        cfg = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def take_label_names(src: SourceModel, *datasets, per_token: bool = False) -> None:
    """Labels written as class names become the model's class indices by its own names (config.id2label, compared
    exactly, else ignoring case); a name the model does not have is one line naming the file. One per sample for
    a classifier; with per_token, a tagger's [N, L] tag names ('B-PER', 'O'; '' where a token is not scored, as
    -100) become its labels per position. Without the model's names they stay a label_problem (refused)."""
    from .calibration import UNSCORED_TAG

    names = class_names(src)
    for d in datasets:
        strings = getattr(d, "label_strings", None) if d is not None else None
        if strings is None or not names:
            continue
        if strings.ndim != (2 if per_token else 1):
            if not per_token:
                d.label_problem = (f"{d.source or 'the data'}: labels 'y' are class names per position, shape "
                                   f"{list(strings.shape)}; a classifier takes one per sample (for a tagger, "
                                   "pass --task token-classification)")
            continue
        if per_token:
            d.dense_labels = _indices_by_name(d, names, unscored=UNSCORED_TAG)
        else:
            d.labels = _indices_by_name(d, names)
        d.label_strings, d.label_problem = None, None
        d.extra = {**d.extra, "named_classes": names}  # for the note saying how names became indices


def _indices_by_name(d, names: list, *, unscored: str | None = None):
    """d.label_strings as indices into names (compared exactly, else ignoring case), `unscored` as -100; a name
    the model does not have is one line naming the file."""
    import numpy as np

    from .errors import CalibrationError

    index = {n: i for i, n in enumerate(names)}
    folded = {n.casefold(): i for i, n in reversed(list(enumerate(names)))}
    if unscored is not None:
        index[unscored] = -100
    flat = d.label_strings.ravel().tolist()
    unknown = sorted({s for s in flat if s not in index and s.casefold() not in folded})
    if unknown:
        raise CalibrationError(f"{d.source or 'the data'}: label {unknown[0]!r} is not one of the model's "
                               f"{len(names)} class names ({', '.join(map(repr, names[:6]))}"
                               f"{', ...' if len(names) > 6 else ''}; from its config.id2label)")
    return np.array([index[s] if s in index else folded[s.casefold()] for s in flat],
                    np.int64).reshape(d.label_strings.shape)


def take_tag_names(src: SourceModel, *datasets) -> str | None:
    """A token classifier whose class names (config.id2label) are BIO tags (B-PER, I-PER, O) is scored by entity
    F1 (entities.py), not the share of tokens, which is mostly "O": the names are kept as src.entity_tags for
    what scores it. The note saying so, or None (other names, or none: scored per token)."""
    from . import entities

    names = class_names(src)
    scheme = entities.tag_scheme(names)
    if not scheme:
        return None
    shape = first_output_shape(src, _first_data(datasets))
    if shape is not None and isinstance(shape[-1], int) and shape[-1] != len(names):
        return (f"{src.spec}: its config.id2label names {len(names)} tags but its first output {_n_shape(shape)} "
                f"has {shape[-1]} classes: scored per token, not by entity F1")
    src.entity_tags = names
    types = sorted({t for _, t in scheme if t})
    where = "id2label of the config.json beside it" if src.kind == "onnx" else "config.id2label"
    return (f"{src.spec}: its classes are BIO tags ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}; "
            f"{where}): scored by entity F1 over {len(types)} entity type(s) ({', '.join(types[:6])}"
            f"{', ...' if len(types) > 6 else ''}), the share of tokens beside it")


def take_next_tokens(src: SourceModel, *datasets) -> str | None:
    """--task causal-lm scores each position's top-1 next-token prediction against the data's own next token:
    the labels are the token ids shifted by one (position t is labelled with token t + 1), -100 (not scored)
    at the last position and wherever the attention mask drops position t or t + 1. Labels 'y' of the ids'
    shape (HuggingFace's LM labels: the ids, -100 where not scored) are shifted the same way instead. The note
    saying so, or None when there is no data; ids no input holds are one line naming the file."""
    import numpy as np

    from .errors import CalibrationError

    noted = None
    for d in datasets:
        if d is None or d.extra.get("next_token_labels"):  # one set passed twice is shifted once
            continue
        name = "input_ids" if "input_ids" in d.inputs else next(
            (k for k, v in d.inputs.items() if len(getattr(v, "shape", ())) == 2
             and np.dtype(getattr(v, "dtype", np.float32)).kind in "iu"), None)
        if name is None:
            raise CalibrationError(f"{d.source or 'the data'}: --task causal-lm scores each position's prediction "
                                   "of the next token, read from the token ids: no input holds integer ids [N, L] "
                                   f"(inputs: {', '.join(d.inputs)})")
        ids = np.asarray(d.inputs[name]).astype(np.int64)
        own = getattr(d, "dense_labels", None)
        given = own is not None and np.shape(own) == ids.shape
        tokens = np.asarray(own, np.int64) if given else ids
        labels = np.full(ids.shape, -100, np.int64)
        labels[:, :-1] = tokens[:, 1:]
        mask = d.inputs.get("attention_mask")
        if mask is not None and np.shape(mask) == ids.shape:
            kept = np.asarray(mask) != 0
            labels[:, :-1][~(kept[:, :-1] & kept[:, 1:])] = -100
        labels[labels < 0] = -100
        d.dense_labels, d.labels, d.label_problem, d.label_strings = labels, None, None, None
        d.extra = {**d.extra, "next_token_labels": name}
        if noted is None:
            what = "its labels 'y' (the ids, -100 where not scored)" if given else f"'{name}'"
            noted = (f"{src.spec}: --task causal-lm: scored by next_token_accuracy, each position's top-1 prediction "
                     f"against the data's next token ({what} shifted by one"
                     f"{', over the tokens attention_mask keeps' if mask is not None else ''}), perplexity beside it")
    return noted


def take_targets(d) -> str | None:
    """--task regression scores its evaluation data's numeric labels 'y' ([N] or [N, C] values) as the targets
    (r2_labels): they were unused, and the metric was fidelity to FP32 only. The note saying so, or None."""
    if d is None or getattr(d, "targets", None) is None:
        return None
    d.labels, d.label_problem, d.dense_labels, d.targets = d.targets, None, None, None
    return (f"{d.source or 'the data'}: labels 'y' are the regression targets: scored by r2_labels, each target's "
            "R^2 against them (clipped to [0, 1]) averaged over targets, with their RMSE beside it")


def take_dense_labels(*datasets, task: str = "segmentation") -> None:
    """--task segmentation / token-classification scores one class per position: labels 'y' of shape
    [N, d1, ...] (integers; a negative one marks a position not scored) become the labels; per-sample class
    indices or float targets are refused, naming the file."""
    from .errors import CalibrationError

    for d in datasets:
        if d is None:
            continue
        if getattr(d, "dense_labels", None) is not None:
            d.labels, d.dense_labels, d.label_problem = d.dense_labels, None, None
        elif d.labels is not None:
            raise CalibrationError(f"{d.source or 'the data'}: --task {task} needs labels 'y' with one class "
                                   f"per position, shape [N, d1, ...]; got one class per sample, shape "
                                   f"{list(d.labels.shape)}")
        elif getattr(d, "label_strings", None) is not None and d.label_strings.ndim > 1:
            raise CalibrationError(d.label_problem)  # names per position, and the model names no classes
        elif getattr(d, "label_problem", None):
            raise CalibrationError(f"{d.source or 'the data'}: --task {task} needs labels 'y' of integer "
                                   "classes, shape [N, d1, ...]; these are not integers")


def take_multilabels(*datasets) -> None:
    """--task multi-label scores 0/1 per class: labels 'y' [N, C] (read as per-position classes, which is
    their shape) become the labels; a binary classifier's [N] 0/1 labels stay as they are (one column). Other
    labels are refused, naming the file; whether they fit the output is checked when it is run."""
    from .errors import CalibrationError

    for d in datasets:
        if d is None:
            continue
        dense = getattr(d, "dense_labels", None)
        if dense is not None and dense.ndim == 2:
            d.labels, d.dense_labels, d.label_problem = dense, None, None
        elif dense is not None or getattr(d, "label_problem", None):
            got = f"got shape {list(dense.shape)}" if dense is not None else "these are not integers"
            raise CalibrationError(f"{d.source or 'the data'}: --task multi-label needs labels 'y' of 0/1 per "
                                   f"class, shape [N, C]; {got}")


def check_class_columns(src: SourceModel, *datasets) -> None:
    """--task classification on a first output of one value per sample ([N], [N, 1]) is refused: argmax
    over one column never moves, so every variant scored top-1 agreement 1.0000 and the softmax
    distillation had no gradient (a pruned model reported 1.0000 with an R^2 to FP32 of 0.416)."""
    if not src.task_given or src.task not in LABELLED_TASKS:
        return
    data = _first_data(datasets)
    shape = first_output_shape(src, data)
    if src.task == "segmentation":
        if shape is not None and (len(shape) < 3 or (isinstance(shape[1], int) and shape[1] < 2)):
            raise InputError(f"--task segmentation: {src.spec}'s first output {src.outputs[0]!r} is "
                             f"{_n_shape(shape)}; per-position class scores need "
                             "[N, C, d1, ...] with C >= 2 (classes on axis 1, as torch's cross_entropy takes them)"
                             + ("; pass --task classification" if len(shape) == 2 else ""))
        tokens = _token_axis(src, shape, data) if shape is not None else None
        if tokens:
            raise InputError(f"--task segmentation: {src.spec}'s first output {src.outputs[0]!r} is "
                             f"{_n_shape(shape)}, its axis 1 the length of {tokens!r} "
                             f"({shape[1]}): that is [N, L, C], per-token scores with the classes last; "
                             "pass --task token-classification, which takes them so")
        return
    if src.task == "multi-label":
        if shape is not None and len(shape) > 2 and not all(d == 1 for d in shape[2:]):
            raise InputError(f"--task multi-label: {src.spec}'s first output {src.outputs[0]!r} is "
                             f"{_n_shape(shape)}; a yes/no per class needs [N, C] (one logit or probability per "
                             "class)")
        return
    if src.task in ("token-classification", "causal-lm"):
        if shape is not None and (len(shape) != 3 or (isinstance(shape[-1], int) and shape[-1] < 2)):
            what = "per-token class scores need [N, L, C] with C >= 2 (classes last, as a HuggingFace token " \
                "classifier gives them)" if src.task == "token-classification" else \
                "next-token scores need [N, L, V] (the vocabulary last, as a HuggingFace causal LM gives them)"
            raise InputError(f"--task {src.task}: {src.spec}'s first output {src.outputs[0]!r} is "
                             f"{_n_shape(shape)}; {what}" + ("; pass --task classification" if len(shape) == 2 else ""))
        return
    if shape is None or not all(isinstance(d, int) for d in shape[1:]):
        return  # unknown or symbolic: the labels' own check still holds it to C >= 2
    columns = math.prod(shape[1:]) if len(shape) > 1 else 1
    if columns < 2:
        raise InputError(f"--task classification: {src.spec}'s first output {src.outputs[0]!r} is "
                         f"{_n_shape(shape)}, one value per sample; class scores need "
                         "[N, C] with C >= 2 (argmax over one column never moves); pass --task regression")


def _first_data(datasets):
    """The first non-empty dataset given, what first_output_shape runs the model on."""
    return next((d for d in datasets if d is not None and len(d)), None)


def _n_shape(shape) -> str:
    """A measured shape as the messages write it, the sample axis as N: [N, 3, 8, 8]."""
    return "[" + ", ".join(["N", *map(str, shape[1:])]) + "]"


def _token_axis(src: SourceModel, shape, data) -> str | None:
    """The integer [N, L] input whose length L is the output's axis 1 but not its axis 2, when the first
    output is rank 3: per-token scores [N, L, C], whose argmax over axis 1 would pick a position, not a
    class (shapes as first_output_shape measured them: the data's, else the declared, symbols as 2)."""
    if len(shape) != 3:
        return None
    data = data if data is not None and len(data) else (src.calib or src.eval)  # as example_inputs picks
    for s in src.inputs:
        if not str(s.dtype).startswith(("int", "uint")) or len(s.shape) != 2:
            continue
        if data is not None and len(data) and s.name in data.inputs and src.kind != "onnx":
            length = data.inputs[s.name].shape[1]
        elif src.kind == "onnx" or isinstance(s.shape[1], int):
            length = s.shape[1]
        else:
            length = 2  # first_output_shape ran zeros with every symbolic dim at 2
        if shape[1] == length and shape[2] != length:
            return s.name
    return None


def first_output_shape(src: SourceModel, data=None) -> list | None:
    """The first output's shape (leading dim as given): from the graph for ONNX, from one forward pass on
    two samples (zeros of the input specs without data) for PyTorch; None when it cannot be told."""
    if src.kind == "onnx":
        import onnx

        graph = onnx.load(src.onnx_path, load_external_data=False).graph
        if not graph.output or not graph.output[0].type.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in graph.output[0].type.tensor_type.shape.dim]
    try:
        return list(_torch_first_output(src, data, 2).shape)
    except Exception:  # a model zeros cannot run: nothing learned, the labels' check still applies
        return None


QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                 "ConvInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


def quantized_ops(model) -> list:
    """Op types that show a graph was already quantized (QDQ, QOperator or dynamic), sorted."""
    found = set()
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        for n in g.node:
            if n.op_type in QUANTIZED_OPS or n.op_type.startswith("QLinear"):
                found.add(n.op_type)
            graphs += [a.g for a in n.attribute if a.HasField("g")] + [x for a in n.attribute for x in a.graphs]
    return sorted(found)


def check_precision(path: str, mode: str, *, option: str) -> str | None:
    """Refuse, before any work, to quantize an ONNX file that is already quantized (or FP16 one already
    float16): `compress` relabelled such a file model.fp32.onnx, quantized its Q/DQ pairs again and failed
    every candidate ("two nodes with same node name"), or wrote a dynamic INT8 of a dynamic INT8 model.
    Returns what the source holds when it is not float32 ('int8: QuantizeLinear, ...', 'float16'), else None."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    qops, dtype = quantized_ops(proto), float_dtype(proto)
    del proto
    if qops:
        if mode != "none":
            raise InputError(f"{path}: already quantized (has {', '.join(qops)} ops); pass the FP32 model"
                             + (", or --quantize none to evaluate and profile it as it is"
                                if option == "--quantize" else ""))
        return f"int8: {', '.join(qops)}"
    if dtype == "float16":
        if mode == "fp16":
            raise InputError(f"{path}: already float16; {option} fp16 needs an FP32 model")
        return "float16"
    return None


def float_dtype(model) -> str | None:
    """'float16' or 'float32': the element type most of the graph's float weights have (by element count),
    else that of its float inputs. Weights first: an FP16 model that keeps float32 inputs and outputs (the
    converters' keep_io_types, edgekit's own default) computes in float16, and was taken for an FP32 one."""
    from collections import Counter

    from onnx import TensorProto

    names = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16",
             TensorProto.DOUBLE: "float64"}
    sizes = Counter()
    for i in model.graph.initializer:
        if i.data_type in names:
            sizes[names[i.data_type]] += math.prod(i.dims)
    if sizes:
        return sizes.most_common(1)[0][0]
    for v in model.graph.input:
        t = v.type.tensor_type.elem_type
        if t in names:
            return names[t]
    return None


# skl2onnx gives a classifier's probabilities as a ZipMap: one {class: probability} map per sample
_ZIPMAP_HINT = (" (its probabilities go through a ZipMap, as skl2onnx writes a classifier by default: convert it "
                "with options={id(model): {'zipmap': False}} for a [N, classes] tensor)")


def _non_tensor(v) -> str | None:
    """What a graph input or output is when it is not a tensor ('a sequence', 'a map', ...), else None."""
    which = v.type.WhichOneof("value")
    if which in ("tensor_type", None):  # None: no type given, which the checker allows and onnxruntime infers
        return None
    if which == "sequence_type":
        inner = v.type.sequence_type.elem_type.WhichOneof("value")
        return "a sequence of maps" if inner == "map_type" else "a sequence"
    return {"map_type": "a map", "optional_type": "an optional value",
            "sparse_tensor_type": "a sparse tensor"}.get(which, which)


def _value_info_spec(v) -> TensorSpec:
    from onnx import helper

    t = v.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "dim") for d in t.shape.dim]
    return TensorSpec(v.name, dims, str(helper.tensor_dtype_to_np_dtype(t.elem_type)))


def _import_factory(path: str, factory: str):
    mod = import_user_file(path)
    fn = getattr(mod, factory, None)
    if fn is None or not callable(fn):
        names = [n for n, v in vars(mod).items() if callable(v) and not n.startswith("_")]
        raise InputError(f"{path}: no callable {factory!r} (found: {', '.join(sorted(names)) or 'none'})")
    return fn


def import_user_file(path: str):
    """The user's model file as a module (imported once per process). Its folder goes on sys.path so
    that it can import its neighbours, and a pickled model saved by a script that did `import models`
    then finds `models` (the same module object, so classes compare equal)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: file not found")
    modname = f"edgekit_user_{abs(hash(str(p.resolve())))}"
    if modname in sys.modules:
        return sys.modules[modname]
    folder = str(p.resolve().parent)
    if folder not in sys.path:
        sys.path.append(folder)  # appended: the user's folder never shadows an installed package
    spec = importlib.util.spec_from_file_location(modname, p)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception as e:
        del sys.modules[modname]
        raise InputError(f"{p}: importing it failed: {type(e).__name__}: {e}") from None
    # unpickling looks classes up as `<file stem>.<class>`: alias the stem when `import <stem>` would
    # load this very file, or nothing at all (never shadow an installed package of that name)
    try:
        found = importlib.util.find_spec(p.stem) if p.stem.isidentifier() else False
    except (ImportError, ValueError):
        found = False
    if found is None or (found and found.origin and Path(found.origin).resolve() == p.resolve()):
        sys.modules.setdefault(p.stem, mod)
    return mod


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def read_safetensors(p: Path) -> dict | None:
    """A .safetensors file's tensors ({name: tensor}), or None when p is not one. The format HuggingFace and
    most hubs publish weights in was refused ("neither a torch.save archive nor a pickle"); it holds no code,
    so no trust is needed. Read here (an 8-byte header length, a JSON header, raw little-endian data) rather
    than through the optional safetensors package."""
    import json
    import struct

    import torch

    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(9)
        if len(head) < 9 or head[8:9] != b"{":
            return None
        n = struct.unpack("<Q", head[:8])[0]
        if n > size - 8 or n > 100 << 20:
            return None
        f.seek(8)
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return None
        data = f.read()
    out = {}
    for name, rec in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = getattr(torch, _SAFETENSORS_DTYPES[rec["dtype"]])
            start, end = rec["data_offsets"]
            shape = [int(d) for d in rec["shape"]]
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{p}: not a readable .safetensors file (tensor {name!r}: dtype "
                             f"{rec.get('dtype') if isinstance(rec, dict) else rec!r} or its offsets)") from None
        if not 0 <= start <= end <= len(data):
            raise InputError(f"{p}: not a readable .safetensors file (tensor {name!r} lies beyond the file's end)")
        raw = bytearray(data[start:end])
        t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        if t.numel() != math.prod(shape):
            raise InputError(f"{p}: not a readable .safetensors file (tensor {name!r}: {t.numel()} values for "
                             f"shape {shape})")
        out[name] = t.reshape(shape)
    return out


def load_state(weights: str, *, trust_pickle: bool):
    """Read a weights file safely: a state dict with weights_only=True, a full module only when trusted."""
    import pickle
    import warnings

    import torch

    p = Path(weights)
    if not p.is_file():
        raise InputError(f"{p}: weights file not found")
    safe = read_safetensors(p)
    if safe is not None:
        return safe
    if is_torchscript(p):
        raise InputError(f"{p}: a TorchScript archive (torch.jit.save), which edgekit cannot prune, distil or "
                         "re-export; pass the model's Python class as file.py:factory with --weights holding "
                         "torch.save(model.state_dict(), ...)")
    _check_checkpoint_format(p)
    try:
        with warnings.catch_warnings():
            # a legacy checkpoint with pickle protocol 4 drew a UserWarning with torch's source line
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(p, map_location="cpu", weights_only=not trust_pickle)
    except (ModuleNotFoundError, AttributeError) as e:
        # only a trusted full pickle gets this far: the class it names cannot be imported
        raise InputError(f"{p}: holds a pickled model whose class cannot be imported ({e}); define or import "
                         "that class in the model file, or save a state dict instead") from None
    except pickle.UnpicklingError as e:
        # torch's safe unpickler names an "Unsupported global" when the file holds Python objects
        if not trust_pickle and "unsupported global" in str(e).lower():
            raise InputError(f"{p}: contains pickled Python objects, not just tensors; if you trust this file, "
                             "pass --trust-pickle") from None
        if not trust_pickle and "weights only load failed" in str(e).lower():
            # torch's first line advises re-running torch.load with weights_only=False, an API the user
            # never called; its own reason is further down (a legacy file with pickle protocol 4, say)
            raise InputError(f"{p}: the safe (weights-only) loader cannot read it ({_unpickler_reason(e)}); if you "
                             "trust this file, pass --trust-pickle") from None
        raise InputError(f"{p}: not a PyTorch weights file: {str(e).splitlines()[0]}") from None
    except Exception as e:
        raise InputError(f"{p}: not a PyTorch weights file: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return obj


_SAVE_HINT = "save weights with torch.save(model.state_dict(), PATH)"
# pickle opcodes that import a name or call one: what makes unpickling run code
_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _check_checkpoint_format(p: Path) -> None:
    """Refuse what torch.save never writes, before torch.load sees it: torch's message for a text file or a
    plain pickle advised re-running with weights_only=False, claiming it 'will likely succeed', and with
    --trust-pickle a plain pickle ran its code and then failed anyway ('Invalid magic number')."""
    import tarfile
    import zipfile

    if p.stat().st_size == 0:
        raise InputError(f"{p}: not a PyTorch weights file (the file is empty)")
    if zipfile.is_zipfile(p):
        if not _zip_has_data_pkl(p):  # an .npz or any other zip: torch said 'failed locating file data.pkl'
            raise InputError(f"{p}: not a PyTorch weights file (a zip archive without torch.save's data.pkl); "
                             f"{_SAVE_HINT}")
        return
    if tarfile.is_tarfile(p):  # torch.save before torch 0.4
        return
    with open(p, "rb") as f:
        if f.read(4) == b"PK\x03\x04":
            raise InputError(f"{p}: not a readable PyTorch weights file (a truncated or damaged zip archive, "
                             "the format torch.save writes)")
    first, code = _scan_pickle(p)
    if first is _NOT_PICKLE:
        raise InputError(f"{p}: not a PyTorch weights file (neither a torch.save archive nor a pickle); {_SAVE_HINT}")
    if first == _TORCH_MAGIC:  # torch.save's legacy (non-zip) format: a pickle of this number comes first
        return
    what = "a plain Python pickle" + (" holding Python objects, which run code when it is loaded" if code else "")
    raise InputError(f"{p}: not a PyTorch weights file ({what}; torch.save does not write this); {_SAVE_HINT}")


def _zip_has_data_pkl(p: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(p) as z:
            return any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return True  # damaged: torch.load's own message says so


_NOT_PICKLE = object()
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER


def _scan_pickle(p: Path):
    """(value of the first pickle if it is a bare int, else None; whether it imports or calls anything), or
    (_NOT_PICKLE, False): read with pickletools, which decodes opcodes and never executes them."""
    import pickletools

    values, code, stop = [], False, False
    try:
        with open(p, "rb") as f:
            # to the first STOP: a text file also starts with bytes that decode as opcodes ('h', 'l', 'o')
            for op, arg, _pos in pickletools.genops(_Bounded(f, p.stat().st_size)):
                code = code or op.name in _CODE_OPCODES
                stop = op.name == "STOP"
                if isinstance(arg, int) and op.name not in _BOOKKEEPING_OPCODES:
                    values.append(arg)
    except Exception:  # pickletools raises ValueError for a malformed stream, others on odd bytes
        return _NOT_PICKLE, False
    if not stop:
        return _NOT_PICKLE, False
    return (values[0] if len(values) == 1 and not code else None), code


_BOOKKEEPING_OPCODES = {"PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"}


class _Bounded:
    """A file whose reads never ask for more than what is left: a length field in garbage bytes (BINBYTES8)
    made pickletools request an allocation of exabytes."""

    def __init__(self, f, size):
        self._f, self._size = f, size

    def read(self, n=-1):
        left = max(self._size - self._f.tell(), 0)
        return self._f.read(left if n is None or n < 0 else min(n, left))

    def readline(self):
        return self._f.readline()

    def tell(self):
        return self._f.tell()


def _unpickler_reason(e: Exception) -> str:
    """The 'WeightsUnpickler error: ...' reason in torch's long message, else its last non-empty line."""
    import re

    m = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(e))
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return m.group(1).strip() if m else (lines[-1] if lines else type(e).__name__)


def is_torchscript(path) -> bool:
    """torch.jit.save writes a zip with the model's code and constants; torch.save's zip has neither."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def call_factory(path: str, factory: str, where: str | None = None):
    """The module `path:factory` builds; a factory that raises or returns something else is one line
    naming `where` (the option it came from), else the spec itself."""
    import torch

    spec = f"{path}:{factory}"
    fn = _import_factory(path, factory)
    try:
        module = fn()
    except Exception as e:
        first = (str(e).splitlines() or [""])[0]
        what = f"{where}: calling the factory {spec} failed" if where else f"{spec}: calling the factory failed"
        raise InputError(f"{what}: {type(e).__name__}: {first}") from None
    if not isinstance(module, torch.nn.Module):
        what = f"{where}: the factory {spec}" if where else spec
        raise InputError(f"{what}: returned {type(module).__name__}, not a torch.nn.Module")
    # torch.compile's wrapper: its hooks never fire under the compiled code, so pruning found "no Conv or
    # Linear layers"; the plain module it wraps is what edgekit exports, prunes and trains
    while isinstance(getattr(module, "_orig_mod", None), torch.nn.Module):
        module = module._orig_mod
    return module


def load_python(path: str, factory: str, *, weights=None, trust_pickle=False, input_shape=None,
                sample_inputs=None) -> SourceModel:
    import torch

    module = call_factory(path, factory)
    weights_sha = None
    if weights:
        obj = load_state(weights, trust_pickle=trust_pickle)
        if isinstance(obj, torch.nn.Module):
            module = obj  # only reachable with --trust-pickle
        else:
            sd, how = _state_dict_in(obj, module, weights)
            try:
                module.load_state_dict(sd)
            except RuntimeError as e:
                first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
                raise InputError(f"{weights}: state dict does not fit {factory}(): {first}") from None
            if how:
                print(f"edgekit: note: {weights}: {how}", file=sys.stderr)
        weights_sha = sha256_file(weights)
    return _from_module(module, f"{path}:{factory}", f"user model {factory}() from {Path(path).name}",
                        weights=weights, weights_sha=weights_sha, input_shape=input_shape, sample_inputs=sample_inputs)


def _from_module(module, where: str, description: str, *, weights=None, weights_sha=None, input_shape=None,
                 sample_inputs=None) -> SourceModel:
    """The SourceModel of a built PyTorch module (a file.py:factory's, a HuggingFace folder's): its inputs
    learned from the data, its outputs, batch and sequence axes probed. where: the spec, as errors name it."""
    module.eval()
    _unfreeze_layers(module)
    wide = _not_float32(module)
    sample_inputs = _taken(module, sample_inputs)
    inputs = _infer_inputs(module, input_shape, sample_inputs, where=where)
    module = bind_inputs(module, [s.name for s in inputs])
    if wide:
        inputs = _to_float32(module, inputs, sample_inputs, wide, where=where)
    fixed = None
    try:
        outputs, named = _probe_without_cache(module, inputs, where=where, sample_inputs=sample_inputs)
    except NotTensors:
        raise
    except InputError as e:
        # a forward() that hard-codes its batch (x.reshape(4, -1)) fails the probe's 2 samples
        outputs, why, hint = None, str(e), not input_shape
    else:
        # .view(2, -1) runs there and looks batched: only a second batch size tells
        batched, why = _follows_batch(module, inputs, outputs, named, sample_inputs, where=where)
        why, hint = (f"{where}: {why}" if why else None), True
    if why:
        # an explicit --input-shape with that batch says so, and the model is then exported with it fixed
        if not input_shape or input_shape[0] < 1 or len(inputs) != 1:
            eg = ",".join(str(d) for d in ["B", *inputs[0].shape[1:]])
            tail = f"; if forward() runs only one fixed batch size B, pass --input-shape {eg} with that B" \
                if hint and len(inputs) == 1 else ""
            raise InputError(why + tail) from None
        fixed = int(input_shape[0])
        # the given shape as a whole: data may come as N x B x ... stacks of fixed batches (calibration's
        # stack rule), whose per-sample shape already includes that batch
        shape = list(input_shape) if len(input_shape) > 1 else [fixed, *inputs[0].shape[1:]]
        inputs = [TensorSpec(inputs[0].name, [fixed, *shape[1:]], inputs[0].dtype)]
        outputs, named = _probe_outputs(module, inputs, where=where, sample_inputs=sample_inputs)
        batched = [True] * len(outputs)
    if not fixed:
        mixed = _mixes_samples(module, inputs, outputs, batched, named, sample_inputs)
        if mixed:
            raise InputError(f"{where}: {mixed}")
    if named is not None:
        module = flatten_outputs(module, named)
        out_names = unique_output_names(named, {s.name for s in inputs})
    else:
        out_names = plain_output_names(len(outputs))
    # class scores follow the batch and are float: a constant [5, 4] anchor buffer or a bool [N, 4] mask
    # first was scored as top-1 accuracy (and crashed against the labels' length)
    first = outputs[0]
    task = "classification" if batched[0] and first.dtype.kind == "f" and class_scores_shape(list(first.shape)) \
        else "generic"
    dyn = {} if fixed else {i.name: {0: "batch"} for i in inputs}
    dyn.update({} if fixed else {n: {0: "batch"} for n, b in zip(out_names, batched) if b})
    if not fixed:
        for name, (axis, sym) in _sequence_axes(module, inputs, outputs, out_names, sample_inputs).items():
            dyn.setdefault(name, {})[axis] = sym
            if name in {s.name for s in inputs}:
                inputs = [TensorSpec(s.name, [*s.shape[:axis], "seq", *s.shape[axis + 1:]], s.dtype)
                          if s.name == name else s for s in inputs]
    return SourceModel(spec=where, kind="torch", module=module, inputs=inputs, outputs=out_names,
                       task=task, dynamic_axes=dyn, weights=weights, weights_sha256=weights_sha,
                       description=description + (f" ({'/'.join(wide)} cast to float32)" if wide else ""))


def _unfreeze_layers(module) -> None:
    """Layers frozen for the user's own fine-tuning (requires_grad=False) are invisible to pruning's autograd
    trace ("nothing in this model can be pruned" of a CNN with a frozen backbone), and distillation could not
    repair what pruning cut from them: the weights of the layers pruning works on (convs, linears, norms,
    embeddings, recurrent layers) take gradients again. Other parameters a model keeps frozen on purpose
    (a fixed mean, a positional table) stay as they are; nothing but pruning and distillation trains."""
    import torch.nn as nn

    layers = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
              nn.Embedding, nn.RNNBase)
    for m in module.modules():
        if isinstance(m, layers):
            m.requires_grad_(True)


# wrappers whose state dicts prefix every key: DataParallel / DistributedDataParallel, torch.compile, and a
# training module holding the network as .model (PyTorch Lightning)
STATE_PREFIXES = ("module.", "_orig_mod.", "model.")
# where training checkpoints keep the network's weights beside epoch, optimizer and scheduler state
STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params")


def _state_dict_in(obj, module, weights) -> tuple:
    """(the state dict to load, a note on how it was found or None). A plain state dict as it is; a training
    checkpoint ({'model': ..., 'epoch': 3, 'optimizer': ...}) by the one key that holds a state dict; keys
    under a wrapper's prefix ('module.' from DistributedDataParallel, '_orig_mod.' from torch.compile)
    without it when that is what fits the model. Each was refused ("not a state dict", "Missing key(s)")."""
    import torch

    def tensors(d):
        return isinstance(d, dict) and d and all(isinstance(v, torch.Tensor) for v in d.values())

    how = []
    if not tensors(obj):
        found = [k for k in STATE_KEYS if isinstance(obj, dict) and tensors(obj.get(k))]
        if not found:
            raise InputError(f"{weights}: not a state dict (a dict of tensor names to tensors)"
                             + (f", nor a checkpoint holding one under {' / '.join(STATE_KEYS[:3])}"
                                if isinstance(obj, dict) else ""))
        obj = obj[found[0]]
        how.append(f"the state dict under the checkpoint's key {found[0]!r}")
    want = set(module.state_dict())
    while not want & set(obj):
        prefix = next((p for p in STATE_PREFIXES if all(k.startswith(p) for k in obj)), None)
        if prefix is None:
            break
        obj = {k[len(prefix):]: v for k, v in obj.items()}
        how.append(f"keys without their {prefix!r} prefix")
    return obj, ("read " + ", ".join(how)) if how else None


def _not_float32(module) -> list:
    """The float dtypes other than float32 among the model's parameters and buffers, as names."""
    import torch

    found = {t.dtype for t in [*module.parameters(), *module.buffers()]}
    return [n for d, n in ((torch.float64, "float64"), (torch.float16, "float16"), (torch.bfloat16, "bfloat16"))
            if d in found]


def _to_float32(module, inputs, sample_inputs, dtypes: list, *, where) -> list:
    """Cast a model's float64 / float16 / bfloat16 parameters and buffers (in place) and its float inputs to
    float32; the inputs' specs after the cast. Exported as it was, a .double() model gave a "model.fp32.onnx"
    of float64 tensors, and with a Conv one onnxruntime cannot run ("internal error: NOT_IMPLEMENTED ...
    Conv(11)"); a .half() one failed the export check on float16 rounding, and a bfloat16 one could not be
    fed at all (numpy has no bfloat16). Edge runtimes and the INT8 stage take float32, and --quantize fp16
    writes the float16 file. The note says how much the outputs moved, so a model that truly needs its
    precision is not converted in silence."""
    import numpy as np
    import torch

    floats = ("float32", "float64", "float16", "bfloat16")
    names = {torch.float64: "float64", torch.float16: "float16", torch.bfloat16: "bfloat16"}
    own = next(d for d, n in names.items() if n == dtypes[0])

    def run(dtype):
        # the data as float64 for a float64 model (its own precision); else float32, cast in torch (bfloat16)
        wide = dtype == torch.float64
        specs = [TensorSpec(s.name, s.shape, "float64" if wide else "float32") if s.dtype in floats else s
                 for s in inputs]
        try:
            with torch.no_grad():
                out = module(*[torch.from_numpy(a).to(dtype) if a.dtype.kind == "f" else torch.from_numpy(a)
                               for a in _probe_arrays(specs, sample_inputs)])
            return [o.detach().to(torch.float64 if o.is_floating_point() else o.dtype).numpy()
                    for o in _flat_outputs(out, where)]
        except Exception:  # the probe that follows reports a forward() that does not run
            return None

    before = run(own)
    module._apply(lambda t: t.float() if t.dtype in names else t)
    after = run(torch.float32)
    specs = [TensorSpec(s.name, s.shape, "float32") if s.dtype in floats else s for s in inputs]
    moved = ""
    pairs = [(a, b) for a, b in zip(before or [], after or []) if a.dtype.kind == "f" and a.shape == b.shape]
    if before is not None and after is not None and pairs:
        diff = max((float(np.max(np.abs(a - b), initial=0.0)) for a, b in pairs), default=0.0)
        moved = f"; on {PROBE_BATCH} samples its outputs moved by at most {diff:.3g}"
    what = "/".join(dtypes)
    why = ("onnxruntime has no float64 Conv; edge runtimes and INT8/FP16 quantization take float32"
           if dtypes == ["float64"]
           else "the FP32 reference every variant is scored against; --quantize fp16 writes the float16 file")
    print(f"edgekit: note: {where} computes in {what}: its {what} parameters and buffers and its float inputs "
          f"are cast to float32, so the exported files are float32 ({why}){moved}", file=sys.stderr)
    return specs


def _sequence_axes(module, inputs, outputs, out_names, sample_inputs) -> dict:
    """{tensor name: axis} of a sequence length forward() accepts at any value: axis 1 of token inputs
    (rank-2 integer) and axis 1, else 2, of rank-3 inputs ([batch, time, features] for a GRU, [batch,
    channels, length] for a 1-d CNN), when forward() also runs with that axis halved. Fixing it to the
    calibration length (as export does by default) made a GRU or transformer refuse any other length on
    the device. Outputs take the axis where their size followed the input's: named 'seq' when it equals the
    input's length at both lengths tried, else a symbol of their own (a strided encoder-decoder's 98 in gives 100
    out: onnxruntime warns when one symbol takes two sizes). The export stage checks the
    graph at both lengths and fixes the axis again when the graph does not follow (a traced Python loop)."""
    def seq_like(s):
        return len(s.shape) == 3 or (len(s.shape) == 2 and s.dtype in ("int64", "int32", "uint8", "bool"))

    for axis in (1, 2):
        cands = [s for s in inputs if seq_like(s) and len(s.shape) > axis and isinstance(s.shape[axis], int)
                 and s.shape[axis] >= 2]
        if not cands:
            continue
        length = cands[0].shape[axis]
        group = [s for s in cands if s.shape[axis] == length]  # input_ids and attention_mask change together
        found = _follows_length(module, inputs, outputs, out_names, sample_inputs, group, axis, length)
        if found:
            return found
    return {}


def _follows_length(module, inputs, outputs, out_names, sample_inputs, group, axis, length) -> dict:
    """{name: (axis, symbol)} of `group` (at `axis`) and of the outputs whose size there followed the
    input's when forward() ran with that length halved."""
    import numpy as np
    import torch

    arrays = _probe_arrays(inputs, sample_inputs)

    def run(n):
        feeds = [torch.from_numpy(np.ascontiguousarray(np.take(arr, range(n), axis=axis) if s in group else arr))
                 for s, arr in zip(inputs, arrays)]
        try:
            with torch.no_grad():
                out = module(*feeds)
        except Exception:
            return None
        return list(out) if isinstance(out, (tuple, list)) else [out]

    short = length // 2
    outs = run(short)
    if outs is None or len(outs) != len(outputs):
        return {}  # a fixed-length model (a positional table sized to it, a Linear over time x features)
    axes = {s.name: (axis, "seq") for s in group}
    odd = None
    for name, ref, got in zip(out_names, outputs, outs):
        if tuple(got.shape) == tuple(ref.shape):
            continue
        diff = [i for i, (a, b) in enumerate(zip(ref.shape, got.shape)) if a != b]
        if len(got.shape) != ref.ndim or len(diff) != 1 or diff[0] == 0:
            return {}  # an output whose size moved some other way: leave every length fixed
        a = diff[0]
        same = ref.shape[a] == length and got.shape[a] == short
        if same and length - 1 not in (short, 1):
            # equal at two even lengths can be a stride's multiple (4 x 25 in, 100 out; 98 in, 100 out too):
            # an odd length tells, where the model takes one
            odd = run(length - 1) if odd is None else odd
            o = odd[out_names.index(name)] if odd and len(odd) == len(outputs) else None
            same = o is None or (o.ndim == ref.ndim and o.shape[a] == length - 1)
        axes[name] = (a, "seq" if same else f"{name}_len")
    return axes


def _forward_names(module, *, required: bool = False) -> list:
    """forward()'s named parameters, in order: the ones data can be bound to (required: those without a
    default only)."""
    params = list(inspect.signature(module.forward).parameters.values())
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and not (required and p.default is not p.empty)]


def _leading_positional(module) -> list:
    params = list(inspect.signature(module.forward).parameters.values())
    out = []
    for p in params:
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            break
        out.append(p.name)
    return out


def bind_inputs(module, names: list):
    """`module`, changed so that module(*data) passes each data input to the forward() parameter of the
    same name. Every stage calls models positionally, in data order; with forward(x, offset=None,
    scale=None) and data (x, scale) that fed scale to offset, and the export check compared the same
    wrong call. The class is swapped for a subclass rather than wrapped, so module names, state dicts
    and pruned-model files stay those of the user's model."""
    try:
        if len(names) <= 1 or _leading_positional(module)[:len(names)] == list(names):
            return module
        forward_names = _forward_names(module)
    except (TypeError, ValueError):  # no inspectable signature: positional it is
        return module
    if not set(names) <= set(forward_names):
        return module
    base = type(module)
    bound = tuple(names)

    def forward(self, *xs, **kw):
        if len(xs) != len(bound):
            return base.forward(self, *xs, **kw)
        return base.forward(self, **dict(zip(bound, xs)), **kw)

    return _with_forward(module, forward, edgekit_bound_inputs=bound)


def _with_forward(module, forward, **attrs):
    """`module` with its class swapped for a subclass of the same name whose forward() is `forward`: not a
    wrapper, so module names, state dicts and pruned-model files stay those of the user's model."""
    base = type(module)
    module.__class__ = type(base.__name__, (base,), {"forward": forward, "__module__": base.__module__,
                                                     "__qualname__": base.__qualname__, **attrs})
    return module


def _param_float_dtype(module) -> str:
    for p in module.parameters():
        if p.is_floating_point():
            return str(p.dtype).replace("torch.", "")
    return "float32"


def _input_dtype(module, arr) -> str:
    """The dtype the model takes for a data array: float data in the model's own float type (scikit-learn
    hands out float64), integer data as int64 (token ids); _probe_outputs turns the latter into float when
    forward() refuses integers."""
    import numpy as np

    if np.issubdtype(arr.dtype, np.floating):
        return _param_float_dtype(module)
    if arr.dtype in (np.uint8, np.bool_):
        return str(arr.dtype)  # camera frames and masks: the device feeds them as they are, not widened 8x
    if np.issubdtype(arr.dtype, np.integer):
        return "int64"
    return str(arr.dtype)


def _real_sample(sample_inputs, spec, n_specs, shape):
    """The first samples of the data for `spec`, in its dtype and probe shape, or None without data."""
    import numpy as np

    if not sample_inputs:
        return None
    arr = sample_inputs.get(spec.name)
    if arr is None and n_specs == 1 and len(sample_inputs) == 1:
        arr = next(iter(sample_inputs.values()))
    if arr is None or len(arr) == 0 or list(arr.shape[1:]) != list(shape[1:]):
        return None
    take = np.asarray(arr[:shape[0]])
    if len(take) < shape[0]:
        take = np.concatenate([take] * shape[0])[:shape[0]]
    return np.array(take, dtype=spec.dtype, order="C")  # a writable copy: data may be a read-only memmap


def _takes_varargs(module) -> bool:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is p.VAR_POSITIONAL for p in params)


class DataArrays(dict):
    """Sample arrays read from a data file, keeping its name for errors about them: "data has inputs
    ['extra'] that forward() does not take" named the model but not the file that held them."""

    def __init__(self, arrays, source: str):
        super().__init__(arrays)
        self.source = source


def _data_name(sample_inputs) -> str:
    return str(getattr(sample_inputs, "source", None) or "the data")


class OfferedInputs(dict):
    """A tokenizer's arrays for a model's first sentences: it offers what it makes (token_type_ids beside
    input_ids and attention_mask), and the model takes those forward() names; a one-input forward(x) takes
    the token ids."""


def _taken(module, sample_inputs):
    """sample_inputs as forward() takes them, when they are only offered (OfferedInputs); else as given."""
    if not isinstance(sample_inputs, OfferedInputs) or _takes_varargs(module):
        return sample_inputs
    from .text_tokenizer import taken_by

    return taken_by(sample_inputs, _forward_names(module)) or sample_inputs


def _infer_inputs(module, input_shape, sample_inputs, *, where) -> list:
    names = _forward_names(module)
    if sample_inputs and _takes_varargs(module) and set(sample_inputs) - set(names):
        # forward(self, *xs), (self, p, *rest), (self, *xs, scale=1.0): arrays no parameter is named for go
        # into *xs, so all go in positionally, in file order (the one order an .npz has); "forward() does
        # not take ['p', 'q'] (it takes ['input'])" named a parameter that is not there
        names = list(sample_inputs)
    names = names or ["input"]
    if sample_inputs:
        from .calibration import LABEL_KEY, other_label_name

        labels = other_label_name(sample_inputs, names)
        if labels:  # the data reader takes that array as the labels, so it is no input
            where_from = _data_name(sample_inputs)
            sample_inputs = DataArrays({k: v for k, v in sample_inputs.items() if k != labels}, where_from)

        if LABEL_KEY not in sample_inputs and LABEL_KEY in _forward_names(module, required=True) \
                and len(names) > 1:
            # the .npz format reads 'y' as labels before the model is known, so this input never arrives
            raise InputError(f"{where}: forward() takes a parameter named {LABEL_KEY!r}, but an .npz array named "
                             f"{LABEL_KEY!r} holds class labels in edgekit's data format; rename that parameter "
                             "(and the array) to feed it as a model input")
        given = list(sample_inputs)
        required = [n for n in _forward_names(module, required=True) if n in names]
        if len(given) == 1 and len(required) > 1 and not _takes_varargs(module):
            # forward(num, sex) on a .csv: "missing 1 required positional argument: 'sex'" said nothing of the data
            raise InputError(f"{where}: forward() takes {len(required)} inputs ({', '.join(required)}), but "
                             f"{_data_name(sample_inputs)} holds one input array, {given[0]!r} (a .csv, .tsv, .npy, "
                             "image folder or sentence file is one input); pass an .npz with an array named for each")
        absent = [n for n in required if n not in given]
        if len(given) > 1 and absent and not set(given) - set(names) and not _takes_varargs(module):
            raise InputError(f"{where}: {_data_name(sample_inputs)} has no array for forward()'s "
                             f"{', '.join(map(repr, absent))} (it holds {', '.join(map(repr, given))}); add an "
                             "array of that name to the .npz")
        if len(given) == 1 and len(names) >= 1:
            arr = next(iter(sample_inputs.values()))
            return [TensorSpec(names[0], ["batch", *arr.shape[1:]], _input_dtype(module, arr))]
        missing = [n for n in given if n not in names]
        if missing:
            raise InputError(f"{where}: {_data_name(sample_inputs)} has inputs {missing} that forward() does not "
                             f"take (it takes {names})")
        return [TensorSpec(n, ["batch", *sample_inputs[n].shape[1:]], _input_dtype(module, sample_inputs[n]))
                for n in names if n in sample_inputs]
    if input_shape:
        return [TensorSpec(names[0], ["batch", *input_shape[1:]], "float32")]
    raise InputError(f"{where}: cannot infer the input shape; pass --input-shape (e.g. 1,3,224,224) or --calib data")


PROBE_BATCH = 2  # samples forward() is probed with: an output whose axis 0 has this size follows the batch


CHECK_BATCH = 3  # a second batch size: an output that follows the batch has 3 rows there


def _probe_arrays(specs, sample_inputs, batch: int = PROBE_BATCH) -> list:
    """One array per spec for a probe: `batch` real samples of the data in the spec's dtype, else zeros
    (symbolic dims as `batch`)."""
    import numpy as np

    out = []
    for s in specs:
        shape = [batch if isinstance(d, str) else d for d in s.shape]
        arr = _real_sample(sample_inputs, s, len(specs), shape)
        out.append(arr if arr is not None else np.zeros(shape, dtype=s.dtype))
    return out


def _probe_outputs(module, inputs, *, where, sample_inputs=None):
    """Run forward() once to learn the outputs: ([arrays], their names for a dict / namedtuple / nested
    result, else None). With data, on two real samples: zeros are not a valid
    input to every model (an all-zero attention mask hides every token, and the nested-tensor path of
    nn.TransformerEncoder then fails)."""
    import torch

    def feeds_for(specs):
        return [torch.from_numpy(a) for a in _probe_arrays(specs, sample_inputs)]

    try:
        with torch.no_grad():
            try:
                out = module(*feeds_for(inputs))
            except RuntimeError as first:
                # integer data the model takes wider: uint8 token ids for an Embedding (int64), or pixel
                # values for a model that computes in float without casting them itself
                ints = ("int64", "uint8", "bool")
                if not any(s.dtype in ints for s in inputs):
                    raise
                fallbacks = [[TensorSpec(s.name, s.shape, "int64") if s.dtype in ("uint8", "bool") else s
                              for s in inputs],
                             [TensorSpec(s.name, s.shape, _param_float_dtype(module)) if s.dtype in ints else s
                              for s in inputs]]
                for specs in fallbacks:
                    if [s.dtype for s in specs] == [s.dtype for s in inputs]:
                        continue
                    try:
                        out = module(*feeds_for(specs))
                    except Exception:
                        continue
                    inputs[:] = specs
                    break
                else:
                    raise first from None  # a fallback's error would hide the real one
    except Exception as e:
        shapes = ", ".join(f"{s.name}{list(s.shape)}" for s in inputs)
        if getattr(sample_inputs, "source", None):
            shapes += f" (from {sample_inputs.source})"
        raise InputError(f"{where}: forward() failed on inputs {shapes}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0]}") from None
    # a dict / namedtuple / nested result: its names, for flatten_outputs and the ONNX outputs
    names = None if plain_output(out) else [n for n, _ in output_leaves(out)]
    return [o.numpy() for o in _flat_outputs(out, where)], names


def rows_follow_data(name: str, a, b, *, cause: str) -> str | None:
    """Why output `name`, of shape a for PROBE_BATCH samples and b for CHECK_BATCH, cannot be scored: its
    number of rows follows the data, not the batch (None when it does not). Rows that are the batch, the
    batch flattened in (out.flatten()) or constant (anchors) are not the data's. One test for the PyTorch
    loader and the ONNX check (cause says what in the model would do it)."""
    a, b = list(a), list(b)
    if not (len(a) == len(b) >= 1 and a[1:] == b[1:] and a[0] != b[0]
            and a[0] != PROBE_BATCH and b[0] != CHECK_BATCH and a[0] * CHECK_BATCH != b[0] * PROBE_BATCH):
        return None
    return (f"output {name!r} has {a[0]} rows for {PROBE_BATCH} samples and {b[0]} for {CHECK_BATCH}: its length "
            f"follows the data, not the batch ({cause}?); edgekit scores outputs sample by sample, so return a "
            "fixed number per sample (all candidates, or the top k, with their scores) and select in "
            "post-processing (the nms post op)")


def _follows_batch(module, inputs, outputs, named, sample_inputs, *, where: str):
    """([whether each output has the batch as axis 0], None), or (None, why forward() does not run at
    any batch size); an InputError for an output whose rows follow the data, which no batch size fixes.
    Probed at PROBE_BATCH alone, .view(2, -1) gave [2, 4] there and was declared
    [batch, 4]; evaluation then failed joining the [2, 64] and [2, 56] of two batches (a numpy
    ValueError as "internal error"). A constant output (a [2, 4] anchor buffer) keeps its shape at
    both batch sizes and is no batch either."""
    import torch

    names = named or plain_output_names(len(outputs))
    arrays = _probe_arrays(inputs, sample_inputs, CHECK_BATCH)
    try:
        with torch.no_grad():
            got = _flat_outputs(module(*[torch.from_numpy(a) for a in arrays]), "")
    except Exception as e:
        shapes = ", ".join(f"{s.name}{list(a.shape)}" for s, a in zip(inputs, arrays))
        return None, (f"forward() runs on {PROBE_BATCH} samples but fails on {CHECK_BATCH} ({shapes}): "
                      f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if len(got) != len(outputs):
        return None, (f"forward() returns {len(outputs)} outputs for {PROBE_BATCH} samples and {len(got)} "
                      f"for {CHECK_BATCH}")
    batched = []
    for name, ref, o in zip(names, outputs, got):
        a, b = list(ref.shape), list(o.shape)
        follows = len(a) == len(b) >= 1 and a[0] == PROBE_BATCH and b[0] == CHECK_BATCH
        if follows and a[1:] != b[1:]:
            # each sample's row is as long as the batch: scores between the samples of a batch (CLIP's
            # logits_per_image, [N, N]) crashed scoring, which joins batches of 64 and a last one of 8
            raise InputError(f"{where}: output {name!r} is {a} for {PROBE_BATCH} samples and {b} for "
                             f"{CHECK_BATCH}: its axes after the first follow the batch size too, so each "
                             "sample's result depends on the others run with it (scores between the samples "
                             "of a batch, as CLIP's logits_per_image); a device runs one sample at a time: "
                             "return per-sample outputs (the embeddings) instead")
        if a != b and not follows:
            # rows picked by the data (out[out[:, 4] > 0], NMS): no batch size makes them fit, and the
            # fixed-batch hint that follows a batch-size mismatch would send the user the wrong way
            why = rows_follow_data(name, a, b, cause="a boolean mask or NMS in forward()")
            if why:
                raise InputError(f"{where}: {why}")
            return None, (f"output {name!r} is {a} for {PROBE_BATCH} samples and {b} for {CHECK_BATCH}: "
                          "its first axis does not follow the batch size")
        batched.append(follows)
    return batched, None


def _mixes_samples(module, inputs, outputs, batched, named, sample_inputs) -> str | None:
    """Why forward() is not per-sample (None when it is). Statistics over the batch axis (BatchNorm with
    track_running_stats=False, x.mean(0) by hand) make a sample's result depend on the others: such a model
    was compressed and scored on batches of 16, while a device runs one sample at a time and gets other
    values (a 1-sample std is NaN). Sample 0 must give the same outputs in batches of PROBE_BATCH and
    CHECK_BATCH; a branch on the batch size alone (if x.shape[0] == 1) is the export check's to catch, with
    the line torch's tracer names, and a forward() that differs from itself on one batch is not blamed here."""
    import numpy as np
    import torch

    names = named or plain_output_names(len(outputs))

    def run(batch):
        with torch.no_grad():
            arrays = _probe_arrays(inputs, sample_inputs, batch)
            return [o.numpy() for o in _flat_outputs(module(*[torch.from_numpy(a) for a in arrays]), "")]

    def first_differs(ref, got):
        for name, r, g, b in zip(names, ref, got, batched):
            if not b or len(r) < 1 or len(g) < 1 or r[0].shape != g[0].shape:
                continue
            r0, g0 = np.asarray(r[0], np.float64), np.asarray(g[0], np.float64)
            if np.isnan(g0).sum() != np.isnan(r0).sum():
                return f"{name}: {int(np.isnan(g0).sum())} NaN values, against {int(np.isnan(r0).sum())}"
            scale = float(np.nanmax(np.abs(r0))) if r0.size and not np.isnan(r0).all() else 0.0
            if not np.allclose(g0, r0, rtol=1e-3, atol=1e-4 * max(scale, 1e-3), equal_nan=True):
                return f"{name}: max|diff| {float(np.nanmax(np.abs(g0 - r0))):.3g}"
        return None

    try:
        run(1)
    except Exception as e:
        # BatchNorm1d without running statistics: "Expected more than 1 value per channel when training"
        return (f"forward() runs on {PROBE_BATCH} samples but fails on one alone ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}), and a device runs one sample at a time (statistics "
                "over the batch axis, as BatchNorm with track_running_stats=False takes, or a squeeze() that drops "
                "the batch axis, do this)")

    def same(ref, got):
        return all(np.allclose(np.asarray(r, np.float64), np.asarray(g, np.float64), rtol=1e-5, atol=1e-6,
                               equal_nan=True) for r, g in zip(ref, got) if r.shape == g.shape)

    try:
        three = run(CHECK_BATCH)
        why = first_differs(outputs, three)
        # every value of both batches again: dropout left on must not pass for mixing by chance
        if why is None or not (same(outputs, run(PROBE_BATCH)) and same(three, run(CHECK_BATCH))):
            return None
    except Exception:
        return None
    return (f"forward() mixes the samples of a batch: sample 0 gives other outputs in a batch of {CHECK_BATCH} "
            f"than in a batch of {PROBE_BATCH} ({why}); statistics over the batch axis (BatchNorm with "
            "track_running_stats=False, x.mean(0)) make each result depend on the other samples, and a device "
            "runs one sample at a time: compute them per sample, or from running statistics")


def output_leaves(out, prefix: str = "") -> list:
    """[(name, tensor)] of a forward() result: a dict (a HuggingFace ModelOutput is one) by key, a
    namedtuple by field, a tuple or list by index, nested to any depth (names joined by '.'); None entries
    (ModelOutput's unset fields) are left out. Anything else is (name, value) for the caller to refuse.
    A top-level index is output_0, output_1, as for a flat tuple: torch's exporter refuses an output
    named '0' (a tuple nesting a list failed with "Invalid name: '0'")."""
    import collections.abc

    def join(key):
        if prefix:
            return f"{prefix}.{key}"
        return f"output_{key}" if str(key).isdigit() else str(key)

    if out is None:
        return []
    if isinstance(out, collections.abc.Mapping):
        return [leaf for k, v in out.items() for leaf in output_leaves(v, join(k))]
    if isinstance(out, tuple) and hasattr(out, "_fields"):
        return [leaf for k, v in zip(out._fields, out) for leaf in output_leaves(v, join(k))]
    if isinstance(out, (tuple, list)):
        return [leaf for i, v in enumerate(out) for leaf in output_leaves(v, join(i))]
    return [(prefix or "output", out)]


def plain_output_names(n: int) -> list:
    """The ONNX output names of a tensor or a flat tuple of n tensors."""
    return ["output"] if n == 1 else [f"output_{i}" for i in range(n)]


def plain_output(out) -> bool:
    """A tensor, or a flat tuple/list of tensors: what every stage and the export take as they are."""
    import torch

    if isinstance(out, torch.Tensor):
        return True
    return isinstance(out, (tuple, list)) and not hasattr(out, "_fields") and len(out) > 0 \
        and all(isinstance(o, torch.Tensor) for o in out)


class NotTensors(InputError):
    """forward() returned something other than tensors; `types` names what it returned instead."""

    def __init__(self, message: str, types: list):
        super().__init__(message)
        self.types = types


def _flat_outputs(out, where) -> list:
    import torch

    leaves = output_leaves(out)
    bad = [(n, type(v).__name__) for n, v in leaves if not isinstance(v, torch.Tensor)]
    if not leaves or bad:
        got = ", ".join(f"{n} ({t})" for n, t in bad[:3]) if bad else "no tensor"
        hint = "; a key/value cache is for step-by-step generation: set the model's config.use_cache = False" \
            if any(t.endswith("Cache") for _, t in bad) else ""
        raise NotTensors(f"{where}: forward() must return tensors (a tensor, or a tuple, list, dict or "
                         f"namedtuple of them); got {got}{hint}", [t for _, t in bad])
    return [v for _, v in leaves]


def _probe_without_cache(module, inputs, *, where, sample_inputs=None):
    """_probe_outputs, with a HuggingFace decoder's key/value cache turned off when forward() returns one
    (GPT-2 and every other causal model return past_key_values as a Cache object by default). The cache
    feeds generation one token at a time; the exported model computes the whole sequence at once, and
    the cache object cannot be an ONNX output. Turned off only when it was returned, so an encoder whose
    config merely carries use_cache=True (BERT) gets no note."""
    try:
        return _probe_outputs(module, inputs, where=where, sample_inputs=sample_inputs)
    except NotTensors as e:
        if not any(t.endswith("Cache") for t in e.types) or not cache_off(module):
            raise
        print(f"edgekit: note: {where}: forward() returned a key/value cache ({e.types[0]}); config.use_cache "
              "is turned off, as the exported model computes the whole sequence at once", file=sys.stderr)
        return _probe_outputs(module, inputs, where=where, sample_inputs=sample_inputs)


def returns_cache(out) -> bool:
    """forward()'s result holds a key/value cache object (transformers' DynamicCache, ...)."""
    return any(type(v).__name__.endswith("Cache") for _, v in output_leaves(out))


def cache_off(module) -> bool:
    """Turn off use_cache in every HuggingFace config inside module; whether there was one to turn off."""
    configs = [m.config for m in module.modules() if getattr(getattr(m, "config", None), "use_cache", False)]
    for c in configs:
        c.use_cache = False
    return bool(configs)


def unique_output_names(names: list, taken: set) -> list:
    """ONNX needs every tensor name once: an output named like an input (a dict key 'input') gets a suffix."""
    out = []
    for n in names:
        cand, i = n, 1
        while cand in taken or cand in out:
            cand, i = f"{n}_{i}", i + 1
        out.append(cand)
    return out


def flatten_outputs(module, names: list):
    """`module`, changed so that forward() returns the tensors of its dict / namedtuple / nested result as
    one flat tuple, in the order of `names`. Export, evaluation, distillation and pruning all take a tensor
    or a tuple of tensors; the names become the ONNX output names (see _with_forward)."""
    base = type(module)
    expected = list(names)

    def forward(self, *xs, **kw):
        leaves = dict(output_leaves(base.forward(self, *xs, **kw)))
        if sorted(leaves) != sorted(expected):  # matched by name: a dict built in another order is the same
            raise RuntimeError(f"forward() returned outputs {list(leaves)}, not the {expected} it returned when loaded")
        return tuple(leaves[n] for n in expected)

    return _with_forward(module, forward, edgekit_output_names=tuple(expected))
