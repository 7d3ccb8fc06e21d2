"""A token classifier whose class names are BIO tags (NER) is scored by entity F1, not the share of tokens: that
share is mostly "O", and a model that lost every entity of a rare type moved it by a fraction of a percent."""
import json

import numpy as np
import onnxruntime as ort
import pytest

from cliutil import run_cli
from edgekit import entities
from edgekit.evaluate import score

NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]

NER_PY = '''
import torch
import torch.nn as nn


class Config:  # what a HuggingFace model carries: its classes' names
    def __init__(self, names):
        self.id2label = dict(enumerate(names))
        self.num_labels = len(names)


class Tagger(nn.Module):
    def __init__(self, names):
        super().__init__()
        torch.manual_seed(0)
        self.config = Config(names)
        self.e = nn.Embedding(30, 24)
        self.mix = nn.Conv1d(24, 32, 3, padding=1)
        self.mix2 = nn.Conv1d(32, 32, 3, padding=1)
        self.h = nn.Linear(32, 5)

    def forward(self, input_ids, attention_mask):
        x = self.e(input_ids) * attention_mask.unsqueeze(-1).float()
        x = torch.relu(self.mix2(torch.relu(self.mix(x.transpose(1, 2))))).transpose(1, 2)
        return self.h(x)  # [N, L, 5]


def ner():
    return Tagger(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])


class TwoOutputs(Tagger):
    def forward(self, input_ids, attention_mask):
        scores = super().forward(input_ids, attention_mask)
        return scores, scores.mean(1)  # the tags, and a pooled vector beside them


def two_outputs():
    return TwoOutputs(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])


def pos():  # part-of-speech tags: no entities in them
    return Tagger(["NOUN", "VERB", "ADJ", "DET", "PUNCT"])


def short_names():  # a config naming fewer classes than the head has
    return Tagger(["O", "B-PER", "I-PER", "B-LOC"])


def nameless():  # no config: nothing names the classes
    t = Tagger(NAMES)
    del t.config
    return t


NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
'''


def _tags(*names):
    return [entities.tag_scheme(NAMES)[NAMES.index(n)] for n in names]


@pytest.mark.parametrize("tags, want", [
    (["B-PER", "I-PER", "O", "B-LOC"], {("PER", 0, 2), ("LOC", 3, 4)}),
    (["O", "I-PER", "I-PER"], {("PER", 1, 3)}),  # an I- after O starts an entity (conlleval, seqeval's default)
    (["B-PER", "I-LOC", "I-LOC"], {("PER", 0, 1), ("LOC", 1, 3)}),  # a change of type ends one
    (["B-PER", "B-PER", "I-PER"], {("PER", 0, 1), ("PER", 1, 3)}),  # B- starts a new one of the same type
    (["O", "O"], set()),
])
def test_entities_are_read_by_the_conlleval_rules(tags, want):
    assert entities.spans(_tags(*tags)) == want


def test_iobes_and_bilou_names_are_read_alike():
    iobes = entities.tag_scheme(["O", "S-PER", "B-LOC", "E-LOC", "I-LOC"])
    bilou = entities.tag_scheme(["O", "U-PER", "B-LOC", "L-LOC", "I-LOC"])
    assert iobes == bilou
    assert entities.spans([iobes[i] for i in (1, 2, 4, 3, 0)]) == {("PER", 0, 1), ("LOC", 1, 4)}
    # names of another kind are no tag scheme: those taggers stay scored per token
    for names in (["NOUN", "VERB"], ["LABEL_0", "LABEL_1"], ["O", "O"], None, []):
        assert entities.tag_scheme(names) is None


def test_a_rare_type_lost_costs_its_share_of_entities_not_of_tokens():
    """40 sequences of 20 tokens, one PER and (in 4 of them) one LOC each: a prediction that drops every LOC
    keeps 99% of the tokens right and loses a tenth of the entities; the LOC F1 beside it reads 0."""
    true = np.zeros((40, 20), np.int64)
    true[:, 2:4] = [1, 2]  # B-PER I-PER
    true[:4, 10:12] = [3, 4]  # B-LOC I-LOC
    pred = true.copy()
    pred[:4, 10:12] = 0
    scores = np.eye(5, dtype=np.float32)[pred]  # [N, L, C] scores whose argmax is pred
    scheme = entities.tag_scheme(NAMES)
    assert score([scores], "token-classification", true) == pytest.approx(1 - 8 / 800)  # token accuracy
    f1 = score([scores], "token-classification", true, scheme=scheme)
    assert f1 == pytest.approx(2 * 40 / (40 + 44))  # 40 found, 44 labelled, 40 right
    assert entities.f1_by_type(pred, true, scheme) == {"LOC": 0.0, "PER": 1.0}


def test_positions_not_scored_are_dropped_before_entities_are_read():
    """A label of -100 marks a word's later sub-tokens: dropped, the entity either side of it is whole, as
    HuggingFace's token-classification example reads it."""
    scheme = entities.tag_scheme(NAMES)
    true = np.array([[1, -100, 2, 0]])  # B-PER, a sub-token, I-PER, O
    scores = np.eye(5, dtype=np.float32)[np.array([[1, 2, 2, 0]])]
    assert score([scores], "token-classification", true, scheme=scheme) == 1.0
    # read with the sub-token as "O", the labels would hold two entities and the prediction one
    assert entities.entity_f1(scores.argmax(-1), np.where(true < 0, 0, true), scheme) == 0.0


def test_unlabelled_agreement_reads_only_the_positions_the_attention_mask_keeps():
    scheme = entities.tag_scheme(NAMES)
    ref = np.eye(5, dtype=np.float32)[np.array([[1, 2, 0, 0, 0]] * 6)]
    out = ref.copy()
    out[:, 3:] = np.eye(5, dtype=np.float32)[3]  # B-LOC on padding
    mask = np.array([[1, 1, 1, 0, 0]] * 6)
    assert score([out], "token-classification", None, [ref], scheme=scheme, keep=mask != 0) == 1.0
    assert score([out], "token-classification", None, [ref], scheme=scheme) == pytest.approx(2 * 6 / (6 + 18))
    # token agreement too: padding is no token
    assert score([out], "token-classification", None, [ref], keep=mask != 0) == 1.0
    assert score([out], "token-classification", None, [ref]) == pytest.approx(0.6)


@pytest.fixture
def tagger(tmp_path):
    (tmp_path / "t.py").write_text(NER_PY)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 30, (200, 14))
    mask = np.ones_like(ids)
    mask[:, -3:] = 0
    y = np.where(mask == 1, (ids * 7 + np.roll(ids, 1, axis=1)) % 5, -100)
    np.savez(tmp_path / "calib.npz", input_ids=ids[:120], attention_mask=mask[:120])
    np.savez(tmp_path / "eval.npz", input_ids=ids[120:], attention_mask=mask[120:], y=y[120:])
    np.savez(tmp_path / "eval_nolabels.npz", input_ids=ids[120:], attention_mask=mask[120:])
    return tmp_path, ids[120:], mask[120:], y[120:]


def _classes(path, ids, mask):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input_ids": ids, "attention_mask": mask})[0].argmax(-1)


def _compress(d, factory, eval_file, *extra):
    out = d / f"out-{factory}-{eval_file}"
    rc = run_cli(["compress", f"{d / 't.py'}:{factory}", "--calib", str(d / "calib.npz"), "--eval", str(d / eval_file),
                  "--task", "token-classification", "--no-profile", "-o", str(out), *extra])
    return rc, out


def test_bio_names_score_entity_f1_against_labels_with_token_accuracy_beside(tagger, capsys):
    d, ids, mask, y = tagger
    rc, out = _compress(d, "ner", "eval.npz", "--max-trials", "2")
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "its classes are BIO tags (O, B-PER, I-PER, B-LOC, ...; config.id2label): scored by entity F1" in err
    man = json.loads((out / "manifest.json").read_text())
    scheme = entities.tag_scheme(NAMES)
    keep = y >= 0
    for art in man["artifacts"]:  # FP32 and every INT8 candidate kept, scored alike
        pred = _classes(out / art["path"], ids, mask)
        m = art["metrics"]
        assert m["name"] == "entity_f1"
        assert m["value"] == pytest.approx(entities.entity_f1(pred, np.where(keep, y, 0), scheme, keep))
        assert m["token_accuracy"] == pytest.approx(float(np.sum((pred == y) & keep) / keep.sum()))
        assert set(m["entity_f1_by_type"]) == {"PER", "LOC"}


def _unlabelled_int8(d, factory, ids, mask, capsys):
    """Compress `factory` scored on the unlabelled eval set: (the INT8 file's classes, FP32's, its metrics)."""
    rc, out = _compress(d, factory, "eval_nolabels.npz", "--max-trials", "2")
    assert rc == 0, capsys.readouterr().err
    man = json.loads((out / "manifest.json").read_text())
    q = next(a for a in man["artifacts"] if a["kind"].startswith("int8"))
    return _classes(out / q["path"], ids, mask), _classes(out / "model.fp32.onnx", ids, mask), q["metrics"]


def test_bio_names_without_labels_score_agreement_on_the_unmasked_tokens(tagger, capsys):
    d, ids, mask, _ = tagger
    pred, ref, m = _unlabelled_int8(d, "ner", ids, mask, capsys)
    assert m["name"] == "entity_f1_agreement"
    want = entities.entity_f1(pred, ref, entities.tag_scheme(NAMES), mask != 0)
    assert m["value"] == pytest.approx(want)
    assert m["token_agreement"] == pytest.approx(float(np.sum((pred == ref) & (mask != 0)) / mask.sum()))


def test_pruning_and_distillation_follow_entity_f1(tagger, capsys):
    d, ids, mask, y = tagger
    rc, out = _compress(d, "ner", "eval.npz", "--train", str(d / "eval.npz"), "--prune", "0.5", "--quantize", "none")
    err = capsys.readouterr().err
    assert rc == 0, err
    man = json.loads((out / "manifest.json").read_text())
    kinds = {a["kind"]: a for a in man["artifacts"]}
    pruned = kinds.get("distilled") or kinds["pruned"]
    assert pruned["metrics"]["name"] == "entity_f1"
    # the held-out set early stopping read was scored by entity F1 too
    text = (out / "manifest.json").read_text()
    assert '"metric_name": "entity_f1' in text and "token_accuracy\"" in text


def test_torch_metric_scores_entities_when_given_the_tags():
    from edgekit.dataset import Dataset
    from edgekit.pruning.metrics import TorchMetric

    ns = {}
    exec(NER_PY, ns)
    model = ns["ner"]().eval()
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 30, (30, 10))
    mask = np.ones_like(ids)
    data = Dataset({"input_ids": ids, "attention_mask": mask}, None, "d")
    metric = TorchMetric(data, ["input_ids", "attention_mask"], "token-classification", reference_model=model,
                         tags=NAMES)
    assert metric.name == "entity_f1_agreement"
    ref = metric.outputs(model)
    assert metric(model, ref) == 1.0
    assert entities.spans([entities.tag_scheme(NAMES)[c] for c in ref.argmax(-1).reshape(-1).tolist()])
    other = ref.copy()
    other[:, :, 0] += 100.0  # every token "O": none of FP32's entities found (token agreement would not be 0)
    assert metric(model, other) == 0.0
    plain = TorchMetric(data, ["input_ids", "attention_mask"], "token-classification", reference_model=model)
    assert plain.name == "token_agreement"


@pytest.mark.parametrize("factory, words", [
    ("pos", None),
    ("short_names", "config.id2label names 4 tags but its first output [N, 14, 5] has 5 classes: scored per token"),
])
def test_names_that_are_no_bio_tags_stay_scored_per_token(tagger, capsys, factory, words):
    d, _, _, _ = tagger
    rc, out = _compress(d, factory, "eval.npz", "--quantize", "none")
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "scored by entity F1" not in err
    if words:
        assert words in err
    man = json.loads((out / "manifest.json").read_text())
    assert man["artifacts"][0]["metrics"]["name"] == "token_accuracy"


@pytest.mark.parametrize("command", ["quantize", "compress"])
def test_an_onnx_tagger_takes_its_tag_names_from_the_config_json_beside_it(tagger, capsys, command):
    """optimum and transformers' ONNX exports leave config.json beside model.onnx: its id2label names the tags."""
    d, ids, mask, y = tagger
    rc, out = _compress(d, "ner", "eval.npz", "--quantize", "none")
    assert rc == 0, capsys.readouterr().err
    exported = d / "exported"
    exported.mkdir()
    (exported / "model.onnx").write_bytes((out / "model.fp32.onnx").read_bytes())
    (exported / "config.json").write_text(json.dumps({"architectures": ["BertForTokenClassification"],
                                                      "id2label": {str(i): n for i, n in enumerate(NAMES)}}))
    capsys.readouterr()
    q = d / f"q-{command}"
    args = [command, str(exported / "model.onnx"), "--calib", str(d / "calib.npz"), "--eval", str(d / "eval.npz"),
            "--task", "token-classification", "--max-trials", "2", "-o", str(q)]
    rc = run_cli(args + (["--no-profile"] if command == "compress" else []))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "BIO tags (O, B-PER, I-PER, B-LOC, ...; id2label of the config.json beside it)" in err
    man = json.loads((q / "manifest.json").read_text())
    art = next(a for a in man["artifacts"] if a["kind"].startswith("int8"))
    pred = _classes(q / art["path"], ids, mask)
    keep = y >= 0
    assert art["metrics"]["name"] == "entity_f1"
    assert art["metrics"]["value"] == pytest.approx(entities.entity_f1(pred, np.where(keep, y, 0),
                                                                       entities.tag_scheme(NAMES), keep))
    # placeholders name no tags: scored per token
    (exported / "config.json").write_text(json.dumps({"id2label": {str(i): f"LABEL_{i}" for i in range(5)}}))
    rc = run_cli(args[:-1] + [str(q) + "-plain"] + (["--no-profile"] if command == "compress" else []))
    assert rc == 0
    man = json.loads((d / f"q-{command}-plain" / "manifest.json").read_text())
    assert man["artifacts"][0]["metrics"]["name"] == "token_accuracy"


def test_a_second_output_does_not_change_how_the_tags_are_read(tagger, capsys):
    """Without labels, a tagger with a second output is scored by the lowest fidelity over its outputs
    (per_output); the tags' own entry there is their entity F1 over the unmasked tokens, as a one-output
    tagger's value is (it was their token agreement over every position, padding too)."""
    d, ids, mask, _ = tagger
    pred, ref, m = _unlabelled_int8(d, "two_outputs", ids, mask, capsys)
    assert m["name"] == "fidelity_min"
    assert m["per_output"][0] == pytest.approx(entities.entity_f1(pred, ref, entities.tag_scheme(NAMES), mask != 0))
    assert m["value"] == pytest.approx(min(m["per_output"]))


def test_tag_names_in_the_labels_score_as_their_indices_would(tagger, capsys):
    """Labels written as the tags themselves ([N, L] of 'B-PER', 'O'; '' where a position is not scored) are
    numbered by the model's config.id2label: the same metrics as the integer labels they stand for."""
    d, ids, mask, y = tagger
    words = np.where(y >= 0, np.array(NAMES)[np.clip(y, 0, None)], "")
    words[0, 0] = words[0, 0].lower()  # names are also found ignoring case, as class names are
    np.savez(d / "eval_words.npz", input_ids=ids, attention_mask=mask, y=words)
    rc, out = _compress(d, "ner", "eval_words.npz", "--quantize", "none")
    err = capsys.readouterr().err
    assert rc == 0, err
    rc2, out2 = _compress(d, "ner", "eval.npz", "--quantize", "none")
    assert rc2 == 0
    got = json.loads((out / "manifest.json").read_text())["artifacts"][0]["metrics"]
    want = json.loads((out2 / "manifest.json").read_text())["artifacts"][0]["metrics"]
    assert got["name"] == "entity_f1" and got["value"] == want["value"]
    assert got["token_accuracy"] == want["token_accuracy"] and got["entity_f1_by_type"] == want["entity_f1_by_type"]
    assert "class names in its labels numbered by the model's config.id2label (O=0, B-PER=1" in err


def test_a_tag_the_model_does_not_have_is_one_line_naming_the_file(tagger, capsys):
    d, ids, mask, y = tagger
    words = np.where(y >= 0, np.array(NAMES)[np.clip(y, 0, None)], "")
    words[3, 2] = "B-ORG"
    np.savez(d / "eval_org.npz", input_ids=ids, attention_mask=mask, y=words)
    rc, out = _compress(d, "ner", "eval_org.npz", "--quantize", "none")
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert f"{d / 'eval_org.npz'}: label 'B-ORG' is not one of the model's 5 class names ('O', 'B-PER'" in err


def test_tag_names_per_position_are_refused_for_a_classifier_with_the_task_to_pass(tagger, capsys):
    d, ids, mask, y = tagger
    words = np.where(y >= 0, np.array(NAMES)[np.clip(y, 0, None)], "")
    np.savez(d / "eval_words.npz", input_ids=ids, attention_mask=mask, y=words)
    out = d / "out-cls"
    rc = run_cli(["compress", f"{d / 't.py'}:ner", "--calib", str(d / "calib.npz"), "--eval",
                  str(d / "eval_words.npz"), "--task", "classification", "--no-profile", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert "labels 'y' are class names per position, shape [80, 14]; a classifier takes one per sample (for a " \
           "tagger, pass --task token-classification)" in err


def test_tag_names_for_a_model_that_names_no_classes_say_so(tagger, capsys):
    d, ids, mask, y = tagger
    words = np.where(y >= 0, np.array(NAMES)[np.clip(y, 0, None)], "")
    np.savez(d / "eval_words.npz", input_ids=ids, attention_mask=mask, y=words)
    rc, out = _compress(d, "nameless", "eval_words.npz", "--quantize", "none")
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert f"{d / 'eval_words.npz'}: labels are class names" in err
    assert "the model names no classes (a HuggingFace model's config.id2label) to map them by" in err
