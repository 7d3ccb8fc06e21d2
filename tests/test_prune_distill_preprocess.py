"""prune and distill take --preprocess as compress does (the implied-scaling note told users to pass it, and
both refused it), and the prune summary does not repeat the notes already printed as they arose."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.artifact import load_manifest
from tests.cliutil import run_cli as _run

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
    return Net(16)

def small():
    torch.manual_seed(1)
    return Net(4)
'''

PRE = {"op": "resize_normalize", "size": [8, 8], "mean": [120.0, 110.0, 100.0], "std": [60.0, 61.0, 62.0],
       "layout": "NCHW"}


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("EDGEKIT_QUIET", "1")


def _images(folder, n: int, size: int = 12):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def _args(cmd, tmp_path):
    net = tmp_path / "net.py"
    net.write_text(MODEL)
    if cmd == "prune":
        return ["prune", f"{net}:build", "--ratio", "0.5"]
    return ["distill", "--teacher", f"{net}:build", "--student", f"{net}:small"]


@pytest.mark.parametrize("cmd", ["prune", "distill"])
def test_declared_preprocessing_is_used_and_shipped(tmp_path, cmd, capsys):
    folder = _images(tmp_path / "img", 12)
    out = tmp_path / "out"
    spec = tmp_path / "pre.json"
    spec.write_text(json.dumps({"pre": [PRE]}))
    # was: "No such option: --preprocess", rc 2, though the note on image folders says to pass it
    assert _run(_args(cmd, tmp_path) + ["--epochs", "1", "--calib", str(folder), "--preprocess", str(spec),
                                        "-o", str(out)]) == 0
    man = load_manifest(out)
    assert man.prepost["pre"] == [PRE]  # the declared spec, resized 12 -> 8, not the implied 0..1 guess
    assert man.settings["preprocess"] == str(spec)
    assert "images read as pixels scaled to 0..1" not in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["prune", "distill"])
def test_bad_preprocessing_is_refused_before_anything_is_written(tmp_path, cmd, capsys):
    folder = _images(tmp_path / "img", 4)
    out = tmp_path / "out"
    rc = _run(_args(cmd, tmp_path) + ["--calib", str(folder), "--preprocess", "{not json", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "--preprocess: not valid JSON" in err, err
    assert not out.exists()


def test_preprocessing_that_cannot_feed_the_model_is_refused(tmp_path, capsys):
    np.save(tmp_path / "c.npy", np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    bad = json.dumps({"pre": [{**PRE, "mean": [0.0], "std": [1.0], "size": [16, 16]}]})
    rc = _run(_args("prune", tmp_path) + ["--calib", str(tmp_path / "c.npy"), "--preprocess", bad,
                                          "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "--preprocess: the pre-processing gives 'x' shape [1, 1, 16, 16]" in err, err
    assert not (tmp_path / "out").exists()


def test_prune_summary_does_not_repeat_notes_printed_as_they_arose(tmp_path, capsys, monkeypatch):
    np.save(tmp_path / "c.npy", np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32))
    # --steps above --epochs: a note as it arises; channel multiple 8 on 16-channel layers: 0.95 rounds
    # back to 8 kept, a note in the summary only
    assert _run(_args("prune", tmp_path)[:2] + ["--ratio", "0.95", "--steps", "2", "--epochs", "1", "--calib",
                                                str(tmp_path / "c.npy"), "-o", str(tmp_path / "out")]) == 0
    cap = capsys.readouterr()
    told = [ln.split("edgekit: note: ", 1)[1] for ln in cap.err.splitlines() if ln.startswith("edgekit: note: ")]
    notes = load_manifest(tmp_path / "out").pruning["notes"]
    assert told and set(told) <= set(notes)
    flat = " ".join(cap.err.split())  # the summary is on stderr too; rich wraps long lines
    def key(n):  # 60 characters after a leading 'file.py:build: ', which several notes share
        return " ".join(n.split(": ", 1)[-1].split())[:60]

    for n in told:  # was: each printed twice, as it arose and again under the summary
        assert flat.count(key(n)) == 1
    for n in set(notes) - set(told):  # notes not printed on the way still close the summary
        assert flat.count(key(n)) == 1


@pytest.mark.parametrize("cmd", ["compress", "prune"])
def test_missing_data_is_refused_before_a_zoo_model_trains(tmp_path, cmd, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEKIT_CACHE", str(cache))  # empty: zoo:digits-cnn would train first (minutes)
    extra = ["--ratio", "0.5"] if cmd == "prune" else []
    rc = _run([cmd, "zoo:digits-cnn", *extra, "--calib", str(tmp_path / "typo.npy"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and f"{tmp_path / 'typo.npy'}: calibration/eval data not found" in err, err
    assert not list(cache.rglob("*.pt"))  # was: trained and cached before the error
    assert not (tmp_path / "out").exists()


def test_preprocess_names_a_missing_spec_file_and_reads_long_json_text(tmp_path, capsys):
    np.save(tmp_path / "c.npy", np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    base = _args("prune", tmp_path) + ["--calib", str(tmp_path / "c.npy"), "-o", str(tmp_path / "out")]
    # was: "--preprocess './missing.json': not JSON or a JSON file: Expecting value ..."
    assert _run(base + ["--preprocess", "./missing.json"]) == 2
    assert "./missing.json: no such file (--preprocess is a JSON file or JSON text)" in capsys.readouterr().err
    # an indented spec longer than a file name: was "internal error: OSError: File name too long", rc 1
    long = json.dumps({"pre": [{**PRE, "size": [9, 9]}]}, indent=8)
    assert len(long) > 255
    assert _run(base + ["--preprocess", long]) == 2
    err = capsys.readouterr().err
    assert "--preprocess: the pre-processing gives 'x' shape [1, 3, 9, 9]" in err, err
