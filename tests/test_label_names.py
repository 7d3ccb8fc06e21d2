"""Labels written as class names ('dog', 'POSITIVE'), as a hand-made .csv or a dataset export holds them. A
model that names its classes (a HuggingFace config's id2label) has them numbered by those names; one that
does not is refused in one line, as before (a .csv was 'column 'label': 'dog' is not a number')."""
import csv
import json

import numpy as np
import onnxruntime as ort
import pytest

from cliutil import run_cli
from edgekit.calibration import read_dataset

MODEL_PY = '''
import types

import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 3)
        self.config = types.SimpleNamespace(id2label={0: "cat", 1: "Dog", 2: "fish"})  # as transformers has it

    def forward(self, x):
        return self.fc(x)


def named():
    return Net()


def wrapped():  # a user's wrapper around the named model: its names are found inside
    return nn.Sequential(Net())


def placeholders():
    net = Net()
    net.config.id2label = {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    return net


def plain():
    torch.manual_seed(0)
    return nn.Linear(4, 3)
'''

NAMES = ["cat", "Dog", "fish"]


@pytest.fixture()
def data(tmp_path):
    (tmp_path / "net.py").write_text(MODEL_PY)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=150)
    with open(tmp_path / "eval.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "c", "d", "label"])
        # written as people write them: 'dog' for the model's 'Dog'
        w.writerows([list(map(float, r)) + [NAMES[c].lower()] for r, c in zip(x, y)])
    np.save(tmp_path / "calib.npy", x)
    return tmp_path, x, y


def _compress(d, factory, eval_file, out):
    return run_cli(["compress", f"{d / 'net.py'}:{factory}", "--calib", str(d / "calib.npy"), "--eval",
                    str(d / eval_file), "--quantize", "none", "--no-profile", "-o", str(out)])


@pytest.mark.parametrize("factory", ["named", "wrapped"])
def test_class_names_are_numbered_by_the_models_id2label(data, capsys, factory):
    d, x, y = data
    out = d / "out"
    rc = _compress(d, factory, "eval.csv", out)
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "class names in its labels numbered by the model's config.id2label (cat=0, Dog=1, fish=2)" in err
    m = json.loads((out / "manifest.json").read_text())["artifacts"][0]["metrics"]
    s = ort.InferenceSession(str(out / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    pred = s.run(None, {s.get_inputs()[0].name: x})[0].argmax(1)
    assert m["name"] == "accuracy" and m["n"] == 150 and m["value"] == pytest.approx(float(np.mean(pred == y)))


def test_an_npz_of_string_labels_reads_the_same(data, capsys):
    d, x, y = data
    np.savez(d / "eval.npz", x=x, y=np.array([NAMES[c] for c in y]))
    rc = _compress(d, "named", "eval.npz", d / "out")
    assert rc == 0, capsys.readouterr().err
    m = json.loads((d / "out" / "manifest.json").read_text())["artifacts"][0]["metrics"]
    assert m["name"] == "accuracy" and m["n"] == 150


@pytest.mark.parametrize("factory, words", [
    ("plain", "'), not class indices, and the model names no classes (a HuggingFace model's config.id2label)"),
    ("placeholders", "the model names no classes"),  # LABEL_0, LABEL_1: transformers' defaults name nothing
])
def test_names_without_the_models_names_are_one_line(data, capsys, factory, words):
    d, x, y = data
    rc = _compress(d, factory, "eval.csv", d / "out")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not (d / "out").exists()
    assert len(err.splitlines()) == 1 and str(d / "eval.csv") in err and words in err, err


def test_a_name_the_model_does_not_have_is_one_line(data, capsys):
    d, x, y = data
    text = (d / "eval.csv").read_text().replace(",fish", ",bird", 1)
    (d / "eval.csv").write_text(text)
    rc = _compress(d, "named", "eval.csv", d / "out")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not (d / "out").exists()
    assert len(err.splitlines()) == 1 and "label 'bird' is not one of the model's 3 class names ('cat', 'Dog', " \
        "'fish'; from its config.id2label)" in err, err


def test_the_reader_holds_names_aside_and_keeps_numeric_columns(data):
    d, x, y = data
    spec = [{"name": "x", "shape": ["batch", 4], "dtype": "float32"}]
    ds = read_dataset(d / "eval.csv", spec, labels=True)
    assert ds.labels is None and ds.label_strings.tolist() == [NAMES[c].lower() for c in y]
    assert np.allclose(ds.inputs["x"], x, atol=1e-6)
    assert ds.take(5).label_strings.tolist() == ds.label_strings[:5].tolist()
    assert ds.subset([3, 1], "s").label_strings.tolist() == [ds.label_strings[3], ds.label_strings[1]]
    assert read_dataset(d / "eval.csv", spec).label_strings is None  # calibration reads no labels
