"""The evaluate stage: one metric per artifact on the eval set, higher is better, in [0, 1].

With labels: top-1 accuracy. Without: fidelity to the FP32 model's outputs on the
same inputs — top-1 agreement for classifiers, mean cosine similarity for
embeddings and anything else (flattened per sample).
"""
from __future__ import annotations

import numpy as np

from .dataset import Dataset
from .onnxutil import run_batches


def metric_name(task: str, labelled: bool) -> str:
    if labelled and task == "classification":
        return "accuracy"
    if task == "classification":
        return "top1_agreement"
    if task == "embedding":
        return "cosine"
    return "fidelity"


def score(outputs: list, task: str, labels=None, reference: list | None = None) -> float:
    out = np.asarray(outputs[0])
    if labels is not None and task == "classification":
        return float(np.mean(out.reshape(len(out), -1).argmax(1) == np.asarray(labels)))
    if reference is None:
        raise ValueError("unlabelled evaluation needs reference outputs")
    ref = np.asarray(reference[0])
    if task == "classification":
        return float(np.mean(out.reshape(len(out), -1).argmax(1) == ref.reshape(len(ref), -1).argmax(1)))
    a = out.reshape(len(out), -1).astype(np.float64)
    b = ref.reshape(len(ref), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(denom > 0, np.sum(a * b, axis=1) / np.maximum(denom, 1e-30), 1.0)
    return float(np.mean(cos))


class Evaluator:
    """Callable: onnx path -> {"name", "value", "n", "data"}; caches the FP32 reference outputs."""

    def __init__(self, eval_ds: Dataset, task: str, reference_path=None, *, batch_size: int = 64):
        self.ds, self.task, self.reference_path, self.batch_size = eval_ds, task, reference_path, batch_size
        self.labelled = eval_ds.labels is not None and task == "classification"
        self._ref = None

    @property
    def name(self) -> str:
        return metric_name(self.task, self.labelled)

    def reference_outputs(self):
        if self._ref is None:
            self._ref = run_batches(self.reference_path, self.ds, batch_size=self.batch_size)
        return self._ref

    def outputs(self, path):
        return run_batches(path, self.ds, batch_size=self.batch_size)

    def __call__(self, path) -> dict:
        out = self.outputs(path)
        ref = None if self.labelled else self.reference_outputs()
        value = score(out, self.task, self.ds.labels if self.labelled else None, ref)
        return {"name": self.name, "value": value, "n": len(self.ds), "data": self.ds.source}


def with_drop(metrics: dict, reference: dict | None) -> dict:
    """Add reference value and absolute/relative drop vs the FP32 metric."""
    m = dict(metrics)
    if reference and reference.get("name") == m.get("name") and reference.get("value") is not None:
        ref = reference["value"]
        m["reference"] = ref
        m["drop_abs"] = ref - m["value"]
        m["drop_rel"] = (ref - m["value"]) / ref if ref else 0.0
    return m
