"""GPT-2's transformers Conv1D layers (a Linear with its weight stored [in, out]) are pruned as the Linear each
computes: a GPT-2 was "nothing in this model can be pruned", 58% of its parameters in layers Torch-Pruning has
no pruner for. The MLP width is pruned, and with --head-ratio the attention heads (c_attn's q, k, v are split by
the embedding width, which Torch-Pruning cannot follow: edgekit's own fused_heads.py cuts them); the residual
stream is kept."""
import copy
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


def test_cutting_a_head_of_c_attn_is_the_model_without_that_heads_output():
    """What the cut computes equals the unpruned attention with the removed heads' c_proj columns zeroed."""
    from transformers import GPT2Config, GPT2Model

    from edgekit.pruning import fused_heads

    torch.manual_seed(0)
    model = conv1d.with_linears(GPT2Model(GPT2Config(vocab_size=50, n_embd=24, n_layer=1, n_head=4,
                                                     n_positions=16)).eval())
    (name, attn), = fused_heads.modules(model)
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for h in (0, 2):
            ref.get_submodule(name).c_proj.weight[:, h * 6:(h + 1) * 6] = 0
    fused_heads.cut(attn, [1, 3])
    assert (attn.num_heads, attn.split_size, attn.c_attn.out_features, attn.c_proj.in_features) == (2, 12, 36, 12)
    ids = torch.randint(0, 50, (3, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, ref(ids).last_hidden_state, rtol=1e-5, atol=1e-5)


def test_head_ratio_cuts_gpt2_heads_by_steps_and_rebuilds_from_its_file(gpt2, tmp_path, capsys):
    # --head-ratio left GPT-2's attention whole ("GPT-2 attention heads are not pruned"): its one c_attn makes
    # q, k and v, which Torch-Pruning cannot follow
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from edgekit.hf_folder import build

    torch.manual_seed(0)
    d = tmp_path / "gpt2h4"
    GPT2ForSequenceClassification(GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                             num_labels=3, pad_token_id=0)).save_pretrained(d)
    _, ids = gpt2
    out = tmp_path / "out"
    rc = run_cli(["prune", str(d), "--calib", str(tmp_path / "text.npz"), "--ratio", "0.25", "--head-ratio", "0.5",
                  "--steps", "2", "--no-distill", "-o", str(out)])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 0, err
    rec = json.loads((out / "pruning.json").read_text())
    assert rec["channels"]["transformer.h.0.attn.heads"][:2] == [4, 2]
    assert rec["channels"]["transformer.h.1.attn.c_attn"][:2] == [96, 48]
    assert rec["channels"]["transformer.h.0.attn.c_proj"][:2] == [32, 32]  # the residual stream is kept
    assert "attention heads cut in c_attn: transformer.h.0.attn 4 -> 2, transformer.h.1.attn 4 -> 2" in rec["notes"]
    base, _ = build(str(d))
    model = serialize.apply(base, serialize.read(out / "pruned.pt"))
    attn = dict(model.named_modules())["transformer.h.1.attn"]
    assert (attn.num_heads, attn.split_size, attn.c_proj.in_features) == (2, 16, 16)
    feeds = {"input_ids": ids[:8], "attention_mask": np.ones_like(ids[:8])}
    man = json.loads((out / "manifest.json").read_text())
    path = next(a["path"] for a in man["artifacts"] if a["kind"] == "pruned")
    sess = ort.InferenceSession(str(out / path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        got = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    np.testing.assert_allclose(got, sess.run(None, feeds)[0], rtol=1e-4, atol=1e-4)
