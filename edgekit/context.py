"""RunContext: what every stage of one compress run can see (plain data, no behaviour beyond lookups)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .artifact import Manifest
from .config import ProfileConfig, Tolerance
from .dataset import Dataset
from .source import SourceModel


@dataclass
class RunContext:
    outdir: Path  # where artifacts are written (a staging dir inside the final OUTDIR's parent)
    source: SourceModel
    manifest: Manifest  # stages add their sections (quantization, pruning, ...) here
    calib: Dataset | None = None
    eval: Dataset | None = None
    train: Dataset | None = None
    targets: list = field(default_factory=list)  # TargetProfile, first one is the primary target
    tolerance: Tolerance = field(default_factory=Tolerance)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    seed: int = 0
    trust_pickle: bool = False  # --trust-pickle: also lets a --student .pt rebuild on a file other than the teacher's
    # evaluate(onnx_path) -> metrics dict {"name", "value", "n", ...}; compares with FP32 outputs when unlabelled
    evaluate: Callable | None = None

    def __post_init__(self):
        from .targets import unique_targets

        # results are keyed by target name: two profiles of one name would share (and overwrite) one entry
        self.targets = unique_targets(self.targets)

    @property
    def primary_target(self):
        return self.targets[0] if self.targets else None
