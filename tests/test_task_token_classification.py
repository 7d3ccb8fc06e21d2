"""--task token-classification: a token classifier's (NER, POS tagging) class scores per token [N, L, C], classes
last as HuggingFace's AutoModelForTokenClassification gives them, scored per token against labels [N, L]
(HuggingFace's -100 marks a token not scored: padding, a word's later sub-tokens). They were refused for
--task segmentation with a hint to transpose the model's output, and without --task scored by cosine."""
import json

import numpy as np
import onnxruntime as ort
import pytest

from cliutil import run_cli

TAGGER_PY = '''
import torch
import torch.nn as nn


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.e = nn.Embedding(30, 24)
        self.mix = nn.Conv1d(24, 32, 3, padding=1)
        self.mix2 = nn.Conv1d(32, 32, 3, padding=1)
        self.h = nn.Linear(32, 5)

    def forward(self, input_ids):
        x = self.e(input_ids).transpose(1, 2)
        x = torch.relu(self.mix2(torch.relu(self.mix(x)))).transpose(1, 2)
        return self.h(x)  # [N, L, 5]


def build():
    return Tagger()


class Pooled(nn.Module):
    def __init__(self):
        super().__init__()
        self.e, self.h = nn.Embedding(30, 8), nn.Linear(8, 5)

    def forward(self, input_ids):
        return self.h(self.e(input_ids).mean(1))  # [N, 5]


def pooled():
    return Pooled()
'''


@pytest.fixture
def tagger(tmp_path):
    (tmp_path / "t.py").write_text(TAGGER_PY)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 30, (200, 14))
    y = (ids * 7 + np.roll(ids, 1, axis=1)) % 5
    y[:, -3:] = -100  # padding, not scored
    np.save(tmp_path / "calib.npy", ids[:120])
    np.savez(tmp_path / "eval.npz", input_ids=ids[120:], y=y[120:])
    np.savez(tmp_path / "eval_nolabels.npz", input_ids=ids[120:])
    return tmp_path, ids[120:], y[120:]


def _run(path, ids):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: ids})[0]


def test_scored_per_token_against_labels_and_fp32(tagger, capsys):
    d, ids, y = tagger
    out = d / "out"
    rc = run_cli(["compress", f"{d / 't.py'}:build", "--calib", str(d / "calib.npy"), "--eval", str(d / "eval.npz"),
                  "--task", "token-classification", "--max-trials", "3", "--no-profile", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    man = json.loads((out / "manifest.json").read_text())
    fp32 = man["artifacts"][0]
    pred = _run(out / fp32["path"], ids).argmax(-1)
    keep = y >= 0
    assert fp32["metrics"]["name"] == "token_accuracy"
    assert fp32["metrics"]["value"] == pytest.approx(float(np.sum((pred == y) & keep) / keep.sum()))
    # the INT8 candidates were tuned and scored on the same per-token accuracy
    q = next(a for a in man["artifacts"] if a["kind"].startswith("int8"))
    qpred = _run(out / q["path"], ids).argmax(-1)
    assert q["metrics"]["name"] == "token_accuracy"
    assert q["metrics"]["value"] == pytest.approx(float(np.sum((qpred == y) & keep) / keep.sum()))
    # without labels: per-token agreement with FP32, not the cosine of the flattened scores
    rc = run_cli(["compress", f"{d / 't.py'}:build", "--calib", str(d / "calib.npy"), "--eval",
                  str(d / "eval_nolabels.npz"), "--task", "token-classification", "--max-trials", "2", "--no-profile",
                  "-o", str(d / "o2")])
    assert rc == 0, capsys.readouterr().err
    man = json.loads((d / "o2" / "manifest.json").read_text())
    q = next(a for a in man["artifacts"] if a["kind"].startswith("int8"))
    ref = _run(d / "o2" / "model.fp32.onnx", ids).argmax(-1)
    assert q["metrics"]["name"] == "token_agreement"
    assert q["metrics"]["value"] == pytest.approx(float(np.mean(_run(d / "o2" / q["path"], ids).argmax(-1) == ref)))


def test_pruned_and_distilled_per_token(tagger, capsys):
    d, ids, y = tagger
    out = d / "out"
    rc = run_cli(["compress", f"{d / 't.py'}:build", "--calib", str(d / "calib.npy"), "--eval", str(d / "eval.npz"),
                  "--train", str(d / "eval.npz"), "--task", "token-classification", "--prune", "0.5",
                  "--quantize", "none", "--no-profile", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    man = json.loads((out / "manifest.json").read_text())
    kinds = {a["kind"]: a for a in man["artifacts"]}
    pruned = kinds.get("distilled") or kinds["pruned"]
    assert pruned["params"] < kinds["fp32"]["params"] and pruned["metrics"]["name"] == "token_accuracy"
    pred = _run(out / pruned["path"], ids).argmax(-1)
    keep = y >= 0
    assert pruned["metrics"]["value"] == pytest.approx(float(np.sum((pred == y) & keep) / keep.sum()))
    # the per-token loss with the labels, not one softmax over L x C
    assert "KL(T) * T^2 per position + cross-entropy with labels per position" in (out / "manifest.json").read_text()


def test_without_task_a_note_names_it(tagger, capsys):
    d, _, _ = tagger
    rc = run_cli(["compress", f"{d / 't.py'}:build", "--calib", str(d / "calib.npy"), "--quantize", "none",
                  "--no-profile", "-o", str(d / "out")])
    assert rc == 0
    assert "pass --task token-classification" in capsys.readouterr().err


@pytest.mark.parametrize("model, data, words", [
    ("pooled", "eval.npz", "first output 'output' is [N, 5]; per-token class scores need [N, L, C]"),
    ("build", "bad_labels.npz", "labels 'y' have shape [80, 13], expected [N, 14] to match the class scores"),
])
def test_what_does_not_fit_is_one_line(tagger, capsys, model, data, words):
    d, ids, y = tagger
    np.savez(d / "bad_labels.npz", input_ids=ids, y=y[:, :13])
    rc = run_cli(["compress", f"{d / 't.py'}:{model}", "--calib", str(d / "calib.npy"), "--eval", str(d / data),
                  "--task", "token-classification", "--quantize", "none", "--no-profile", "-o", str(d / "out")])
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if "edgekit: error" in ln]
    assert rc == 2 and len(err) == 1 and words in err[0], err
    assert not (d / "out").exists()


def test_no_note_for_hidden_states_of_a_model_that_names_its_classes(tagger, capsys):
    """A HuggingFace encoder without a head returns hidden states [N, L, H]: its config's num_labels (2 by
    default) is not H, so no note calls them class scores."""
    d, _, _ = tagger
    (d / "enc.py").write_text(TAGGER_PY + '''

class Config:
    num_labels = 2


def encoder():
    m = Tagger()
    m.config = Config()
    return m
''')
    rc = run_cli(["compress", f"{d / 'enc.py'}:encoder", "--calib", str(d / "calib.npy"), "--quantize", "none",
                  "--no-profile", "-o", str(d / "out")])
    assert rc == 0
    assert "--task token-classification" not in capsys.readouterr().err
