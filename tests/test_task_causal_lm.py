"""--task causal-lm: a language model's next-token scores [N, L, V] are scored by next-token accuracy against the
data's own token ids shifted by one, perplexity beside it. Scored as one flattened vector (cosine), a tiny Llama's
dynamic INT8 read 0.9999 while 1.9% of its next-token predictions on the text's tokens changed."""
import json

import numpy as np
import onnxruntime as ort
import pytest

from cliutil import run_cli
from edgekit.evaluate import perplexity

V = 12

LM_PY = '''
import torch
import torch.nn as nn


class Succ(nn.Module):
    """Predicts token + 1 (mod V) from each token, with a mix of its neighbour so the scores are not one-hot."""

    def __init__(self, v=12):
        super().__init__()
        torch.manual_seed(0)
        self.e = nn.Embedding(v, v)
        self.e.weight.data = torch.eye(v) * 4 + torch.randn(v, v) * 0.3
        self.mix = nn.Conv1d(v, v, 3, padding=1)
        self.mix.weight.data.mul_(0.05)
        self.h = nn.Linear(v, v)
        self.h.weight.data = torch.roll(torch.eye(v), 1, 0) + torch.randn(v, v) * 0.05

    def forward(self, input_ids, attention_mask):
        x = self.e(input_ids) * attention_mask.unsqueeze(-1).float()
        x = x + self.mix(x.transpose(1, 2)).transpose(1, 2)
        return self.h(x)  # [N, L, V]


def lm():
    return Succ()


class Pooled(Succ):
    def forward(self, input_ids, attention_mask):
        return super().forward(input_ids, attention_mask).mean(1)  # [N, V]: no scores per token


def pooled():
    return Pooled()
'''


def _text(n, length, seed):
    """Sequences that count up (the model's guess) for a while, then jump, right-padded as tokenizers pad."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, length), np.int64)
    mask = np.zeros((n, length), np.int64)
    for i in range(n):
        keep = rng.integers(4, length + 1)
        seq = (rng.integers(0, V) + np.arange(keep)) % V
        jumps = rng.random(keep) < 0.3
        seq[jumps] = rng.integers(0, V, jumps.sum())
        ids[i, :keep], mask[i, :keep] = seq, 1
    return ids, mask


@pytest.fixture
def lm_run(tmp_path):
    (tmp_path / "lm.py").write_text(LM_PY)
    ids, mask = _text(96, 10, 0)
    np.savez(tmp_path / "calib.npz", input_ids=ids, attention_mask=mask)
    ev_ids, ev_mask = _text(64, 10, 1)
    np.savez(tmp_path / "eval.npz", input_ids=ev_ids, attention_mask=ev_mask)
    return tmp_path, ev_ids, ev_mask


def _compress(d, *extra, factory="lm"):
    out = d / f"out-{factory}-{len(extra)}"
    rc = run_cli(["compress", f"{d / 'lm.py'}:{factory}", "--calib", str(d / "calib.npz"), "--eval",
                  str(d / "eval.npz"), "--no-profile", "-o", str(out), *extra])
    return rc, out


def test_next_token_accuracy_and_perplexity_are_read_against_the_datas_own_tokens(lm_run, capsys):
    d, ids, mask = lm_run
    rc, out = _compress(d, "--task", "causal-lm", "--quantize", "none")
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "--task causal-lm: scored by next_token_accuracy, each position's top-1 prediction against the data's " \
           "next token ('input_ids' shifted by one, over the tokens attention_mask keeps), perplexity beside it" in err
    logits = ort.InferenceSession(str(out / "model.fp32.onnx")).run(None, {"input_ids": ids, "attention_mask": mask})[0]
    # position t predicts token t + 1, where both are text (not padding); the last position predicts nothing
    scored = (mask[:, :-1] == 1) & (mask[:, 1:] == 1)
    hits = (logits[:, :-1].argmax(-1) == ids[:, 1:]) & scored
    m = json.loads((out / "manifest.json").read_text())["artifacts"][0]["metrics"]
    assert m["name"] == "next_token_accuracy"
    assert m["value"] == pytest.approx(hits.sum() / scored.sum())
    assert 0.5 < m["value"] < 0.95  # the counting runs are predicted, the jumps are not: the metric can tell
    z = logits[:, :-1][scored].astype(np.float64)
    nll = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1) - z[np.arange(len(z)), ids[:, 1:][scored]]
    assert m["perplexity"] == pytest.approx(float(np.exp(nll.mean())), rel=1e-9)


def test_int8_of_a_language_model_is_held_to_its_next_token_accuracy(lm_run, capsys):
    d, _, _ = lm_run
    rc, out = _compress(d, "--task", "causal-lm", "--quantize", "int8-dynamic")
    assert rc == 0, capsys.readouterr().err
    arts = json.loads((out / "manifest.json").read_text())["artifacts"]
    assert {a["kind"] for a in arts} == {"fp32", "int8-dynamic"}
    for a in arts:  # every artifact by the same metric, its perplexity beside it
        assert a["metrics"]["name"] == "next_token_accuracy" and a["metrics"]["perplexity"] > 1


def test_without_the_task_a_note_names_it(lm_run, capsys):
    d, _, _ = lm_run
    (d / "lm.py").write_text(LM_PY + '''

class Config:
    vocab_size = 12


def with_config():
    m = Succ()
    m.config = Config()
    return m
''')
    rc, _ = _compress(d, "--quantize", "none", factory="with_config")
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "axis 2 the vocabulary) is scored by the cosine of its flattened values; if it is a language model's " \
           "next-token scores, pass --task causal-lm" in err


def test_data_without_token_ids_is_one_line_naming_the_file(lm_run, capsys):
    # per-frame scores over float features (a CTC head's [N, T, V]) have no token ids to predict
    d, _, _ = lm_run
    (d / "lm.py").write_text(LM_PY + """

class Frames(nn.Module):
    def __init__(self):
        super().__init__()
        self.h = nn.Linear(4, 12)

    def forward(self, x):
        return self.h(x)


def frames():
    return Frames()
""")
    x = np.random.default_rng(0).normal(size=(32, 10, 4)).astype(np.float32)
    np.savez(d / "calib.npz", x=x)
    np.savez(d / "eval.npz", x=x)
    rc, out = _compress(d, "--task", "causal-lm", "--quantize", "none", factory="frames")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert f"{d / 'eval.npz'}: --task causal-lm scores each position's prediction of the next token, read from " \
           "the token ids: no input holds integer ids [N, L] (inputs: x)" in err


def test_an_output_without_scores_per_token_is_refused(lm_run, capsys):
    d, _, _ = lm_run
    rc, out = _compress(d, "--task", "causal-lm", "--quantize", "none", factory="pooled")
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "--task causal-lm:" in err and "next-token scores need [N, L, V] (the vocabulary last" in err


def test_lm_labels_given_as_huggingface_writes_them_are_shifted_the_same_way(lm_run, capsys):
    """transformers' LM labels are the ids themselves (the model shifts them), -100 where not scored."""
    d, ids, mask = lm_run
    y = np.where(mask == 1, ids, -100)
    y[:, 1] = -100  # one position the user excludes: its token is predicted by nobody
    np.savez(d / "eval.npz", input_ids=ids, attention_mask=mask, y=y)
    rc, out = _compress(d, "--task", "causal-lm", "--quantize", "none")
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "its labels 'y' (the ids, -100 where not scored) shifted by one" in err
    logits = ort.InferenceSession(str(out / "model.fp32.onnx")).run(None, {"input_ids": ids, "attention_mask": mask})[0]
    scored = (y[:, 1:] >= 0) & (mask[:, :-1] == 1)
    hits = (logits[:, :-1].argmax(-1) == y[:, 1:]) & scored
    m = json.loads((out / "manifest.json").read_text())["artifacts"][0]["metrics"]
    assert m["value"] == pytest.approx(hits.sum() / scored.sum())


def test_perplexity_of_uniform_scores_is_the_vocabulary_size():
    logits = np.zeros((3, 5, V), np.float32)
    labels = np.random.default_rng(0).integers(0, V, (3, 5))
    labels[0, 2] = -100
    assert perplexity(logits, labels) == pytest.approx(V)
    assert perplexity(logits, np.full((3, 5), -100)) is None


def test_one_set_passed_twice_is_shifted_once():
    from edgekit.dataset import Dataset
    from edgekit.loader import take_next_tokens
    from edgekit.source import SourceModel

    ids = np.array([[3, 4, 5, 6]])
    d = Dataset({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    src = SourceModel(spec="lm.py:lm", kind="torch", task="causal-lm", inputs=[], outputs=["logits"])
    take_next_tokens(src, d, d)
    assert d.dense_labels.tolist() == [[4, 5, 6, -100]]
