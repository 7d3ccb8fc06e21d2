"""HuggingFace decoder models (GPT-2, Llama, ...), built from a config: what a user fine-tuned a small
causal model into a classifier brings. transformers' decoders return a key/value cache object by default
(refused: "got past_key_values (DynamicCache)"), and their attention-mask builder calls torch.diff and a
bool cumsum, which torch's TorchScript exporter could not convert or converted into a graph onnxruntime
refuses."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cliutil import run_cli
from edgekit.stages import export_symbolics

MODEL_PY = '''
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, LlamaConfig, LlamaForCausalLM


def gpt2():
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=100, n_embd=16, n_layer=1, n_head=2, n_positions=64, num_labels=3, pad_token_id=0,
                     bos_token_id=1, eos_token_id=1)
    return GPT2ForSequenceClassification(cfg).eval()


def _llama(seed, hidden):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=100, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      bos_token_id=1, eos_token_id=1)
    return LlamaForCausalLM(cfg).eval()


def llama_lm():
    return _llama(0, 16)


def llama_lm_small():  # a student half as wide
    return _llama(1, 8)


class MyDense(torch.nn.Module):  # a layer type Torch-Pruning has no pruner for
    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_out, n_in) * 0.1)

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight)


class OwnLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.e = torch.nn.Embedding(100, 16)
        self.a, self.b = MyDense(16, 64), MyDense(64, 16)
        self.out = torch.nn.Linear(16, 3)

    def forward(self, input_ids, attention_mask):
        return self.out(self.b(torch.relu(self.a(self.e(input_ids)))).mean(1))


def own_layers():
    return OwnLayers()
'''


def _tokens(path, n=40, length=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, 100, size=(n, length))
    mask = np.ones((n, length), np.int64)
    for i, keep in enumerate(rng.integers(3, length + 1, size=n)):  # right padding, as tokenizers pad
        ids[i, keep:], mask[i, keep:] = 0, 0
    np.savez(path, input_ids=ids.astype(np.int64), attention_mask=mask)
    return ids, mask


@pytest.mark.parametrize("factory,output", [("gpt2", "logits"), ("llama_lm", "logits")])
def test_decoder_exports_without_its_cache_and_matches_torch_at_other_lengths(factory, output, tmp_path, capsys):
    (tmp_path / "dec.py").write_text(MODEL_PY)
    _tokens(tmp_path / "tok.npz")
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{tmp_path / 'dec.py'}:{factory}", "--calib", str(tmp_path / "tok.npz"),
                  "--quantize", "none", "--target", "x86-laptop", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "returned a key/value cache (DynamicCache); config.use_cache is turned off" in err
    manifest = json.loads((out / "manifest.json").read_text())
    fp32 = next(a for a in manifest["artifacts"] if a["kind"] == "fp32")
    assert [o["name"] for o in fp32["outputs"]] == [output]  # the cache is no output

    # the graph follows other lengths and paddings than the traced ones
    import importlib.util

    spec = importlib.util.spec_from_file_location("dec", tmp_path / "dec.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = getattr(mod, factory)()
    sess = ort.InferenceSession(str(out / "model.fp32.onnx"))
    for length, seed in ((5, 1), (30, 2)):
        ids, mask = _tokens(tmp_path / "other.npz", n=4, length=length, seed=seed)
        got = sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        with torch.no_grad():
            ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                        use_cache=False).logits.numpy()
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


class _Diff(torch.nn.Module):
    def forward(self, x):
        return (torch.diff(x, dim=-1, prepend=x[:, :1] - 1), torch.diff(x, n=2, dim=0), (x > 0).cumsum(-1),
                x.cumsum(0), x.cumsum(1, dtype=torch.float64), (x > 0).int().cumsum(1))


def test_diff_and_cumsum_convert_as_torch_computes_them(tmp_path):
    export_symbolics.register()
    x = torch.randn(4, 6)
    path = tmp_path / "d.onnx"
    torch.onnx.export(_Diff(), (x,), str(path), opset_version=17, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "b", 1: "s"}})
    sess = ort.InferenceSession(str(path))
    for xx in (x, torch.randn(5, 9)):
        ref = _Diff()(xx)
        got = sess.run(None, {"x": xx.numpy()})
        for g, r in zip(got, ref):
            assert g.dtype == r.numpy().dtype  # a bool cumsum counts in int64, as torch does
            np.testing.assert_allclose(g, r.numpy(), rtol=1e-5, atol=1e-5)


class _MaskCumsum(torch.nn.Module):
    """timm's EdgeNeXt positional encoding counts a bool mask with cumsum(dtype=float32)."""

    def forward(self, x):
        inv_mask = x > 0
        return inv_mask.cumsum(1, dtype=torch.float32) * inv_mask.cumsum(2, dtype=torch.float64).float()


def test_a_cumsum_with_a_dtype_converts_after_torch_onnx_symbolic_helper_was_imported(tmp_path):
    """Importing the module torch.onnx.symbolic_helper (timm does) makes `from torch.onnx import
    symbolic_helper` the backward-compatibility shim, which lacks the exporter's private type table: the
    conversion read it from there and EdgeNeXt failed to export."""
    import importlib

    importlib.import_module("torch.onnx.symbolic_helper")
    export_symbolics.register()
    x = torch.randn(2, 4, 5)
    path = tmp_path / "c.onnx"
    torch.onnx.export(_MaskCumsum(), (x,), str(path), opset_version=17, dynamo=False, input_names=["x"])
    got = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, _MaskCumsum()(x).numpy(), rtol=1e-6)


BAD_PY = '''
import torch


class BoolCumSum(torch.autograd.Function):
    """Converts into CumSum on a bool tensor, which onnxruntime refuses to load."""

    @staticmethod
    def forward(ctx, x):
        return (x > 0).cumsum(-1).float()

    @staticmethod
    def symbolic(g, x):
        b = g.op("Greater", x, g.op("Constant", value_t=torch.tensor(0.0)))
        s = g.op("CumSum", b, g.op("Constant", value_t=torch.tensor(-1)))
        return g.op("Cast", s, to_i=1)


class Net(torch.nn.Module):
    def forward(self, x):
        return BoolCumSum.apply(x)


def net():
    return Net()
'''


def test_a_graph_onnxruntime_cannot_load_is_one_line_naming_the_model(tmp_path, capsys):
    (tmp_path / "bad.py").write_text(BAD_PY)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(20, 5)).astype(np.float32))
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{tmp_path / 'bad.py'}:net", "--calib", str(tmp_path / "x.npy"),
                  "--quantize", "none", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc != 0
    line = [ln for ln in err.splitlines() if ln.startswith("edgekit: error")]
    assert len(line) == 1, err
    assert "bad.py:net: torch's ONNX exporter wrote a graph onnxruntime cannot load" in line[0]
    assert "internal error" not in err
    assert not out.exists()


def test_pruning_names_the_layer_type_it_cannot_cut(tmp_path, capsys):
    # was "nothing in this model can be pruned: kept: out (output layer)", silent on where the weights are (a
    # GPT-2's Conv1D was such a type; it is now pruned as the Linear it computes: test_prune_gpt2.py)
    (tmp_path / "dec.py").write_text(MODEL_PY)
    _tokens(tmp_path / "tok.npz")
    out = tmp_path / "out"
    rc = run_cli(["prune", f"{tmp_path / 'dec.py'}:own_layers", "--calib", str(tmp_path / "tok.npz"), "--ratio",
                  "0.3", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    line = [ln for ln in err.splitlines() if ln.startswith("edgekit: error")]
    assert len(line) == 1 and "nothing in this model can be pruned" in line[0]
    assert "layers Torch-Pruning has no pruner for: MyDense (2 layers, " in line[0]
    assert not out.exists()


def test_pruning_gpt2_cuts_its_mlp_width(tmp_path, capsys):
    (tmp_path / "dec.py").write_text(MODEL_PY)
    _tokens(tmp_path / "tok.npz")
    out = tmp_path / "out"
    rc = run_cli(["prune", f"{tmp_path / 'dec.py'}:gpt2", "--calib", str(tmp_path / "tok.npz"), "--ratio", "0.3",
                  "--no-distill", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    man = json.loads((out / "manifest.json").read_text())
    kinds = {a["kind"]: a for a in man["artifacts"]}
    assert kinds["pruned"]["params"] < kinds["fp32"]["params"]


def test_a_decoder_student_is_distilled_from_a_decoder_teacher(tmp_path, capsys):
    # the student's cache was left on: "--student ...: returns outputs ['logits', 'cache']; the teacher
    # returns ['logits']"
    (tmp_path / "dec.py").write_text(MODEL_PY)
    _tokens(tmp_path / "tok.npz")
    out = tmp_path / "out"
    rc = run_cli(["distill", "--teacher", f"{tmp_path / 'dec.py'}:llama_lm", "--student",
                  f"{tmp_path / 'dec.py'}:llama_lm_small", "--calib", str(tmp_path / "tok.npz"), "--epochs", "2",
                  "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    sess = ort.InferenceSession(str(out / "model.distilled.onnx"))
    assert [o.name for o in sess.get_outputs()] == ["logits"]
