"""Pruning / compress fixes (sweep32): --student with --no-distill is refused instead of distilling under
records saying it did not (F6); every step of --steps N keeps channel counts rounded to the channel multiple,
as one step does (F8); artifacts report PyTorch's parameter count, BatchNorm included (F7)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from edgekit.errors import UsageError
from edgekit.pruning import graph, importance
from tests.cliutil import run_cli


class CNN(nn.Module):  # the tester's digits CNN: conv -> BN twice, then a Linear
    def __init__(self, c1=16, c2=32):
        super().__init__()
        self.c1 = nn.Conv2d(1, c1, 3, padding=1)
        self.b1 = nn.BatchNorm2d(c1)
        self.c2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.b2 = nn.BatchNorm2d(c2)
        self.fc = nn.Linear(c2 * 4, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = nn.functional.max_pool2d(torch.relu(self.b2(self.c2(x))), 2)
        x = nn.functional.adaptive_avg_pool2d(x, 2)
        return self.fc(x.flatten(1))


def test_compress_refuses_a_student_with_no_distill_before_loading_the_model(tmp_path, capsys):
    # before: the student was distilled for up to 30 epochs and shipped (accuracy 0.9179) while the manifest,
    # report.md and compress.toml said distillation was off; the model file here does not even exist
    out = tmp_path / "out"
    rc = run_cli(["compress", str(tmp_path / "nosuch.py") + ":build", "--student", "s.py:student", "--no-distill",
                  "--quantize", "none", "--no-profile", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    msg = [ln for ln in err.splitlines() if ln.strip()]
    assert len(msg) == 1 and "--student s.py:student with --no-distill" in msg[0], err
    assert not out.exists()


def test_the_api_refuses_a_student_with_distill_disabled(tmp_path):
    import edgekit

    with pytest.raises(UsageError, match=r"--student s\.py:student with --no-distill .*drop --no-distill"):
        edgekit.compress(str(tmp_path / "nosuch.py") + ":build", output=str(tmp_path / "out"),
                         distill={"student": "s.py:student", "enabled": False})
    assert not (tmp_path / "out").exists()


def test_compress_refuses_a_fresh_student_with_zero_distill_epochs(tmp_path):
    # before: distill.epochs 0 with a --student factory was noted ('0 epochs ran') and the student's random
    # initial weights shipped as model.distilled.onnx, while edgekit distill --epochs 0 refused it
    import edgekit

    with pytest.raises(UsageError, match=r"distill\.epochs 0 with --student s\.py:student: a fresh student"):
        edgekit.compress(str(tmp_path / "nosuch.py") + ":build", output=str(tmp_path / "out"),
                         distill={"student": "s.py:student", "epochs": 0})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_every_step_keeps_a_multiple_of_round_to(steps):
    # before: ratio 0.6 in 2 or 3 steps kept 12 of c2's 32 channels (20 after step 2 of 3) with round_to 8,
    # while one step kept 16; now each step rounds against the original width as one step does
    torch.manual_seed(0)
    model = CNN().eval()
    x = torch.randn(2, 1, 8, 8)
    plan = graph.make_plan(model, (x,))
    imp, _ = importance.make("l1", model)
    pruner = graph.make_pruner(model, (x,), plan, imp, ratio=0.6, round_to=graph.DEFAULT_MULTIPLE, steps=steps)
    widths = []
    for _ in range(steps):
        graph.step(pruner, plan)
        widths.append(model.c2.out_channels)
    assert all(w % 8 == 0 for w in widths), widths
    assert widths[-1] == 16 and widths == sorted(widths, reverse=True), widths


def test_an_exported_artifact_reports_pytorchs_parameter_count(tmp_path):
    # before: model.fp32.onnx of this CNN said 6,090 params (BatchNorm folded into the convs) while the
    # prune table, pruning.params_before and distill.json said 6,186, PyTorch's count
    import numpy as np

    from edgekit.dataset import Dataset
    from edgekit.onnxutil import graph_facts
    from edgekit.artifact import TensorSpec
    from edgekit.source import SourceModel
    from edgekit.stages.export import export_module

    torch.manual_seed(0)
    model = CNN().eval()
    want = sum(p.numel() for p in model.parameters())
    assert want == graph.count(model, (torch.randn(2, 1, 8, 8),))[1] == 6186
    x = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)
    src = SourceModel(spec="cnn.py:build", kind="torch", module=model, task="classification", outputs=["y"],
                      inputs=[TensorSpec("x", ["batch", 1, 8, 8], "float32")],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    art = export_module(model, src, tmp_path / "model.fp32.onnx", data=Dataset({"x": x}), eval_data=Dataset({"x": x}))
    assert graph_facts(tmp_path / "model.fp32.onnx")["params"] < want  # the folded file holds fewer elements
    assert art.params == want


@pytest.mark.parametrize("opset", [13, 17])
def test_a_layernorm_written_out_by_the_exporter_counts_its_gamma_and_beta(tmp_path, opset):
    # below opset 17 torch writes LayerNorm as (x - mean) / sqrt(var + eps) * gamma + beta: an ONNX source
    # exported so reported 11,512 parameters for a net of 13,048 (the [48, 4, 4] gamma and beta left out)
    import onnx

    from edgekit.onnxutil import graph_facts

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.n, self.h = nn.Conv2d(1, 8, 3, padding=1), nn.LayerNorm([8, 4, 4]), nn.Linear(8, 3)

        def forward(self, x):
            x = torch.relu(self.n(self.c(x)))
            return self.h((x / x.pow(2).sum((2, 3), keepdim=True).sqrt()).mean((2, 3)))  # a Div by Sqrt, no Sub

    torch.manual_seed(0)
    net = Net().eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(net, (torch.randn(2, 1, 4, 4),), str(path), opset_version=opset, dynamo=False)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ("LayerNormalization" in ops) == (opset == 17)
    assert graph_facts(path)["params"] == sum(p.numel() for p in net.parameters()) == 8 * 9 + 8 + 2 * 128 + 27
