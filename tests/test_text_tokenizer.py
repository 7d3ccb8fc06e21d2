"""--tokenizer: a user's text model calibrates and is scored on a .txt of sentences. Only zoo:minilm brought a
tokenizer; a file.py:factory text model's .txt was 'needs a text model with a tokenizer' and its input shape
could not be learned from it."""
import json
import pickle
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from cliutil import run_cli
from edgekit.text_tokenizer import JsonTokenizer, load_tokenizer

SENTENCES = Path(__file__).resolve().parent.parent / "calibration" / "minilm"

MODEL_PY = '''
import zlib

import numpy as np
import torch
import torch.nn as nn


class TextNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(1000, 16)
        self.fc = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).to(torch.float32)
        return self.fc((self.emb(input_ids) * m).sum(1) / m.sum(1).clamp(min=1))


def build():
    torch.manual_seed(0)
    return TextNet()


def tokenize(sentences):  # words hashed into the vocabulary, 12 tokens a sentence
    ids = np.zeros((len(sentences), 12), np.int64)
    for i, s in enumerate(sentences):
        words = [zlib.crc32(w.lower().encode()) % 999 + 1 for w in s.split()][:12]
        ids[i, :len(words)] = words
    return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int64)}


def returns_a_list(sentences):
    return [len(s) for s in sentences]


def raises(sentences):
    raise ValueError("vocabulary missing")
'''


@pytest.fixture()
def text_model(tmp_path):
    (tmp_path / "textnet.py").write_text(MODEL_PY)
    return tmp_path / "textnet.py"


def _tokenizer_json(folder: Path) -> Path:
    """A real WordLevel tokenizer, trained by the tokenizers library on the shipped calibration sentences."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train([str(SENTENCES / "calib.txt")], trainers.WordLevelTrainer(
        vocab_size=900, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]"]))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_compress_a_text_model_on_sentences_with_its_own_tokenize_function(text_model, tmp_path, capsys):
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{text_model}:build", "--tokenizer", f"{text_model}:tokenize", "--calib",
                  str(SENTENCES / "calib.txt"), "--eval", str(SENTENCES / "eval.txt"), "--quantize", "int8-dynamic",
                  "--no-profile", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    man = json.loads((out / "manifest.json").read_text())
    # the inputs were learned from the tokenizer's output for the first sentences, no --input-shape
    assert [(i["name"], i["dtype"]) for i in man["artifacts"][0]["inputs"]] == [("input_ids", "int64"),
                                                                                 ("attention_mask", "int64")]
    assert man["data"]["eval"]["samples"] == len([s for s in (SENTENCES / "eval.txt").read_text().splitlines()
                                                  if s.strip()])
    assert man["settings"]["tokenizer"] == f"{text_model}:tokenize"
    assert tomllib.loads((out / "compress.toml").read_text())["tokenizer"] == f"{text_model}:tokenize"
    assert man["artifacts"][1]["metrics"]["value"] > 0.9  # INT8 of a real model, scored on the sentences


def test_a_tokenizer_json_pads_to_the_models_length_and_feeds_quantize(tmp_path, text_model, capsys):
    folder = _tokenizer_json(tmp_path / "tok")
    ns = {}
    exec(MODEL_PY, ns)
    net = ns["build"]().eval()
    ids = torch.ones(2, 10, dtype=torch.long)  # a fixed sequence length of 10: the tokenizer pads to it
    torch.onnx.export(net, (ids, ids), str(tmp_path / "m.onnx"), input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], dynamic_axes={"input_ids": {0: "b"}, "attention_mask": {0: "b"},
                                                             "logits": {0: "b"}}, dynamo=False)
    from edgekit.loader import load_onnx

    tok = load_tokenizer(str(folder), load_onnx(str(tmp_path / "m.onnx")).inputs)
    assert isinstance(tok, JsonTokenizer) and tok.length == 10
    enc = tok(["the data", "a sentence much longer than ten tokens goes on and on and on and on"])
    pad = tok._tok.token_to_id("[PAD]")
    assert enc["input_ids"].shape == (2, 10) and enc["input_ids"][0, 4:].tolist() == [pad] * 6
    assert enc["attention_mask"][0].tolist() == [1] * 4 + [0] * 6 and enc["attention_mask"][1].all()
    again = pickle.loads(pickle.dumps(tok))  # stages may copy a source model
    assert np.array_equal(again(["the data"])["input_ids"], enc["input_ids"][:1])

    out = tmp_path / "q"
    rc = run_cli(["quantize", str(tmp_path / "m.onnx"), "--tokenizer", str(folder), "--calib",
                  str(SENTENCES / "calib.txt"), "--mode", "int8-dynamic", "-o", str(out)])
    assert rc in (0, None), capsys.readouterr().err
    man = json.loads((out / "manifest.json").read_text())
    assert man["settings"]["tokenizer"] == str(folder.resolve())


@pytest.mark.parametrize("spec, words", [
    ("{d}/nope.json", "--tokenizer {d}/nope.json: expected file.py:function or a tokenizer.json"),
    ("{d}", "no tokenizer.json in that folder"),
    ("{m}:missing", "no callable 'missing'"),
    ("{m}:returns_a_list", "returned list; it must return a dict of input name -> array"),
    ("{m}:raises", "failed on 2 sentence(s): ValueError: vocabulary missing"),
    ("{s}", "calib.txt: not a readable tokenizer.json"),
])
def test_a_bad_tokenizer_is_one_line(text_model, tmp_path, capsys, spec, words):
    spec = spec.format(d=tmp_path, m=text_model, s=SENTENCES / "calib.txt")
    words = words.format(d=tmp_path)
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{text_model}:build", "--tokenizer", spec, "--calib", str(SENTENCES / "calib.txt"),
                  "--no-profile", "-o", str(out)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("edgekit: error")]
    assert rc == 2 and len(err) == 1 and words in err[0] and not out.exists(), err


def test_sentences_without_a_tokenizer_name_the_option(text_model, tmp_path, capsys):
    rc = run_cli(["compress", f"{text_model}:build", "--calib", str(SENTENCES / "calib.txt"), "--no-profile",
                  "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "or a --tokenizer for its sentences" in err, err


def test_jsonl_sentences_carry_labels_scored_as_accuracy(text_model, tmp_path, capsys):
    import onnxruntime as ort

    ns = {}
    exec(MODEL_PY, ns)
    sentences = [s for s in (SENTENCES / "eval.txt").read_text().splitlines() if s.strip()]
    labels = [len(s.split()) % 3 for s in sentences]
    with open(tmp_path / "eval.jsonl", "w") as f:
        for s, y in zip(sentences, labels):
            f.write(json.dumps({"sentence": s, "label": y}) + "\n")
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{text_model}:build", "--tokenizer", f"{text_model}:tokenize", "--calib",
                  str(SENTENCES / "calib.txt"), "--eval", str(tmp_path / "eval.jsonl"), "--quantize", "none",
                  "--no-profile", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "manifest.json").read_text())["artifacts"][0]["metrics"]
    sess = ort.InferenceSession(str(out / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    pred = sess.run(None, ns["tokenize"](sentences))[0].argmax(1)
    assert m["name"] == "accuracy" and m["n"] == len(sentences)
    assert m["value"] == pytest.approx(float(np.mean(pred == np.array(labels))))


@pytest.mark.parametrize("lines, words", [
    (['{"text": "fine", "label": 1}', '{"text": "broken", '], "line 2 is not JSON"),
    (['{"text": "fine", "label": 1}', '{"body": "no text"}'], "line 2 has no text"),
    (['{"text": "a", "label": 1}', '{"text": "b"}'], "record 2 has no 'label' while 1 others have one"),
    # class names, and a model that names no classes to number them by (tests/test_label_names.py)
    (['{"text": "a", "label": "positive"}', '{"text": "b", "label": "negative"}'],
     "labels are class names ('positive', 'negative'), not class indices"),
])
def test_bad_jsonl_is_one_line(text_model, tmp_path, capsys, lines, words):
    (tmp_path / "e.jsonl").write_text("\n".join(lines) + "\n")
    rc = run_cli(["compress", f"{text_model}:build", "--tokenizer", f"{text_model}:tokenize", "--eval",
                  str(tmp_path / "e.jsonl"), "--task", "classification", "--no-profile", "--quantize", "none",
                  "-o", str(tmp_path / "out")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("edgekit: error")]
    assert rc == 2 and len(err) == 1 and "e.jsonl" in err[0] and words in err[0], err


def _endoftext_tokenizer(folder: Path, *, own_padding: bool = False, side_file: bool = True) -> Path:
    """A tokenizer with no [PAD]: GPT-2's habit, where <|endoftext|> also pads."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train([str(SENTENCES / "calib.txt")], trainers.WordLevelTrainer(
        vocab_size=500, special_tokens=["[UNK]", "<|startoftext|>", "<|endoftext|>"]))
    if own_padding:
        tok.enable_padding(pad_id=tok.token_to_id("<|startoftext|>"), pad_token="<|startoftext|>")
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    if side_file:
        (folder / "special_tokens_map.json").write_text(json.dumps(
            {"eos_token": "<|endoftext|>", "pad_token": {"content": "<|endoftext|>", "lstrip": False}}))
    return folder


@pytest.mark.parametrize("own_padding,side_file,pad", [(False, True, "<|endoftext|>"), (True, True, "<|startoftext|>"),
                                                      (False, False, None)])
def test_padding_uses_the_tokenizers_own_pad_token(tmp_path, own_padding, side_file, pad):
    # padded with id 0 ('[UNK]' here), a decoder classifier took every pad for text and read its logits there
    folder = _endoftext_tokenizer(tmp_path / "tok", own_padding=own_padding, side_file=side_file)
    from tokenizers import Tokenizer

    expected = Tokenizer.from_file(str(folder / "tokenizer.json")).token_to_id(pad) if pad else 0
    tok = load_tokenizer(str(folder))
    out = tok(["the model", "a longer sentence than the other one"])
    assert out["input_ids"].shape == (2, 128)
    short = out["input_ids"][0]
    n = int(out["attention_mask"][0].sum())
    assert n < 128 and (short[n:] == expected).all()
    assert expected != 0 or pad is None
