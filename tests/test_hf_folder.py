"""A HuggingFace model folder (save_pretrained's config.json and weights, a tokenizer.json beside them) is a
model spec of its own: `edgekit compress ./my-bert`. It was 'not a model spec', and needed a file.py:build of
one line, from_pretrained(folder), plus --tokenizer naming the same folder."""
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from cliutil import run_cli
from edgekit.fsutil import sha256_file

SENTENCES = Path(__file__).resolve().parent.parent / "calibration" / "minilm" / "calib.txt"


def _bert_folder(d: Path, *, tokenizer: bool = True, hidden: int = 32, layers: int = 1) -> Path:
    """A real (small, randomly initialised) BertForSequenceClassification saved as HuggingFace saves one,
    with a WordLevel tokenizer.json trained on the shipped sentences."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification

    d.mkdir(parents=True)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=500, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=160, num_labels=3)
    BertForSequenceClassification(cfg).save_pretrained(d)
    if tokenizer:
        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train([str(SENTENCES)], trainers.WordLevelTrainer(vocab_size=500,
                                                              special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                           special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        tok.save(str(d / "tokenizer.json"))
    return d


def _data(tmp_path: Path):
    lines = [s for s in SENTENCES.read_text().splitlines() if s.strip()]
    (tmp_path / "calib.txt").write_text("\n".join(lines[:40]) + "\n")
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps({"text": t, "label": i % 3}) + "\n"
                                                 for i, t in enumerate(lines[40:100])))


def test_compress_a_huggingface_folder_with_its_own_tokenizer(tmp_path, capsys):
    bert = _bert_folder(tmp_path / "my-bert")
    _data(tmp_path)
    out = tmp_path / "out"
    rc = run_cli(["compress", str(bert), "--calib", str(tmp_path / "calib.txt"), "--eval", str(tmp_path / "eval.jsonl"),
                  "--quantize", "none", "--no-profile", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    man = json.loads((out / "manifest.json").read_text())
    fp32 = man["artifacts"][0]
    # the folder's tokenizer.json gave the inputs, which were bound to BERT's forward() by name
    assert [i["name"] for i in fp32["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert fp32["metrics"]["name"] == "accuracy" and fp32["metrics"]["n"] == 60
    assert fp32["verify"]["max_abs_diff"] < 1e-3
    src = man["source"]
    assert src["weights"] == str((bert / "model.safetensors").resolve())
    assert src["weights_sha256"] == sha256_file(bert / "model.safetensors")
    assert src["source_sha256"] == sha256_file(bert / "config.json") and "BertForSequenceClassification" in \
        src["description"]
    assert "no --weights was given" not in err  # its weights are the folder's, not a factory's initialisation
    # the ONNX file gives the transformers model's logits on a sentence the tokenizer encodes
    from tokenizers import Tokenizer
    from transformers import BertForSequenceClassification

    enc = Tokenizer.from_file(str(bert / "tokenizer.json")).encode("the model reads a sentence")
    ids = np.array([enc.ids], np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    sess = ort.InferenceSession(str(out / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    import torch

    with torch.no_grad():
        ref = BertForSequenceClassification.from_pretrained(str(bert)).eval()(
            **{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    assert np.allclose(sess.run(None, feeds)[0], ref, atol=1e-4)


@pytest.mark.parametrize("change, words", [
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                                          "architectures": None})),
     "config.json: names no \"architectures\""),
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                                          "architectures": ["MyBert"],
                                                          "auto_map": {"AutoModel": "my_bert.MyBert"}})),
     "architecture 'MyBert' is its own code (auto_map in config.json), which edgekit does not run"),
    (lambda d: (d / "model.safetensors").unlink(), "transformers could not load BertForSequenceClassification"),
    (lambda d: (d / "config.json").write_text("{not json"), "config.json: not a readable JSON config"),
])
def test_a_bad_folder_is_one_line_naming_it(tmp_path, capsys, change, words):
    bert = _bert_folder(tmp_path / "my-bert", tokenizer=False)
    change(bert)
    capsys.readouterr()  # save_pretrained's own progress bar
    ids = np.random.default_rng(0).integers(4, 500, size=(8, 12))
    np.savez(tmp_path / "calib.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    rc = run_cli(["compress", str(bert), "--calib", str(tmp_path / "calib.npz"), "--no-profile", "-o",
                  str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(bert) in err and words in err, err
    assert not (tmp_path / "out").exists()


def test_weights_do_not_apply_to_a_folder(tmp_path, capsys):
    bert = _bert_folder(tmp_path / "my-bert", tokenizer=False)
    ids = np.random.default_rng(0).integers(4, 500, size=(8, 12))
    np.savez(tmp_path / "calib.npz", input_ids=ids)
    capsys.readouterr()
    rc = run_cli(["compress", str(bert), "--weights", str(bert / "model.safetensors"), "--calib",
                  str(tmp_path / "calib.npz"), "--no-profile", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.endswith("--weights does not apply to a HuggingFace model folder (its weights are in it)"), err


def test_a_smaller_huggingface_folder_is_a_student(tmp_path, capsys):
    """Distilling into a smaller pretrained model (TinyBERT / DistilBERT style): the student's folder, with
    its own weights, as --student. It was "expected file.py:factory or a pruned .pt file"."""
    from transformers import BertForSequenceClassification

    teacher = _bert_folder(tmp_path / "teacher", layers=2)
    student = _bert_folder(tmp_path / "student", tokenizer=False, hidden=16)
    _data(tmp_path)
    out = tmp_path / "out"
    rc = run_cli(["distill", "--teacher", str(teacher), "--student", str(student), "--calib",
                  str(tmp_path / "calib.txt"), "--eval", str(tmp_path / "eval.jsonl"), "--epochs", "3", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    man = json.loads((out / "manifest.json").read_text())
    kinds = {a["kind"]: a for a in man["artifacts"]}
    small = sum(p.numel() for p in BertForSequenceClassification.from_pretrained(str(student)).parameters())
    assert kinds["distilled"]["params"] == small < kinds["fp32"]["params"]
    assert kinds["distilled"]["metrics"]["name"] == "accuracy"


def _vit_folder(d: Path) -> Path:
    """A real (small, random) ViTForImageClassification for 32 x 32 images, with the image processor
    HuggingFace saves beside it: resize to 32 x 32, mean and std 0.5."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, num_labels=3)
    ViTForImageClassification(cfg).save_pretrained(d)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(d)
    return d


def test_an_image_folder_is_read_as_the_folders_image_processor_says(tmp_path, capsys):
    """A ViT folder's preprocessor_config.json says resize to 32 x 32 and normalise with mean and std 0.5. Fed
    as 0..1 pixels at their own 40 x 48, every image was refused ("runs on none of the images")."""
    from PIL import Image

    vit = _vit_folder(tmp_path / "my-vit")
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i:02d}.png")
    capsys.readouterr()
    out = tmp_path / "out"
    rc = run_cli(["compress", str(vit), "--calib", str(tmp_path / "imgs"), "--quantize", "none", "--no-profile",
                  "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "preprocessor_config.json: images resized to 32x32, normalised with its image_mean and image_std" in err
    man = json.loads((out / "manifest.json").read_text())
    assert man["artifacts"][0]["inputs"][0]["shape"][1:] == [3, 32, 32]
    pre = man["prepost"]["pre"][0]
    assert pre["op"] == "resize_normalize" and pre["size"] == [32, 32] and pre["mode"] == "stretch"
    assert pre["mean"] == pytest.approx([127.5] * 3) and pre["std"] == pytest.approx([127.5] * 3)


@pytest.mark.parametrize("config, want", [
    # ConvNeXt: the short side to 224 / 0.875, then the central 224 x 224
    ({"size": {"shortest_edge": 224}, "crop_pct": 0.875, "image_mean": [0.485, 0.456, 0.406],
      "image_std": [0.229, 0.224, 0.225]}, {"size": [224, 224], "mode": "crop", "crop_fraction": 0.875}),
    # CLIP: the short side to 224, then a 224 x 224 centre crop
    ({"size": {"shortest_edge": 224}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
      "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}, {"size": [224, 224], "mode": "crop"}),
    # DeiT: 256 x 256, then the central 224 x 224
    ({"size": {"height": 256, "width": 256}, "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
      "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]},
     {"size": [224, 224], "mode": "stretch", "crop_fraction": 0.875}),
    # no normalisation: pixels rescaled to 0..1
    ({"size": {"height": 64, "width": 48}, "do_normalize": False}, {"size": [64, 48], "mean": [0.0], "std": [255.0]}),
])
def test_image_processor_geometries(tmp_path, config, want):
    from edgekit.hf_folder import preprocess_in

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    spec, where, note = preprocess_in(str(tmp_path))
    op = spec["pre"][0]
    assert where == str(tmp_path / "preprocessor_config.json") and where in note
    for k, v in want.items():
        assert op[k] == pytest.approx(v), (k, op)
    if "image_mean" in config:
        assert op["mean"] == pytest.approx([m * 255 for m in config["image_mean"]])


def test_a_resize_without_a_fixed_size_is_not_read(tmp_path):
    from edgekit.hf_folder import preprocess_in

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 224},
                                                                   "image_mean": [0.5] * 3}))
    spec, where, note = preprocess_in(str(tmp_path))
    assert spec is None and "keeps the aspect ratio, so no size is fixed; pass --preprocess" in note


def test_a_token_classifier_folder_is_scored_per_token_without_task(tmp_path, capsys):
    """config.json's BertForTokenClassification says the output is per-token class scores: scored per token
    with no --task (it was the cosine of the flattened [N, L, C] scores), recorded as where the task came from."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    ner = tmp_path / "my-ner"
    torch.manual_seed(0)
    BertForTokenClassification(BertConfig(vocab_size=500, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                          intermediate_size=32, max_position_embeddings=64,
                                          num_labels=4)).save_pretrained(ner)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 500, size=(60, 12))
    y = np.where(np.arange(12) < 10, ids % 4, -100)  # the last two positions padding, not scored
    np.savez(tmp_path / "eval.npz", input_ids=ids, attention_mask=np.ones_like(ids), y=y)
    capsys.readouterr()
    out = tmp_path / "out"
    rc = run_cli(["compress", str(ner), "--calib", str(tmp_path / "eval.npz"), "--eval", str(tmp_path / "eval.npz"),
                  "--quantize", "none", "--no-profile", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    man = json.loads((out / "manifest.json").read_text())
    assert man["source"]["task"] == "token-classification"
    assert man["source"]["task_from"] == "config.json architectures (BertForTokenClassification)"
    fp32 = man["artifacts"][0]
    sess = ort.InferenceSession(str(out / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    pred = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0].argmax(-1)
    keep = y >= 0
    assert fp32["metrics"]["name"] == "token_accuracy"
    assert fp32["metrics"]["value"] == pytest.approx(float(np.sum((pred == y) & keep) / keep.sum()))


def test_a_semantic_segmentation_folder_is_scored_by_mean_iou_without_task(tmp_path, capsys):
    """SegformerForSemanticSegmentation's logits [N, C, H/4, W/4] are class scores per position: scored by mean
    IoU with no --task (they were scored by the cosine of their flattened values, with a note)."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from edgekit.evaluate import miou

    seg = tmp_path / "my-segformer"
    torch.manual_seed(0)
    SegformerForSemanticSegmentation(SegformerConfig(
        num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
        num_attention_heads=[1, 2], decoder_hidden_size=32, num_labels=3, patch_sizes=[7, 3], strides=[4, 2],
        mlp_ratios=[2, 2])).save_pretrained(seg)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 3, size=(40, 8, 8))  # at the head's own size, a quarter of the input's
    np.savez(tmp_path / "eval.npz", pixel_values=x, y=y)
    capsys.readouterr()
    out = tmp_path / "out"
    rc = run_cli(["compress", str(seg), "--calib", str(tmp_path / "eval.npz"), "--eval", str(tmp_path / "eval.npz"),
                  "--quantize", "none", "--no-profile", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "pass --task segmentation" not in err
    man = json.loads((out / "manifest.json").read_text())
    assert man["source"]["task"] == "segmentation"
    assert man["source"]["task_from"] == "config.json architectures (SegformerForSemanticSegmentation)"
    sess = ort.InferenceSession(str(out / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"pixel_values": x})[0]
    m = man["artifacts"][0]["metrics"]
    assert m["name"] == "miou" and m["value"] == pytest.approx(miou(logits, y))


@pytest.mark.parametrize("arch, config, task", [
    ("BertForSequenceClassification", {"num_labels": 3}, "classification"),
    ("BertForSequenceClassification", {"num_labels": 1}, "regression"),
    ("ViTForImageClassification", {"num_labels": 5, "problem_type": "regression"}, "regression"),
    ("BertForSequenceClassification", {"num_labels": 5, "problem_type": "multi_label_classification"}, "multi-label"),
    ("BeitForSemanticSegmentation", {"num_labels": 150}, "segmentation"),
    ("LlamaForCausalLM", {"vocab_size": 32000}, "causal-lm"),
    ("BertModel", {}, None),
])
def test_the_task_a_head_names(arch, config, task):
    from types import SimpleNamespace

    from edgekit.hf_folder import task_of

    assert task_of(arch, SimpleNamespace(**config)) == task


def test_a_corrupt_image_processor_config_is_one_line(tmp_path, capsys):
    vit = _vit_folder(tmp_path / "my-vit")
    (vit / "preprocessor_config.json").write_text('{"size": {"height": 32,')
    (tmp_path / "imgs").mkdir()
    capsys.readouterr()
    rc = run_cli(["compress", str(vit), "--calib", str(tmp_path / "imgs"), "--no-profile", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert f"{vit / 'preprocessor_config.json'}: not a readable JSON config" in err
    assert not (tmp_path / "out").exists()
