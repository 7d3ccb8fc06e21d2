"""distill --student fixes (sweep32 F1-F5): a diverged run never ships NaN weights, non-finite options are
refused, a pruned.pt records the architecture it holds (absolute path) and reloads from any folder, a
raising student factory is one line, and --epochs 0 does not ship a fresh student's random weights."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgekit.pruning import serialize
from tests.cliutil import run_cli as _run

MODELS = '''
import torch, torch.nn as nn

class CNN(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(1, w, 3, padding=1), nn.Conv2d(w, w, 3, padding=1), nn.Linear(w, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3)))

class MLP(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, h), nn.ReLU(), nn.Linear(h, 4))

    def forward(self, x):
        return self.net(x)

def build():
    torch.manual_seed(0)
    return CNN(16)

def mlp():
    torch.manual_seed(0)
    return MLP(32)

def small_mlp():
    torch.manual_seed(1)
    return MLP(8)

def boom():
    raise ValueError("boom")
'''


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("EDGEKIT_QUIET", "1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def d(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((160, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x[:16])
    np.savez(tmp_path / "eval.npz", input=x[16:48], y=rng.integers(0, 4, 32))
    np.savez(tmp_path / "train.npz", input=x[48:], y=rng.integers(0, 4, 112))
    return tmp_path


def _distill(d, student, out, *extra, teacher="build"):
    return _run(["distill", "--teacher", f"{d}/models.py:{teacher}", "--student", str(student),
                 "--calib", str(d / "calib.npy"), "--eval", str(d / "eval.npz"), "--train", str(d / "train.npz"),
                 "--epochs", "1", *extra, "-o", str(out)])


def _nan_weights(path) -> int:
    return sum(int(np.isnan(numpy_helper.to_array(i)).sum()) for i in onnx.load(path).graph.initializer)


def test_diverged_training_never_ships_nan_weights(d, capsys):
    out = d / "lr"
    assert _distill(d, f"{d}/models.py:small_mlp", out, "--epochs", "3", "--lr", "1e8") == 0
    assert _nan_weights(out / "model.distilled.onnx") == 0
    info = json.loads((out / "distill.json").read_text())
    assert info["best_epoch"] == 0 and info["history"][-1].get("diverged")
    assert any("diverged" in n for n in info["notes"]) and "diverged" in capsys.readouterr().err
    obj = serialize.read(out / "pruned.pt")
    assert all(torch.isfinite(t).all() for t in obj["state_dict"].values() if t.is_floating_point())


@pytest.mark.parametrize("opt", [["--temperature", "nan"], ["--temperature", "inf"], ["--feature-weight", "nan"]])
def test_non_finite_options_refused(d, capsys, opt):
    out = d / "t"
    assert _distill(d, f"{d}/models.py:small_mlp", out, *opt) == 2
    assert "must be a finite number" in capsys.readouterr().err and not out.exists()


def test_pruned_pt_of_another_architecture_records_it_and_chains(d):
    a = d / "a"
    assert _distill(d, f"{d}/models.py:small_mlp", a) == 0
    b = d / "b"
    assert _distill(d, a / "pruned.pt", b) == 0
    spec = serialize.read(b / "pruned.pt")["spec"]
    assert spec == f"{(d / 'models.py').resolve()}:small_mlp"  # the student's, not the teacher's CNN
    assert _distill(d, b / "pruned.pt", d / "c") == 0  # it reloads


def test_pruned_pt_of_another_teacher_is_rebuilt_on_its_own_architecture(d):
    a = d / "a"
    assert _distill(d, f"{d}/models.py:small_mlp", a) == 0
    b = d / "b"  # an MLP-based pruned.pt as the student of... an MLP teacher of another factory
    assert _distill(d, a / "pruned.pt", b, teacher="mlp") == 0
    assert serialize.read(b / "pruned.pt")["spec"].endswith("models.py:small_mlp")
    assert _distill(d, b / "pruned.pt", d / "c", teacher="mlp") == 0


def test_pruned_pt_from_another_folder_and_old_relative_spec(d, tmp_path_factory, monkeypatch, capsys):
    monkeypatch.chdir(d)
    a = d / "a"
    assert _run(["distill", "--teacher", "models.py:build", "--student", "models.py:small_mlp", "--calib", "calib.npy",
                 "--eval", "eval.npz", "--epochs", "1", "-o", "a"]) == 0
    obj = serialize.read(a / "pruned.pt")
    assert os.path.isabs(obj["spec"].rpartition(":")[0])
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert _distill(d, a / "pruned.pt", d / "b") == 0
    # a file written before specs were absolute: 'models.py:...' relative to the folder it was made in;
    # its OUTDIR's manifest recorded the absolute source_file
    obj["spec"] = "models.py:small_mlp"
    torch.save(obj, a / "old.pt")
    assert _distill(d, a / "old.pt", d / "c") == 0
    assert serialize.read(d / "c" / "pruned.pt")["spec"] == f"{(d / 'models.py').resolve()}:small_mlp"
    lone = d / "lone"  # without a manifest: named in the error
    lone.mkdir()
    torch.save(obj, lone / "old.pt")
    assert _distill(d, lone / "old.pt", d / "e") == 2
    err = capsys.readouterr().err
    assert "lone/old.pt" in err and "models.py:small_mlp: file not found" in err
    (lone / "models.py").write_text(MODELS)  # beside the pruned.pt: found there
    capsys.readouterr()
    assert _distill(d, lone / "old.pt", d / "g") == 2  # but it is not the teacher's file: code the .pt chose
    assert "pass --trust-pickle" in capsys.readouterr().err and not (d / "g").exists()
    assert _distill(d, lone / "old.pt", d / "f", "--trust-pickle") == 0


def test_raising_student_factory_is_one_line(d, capsys):
    assert _distill(d, f"{d}/models.py:boom", d / "o") == 2
    err = capsys.readouterr().err
    assert "calling the factory" in err and "ValueError: boom" in err and "internal error" not in err


def test_epochs_0_with_fresh_student_refused(d, capsys):
    assert _distill(d, f"{d}/models.py:small_mlp", d / "o", "--epochs", "0") == 2
    assert "--epochs 0" in capsys.readouterr().err and not (d / "o").exists()
    a = d / "a"
    assert _distill(d, f"{d}/models.py:small_mlp", a) == 0
    assert _distill(d, a / "pruned.pt", d / "b", "--epochs", "0") == 0  # a trained student: kept, with a note
    assert any("0 epochs ran" in n for n in json.loads((d / "b" / "distill.json").read_text())["notes"])


def test_a_fresh_student_trains_longer_by_default_than_one_that_fine_tunes(d):
    """A file.py:factory student starts from random weights: 30 epochs with patience 5 (the fine-tuning
    defaults a pruned model gets) left a digits student at 0.63 accuracy and still rising."""
    def settings(out):
        s = json.loads((out / "distill.json").read_text())["settings"]
        return s["epochs"], s["patience"]

    common = ["--teacher", f"{d}/models.py:build", "--calib", str(d / "calib.npy"), "--eval", str(d / "eval.npz"),
              "--train", str(d / "train.npz")]
    assert _run(["distill", *common, "--student", f"{d}/models.py:small_mlp", "-o", str(d / "fresh")]) == 0
    assert settings(d / "fresh") == (100, 15)
    assert _run(["distill", *common, "--student", str(d / "fresh" / "pruned.pt"), "-o", str(d / "tuned")]) == 0
    assert settings(d / "tuned") == (30, 5)
    assert _run(["distill", *common, "--student", f"{d}/models.py:small_mlp", "--epochs", "3", "--patience", "1",
                 "-o", str(d / "given")]) == 0
    assert settings(d / "given") == (3, 1)
