"""GPT-2's transformers Conv1D layers (a Linear with its weight stored [in, out]) are pruned as the Linear each
computes: a GPT-2 was "nothing in this model can be pruned", 58% of its parameters in layers Torch-Pruning has
no pruner for. The MLP width is pruned; the attention is kept whole (c_attn's q, k, v are split by the
embedding width), and so is the residual stream."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cliutil import run_cli
from edgekit.pruning import conv1d, serialize


@pytest.fixture
def gpt2(tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    d = tmp_path / "gpt2"
    GPT2ForSequenceClassification(GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                                             num_labels=3, pad_token_id=0)).save_pretrained(d)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 300, size=(120, 12))
    np.savez(tmp_path / "text.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    return d, ids


def test_the_linear_computes_what_the_conv1d_does():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    c = Conv1D(24, 16)  # nf=24 outputs, nx=16 inputs
    torch.nn.init.normal_(c.bias)
    x = torch.randn(3, 5, 16)
    lin = conv1d.linear_of(c)
    assert isinstance(lin, torch.nn.Linear) and (lin.in_features, lin.out_features) == (16, 24)
    torch.testing.assert_close(lin(x), c(x), rtol=1e-5, atol=1e-6)
    seq = torch.nn.Sequential(c, torch.nn.ReLU())
    assert conv1d.with_linears(seq) is not seq and isinstance(seq[0], Conv1D)  # a copy; the user's model stays
    assert conv1d.swap(seq) == ["0"] and isinstance(seq[0], torch.nn.Linear)
    assert conv1d.with_linears(seq) is seq  # nothing left to swap: no copy


def test_prune_cuts_the_mlp_width_of_a_gpt2_and_rebuilds_it_from_its_file(gpt2, tmp_path, capsys):
    from edgekit.hf_folder import build

    d, ids = gpt2
    out = tmp_path / "out"
    rc = run_cli(["prune", str(d), "--calib", str(tmp_path / "text.npz"), "--ratio", "0.5", "--no-distill",
                  "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "Conv1D layers (weights stored [in, out]) are pruned and trained as the nn.Linear" in " ".join(err.split())
    man = json.loads((out / "manifest.json").read_text())
    kinds = {a["kind"]: a for a in man["artifacts"]}
    assert kinds["pruned"]["params"] < kinds["fp32"]["params"]
    # the pruned file rebuilds from the folder's architecture, its Conv1D swapped as they were
    base, _ = build(str(d))
    model = serialize.apply(base, serialize.read(out / "pruned.pt"))
    mods = dict(model.named_modules())
    fc, proj, attn = mods["transformer.h.0.mlp.c_fc"], mods["transformer.h.0.mlp.c_proj"], mods["transformer.h.0.attn.c_attn"]
    assert isinstance(fc, torch.nn.Linear) and fc.out_features < 128 and proj.in_features == fc.out_features
    assert proj.out_features == 32 and attn.out_features == 96  # residual stream and attention kept whole
    feeds = {"input_ids": ids[:8], "attention_mask": np.ones_like(ids[:8])}
    sess = ort.InferenceSession(str(out / kinds["pruned"]["path"]), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        got = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    np.testing.assert_allclose(got, sess.run(None, feeds)[0], rtol=1e-4, atol=1e-4)
