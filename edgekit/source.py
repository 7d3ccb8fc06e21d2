"""SourceModel: what the load stage hands to every later stage."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .artifact import TensorSpec
from .dataset import Dataset

TASKS = ("classification", "embedding", "generic")
# metric names used in manifests
METRICS = ("accuracy", "top1_agreement", "cosine", "fidelity")


@dataclass
class SourceModel:
    spec: str  # as the user wrote it: zoo:NAME, file.py:factory, model.onnx
    kind: str  # "torch" | "onnx"
    inputs: list  # TensorSpec, first dim symbolic "batch" for torch models
    outputs: list  # output names
    task: str = "generic"
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

    def __post_init__(self):
        if self.kind not in ("torch", "onnx"):
            raise ValueError(f"SourceModel.kind {self.kind!r}")
        if self.task not in TASKS:
            raise ValueError(f"SourceModel.task {self.task!r} not one of {TASKS}")
        self.inputs = [i if isinstance(i, TensorSpec) else TensorSpec(**i) for i in self.inputs]

    def provenance(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "task": self.task, "weights": self.weights,
                "weights_sha256": self.weights_sha256, "description": self.description}
