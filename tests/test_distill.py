"""Distillation on real data (scikit-learn digits, 8x8): a trained teacher MLP teaches a fresh,
smaller student; its agreement with the teacher rises over training."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgekit.artifact import TensorSpec
from edgekit.config import DistillConfig
from edgekit.dataset import Dataset
from edgekit.errors import InputError
from edgekit.source import SourceModel
from edgekit.stages import distill as stage
from test_prune_models import make_ctx


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def student_factory():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    tr, te = idx[:1200], idx[1200:]
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(teacher.parameters(), 1e-2)
    xt, yt = torch.from_numpy(x[tr]), torch.from_numpy(y[tr])
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(teacher(xt), yt).backward()
        opt.step()
    teacher.eval()
    return x, y, tr, te, teacher


def _source(digits, labelled_train: bool):
    x, y, tr, te, teacher = digits
    train = Dataset({"input": x[tr]}, y[tr] if labelled_train else None, "digits train")
    ev = Dataset({"input": x[te]}, None, "digits held-out (unlabelled)")
    return SourceModel(spec="test:teacher", kind="torch", inputs=[TensorSpec("input", ["batch", 64], "float32")],
                       outputs=["logits"], task="classification", module=teacher, calib=train, eval=ev, train=train)


def test_agreement_with_teacher_rises(digits, tmp_path):
    src = _source(digits, labelled_train=False)  # unlabelled: the teacher is the only signal
    student = student_factory()
    cfg = DistillConfig(epochs=15, lr=5e-3, batch_size=64, patience=0)
    out, info = stage.run(src.module, student, make_ctx(src, tmp_path), cfg)
    agree = [h["agreement"] for h in info["history"]]
    assert info["metric"] == "top1_agreement" and info["train"]["labelled"] is False
    assert agree[0] < 0.3  # a fresh student guesses
    assert agree[-1] > 0.8 and agree[-1] > agree[0] + 0.5
    assert agree[len(agree) // 2] > agree[0]
    assert all(np.isfinite(h["loss"]) for h in info["history"][1:])
    assert not out.training
    assert info["best_metric"] == max(h["metric"] for h in info["history"])


def test_labels_early_stopping_and_best_weights_restored(digits, tmp_path):
    x, y, tr, te, teacher = digits
    src = _source(digits, labelled_train=True)
    src.eval = Dataset({"input": x[te]}, y[te], "digits held-out")
    ctx = make_ctx(src, tmp_path)
    cfg = DistillConfig(epochs=12, lr=5e-3, patience=2, alpha=0.5)
    out, info = stage.run(teacher, student_factory(), ctx, cfg)
    assert info["metric"] == "accuracy" and "cross-entropy" in info["loss"]
    assert info["epochs_run"] <= 12
    if info["epochs_run"] < 12:  # stopped early: patience epochs without improvement after the best
        assert info["epochs_run"] - info["best_epoch"] == 2
    # the returned weights are the best epoch's, not the last one's
    from edgekit.pruning.metrics import TorchMetric

    assert TorchMetric(src.eval, ["input"], "classification")(out) == pytest.approx(info["best_metric"])
    # seeded: the same run gives the same history
    _, again = stage.run(teacher, student_factory(), ctx, cfg)
    assert [h["loss"] for h in again["history"]] == [h["loss"] for h in info["history"]]


def test_feature_matching_and_student_from_file(digits, tmp_path):
    src = _source(digits, labelled_train=True)
    f = tmp_path / "small.py"
    f.write_text("import torch.nn as nn\n\ndef build():\n    return nn.Sequential(nn.Linear(64, 24), nn.ReLU(), "
                 "nn.Linear(24, 10))\n\ndef wrong():\n    return nn.Sequential(nn.Linear(64, 3))\n")
    ex = (torch.from_numpy(src.calib.take(2).inputs["input"]),)
    student = stage.load_student(f"{f}:build", src, ex)
    cfg = DistillConfig(epochs=2, feature_layers=("1=1",), feature_weight=0.5)
    _, info = stage.run(src.module, student, make_ctx(src, tmp_path), cfg)
    assert "feature matching" in info["loss"] and len(info["history"]) == 3
    with pytest.raises(InputError, match="output shape"):
        stage.load_student(f"{f}:wrong", src, ex)
    with pytest.raises(InputError, match="no module"):
        stage.run(src.module, student, make_ctx(src, tmp_path), replace(cfg, feature_layers=("nope",)))
