"""Pruning hardening (sweep20): --prune with --student is refused (F6); learned parameters applied with Mul or read
through Slice are counted (F2); --epochs below --steps is said (F5)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgekit.config import DistillConfig, PruneConfig
from edgekit.errors import UsageError
from edgekit.pruning import schedule


def test_prune_with_a_student_is_refused_before_any_work():
    from edgekit.stages import prune as prune_stage

    # before: the student was ignored and the pruned teacher shipped (1,108 params, not the 260 of the student)
    with pytest.raises(UsageError, match=r"--prune/--sparsity with --student models.py:student: .* drop --student") as e:
        prune_stage.run(None, None, PruneConfig(ratio=0.5), DistillConfig(student="models.py:student"),
                        distill_enabled=True)
    assert e.value.exit_code == 2 and "\n" not in str(e.value)


class NormPos(nn.Module):  # GroupNorm (exported as InstanceNormalization + Mul + Add) and a sliced positional table
    def __init__(self):
        super().__init__()
        self.conv, self.gn = nn.Conv1d(4, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.pos = nn.Parameter(torch.randn(1, 16, 8))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = self.gn(self.conv(x)).transpose(1, 2)
        return self.fc(y + self.pos[:, :y.shape[1]]).mean(1)


def test_groupnorm_scale_and_a_sliced_learned_table_are_counted(tmp_path):
    from edgekit.artifact import TensorSpec
    from edgekit.dataset import Dataset
    from edgekit.onnxutil import graph_facts
    from edgekit.quant import fp16
    from edgekit.source import SourceModel
    from edgekit.stages.export import export_module

    torch.manual_seed(0)
    net = NormPos().eval()
    x = np.random.default_rng(0).normal(size=(8, 4, 10)).astype(np.float32)
    src = SourceModel(spec="test", kind="torch", module=net, task="classification",
                      inputs=[TensorSpec("x", ["batch", 4, "t"], "float32")], outputs=["y"],
                      dynamic_axes={"x": {0: "batch", 2: "t"}, "y": {0: "batch"}})
    path = tmp_path / "np.fp32.onnx"
    export_module(net, src, path, data=Dataset({"x": x}))
    fp16.convert(path, tmp_path / "np.fp16.onnx")
    want = sum(p.numel() for p in net.parameters())  # 96 + 8 + 16 + 128 + 27 = 275
    # before: 8 gamma missing, 2 + 2 InstanceNormalization placeholders counted, the 128 of pos missing
    assert graph_facts(path)["params"] == want
    assert graph_facts(tmp_path / "np.fp16.onnx")["params"] == want


def test_fewer_epochs_than_steps_is_said():
    # before: --steps 3 --epochs 2 ran 3 epochs with no word
    assert schedule.epochs_per_step(2, 3) == [1, 1, 1]
    assert schedule.epochs_note(2, 3).startswith("--epochs 2 is fewer than --steps 3: distilled one epoch after "
                                                 "each step, 3 epochs in all")
    assert schedule.epochs_note(6, 3) is None and schedule.epochs_note(10, 3) is None
    assert schedule.epochs_note(0, 3) is None
