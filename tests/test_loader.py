"""The load stage on user models: every bad input gets a one-line error naming the file."""
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.errors import InputError
from edgekit.loader import load_source

NET = Path(__file__).parent / "models" / "tiny_net.py"


def _weights(tmp_path):
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("tiny_net", NET)
    mod = module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    net = mod.build()
    p = tmp_path / "w.pt"
    torch.save(net.state_dict(), p)
    return net, p


def test_user_model_loads_with_state_dict_and_infers_inputs(tmp_path):
    net, w = _weights(tmp_path)
    src = load_source(f"{NET}:build", weights=str(w), input_shape=(1, 1, 28, 28))
    assert src.kind == "torch" and src.task == "classification"
    assert src.inputs[0].shape == ["batch", 1, 28, 28]
    x = torch.randn(3, 1, 28, 28)
    net.eval()
    assert torch.allclose(src.module(x), net(x))
    assert src.weights_sha256 and len(src.weights_sha256) == 64


def test_inputs_inferred_from_data(tmp_path):
    src = load_source(f"{NET}:build", sample_inputs={"x": np.zeros((5, 1, 12, 12), np.float32)})
    assert src.inputs[0].shape == ["batch", 1, 12, 12]


@pytest.mark.parametrize("spec,msg", [
    ("missing.py:build", "missing.py: file not found"),
    (f"{NET}:nope", "no callable 'nope'"),
    (f"{NET}:not_a_module", "returned int, not a torch.nn.Module"),
    ("model.bin", "not a model spec"),
    ("zoo:resnet9000", "no such zoo model"),
])
def test_bad_specs(spec, msg):
    with pytest.raises(InputError, match=msg):
        load_source(spec, input_shape=(1, 1, 8, 8))


def test_missing_input_shape_is_explained():
    with pytest.raises(InputError, match="--input-shape"):
        load_source(f"{NET}:build")


def test_wrong_input_shape(tmp_path):
    with pytest.raises(InputError, match=r"forward\(\) failed on inputs"):
        load_source(f"{NET}:build", input_shape=(1, 3, 8, 8))


def test_weights_errors(tmp_path):
    with pytest.raises(InputError, match="weights file not found"):
        load_source(f"{NET}:build", weights=str(tmp_path / "none.pt"), input_shape=(1, 1, 8, 8))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not torch")
    with pytest.raises(InputError, match="junk.pt: not a PyTorch weights file"):
        load_source(f"{NET}:build", weights=str(junk), input_shape=(1, 1, 8, 8))
    other = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(InputError, match="other.pt: state dict does not fit build"):
        load_source(f"{NET}:build", weights=str(other), input_shape=(1, 1, 8, 8))
    notdict = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], notdict)
    with pytest.raises(InputError, match="list.pt: not a state dict"):
        load_source(f"{NET}:build", weights=str(notdict), input_shape=(1, 1, 8, 8))


def test_pickled_module_needs_trust(tmp_path):
    net, _ = _weights(tmp_path)
    full = tmp_path / "full.pt"
    torch.save(net, full)
    with pytest.raises(InputError, match="full.pt: contains pickled Python objects.*--trust-pickle"):
        load_source(f"{NET}:build", weights=str(full), input_shape=(1, 1, 8, 8))
    src = load_source(f"{NET}:build", weights=str(full), trust_pickle=True, input_shape=(1, 1, 8, 8))
    assert isinstance(src.module, torch.nn.Module)


def test_onnx_errors(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(InputError, match="bad.onnx: not a valid ONNX model"):
        load_source(str(bad))
    with pytest.raises(InputError, match="nothere.onnx: file not found"):
        load_source(str(tmp_path / "nothere.onnx"))


def _tiny_onnx(path, out_cols, **save_kw):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((16, out_cols), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", out_cols])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save_model(m, str(path), **save_kw)
    return path


def test_onnx_with_external_data_loads_from_any_directory(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    _tiny_onnx(tmp_path / "m" / "ext.onnx", 4, save_as_external_data=True, location="ext.data", size_threshold=0)
    monkeypatch.chdir(tmp_path)
    src = load_source("m/ext.onnx")
    assert src.inputs[0].shape == ["n", 16]
    (tmp_path / "m" / "ext.data").unlink()
    with pytest.raises(InputError, match="ext.onnx: not a valid ONNX model"):
        load_source("m/ext.onnx")


def test_onnx_source_hash_covers_its_external_data(tmp_path):
    # torch's dynamo exporter writes model.onnx + model.onnx.data: two models with one graph and other
    # weights have the same .onnx bytes, and `edgekit report` took them for one model
    import onnx

    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        _tiny_onnx(tmp_path / name / "m.onnx", 4, save_as_external_data=True, location="m.onnx.data",
                   size_threshold=0)
    (tmp_path / "b" / "m.onnx.data").write_bytes(np.full((16, 4), 2.0, np.float32).tobytes())  # other weights
    assert onnx.numpy_helper.to_array(onnx.load(str(tmp_path / "b" / "m.onnx")).graph.initializer[0]).max() == 2.0
    assert (tmp_path / "a" / "m.onnx").read_bytes() == (tmp_path / "b" / "m.onnx").read_bytes()
    sha = {n: load_source(str(tmp_path / n / "m.onnx")).weights_sha256 for n in ("a", "b", "c")}
    assert sha["a"] != sha["b"] and sha["a"] == sha["c"]
    plain = _tiny_onnx(tmp_path / "plain.onnx", 4)  # one self-contained file: its own hash, as before
    from edgekit.fsutil import sha256_file
    assert load_source(str(plain)).weights_sha256 == sha256_file(plain)


@pytest.mark.parametrize("cols,task", [(1, "generic"), (2, "classification"), (10, "classification")])
def test_onnx_task_needs_two_or_more_output_columns(tmp_path, cols, task):
    assert load_source(str(_tiny_onnx(tmp_path / "m.onnx", cols))).task == task


def test_quantized_ops_are_recognised(tmp_path):
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    from edgekit.loader import quantized_ops

    fp32 = _tiny_onnx(tmp_path / "m.onnx", 4)
    assert quantized_ops(onnx.load(str(fp32))) == []
    quantize_dynamic(str(fp32), str(tmp_path / "q.onnx"))
    assert "MatMulInteger" in quantized_ops(onnx.load(str(tmp_path / "q.onnx")))


KW_MODEL = '''
import torch, torch.nn as nn

class Kw(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.l1 = nn.Linear(6, 8)
        self.l2 = nn.Linear(8, 3)

    def forward(self, x, offset=None, scale=None):
        if offset is not None:
            x = x + offset
        if scale is not None:
            x = x * scale
        return self.l2(torch.relu(self.l1(x)))

def build():
    return Kw()
'''


def test_data_inputs_bind_to_forward_parameters_by_name(tmp_path):
    """forward(x, offset=None, scale=None) with data x and scale: scale must reach `scale`, in torch and in the
    exported ONNX model (it used to be passed positionally, to `offset`, and the export check agreed)."""
    import onnxruntime as ort

    from edgekit.stages.export import export_module

    f = tmp_path / "kwnet.py"
    f.write_text(KW_MODEL)
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(8, 6)).astype(np.float32), "scale": rng.uniform(0.5, 3, size=(8, 6)).astype(np.float32)}
    src = load_source(f"{f}:build", sample_inputs=data)
    assert [s.name for s in src.inputs] == ["x", "scale"]
    x, sc = torch.from_numpy(data["x"]), torch.from_numpy(data["scale"])
    with torch.no_grad():
        want = type(src.module).__mro__[1].forward(src.module, x, scale=sc)
        wrong = type(src.module).__mro__[1].forward(src.module, x, offset=sc)
        got = src.module(x, sc)
    assert (want - wrong).abs().max() > 0.1  # the two bindings really differ on this data
    assert torch.allclose(got, want)
    assert set(src.module.state_dict()) == {"l1.weight", "l1.bias", "l2.weight", "l2.bias"}  # no wrapper prefix
    art = export_module(src.module, src, tmp_path / "m.onnx")
    onnx_out = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, data)[0]
    assert art.verify["max_abs_diff"] < 1e-4
    np.testing.assert_allclose(onnx_out, want.numpy(), atol=1e-5)


TOK_MODEL = '''
import torch, torch.nn as nn

class Tok(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0), 2)
        self.fc = nn.Linear(16, 3)

    def forward(self, input_ids, attention_mask):
        h = self.enc(self.emb(input_ids), src_key_padding_mask=(attention_mask == 0))
        m = attention_mask.unsqueeze(-1).float()
        return self.fc((h * m).sum(1) / m.sum(1).clamp(min=1))

def build():
    return Tok()
'''


def test_masked_transformer_is_probed_with_real_samples(tmp_path):
    """An all-zero attention mask hides every token and nn.TransformerEncoder's nested-tensor path fails on it;
    the probe must use the data (it used zeros, then reported the float fallback's Embedding error)."""
    f = tmp_path / "toknet.py"
    f.write_text(TOK_MODEL)
    rng = np.random.default_rng(0)
    mask = np.ones((4, 7), np.int64)
    mask[:, 5:] = 0
    data = {"input_ids": rng.integers(0, 20, size=(4, 7)), "attention_mask": mask}
    src = load_source(f"{f}:build", sample_inputs=data)
    assert [s.dtype for s in src.inputs] == ["int64", "int64"]
    assert src.task == "classification"


def test_probe_reports_the_first_error_not_the_float_fallbacks(tmp_path):
    f = tmp_path / "failing.py"
    f.write_text("import torch\nclass F(torch.nn.Module):\n    def forward(self, ids):\n"
                 "        raise RuntimeError(f'cannot take {ids.dtype}')\ndef build():\n    return F()\n")
    with pytest.raises(InputError) as e:
        load_source(f"{f}:build", sample_inputs={"ids": np.zeros((3, 5), np.int64)})
    assert "cannot take torch.int64" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("wrap, note", [
    (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "read keys without their 'module.' prefix"),
    (lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()}, "read keys without their '_orig_mod.' prefix"),
    (lambda sd: {"model": sd, "epoch": 3, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
     "read the state dict under the checkpoint's key 'model'"),
    (lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "global_step": 10},
     "read the state dict under the checkpoint's key 'state_dict', keys without their 'model.' prefix"),
])
def test_checkpoints_as_training_writes_them_load_with_a_note(tmp_path, capsys, wrap, note):
    # DistributedDataParallel's 'module.', torch.compile's '_orig_mod.', a training checkpoint beside its
    # optimizer state, Lightning's 'state_dict' of 'model.' keys: each was "Missing key(s)" or "not a state dict"
    net, p = _weights(tmp_path)
    ck = tmp_path / "ck.pt"
    torch.save(wrap(net.state_dict()), ck)
    src = load_source(f"{NET}:build", weights=str(ck), input_shape=(1, 1, 8, 8))
    for k, v in net.state_dict().items():
        assert torch.equal(src.module.state_dict()[k], v), k
    assert f"edgekit: note: {ck}: {note}" in capsys.readouterr().err


def test_safetensors_weights_load_without_trust(tmp_path):
    # the format model hubs publish in was "not a PyTorch weights file (neither a torch.save archive nor a
    # pickle)"; written here by the safetensors package itself, read by edgekit's own reader
    from safetensors.torch import save_file

    from edgekit.loader import read_safetensors

    net, _ = _weights(tmp_path)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}  # float32 and int64 (num_batches_tracked)
    save_file(sd, str(tmp_path / "w.safetensors"), metadata={"format": "pt"})
    src = load_source(f"{NET}:build", weights=str(tmp_path / "w.safetensors"), input_shape=(1, 1, 8, 8))
    for k, v in sd.items():
        assert torch.equal(src.module.state_dict()[k], v), k
    odd = {"h": torch.randn(3, 2).to(torch.bfloat16), "f": torch.randn(4).half(), "b": torch.tensor([True, False]),
           "e": torch.zeros(0, 3)}
    save_file(odd, str(tmp_path / "odd.safetensors"))
    got = read_safetensors(tmp_path / "odd.safetensors")
    assert set(got) == set(odd) and all(torch.equal(got[k], odd[k]) and got[k].dtype == odd[k].dtype for k in odd)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((tmp_path / "w.safetensors").read_bytes()[:-100])
    with pytest.raises(InputError, match=r"cut.safetensors: not a readable .safetensors file \(tensor '.*' lies "):
        load_source(f"{NET}:build", weights=str(cut), input_shape=(1, 1, 8, 8))


def test_weights_holding_no_state_dict_or_an_unknown_dtype_fail_in_one_line(tmp_path, capsys):
    # a checkpoint of training state alone, and a .safetensors tensor in a type torch has no reader for here
    # (FP8): one line naming the file, exit 2, no output directory
    import json
    import struct

    from cliutil import run_cli

    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "state.pt")
    head = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}).encode()
    (tmp_path / "f8.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + b"\0\0")
    cases = {"state.pt": "not a state dict (a dict of tensor names to tensors), nor a checkpoint holding one under",
             "f8.safetensors": "not a readable .safetensors file (tensor 'w': dtype 'F8_E4M3'"}
    for name, words in cases.items():
        out = tmp_path / f"out-{name}"
        rc = run_cli(["compress", f"{NET}:build", "--weights", str(tmp_path / name), "--input-shape", "1,1,8,8",
                      "-o", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith(f"edgekit: error: {tmp_path / name}: {words}"), err
        assert not out.exists()


def test_a_compiled_factory_and_frozen_layers_are_pruned_like_the_plain_model(tmp_path):
    # torch.compile's wrapper: "the model has no Conv or Linear layers to prune"; a frozen backbone
    # (requires_grad=False, as fine-tuning a head leaves it): "nothing in this model can be pruned"
    from edgekit.pruning import graph

    (tmp_path / "wrapped.py").write_text(
        f"import torch, importlib.util\nspec = importlib.util.spec_from_file_location('tiny_net', {str(NET)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "def compiled():\n    return torch.compile(mod.build())\n"
        "def frozen():\n    m = mod.build()\n    m[:6].requires_grad_(False)\n"
        "    m.register_parameter('scale', torch.nn.Parameter(torch.ones(1), requires_grad=False))\n    return m\n")
    for factory in ("compiled", "frozen"):
        src = load_source(f"{tmp_path / 'wrapped.py'}:{factory}", input_shape=(1, 1, 8, 8))
        assert not hasattr(src.module, "_orig_mod")
        ex = (torch.zeros(2, 1, 8, 8),)
        plan = graph.make_plan(src.module, ex)
        assert "3" not in plan.kept, plan.kept  # the second conv is prunable: not kept whole
        assert graph.prunable_groups(graph.dependency_graph(src.module, ex), plan.ignored), factory
        layers = [p for n, p in src.module.named_parameters() if n != "scale"]
        assert all(p.requires_grad for p in layers)
    assert not dict(src.module.named_parameters())["scale"].requires_grad  # frozen on purpose: left so


def test_torchscript_archives_are_refused_in_one_line(tmp_path):
    net, _ = _weights(tmp_path)
    ts = tmp_path / "net_ts.pt"
    torch.jit.save(torch.jit.trace(net.eval(), torch.zeros(1, 1, 28, 28)), str(ts))
    for kwargs in ({"weights": str(ts)}, {"weights": str(ts), "trust_pickle": True}):
        with pytest.raises(InputError) as e:
            load_source(f"{NET}:build", input_shape=(1, 1, 28, 28), **kwargs)
        assert str(e.value).startswith(f"{ts}: a TorchScript archive") and "\n" not in str(e.value)
    with pytest.raises(InputError, match="TorchScript archive"):
        load_source(str(ts))
    ts.rename(tmp_path / "net.ts")  # torch's own docs name them .pt, many users .ts
    with pytest.raises(InputError, match="TorchScript archive"):
        load_source(str(tmp_path / "net.ts"))


def test_torch_export_archives_are_refused_in_one_line_with_the_conversion(tmp_path):
    # was: "not a model spec (expected zoo:NAME, file.py:factory or model.onnx)", as for a typo
    net, _ = _weights(tmp_path)
    pt2 = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net.eval(), (torch.zeros(2, 1, 28, 28),)), str(pt2))
    with pytest.raises(InputError) as e:
        load_source(str(pt2))
    msg = str(e.value)
    assert msg.startswith(f"{pt2}: a torch.export archive") and "\n" not in msg
    assert "torch.onnx.export(torch.export.load(path), f='model.onnx')" in msg


def test_pickled_model_whose_class_lives_in_the_model_file_loads_when_trusted(tmp_path):
    """torch.save(model) from a script that did `import pickmodel` names the class pickmodel.Net."""
    import importlib.util
    import sys

    f = tmp_path / "pickmodel.py"
    f.write_text("import torch\nclass Net(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                 "        self.l = torch.nn.Linear(4, 3)\n    def forward(self, x):\n        return self.l(x)\n"
                 "def build():\n    return Net()\n")
    spec = importlib.util.spec_from_file_location("pickmodel", f)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["pickmodel"] = mod
    try:
        spec.loader.exec_module(mod)
        torch.manual_seed(3)
        saved = mod.Net().eval()
        torch.save(saved, tmp_path / "full.pt")
    finally:
        del sys.modules["pickmodel"]
    x = torch.randn(2, 4)
    try:
        src = load_source(f"{f}:build", weights=str(tmp_path / "full.pt"), trust_pickle=True, input_shape=(1, 4))
        assert torch.allclose(src.module(x), saved(x))
    finally:
        sys.modules.pop("pickmodel", None)
    with pytest.raises(InputError, match="--trust-pickle"):
        load_source(f"{f}:build", weights=str(tmp_path / "full.pt"), input_shape=(1, 4))


def test_a_forward_parameter_named_like_the_labels_array_is_explained(tmp_path):
    # forward(x, y) with x and y in the .npz: 'y' was read as labels and the probe said only
    # "missing 1 required positional argument: 'y'"
    f = tmp_path / "m.py"
    f.write_text("import torch\nclass M(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                 "        self.l = torch.nn.Linear(4, 2)\n    def forward(self, x, y):\n        return self.l(x + y)\n"
                 "def build():\n    return M()\n")
    with pytest.raises(InputError, match=r"m\.py:build: forward\(\) takes a parameter named 'y', but an \.npz array "
                                         r"named 'y' holds class labels"):
        load_source(f"{f}:build", sample_inputs={"x": np.zeros((3, 4), np.float32)})


def test_forward_with_only_varargs_takes_the_data_arrays_in_order(tmp_path):
    # forward(self, *xs) has no parameter names to bind to: the error used to say "it takes ['input']"
    import textwrap

    from edgekit.loader import load_python

    (tmp_path / "va.py").write_text(textwrap.dedent("""
        import torch, torch.nn as nn
        class VarArgs(nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = nn.Linear(6, 3), nn.Linear(4, 3)
            def forward(self, *xs):
                return self.a(xs[0]) + self.b(xs[1])
        class Rest(VarArgs):
            def forward(self, p, *rest):
                return super().forward(p, *rest)
        class KwOnly(VarArgs):
            def forward(self, *xs, scale=1.0):
                return super().forward(*xs) * scale
        def build():
            torch.manual_seed(0)
            return VarArgs()
        def rest():
            return Rest()
        def kwonly():
            return KwOnly()
    """))
    rng = np.random.default_rng(0)
    data = {"p": rng.normal(size=(5, 6)).astype(np.float32), "q": rng.normal(size=(5, 4)).astype(np.float32)}
    for factory in ("build", "rest", "kwonly"):  # the last two: "it takes ['p']" and "it takes ['scale']"
        src = load_python(str(tmp_path / "va.py"), factory, sample_inputs=data)
        assert [(s.name, s.shape) for s in src.inputs] == [("p", ["batch", 6]), ("q", ["batch", 4])], factory
        with torch.no_grad():
            out = src.module(*[torch.from_numpy(data[s.name]) for s in src.inputs])
        assert out.shape == (5, 3)


TABULAR_MODEL = '''
import torch, torch.nn as nn

class Tab(nn.Module):
    def __init__(self):
        super().__init__()
        self.sex, self.region = nn.Embedding(2, 3), nn.Embedding(5, 3)
        self.fc = nn.Linear(9 + 6, 1)

    def forward(self, num, sex, region):
        return self.fc(torch.cat([num, self.sex(sex), self.region(region)], 1))

def build():
    return Tab()
'''


def test_data_with_fewer_arrays_than_forward_takes_is_one_line_naming_them(tmp_path):
    """forward(num, sex, region) on a .csv (one array) read "forward() failed ... missing 2 required
    positional arguments", which said nothing of the data."""
    f = tmp_path / "tab.py"
    f.write_text(TABULAR_MODEL)
    rng = np.random.default_rng(0)
    num, sex = rng.normal(size=(8, 9)).astype(np.float32), rng.integers(0, 2, 8)
    with pytest.raises(InputError, match=r"tab.py:build: forward\(\) takes 3 inputs \(num, sex, region\), but the data "
                                         r"holds one input array, 'input' .*pass an .npz with an array named for each"):
        load_source(f"{f}:build", sample_inputs={"input": num})
    with pytest.raises(InputError, match=r"tab.py:build: the data has no array for forward\(\)'s 'region' \(it holds "
                                         r"'num', 'sex'\)"):
        load_source(f"{f}:build", sample_inputs={"num": num, "sex": sex})
    src = load_source(f"{f}:build", sample_inputs={"num": num, "sex": sex, "region": rng.integers(0, 5, 8)})
    assert [s.name for s in src.inputs] == ["num", "sex", "region"]
