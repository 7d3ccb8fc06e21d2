"""Early stopping sees a student still learning while its held-out accuracy stands still.

Top-1 agreement on a small held-out set moves in steps of one sample: a pruned MobileNet-like CNN on
digits (240 training samples, 60 held out) read 0.933 for five epochs while its training loss fell 12% an
epoch, so patience 5 ended training at epoch 9 and the model lost 9% accuracy; scored on the same
agreement but closer to the teacher's scores (KL), training ran on and lost 3.4%."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgekit.artifact import TensorSpec
from edgekit.config import DistillConfig
from edgekit.dataset import Dataset
from edgekit.pruning.metrics import TorchMetric
from edgekit.source import SourceModel
from edgekit.stages import distill as stage
from edgekit.stages.distill import better_epoch
from test_prune_models import make_ctx


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(teacher.parameters(), 1e-2)
    xt, yt = torch.from_numpy(x[:1200]), torch.from_numpy(d.target[:1200].astype(np.int64))
    for _ in range(80):
        opt.zero_grad()
        nn.functional.cross_entropy(teacher(xt), yt).backward()
        opt.step()
    return x, teacher.eval()


def test_divergence_is_zero_for_the_teacher_and_grows_with_the_difference(digits):
    x, teacher = digits
    data = Dataset({"input": x[:200]}, None, "digits")
    metric = TorchMetric(data, ["input"], "classification", reference_model=teacher)
    ref = metric.reference
    assert metric.divergence(ref) == pytest.approx(0.0, abs=1e-9)
    noise = np.random.default_rng(0).normal(size=ref.shape).astype(np.float32)
    small, large = metric.divergence(ref + 0.1 * noise), metric.divergence(ref + 1.0 * noise)
    assert 0 < small < large
    # not class scores: nothing to compare by softmax
    assert TorchMetric(data, ["input"], "regression", reference_model=teacher).divergence(ref) is None
    assert TorchMetric(data, ["input"], "embedding", reference_model=teacher).divergence(ref) is None


def test_a_tie_on_the_metric_is_broken_by_closeness_to_the_teacher():
    assert better_epoch({"metric": 0.9, "kl_to_teacher": 0.10}, {"metric": 0.9, "kl_to_teacher": 0.20}, None)
    assert not better_epoch({"metric": 0.9, "kl_to_teacher": 0.20}, {"metric": 0.9, "kl_to_teacher": 0.10}, None)
    # float noise is not progress
    assert not better_epoch({"metric": 0.9, "kl_to_teacher": 0.09999}, {"metric": 0.9, "kl_to_teacher": 0.1}, None)
    # the metric comes first
    assert not better_epoch({"metric": 0.8, "kl_to_teacher": 0.01}, {"metric": 0.9, "kl_to_teacher": 0.2}, None)
    assert better_epoch({"metric": 0.9, "kl_to_teacher": 0.5}, {"metric": 0.8, "kl_to_teacher": 0.1}, None)


def test_training_goes_on_while_the_student_nears_the_teacher_at_a_flat_metric(digits, tmp_path):
    x, teacher = digits
    # a student that already agrees with the teacher on nearly every sample, but not in its scores: a
    # pruned model's starting point, where the held-out agreement is flat from the first epoch
    student = copy.deepcopy(teacher)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.15 * p.abs().mean() * torch.randn(p.shape, generator=g))
    train = Dataset({"input": x[1200:1400]}, None, "digits")
    src = SourceModel(spec="test:teacher", kind="torch", inputs=[TensorSpec("input", ["batch", 64], "float32")],
                      outputs=["logits"], task="classification", module=teacher, calib=train, eval=train, train=train)
    torch.set_num_threads(1)
    _, info = stage.run(teacher, student, make_ctx(src, tmp_path), DistillConfig(epochs=12, lr=2e-3, patience=2))
    hist = info["history"]
    top = max(h["metric"] for h in hist)
    first_top = next(h["epoch"] for h in hist if h["metric"] == top)
    # patience counted on the metric alone would have stopped 2 epochs after it first reached its top
    assert info["epochs_run"] > first_top + 2, [(h["epoch"], h["metric"], h["kl_to_teacher"]) for h in hist]
    kept = next(h for h in hist if h["epoch"] == info["best_epoch"])
    assert kept["metric"] == top
    assert kept["kl_to_teacher"] < 0.5 * next(h for h in hist if h["epoch"] == first_top)["kl_to_teacher"]


def test_a_student_still_improving_at_the_epoch_limit_gets_a_note(digits, tmp_path, capsys):
    """The epoch limit, not a plateau, ended training: said, with how to train longer (a pruned CNN was best at
    its 30th of 30 epochs at -2.75% accuracy, and at its 80th of 80 at -1.6%). Stopped early, no note."""
    x, teacher = digits
    train = Dataset({"input": x[1200:1400]}, None, "digits")
    src = SourceModel(spec="test:teacher", kind="torch", inputs=[TensorSpec("input", ["batch", 64], "float32")],
                      outputs=["logits"], task="classification", module=teacher, calib=train, eval=train, train=train)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    fresh = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))  # far from the teacher: 3 epochs go on
    _, info = stage.run(teacher, fresh, make_ctx(src, tmp_path), DistillConfig(epochs=3, lr=2e-3, patience=2))
    assert info["best_epoch"] == info["epochs_run"] == 3, info["history"]
    note = [n for n in info["notes"] if "the last epoch (3 of 3) was still the best" in n]
    assert note and "the epoch limit ended training, not a plateau; more epochs (--epochs" in note[0], info["notes"]
    assert note[0] in capsys.readouterr().err
    # the teacher as its own student: nothing to learn, training stops early and says nothing of the limit
    _, info = stage.run(teacher, copy.deepcopy(teacher), make_ctx(src, tmp_path),
                        DistillConfig(epochs=6, lr=2e-3, patience=2))
    assert not any("was still the best" in n for n in info["notes"]), info["notes"]
