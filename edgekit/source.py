"""SourceModel: what the load stage hands to every later stage."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .artifact import TensorSpec
from .dataset import Dataset

TASKS = ("classification", "multi-label", "embedding", "regression", "segmentation", "token-classification",
         "causal-lm", "generic")
# tasks scored one class per position, and the axis of their first output that holds the class scores: a
# segmentation map's [N, C, H, W] (torch's layout), a token classifier's [N, L, C] (HuggingFace's NER layout), a
# language model's next-token scores [N, L, V] (its labels are the data's own next tokens: loader.take_next_tokens)
DENSE_AXIS = {"segmentation": 1, "token-classification": -1, "causal-lm": -1}
# tasks whose labels 'y' are scored: class indices per sample, or per position, or 0/1 per class (multi-label)
LABELLED_TASKS = ("classification", *DENSE_AXIS, "multi-label")
# metric names used in manifests
METRICS = ("accuracy", "top1_agreement", "cosine", "fidelity", "r2", "r2_labels", "pixel_accuracy", "pixel_agreement",
           "token_accuracy", "token_agreement", "f1_micro", "f1_agreement", "miou", "miou_agreement", "entity_f1",
           "entity_f1_agreement", "next_token_accuracy", "next_token_agreement")


@dataclass
class SourceModel:
    spec: str  # as the user wrote it: zoo:NAME, file.py:factory, model.onnx, a HuggingFace model folder
    kind: str  # "torch" | "onnx"
    inputs: list  # TensorSpec, first dim symbolic "batch" for torch models
    outputs: list  # output names
    task: str = "generic"
    task_given: bool = False  # True: --task said so; False: guessed from the first output's shape
    task_from: str | None = None  # where a task not from --task nor the shape came from (a HuggingFace config)
    module: Any = None  # torch.nn.Module in eval mode, for kind == "torch"
    onnx_path: str | None = None  # for kind == "onnx"
    dynamic_axes: dict = field(default_factory=dict)  # name -> {axis: symbol}
    preprocess: dict = field(default_factory=dict)  # prepost spec declared for the device runner
    tokenizer: Callable | None = None  # list[str] -> dict of input arrays, for text models
    calib: Dataset | None = None  # defaults shipped with zoo models
    eval: Dataset | None = None
    train: Dataset | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    description: str = ""
    opset: int = 17
    # an ONNX source that does not compute in float32: 'float16' or 'int8: <its quantized ops>' (load checks it)
    precision: str | None = None
    # what `edgekit prune`/`distill` loaded it with, for their manifest: the load options (weights,
    # trust_pickle, input_shape, data paths) that join settings, and data_records() of the data read
    load_settings: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    # a token classifier's class names when they are BIO tags (loader.take_tag_names): scored by entity F1
    entity_tags: list | None = None


    @property
    def fixed_batch(self) -> int | None:
        """The one batch size a PyTorch model's forward() runs (given by --input-shape B,...), else None."""
        if self.kind != "torch" or self.dynamic_axes or not self.inputs or not self.inputs[0].shape:
            return None
        b = self.inputs[0].shape[0]
        return b if isinstance(b, int) else None

    def __post_init__(self):
        if self.kind not in ("torch", "onnx"):
            raise ValueError(f"SourceModel.kind {self.kind!r}")
        if self.task not in TASKS:
            raise ValueError(f"SourceModel.task {self.task!r} not one of {TASKS}")
        self.inputs = [i if isinstance(i, TensorSpec) else TensorSpec(**i) for i in self.inputs]

    def provenance(self) -> dict:
        """What the model was made from: its weights and, for file.py:factory, the code's file (both hashed)."""
        weights = str(Path(self.weights).resolve()) if self.weights else self.weights
        return {"spec": self.spec, "kind": self.kind, "task": self.task,
                "task_from": self.task_from or ("--task" if self.task_given else "output shape"), "weights": weights,
                "weights_sha256": self.weights_sha256, **code_provenance(self.spec), "description": self.description}


def code_provenance(spec: str | None) -> dict:
    """{source_file, source_sha256} of a file.py:factory spec (the code that builds the model: other code
    gives other weights from one state dict) or of a HuggingFace folder's config.json, else {}."""
    from .fsutil import sha256_file

    from .hf_folder import is_model_folder

    if spec and is_model_folder(spec):  # a HuggingFace folder: its config.json says what is built
        config = Path(spec) / "config.json"
        return {"source_file": str(config.resolve()), "source_sha256": sha256_file(config)}
    path, _, factory = (spec or "").rpartition(":")
    if not (factory and path.endswith(".py") and Path(path).is_file()):
        return {}
    return {"source_file": str(Path(path).resolve()), "source_sha256": sha256_file(path)}


def student_provenance(spec: str | None) -> dict:
    """{spec, and the hashes of what it names} of a --student: file.py:factory's code, or the pruned.pt
    that `edgekit distill` takes; {} without a student."""
    from .fsutil import sha256_file

    if not spec:
        return {}
    rec = {"spec": spec, **code_provenance(spec)}
    if len(rec) == 1 and Path(spec).is_file():
        rec.update(weights=str(Path(spec).resolve()), weights_sha256=sha256_file(spec))
    return rec
