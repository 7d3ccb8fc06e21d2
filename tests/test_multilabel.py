"""--task multi-label: a yes/no per class ([N, C] logits or sigmoid probabilities), scored by micro F1 against 0/1
labels [N, C], else against FP32's decisions. Taken as class scores, such an output was scored by top-1
agreement, blind to every label but each sample's strongest."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgekit import multilabel
from edgekit.artifact import TensorSpec
from edgekit.config import DistillConfig
from edgekit.dataset import Dataset
from edgekit.errors import CalibrationError
from edgekit.evaluate import metric_name, score
from edgekit.source import SourceModel
from edgekit.stages import distill as stage
from test_prune_models import make_ctx
from tests.test_quant_cli import _cli


def test_f1_counts_every_label_not_only_the_strongest():
    ref = np.array([[3.0, 1.0, -2.0], [2.0, -1.0, 0.5]], np.float32)  # decisions: [1,1,0], [1,0,1]
    flipped = ref.copy()
    flipped[0, 1] = -1.0  # sample 0's second label off: its strongest class is unchanged
    assert score([flipped], "classification", None, [ref]) == 1.0  # what the shape's guess saw
    f1 = score([flipped], "multi-label", None, [ref])
    assert f1 == pytest.approx(2 * 3 / (2 * 3 + 1))  # 3 of 4 positives kept, one missed
    assert score([ref], "multi-label", None, [ref]) == 1.0
    labels = np.array([[1, 1, 0], [1, 0, 0]])
    assert score([ref], "multi-label", labels) == pytest.approx(2 * 3 / (2 * 3 + 1))  # one false positive
    assert metric_name("multi-label", True) == "f1_micro" and metric_name("multi-label", False) == "f1_agreement"


def test_probabilities_are_cut_at_one_half_and_logits_at_zero():
    probs = np.array([[0.9, 0.4, 0.6]], np.float32)
    assert multilabel.decisions(probs).tolist() == [[True, False, True]]
    assert multilabel.decisions(np.array([[0.9, -0.4, 1.6]])).tolist() == [[True, False, True]]
    # a variant is cut as its reference is: INT8 probabilities a hair outside [0, 1] stay probabilities
    assert multilabel.decisions(np.array([[1.001, 0.4]]), reference=probs[:, :2]).tolist() == [[True, False]]
    assert multilabel.f1_micro(np.zeros((2, 3), bool), np.zeros((2, 3), bool)) == 1.0  # nothing on either side


def test_labels_that_do_not_fit_are_one_line_naming_the_file():
    with pytest.raises(CalibrationError, match=r"ev.npz: --task multi-label needs labels 'y' of shape \[N, 3\]"):
        multilabel.check_labels(np.zeros((4, 2), int), (4, 3), "ev.npz")
    with pytest.raises(CalibrationError, match=r"ev.npz: --task multi-label needs labels 'y' of 0 or 1; sample 1"):
        multilabel.check_labels(np.array([[0, 1, 0], [0, 2, 1]]), (2, 3), "ev.npz")
    multilabel.check_labels(np.array([0, 1, 1]), (3, 1), "ev.npz")  # a one-logit binary classifier's labels


def _digits_multilabel():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = np.stack([d.target % 2 == 0, d.target >= 5, np.isin(d.target, (2, 3, 5, 7))], 1).astype(np.int64)
    return x, y


def _teacher(x, y, sigmoid=False):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    xt, yt = torch.from_numpy(x[:1000]), torch.from_numpy(y[:1000]).float()
    for _ in range(150):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(net(xt), yt).backward()
        opt.step()
    return (nn.Sequential(net, nn.Sigmoid()) if sigmoid else net).eval()


@pytest.mark.parametrize("sigmoid", [False, True])
def test_a_student_learns_every_label_from_the_teacher(sigmoid, tmp_path):
    x, y = _digits_multilabel()
    teacher = _teacher(x, y, sigmoid)
    torch.manual_seed(1)
    student = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    if sigmoid:
        student = nn.Sequential(student, nn.Sigmoid())
    train = Dataset({"input": x[:1000]}, None, "digits")
    ev = Dataset({"input": x[1000:]}, y[1000:], "digits held out")
    src = SourceModel(spec="test:teacher", kind="torch", inputs=[TensorSpec("input", ["batch", 64], "float32")],
                      outputs=["logits"], task="multi-label", module=teacher, calib=train, eval=ev, train=train)
    torch.set_num_threads(1)
    out, info = stage.run(teacher, student, make_ctx(src, tmp_path), DistillConfig(epochs=15, lr=1e-2, patience=0))
    assert info["metric"] == "f1_agreement" and "binary cross-entropy" in info["loss"]
    hist = [h["metric"] for h in info["history"]]
    assert hist[0] < 0.8 and max(hist) > 0.9, hist
    with torch.no_grad():
        got = out(torch.from_numpy(x[1000:])).numpy()
    assert score([got], "multi-label", y[1000:]) > 0.85


def test_compress_scores_multi_label_outputs_by_f1_against_the_labels(tmp_path):
    x, y = _digits_multilabel()
    teacher = _teacher(x, y)
    torch.save(teacher.state_dict(), tmp_path / "ml.pt")
    (tmp_path / "ml.py").write_text("import torch.nn as nn\n\n\ndef build():\n"
                                   "    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))\n")
    np.savez(tmp_path / "calib.npz", x=x[:200])
    np.savez(tmp_path / "ev.npz", x=x[1000:], y=y[1000:])
    r = _cli("compress", "ml.py:build", "--weights", "ml.pt", "--calib", "calib.npz", "--eval", "ev.npz",
             "--task", "multi-label", "--no-profile", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "labels unused" not in r.stderr and "labels 'y' must be" not in r.stderr, r.stderr
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    fp32 = next(a for a in m["artifacts"] if a["kind"] == "fp32")
    with torch.no_grad():
        ref = teacher(torch.from_numpy(x[1000:])).numpy()
    assert fp32["metrics"]["name"] == "f1_micro"
    assert fp32["metrics"]["value"] == pytest.approx(multilabel.f1_labels(ref, y[1000:]), abs=1e-6)
    assert m["source"]["task"] == "multi-label"
    # 0/1 labels with the shape's guess: refused, naming the task that scores them
    r = _cli("compress", "ml.py:build", "--weights", "ml.pt", "--calib", "calib.npz", "--eval", "ev.npz",
             "--no-profile", "-o", "out2", cwd=tmp_path)
    assert r.returncode == 2 and "pass --task multi-label" in r.stderr and not (tmp_path / "out2").exists()


def test_taylor_importance_takes_the_labels_of_a_multi_label_output():
    """With 0/1 labels, Taylor importance's gradient is their binary cross-entropy; it read "output sensitivity
    (random projections, no labels)" although the labels were there."""
    from edgekit.pruning.importance import accumulate_gradients

    x, y = _digits_multilabel()
    model = _teacher(x, y)
    used = accumulate_gradients(model, Dataset({"input": x[:64]}, y[:64], "digits"), ["input"], "multi-label")
    assert used == "binary cross-entropy with labels"
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.parameters())
    model.zero_grad(set_to_none=True)
    used = accumulate_gradients(model, Dataset({"input": x[:64]}, None, "digits"), ["input"], "multi-label")
    assert used.startswith("output sensitivity")


@pytest.mark.parametrize("labels,expect", [
    (lambda y: y[:, 0], "needs labels 'y' of shape [N, 3]"),  # one class index per sample
    (lambda y: y * 0.5, "needs labels 'y' of 0/1 per class, shape [N, C]; these are not integers"),
    (lambda y: y * 2, "needs labels 'y' of 0 or 1; sample"),
    (lambda y: y[:, :2], "needs labels 'y' of shape [N, 3]"),
])
def test_labels_that_do_not_fit_are_refused_in_one_line_and_nothing_is_written(tmp_path, labels, expect):
    x, y = _digits_multilabel()
    (tmp_path / "ml.py").write_text("import torch.nn as nn\n\n\ndef build():\n"
                                   "    return nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 3))\n")
    np.savez(tmp_path / "calib.npz", x=x[:64])
    np.savez(tmp_path / "bad.npz", x=x[:64], y=labels(y[:64]))
    r = _cli("compress", "ml.py:build", "--calib", "calib.npz", "--eval", "bad.npz", "--task", "multi-label",
             "--quantize", "none", "--no-profile", "-o", "out", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("edgekit: error: bad.npz") and expect in lines[0], r.stderr
    assert not (tmp_path / "out").exists()
