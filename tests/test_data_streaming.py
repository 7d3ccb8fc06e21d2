"""Lazily read data stays lazy where PyTorch models are scored and trained (sweep21 F1/F2), prune and distill
learn a user model's input from an image folder or an .npy --train and record the pixel scaling (F3), and
labels beyond int64 are quoted as the file holds them (F4)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import edgekit.calibration as cal
from edgekit.artifact import load_manifest
from edgekit.calibration import LazyArray, read_dataset
from tests.cliutil import run_cli as _run
from edgekit.dataset import Dataset
from edgekit.errors import CalibrationError
from edgekit.pruning.batching import rows
from edgekit.pruning.metrics import predict
from edgekit.stages.distill import validation_split

MODEL = '''
import torch, torch.nn as nn

class Net(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, w, 3, padding=1), nn.Conv2d(w, w, 3, padding=1), nn.Linear(w, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))

def build():
    torch.manual_seed(0)
    return Net(8)

def small():
    torch.manual_seed(1)
    return Net(4)
'''


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("EDGEKIT_QUIET", "1")


def _counting(data: np.ndarray, seen: list) -> LazyArray:
    """A LazyArray over `data` that records every row it reads."""
    def fetch(a, b):
        seen.extend(range(a, b))
        return data[a:b].copy()

    return LazyArray(len(data), data.shape[1:], data.dtype, fetch)


def _images(folder, n: int, size: int = 8):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def test_rows_of_a_lazy_array_read_only_those_rows():
    x = np.arange(200, dtype=np.float32).reshape(50, 4)
    seen = []
    ds = Dataset({"input": _counting(x, seen)})
    idx = np.array([3, 4, 5, 17, 40, 41])
    np.testing.assert_array_equal(rows(ds, idx)["input"], x[idx])
    assert sorted(seen) == idx.tolist()  # was: all 50 rows for every batch
    seen.clear()
    np.testing.assert_array_equal(ds.inputs["input"][[9, 2, 9, -1]], x[[9, 2, 9, -1]])
    assert sorted(seen) == [2, 9, 49]  # a repeated row is read once


def test_scoring_an_image_folder_decodes_each_image_once(tmp_path, monkeypatch):
    folder = _images(tmp_path / "img", 20)
    spec = cal.TensorSpec("input", [-1, 3, 8, 8], "float32")
    data = read_dataset(folder, [spec])
    decoded = []
    load = cal._load_image
    monkeypatch.setattr(cal, "_load_image", lambda path, rs: decoded.append(path) or load(path, rs))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten())
    out = predict(model, data, ["input"], batch_size=4)
    assert len(decoded) == 20  # was 5 batches x 20 images = 100
    with torch.no_grad():
        np.testing.assert_allclose(out, model(torch.from_numpy(np.asarray(data.inputs["input"]))).numpy(), rtol=1e-6)


def test_validation_split_is_a_view_that_copies_nothing(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 4)).astype(np.float32)
    seen = []
    train = Dataset({"input": _counting(x, seen)}, rng.integers(0, 3, 300), "train.npy")
    val, rest = validation_split(train, None, 0)
    assert (len(val), len(rest)) == (60, 240) and seen == []  # was: every row copied into memory up front
    batch = np.array([0, 1, 2, 100, 239])
    got = rows(rest, batch)["input"]
    assert len(seen) == len(batch)
    # the halves partition the training set, labels with their rows
    both = np.concatenate([np.asarray(val.inputs["input"]), np.asarray(rest.inputs["input"])])
    assert sorted(map(tuple, both)) == sorted(map(tuple, x))
    where = {tuple(r): i for i, r in enumerate(x)}
    assert [train.labels[where[tuple(r)]] for r in got] == list(rest.labels[batch])
    # a memory-mapped .npy stays mapped: the split holds index arrays, not copies
    np.save(tmp_path / "t.npy", x)
    mm = read_dataset(tmp_path / "t.npy", [cal.TensorSpec("input", [-1, 4], "float32")])
    v, r = validation_split(mm, None, 0)
    assert isinstance(v.inputs["input"], LazyArray) and isinstance(r.inputs["input"], LazyArray)
    np.testing.assert_array_equal(np.asarray(v.inputs["input"][:5]), x[np.sort(
        np.random.default_rng(0).permutation(300)[:60])][:5])


@pytest.mark.parametrize("cmd", [pytest.param("prune", marks=pytest.mark.slow), "distill"])
def test_prune_and_distill_learn_the_input_from_an_image_folder(tmp_path, cmd):
    (tmp_path / "net.py").write_text(MODEL)
    folder = _images(tmp_path / "img", 12)
    out = tmp_path / "out"
    args = ["--ratio", "0.5"] if cmd == "prune" else ["--student", f"{tmp_path / 'net.py'}:small"]
    model = ["prune", f"{tmp_path / 'net.py'}:build"] if cmd == "prune" else \
        ["distill", "--teacher", f"{tmp_path / 'net.py'}:build"]
    # was: "cannot infer the input shape; pass --input-shape ... or --calib data", rc 2
    assert _run(model + args + ["--epochs", "1", "--calib", str(folder), "-o", str(out)]) == 0
    man = load_manifest(out)
    # the 0..1 pixel scaling it calibrated and scored with is shipped, as compress does (was: prepost {})
    assert man.prepost["pre"] == [{"op": "resize_normalize", "size": [8, 8], "mean": [0.0] * 3, "std": [255.0] * 3,
                                   "layout": "NCHW"}]


def test_distill_learns_the_input_from_a_train_npy(tmp_path, capsys):
    (tmp_path / "net.py").write_text(MODEL)
    np.save(tmp_path / "t.npy", np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "out"
    distill = ["distill", "--teacher", f"{tmp_path / 'net.py'}:build", "--student", f"{tmp_path / 'net.py'}:small",
               "--epochs", "1", "--train", str(tmp_path / "t.npy"), "-o", str(out)]
    # --train alone: the input shape is learned, then the missing eval data is what is refused
    # (was "cannot infer the input shape; pass --input-shape ... or --calib data")
    assert _run(distill) == 2 and "no evaluation data; pass --eval" in capsys.readouterr().err
    assert not out.exists()
    assert _run(distill + ["--calib", str(tmp_path / "t.npy")]) == 0
    assert load_manifest(out).prepost == {}


@pytest.mark.parametrize("y, shown", [(np.uint64(2 ** 64 - 16), "18446744073709551600"), (1e20, "1e+20")])
def test_labels_beyond_int64_are_quoted_as_the_file_holds_them(tmp_path, y, shown):
    labels = np.zeros(8, np.asarray(y).dtype)
    labels[3] = y
    np.savez(tmp_path / "e.npz", input=np.zeros((8, 4), np.float32), y=labels)
    # was "label -16 (sample 3)": the check ran after the cast to int64
    with pytest.raises(CalibrationError, match=rf"label {re.escape(shown)} \(sample 3\) is not a class index; 1 of 8"):
        read_dataset(tmp_path / "e.npz", [cal.TensorSpec("input", [-1, 4], "float32")], labels=True)
