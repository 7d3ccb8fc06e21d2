"""Sentence pairs in .jsonl ({"sentence1": ..., "sentence2": ..., "label": ...}, MRPC / RTE style; "text" +
"text_pair"; "premise" + "hypothesis"): a cross-encoder (a reranker, an NLI classifier) reads the two texts as
one input. They were 'line 1 has no text', so such a model could only be scored on hand-tokenized arrays."""
import json
from pathlib import Path

import pytest

from cliutil import run_cli
from edgekit.calibration import read_dataset
from edgekit.errors import CalibrationError, InputError
from edgekit.text_tokenizer import JsonTokenizer, load_tokenizer

SENTENCES = Path(__file__).resolve().parent.parent / "calibration" / "minilm" / "calib.txt"

MODEL_PY = '''
import numpy as np
import torch
import torch.nn as nn


class CrossEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(1000, 16)
        self.seg = nn.Embedding(2, 16)
        self.fc = nn.Linear(16, 2)

    def forward(self, input_ids, attention_mask, token_type_ids):
        m = attention_mask.unsqueeze(-1).to(torch.float32)
        h = (self.emb(input_ids) + self.seg(token_type_ids)) * m
        return self.fc(h.sum(1) / m.sum(1).clamp(min=1))


def build():
    torch.manual_seed(0)
    return CrossEncoder()


SEEN = []


def tokenize(texts, pairs=None):  # a user's function: word lengths as ids, the second text's types 1
    SEEN.append(pairs is not None)
    ids = np.zeros((len(texts), 10), np.int64)
    types = np.zeros_like(ids)
    for i, t in enumerate(texts):
        a = [len(w) + 1 for w in t.split()][:5]
        b = [len(w) + 1 for w in pairs[i].split()][:5] if pairs else []
        ids[i, :len(a) + len(b)] = a + b
        types[i, len(a):len(a) + len(b)] = 1
    return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64), "token_type_ids": types}
'''


def _pair_tokenizer(folder: Path) -> Path:
    """A real WordLevel tokenizer (the tokenizers library, trained on the shipped sentences) with BERT's pair
    template: [CLS] A [SEP] B [SEP], B's token types 1."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train([str(SENTENCES)], trainers.WordLevelTrainer(vocab_size=900,
                                                          special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]"]))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def _pairs(path: Path, n: int, keys=("sentence1", "sentence2")) -> list:
    lines = [s for s in SENTENCES.read_text().splitlines() if s.strip()]
    recs = [{keys[0]: lines[i], keys[1]: lines[i + 1], "label": i % 2} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return recs


@pytest.mark.parametrize("keys", [("sentence1", "sentence2"), ("text", "text_pair"), ("premise", "hypothesis")])
def test_pairs_are_tokenized_as_pairs(tmp_path, keys):
    from tokenizers import Tokenizer

    path = _pair_tokenizer(tmp_path / "tok")
    recs = _pairs(tmp_path / "pairs.jsonl", 6, keys)
    specs = [{"name": n, "shape": ["batch", 96], "dtype": "int64"}
             for n in ("input_ids", "attention_mask", "token_type_ids")]
    ds = read_dataset(tmp_path / "pairs.jsonl", specs, labels=True, tokenizer=JsonTokenizer(path, 96))
    assert ds.labels.tolist() == [r["label"] for r in recs]
    ref = Tokenizer.from_file(str(path)).encode(recs[0][keys[0]], recs[0][keys[1]])
    n = len(ref.ids)
    assert n < 96  # not truncated, so the padding is seen too
    assert ds.inputs["input_ids"][0, :n].tolist() == ref.ids and ds.inputs["input_ids"][0, n:].tolist() == \
        [3] * (96 - n)  # padded with the file's [PAD]
    assert ds.inputs["token_type_ids"][0, :n].tolist() == ref.type_ids and 1 in ref.type_ids  # B's segment


def test_a_tokenize_function_gets_the_pairs_as_two_lists(tmp_path):
    (tmp_path / "ce.py").write_text(MODEL_PY)
    tok = load_tokenizer(f"{tmp_path / 'ce.py'}:tokenize")
    _pairs(tmp_path / "pairs.jsonl", 4)
    ds = read_dataset(tmp_path / "pairs.jsonl", [], labels=True, tokenizer=tok)
    assert tok.fn.__globals__["SEEN"] == [True]
    assert ds.inputs["token_type_ids"].any(axis=1).all()  # every sample has a second segment
    # a function of one argument is told how pairs are passed
    (tmp_path / "one.py").write_text("def tok(texts):\n    return {'input_ids': [[1]] * len(texts)}\n")
    with pytest.raises(InputError) as e:
        read_dataset(tmp_path / "pairs.jsonl", [], tokenizer=load_tokenizer(f"{tmp_path / 'one.py'}:tok"))
    assert "sentence pairs are passed as function(texts, text_pairs)" in str(e.value)


@pytest.mark.parametrize("lines, words", [
    ([{"text": "a b"}, {"sentence1": "a", "sentence2": "b"}], "line 2: the records mix single texts and pairs"),
    ([{"sentence1": "a", "sentence2": 3}], "line 1: 'sentence1' and 'sentence2' must both be strings"),
    ([{"sentence2": "a"}], "line 1 has no text"),
])
def test_bad_pair_records_are_one_line_naming_the_line(tmp_path, lines, words):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(CalibrationError) as e:
        read_dataset(tmp_path / "d.jsonl", [], tokenizer=JsonTokenizer(_pair_tokenizer(tmp_path / "t"), 16))
    assert str(e.value).startswith(str(tmp_path / "d.jsonl")) and words in str(e.value), str(e.value)


def test_compress_a_cross_encoder_on_labelled_pairs(tmp_path, capsys):
    (tmp_path / "ce.py").write_text(MODEL_PY)
    tok = _pair_tokenizer(tmp_path / "tok")
    _pairs(tmp_path / "pairs.jsonl", 120)
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{tmp_path / 'ce.py'}:build", "--tokenizer", str(tok), "--calib",
                  str(tmp_path / "pairs.jsonl"), "--eval", str(tmp_path / "pairs.jsonl"), "--quantize", "none",
                  "--no-profile", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    man = json.loads((out / "manifest.json").read_text())
    fp32 = man["artifacts"][0]
    # the three arrays a pair gives were learned as the model's inputs, and the labels scored it
    assert [i["name"] for i in fp32["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert fp32["metrics"]["name"] == "accuracy" and fp32["metrics"]["n"] == 120
