"""A segmentation map smaller than its labels (a Segformer's [N, C, H/4, W/4] against masks at the image's
[N, H, W]) is scored as transformers scores it: the scores upsampled bilinearly to the labels' size, then the
argmax. Such labels were refused ("expected [N, 8, 8]"), so a Segformer could only be scored against masks
shrunk by hand; distillation's and Taylor pruning's cross-entropy with them upsample the same way."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from cliutil import run_cli
from edgekit.evaluate import segmentation_scores, upsampled

MODEL_PY = '''
import torch
import torch.nn as nn


class Half(nn.Module):  # class scores at half the input's side, as a Segformer's are at a quarter
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.e = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                               nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.h = nn.Conv2d(32, 3, 1)

    def forward(self, x):
        return self.h(self.e(x))


def build():
    return Half()
'''


def _reference(scores, labels):
    """mean IoU and pixel accuracy, computed here the plain way: upsample, argmax, count per class."""
    up = F.interpolate(torch.from_numpy(scores), size=labels.shape[1:], mode="bilinear", align_corners=False)
    pred = up.argmax(1).numpy()
    keep = labels >= 0
    ious = []
    for c in range(scores.shape[1]):
        p, t = (pred == c) & keep, (labels == c) & keep
        if (p | t).any():
            ious.append((p & t).sum() / (p | t).sum())
    return float(np.mean(ious)), float(((pred == labels) & keep).sum() / keep.sum())


def test_scores_are_upsampled_to_the_labels_size():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 4, 6, 6)).astype(np.float32)
    labels = rng.integers(0, 4, size=(5, 24, 24))
    labels[:, :2] = -1  # not scored
    got = segmentation_scores(scores, labels)
    assert got == pytest.approx(_reference(scores, labels))
    # the same shape: no upsampling, as before
    assert not upsampled(scores.shape, (5, 6, 6)) and upsampled(scores.shape, labels.shape)
    assert not upsampled(scores.shape, (5, 3, 3))  # smaller labels are no finer map of the same positions
    same = rng.integers(0, 4, size=(5, 6, 6))
    assert segmentation_scores(scores, same)[1] == pytest.approx(float(np.mean(scores.argmax(1) == same)))


@pytest.fixture
def half(tmp_path):
    from sklearn.datasets import load_digits

    (tmp_path / "m.py").write_text(MODEL_PY)
    x = (load_digits().images / 16.0).astype(np.float32)[:300, None]
    y = np.digitize(x[:, 0], [0.2, 0.6]).astype(np.int64)  # 3 classes per pixel, at the image's 8 x 8
    np.save(tmp_path / "calib.npy", x[:200])
    np.savez(tmp_path / "train.npz", x=x[:200], y=y[:200])
    np.savez(tmp_path / "eval.npz", x=x[200:], y=y[200:])
    np.savez(tmp_path / "small.npz", x=x[200:], y=y[200:, ::4, ::4])  # 2 x 2: smaller than the 4 x 4 map
    return tmp_path, x[200:], y[200:]


def test_compress_scores_a_half_size_map_against_full_size_masks(half, capsys):
    d, x, y = half
    out = d / "out"
    rc = run_cli(["compress", f"{d / 'm.py'}:build", "--calib", str(d / "calib.npy"), "--eval", str(d / "eval.npz"),
                  "--train", str(d / "train.npz"), "--task", "segmentation", "--prune", "0.5", "--prune-method",
                  "taylor", "--max-trials", "2", "--no-profile", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    man = json.loads((out / "manifest.json").read_text())
    kinds = {a["kind"] for a in man["artifacts"]}
    assert "distilled" in kinds or "pruned" in kinds
    for art in man["artifacts"]:
        sess = ort.InferenceSession(str(out / art["path"]), providers=["CPUExecutionProvider"])
        scores = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        assert scores.shape[2:] == (4, 4)
        want = _reference(scores, y)
        m = art["metrics"]
        assert m["name"] == "miou"
        assert (m["value"], m["pixel_accuracy"]) == pytest.approx(want)
    text = (out / "manifest.json").read_text()
    assert "cross-entropy with labels" in text  # Taylor importance and distillation took the full-size masks


def test_labels_smaller_than_the_map_are_refused_in_one_line(half, capsys):
    d, _, _ = half
    rc = run_cli(["compress", f"{d / 'm.py'}:build", "--calib", str(d / "calib.npy"), "--eval", str(d / "small.npz"),
                  "--task", "segmentation", "--quantize", "none", "--no-profile", "-o", str(d / "out")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("edgekit: error")]
    assert rc == 2 and len(err) == 1, err
    assert "small.npz" in err[0] and "expected [N, 4, 4]" in err[0], err
    assert not (d / "out").exists()
