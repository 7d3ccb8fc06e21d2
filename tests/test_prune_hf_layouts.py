"""Pruning transformers' newer attention layout (q_proj / k_proj / v_proj and an output projection in one
module, as ViT, Llama, Phi, DistilBERT and Swin have in transformers 5), built from small configs. Only
BERT's query / key / value was recognised: a ViT's heads were cut per channel and the pruned model failed
("shape '[2, 17, -1, 16]' is invalid"), a Llama's grouped key/value heads likewise, and Swin's relative
position bias table stopped the pruner with an internal error."""
import json

import numpy as np
import onnx
import pytest

from cliutil import run_cli

MODEL_PY = '''
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification, SwinConfig, SwinForImageClassification, \\
    ViTConfig, ViTForImageClassification


def vit():
    torch.manual_seed(0)
    # 32 wide in 2 heads of 16: a 30% cut per channel leaves 24, no whole number of heads
    return ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=64, num_labels=3)).eval()


def llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, num_labels=3, pad_token_id=0,
                      max_position_embeddings=32, use_cache=False)
    return LlamaForSequenceClassification(cfg).eval()


def swin():
    torch.manual_seed(0)
    return SwinForImageClassification(SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                                                 num_heads=[1, 2], window_size=4, num_labels=3)).eval()
'''


def _data(tmp_path, kind):
    rng = np.random.default_rng(0)
    if kind == "tokens":
        np.savez(tmp_path / "d.npz", input_ids=rng.integers(1, 64, size=(48, 8)).astype(np.int64),
                 attention_mask=np.ones((48, 8), np.int64))
        return tmp_path / "d.npz"
    side = 32 if kind == "images32" else 16
    np.save(tmp_path / "d.npy", rng.normal(size=(48, 3, side, side)).astype(np.float32))
    return tmp_path / "d.npy"


def _weights(path) -> int:
    return sum(int(np.prod(i.dims)) for i in onnx.load(str(path)).graph.initializer)


@pytest.mark.parametrize("factory,data,prefix,cut,whole", [
    ("vit", "images", "vit.layers.0.", "mlp.fc1",
     ["attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj", "mlp.fc2"]),
    ("llama", "tokens", "model.layers.0.", "mlp.gate_proj",
     ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj"]),
    ("swin", "images32", "swin.encoder.layers.0.blocks.0.", "mlp.fc1", ["attention.o_proj", "mlp.fc2"]),
])
def test_feed_forward_width_is_pruned_and_the_residual_stream_kept(factory, data, prefix, cut, whole, tmp_path,
                                                                    capsys):
    (tmp_path / "m.py").write_text(MODEL_PY)
    out = tmp_path / "out"
    rc = run_cli(["prune", f"{tmp_path / 'm.py'}:{factory}", "--calib", str(_data(tmp_path, data)), "--ratio", "0.3",
                  "--no-distill", "--target", "x86-laptop", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    record = json.loads((out / "pruning.json").read_text())
    channels = record["channels"]  # name -> [before, after, share removed]
    assert channels[prefix + cut][1] < channels[prefix + cut][0]
    for name in whole:  # the layers that write the hidden size, and Llama's grouped-query attention
        assert channels[prefix + name][0] == channels[prefix + name][1], (name, channels[prefix + name])
    assert record["params_after"] < record["params_before"]
    before, after = _weights(out / "model.fp32.onnx"), _weights(out / "model.pruned.onnx")
    assert after < before


def test_whole_heads_of_the_new_layout_are_pruned_with_head_ratio(tmp_path, capsys):
    (tmp_path / "m.py").write_text(MODEL_PY)
    out = tmp_path / "out"
    rc = run_cli(["prune", f"{tmp_path / 'm.py'}:vit", "--calib", str(_data(tmp_path, "images")), "--ratio", "0.2",
                  "--head-ratio", "0.5", "--no-distill", "--target", "x86-laptop", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    channels = json.loads((out / "pruning.json").read_text())["channels"]
    for p in ("q_proj", "k_proj", "v_proj"):  # one of two heads of 16, in all three alike
        assert channels[f"vit.layers.0.attention.{p}"][:2] == [32, 16]
    assert channels["vit.layers.0.attention.o_proj"][:2] == [32, 32]  # its input shrank, its output is the stream


def test_compress_prints_each_pruning_note_once(tmp_path, capsys):
    # the schedule prints its notes as they arise and compress printed them all again with the stage's
    (tmp_path / "m.py").write_text(MODEL_PY)
    rc = run_cli(["compress", f"{tmp_path / 'm.py'}:vit", "--calib", str(_data(tmp_path, "images")), "--prune", "0.3",
                  "--quantize", "none", "--target", "x86-laptop", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 0, err
    removed = [ln for ln in err.splitlines() if ln.startswith("edgekit: note: pruning removed")]
    assert len(removed) == 1, err
