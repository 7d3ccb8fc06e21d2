"""Dataset: named input arrays (+ optional labels) that stages iterate in batches.

Arrays may be np.memmap (from .npy and stored .npz members) or read lazily
(calibration.LazyArray: image folders, compressed .npz members), so a large
calibration set never has to be in memory at once: stages only ever call len(), batches() and take().
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np


@dataclass
class Dataset:
    inputs: dict  # input name -> array with a leading sample axis
    labels: np.ndarray | None = None
    source: str = ""
    extra: dict = field(default_factory=dict)  # e.g. raw sentences, for reports
    # why the file's labels 'y' are not class indices (float targets, several columns), labels then None:
    # refused for a classifier once the task is known, unused otherwise
    label_problem: str | None = None
    # integer labels of shape [N, d1, ...] (one class per position), held aside with label_problem set until
    # --task segmentation makes them the labels (loader.check_label_kind)
    dense_labels: np.ndarray | None = None
    # numeric labels 'y' as float32 values ([N] or [N, C]), held aside until --task regression makes them the
    # labels its evaluation scores against (loader.check_label_kind)
    targets: np.ndarray | None = None
    # labels written as class names ('positive'), held aside with label_problem set until the model's own
    # names (a HuggingFace config's id2label) map them to indices (loader.check_label_kind)
    label_strings: np.ndarray | None = None

    def __post_init__(self):
        lens = {k: len(v) for k, v in self.inputs.items()}
        if len(set(lens.values())) > 1:
            from .errors import CalibrationError

            raise CalibrationError(f"{self.source or 'dataset'}: inputs have different sample counts {lens}")
        if self.labels is not None and lens and len(self.labels) != next(iter(lens.values())):
            from .errors import CalibrationError

            raise CalibrationError(
                f"{self.source or 'dataset'}: {len(self.labels)} labels for {next(iter(lens.values()))} samples")

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values()))) if self.inputs else 0

    @property
    def names(self) -> list:
        return list(self.inputs)

    def batches(self, batch_size: int = 32) -> Iterator[dict]:
        n = len(self)
        for i in range(0, n, batch_size):
            yield {k: np.ascontiguousarray(v[i:i + batch_size]) for k, v in self.inputs.items()}

    def labelled_batches(self, batch_size: int = 32):
        for i, b in enumerate(self.batches(batch_size)):
            y = None if self.labels is None else np.asarray(self.labels[i * batch_size:(i + 1) * batch_size])
            yield b, y

    def take(self, n: int) -> "Dataset":
        n = min(n, len(self))
        return Dataset({k: np.asarray(v[:n]) for k, v in self.inputs.items()},
                       None if self.labels is None else np.asarray(self.labels[:n]), self.source, dict(self.extra),
                       self.label_problem, None if self.dense_labels is None else self.dense_labels[:n],
                       None if self.targets is None else self.targets[:n],
                       None if self.label_strings is None else self.label_strings[:n])

    def subset(self, idx, source: str) -> "Dataset":
        """The rows idx as a view: nothing is copied until a batch asks for its rows, so a memory-mapped
        or lazily read set stays out of memory (labels, small, are copied)."""
        from .calibration import row_view

        idx = np.asarray(idx, np.intp)
        return Dataset({k: row_view(v, idx) for k, v in self.inputs.items()},
                       None if self.labels is None else np.asarray(self.labels)[idx], source, dict(self.extra),
                       self.label_problem, None if self.dense_labels is None else self.dense_labels[idx],
                       None if self.targets is None else self.targets[idx],
                       None if self.label_strings is None else self.label_strings[idx])

    @property
    def has_labels(self) -> bool:
        """Whether the file gave labels of any kind: class indices, or ones held aside until --task says what
        they are (per-position classes, regression targets, or labels with a problem to report)."""
        return any(v is not None for v in (self.labels, self.dense_labels, self.targets, self.label_problem,
                                           self.label_strings))

    def without_labels(self) -> "Dataset":
        return Dataset(dict(self.inputs), None, self.source, dict(self.extra))

    def sample(self, index: int) -> dict:
        return {k: np.asarray(v[index:index + 1]) for k, v in self.inputs.items()}
