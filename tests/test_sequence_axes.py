"""A sequence length forward() accepts at any value stays dynamic in the exported graph, and is fixed again
(with a note) when the exported graph does not follow another length."""
import textwrap

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgekit.dataset import Dataset
from edgekit.loader import load_python
from edgekit.stages.export import export_module

MODELS = textwrap.dedent("""
    import torch, torch.nn as nn

    class GRUCls(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(8, 16, batch_first=True)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            out, _ = self.gru(x)
            return self.fc(out[:, -1])

    class Tagger(nn.Module):  # one label per token: the output's axis 1 follows the input's
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(30, 8)
            self.fc = nn.Linear(8, 5)

        def forward(self, ids, mask):
            return self.fc(self.emb(ids)) * mask.unsqueeze(-1)

    class FlatTime(nn.Module):  # a Linear over time x features: one length only
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12 * 8, 3)

        def forward(self, x):
            return self.fc(x.flatten(1))

    class LoopOverTime(nn.Module):  # runs at any length in torch; tracing unrolls the loop to one length
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            acc = x[:, 0]
            for t in range(1, x.shape[1]):
                acc = acc + x[:, t]
            return self.fc(acc)

    class Conv(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.c(x).mean((2, 3)))

    class Conv1d(nn.Module):  # [batch, channels, length]: the length is axis 2
        def __init__(self):
            super().__init__()
            self.c = nn.Conv1d(4, 8, 3, stride=2)
            self.bn = nn.BatchNorm1d(8)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc(torch.relu(self.bn(self.c(x))).mean(2))

    class EncDec(nn.Module):  # a strided encoder-decoder: 99 samples in give 100 out, 49 give 50
        def __init__(self):
            super().__init__()
            self.enc = nn.Conv1d(4, 8, 3, stride=2)
            self.dec = nn.ConvTranspose1d(8, 2, 4, stride=2)

        def forward(self, x):
            return self.dec(torch.relu(self.enc(x)))

    class EncDec4(nn.Module):  # stride 4: the output's length is the input's rounded down to a multiple of 4
        def __init__(self):
            super().__init__()
            self.enc = nn.Conv1d(4, 8, 4, stride=4)
            self.dec = nn.ConvTranspose1d(8, 2, 4, stride=4)

        def forward(self, x):
            return self.dec(torch.relu(self.enc(x)))

    def conv1d():
        torch.manual_seed(0)
        return Conv1d()

    def conv1d_same():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 2, 5, padding=2))

    def encdec4():
        torch.manual_seed(0)
        return EncDec4()

    def encdec():
        torch.manual_seed(0)
        return EncDec()

    def gru():
        torch.manual_seed(0)
        return GRUCls()

    def tagger():
        torch.manual_seed(0)
        return Tagger()

    def flat():
        return FlatTime()

    def loop():
        return LoopOverTime()

    def conv():
        return Conv()
""")

rng = np.random.default_rng(0)
SEQ = {"x": rng.standard_normal((20, 12, 8)).astype(np.float32)}
TOKENS = {"ids": rng.integers(1, 30, (20, 10)), "mask": np.ones((20, 10), dtype=np.int64)}


@pytest.fixture
def models(tmp_path):
    p = tmp_path / "models.py"
    p.write_text(MODELS)
    return str(p)


def _export(models, factory, data, tmp_path):
    src = load_python(models, factory, sample_inputs=data)
    art = export_module(src.module, src, tmp_path / "m.onnx", data=Dataset(data))
    return src, art, ort.InferenceSession(str(tmp_path / "m.onnx"))


def test_gru_takes_any_length(models, tmp_path):
    src, art, sess = _export(models, "gru", SEQ, tmp_path)
    assert src.inputs[0].shape == ["batch", "seq", 8]
    assert art.verify["other_length"]["max_abs_diff"] < 1e-4  # checked against torch at half the length
    x = rng.standard_normal((3, 30, 8)).astype(np.float32)
    with torch.no_grad():
        ref = src.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, atol=1e-5)


def test_token_outputs_follow_the_length(models, tmp_path):
    src, art, sess = _export(models, "tagger", TOKENS, tmp_path)
    assert src.dynamic_axes == {"ids": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"},
                                "output": {0: "batch", 1: "seq"}}
    out = sess.run(None, {"ids": np.ones((2, 17), np.int64), "mask": np.ones((2, 17), np.int64)})[0]
    assert out.shape == (2, 17, 5)


@pytest.mark.parametrize("factory", ["flat", "conv"])
def test_fixed_shapes_stay_fixed(models, factory, tmp_path):
    data = SEQ if factory == "flat" else {"x": rng.standard_normal((4, 3, 9, 9)).astype(np.float32)}
    src, art, sess = _export(models, factory, data, tmp_path)
    assert src.dynamic_axes["x"] == {0: "batch"}
    assert sess.get_inputs()[0].shape[1:] == list(data["x"].shape[1:])


def test_graph_that_does_not_follow_is_fixed_with_a_note(models, tmp_path):
    src, art, sess = _export(models, "loop", SEQ, tmp_path)
    assert src.dynamic_axes["x"] == {0: "batch", 1: "seq"}  # torch runs at any length...
    assert sess.get_inputs()[0].shape == ["batch", 12, 8]  # ...the traced graph does not
    assert "sequence length fixed" in art.notes[0] and "fixed_length" in art.verify
    assert art.verify["max_abs_diff"] < 1e-4
    # the reason is onnxruntime's own words, not its source path cut mid-way ("Status Message: /onnxruntime_")
    assert "Status Message" not in art.notes[0] and "onnxruntime_src" not in art.notes[0], art.notes[0]


def test_onnxruntime_failures_are_shortened_to_node_and_reason():
    from edgekit.stages.export import short_reason

    msg = ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Reshape node. "
           "Name:'/enc/Reshape_4' Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/"
           "reshape_helper.h:47 onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, bool) "
           "input_shape_size == size was false. The input tensor cannot be reshaped to the requested shape.\n")
    assert short_reason(RuntimeError(msg)) == ("Reshape node '/enc/Reshape_4': The input tensor cannot be reshaped "
                                               "to the requested shape.")
    long = short_reason(ValueError("word " * 100))
    assert len(long) <= 200 and long.endswith("...")


def test_conv1d_length_is_axis_2(models, tmp_path):
    data = {"x": rng.standard_normal((20, 4, 32)).astype(np.float32)}
    src, art, sess = _export(models, "conv1d", data, tmp_path)
    assert src.dynamic_axes["x"] == {0: "batch", 2: "seq"} and sess.get_inputs()[0].shape == ["batch", 4, "seq"]
    x = rng.standard_normal((2, 4, 50)).astype(np.float32)
    with torch.no_grad():
        ref = src.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, atol=1e-5)


def test_an_output_length_that_is_not_the_inputs_gets_its_own_symbol(models, tmp_path):
    # declared 'seq' like the input, the output claimed 99 where the graph gives 100 (onnxruntime warns of it
    # at every run, and a device reading the signature allocates the wrong size)
    data = {"x": rng.standard_normal((20, 4, 99)).astype(np.float32)}
    src, art, sess = _export(models, "encdec", data, tmp_path)
    assert src.dynamic_axes["x"] == {0: "batch", 2: "seq"}
    assert src.dynamic_axes["output"] == {0: "batch", 2: "output_len"}
    assert sess.get_inputs()[0].shape[2] == "seq" and sess.get_outputs()[0].shape[2] == "output_len"
    x = rng.standard_normal((2, 4, 61)).astype(np.float32)
    with torch.no_grad():
        ref = src.module(torch.from_numpy(x)).numpy()
    got = sess.run(None, {"x": x})[0]
    assert got.shape == ref.shape == (2, 2, 62)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_an_output_length_equal_at_the_probe_lengths_only_gets_its_own_symbol(models, tmp_path):
    # a stride-4 encoder-decoder gives 96 -> 96 and 48 -> 48, but 95 -> 92: only an odd length tells
    data = {"x": rng.standard_normal((20, 4, 96)).astype(np.float32)}
    src, art, sess = _export(models, "encdec4", data, tmp_path)
    assert src.dynamic_axes["output"] == {0: "batch", 2: "output_len"}
    data = {"input": rng.standard_normal((20, 4, 64)).astype(np.float32)}
    src, _, _ = _export(models, "conv1d_same", data, tmp_path)  # a length-preserving model keeps 'seq'
    assert src.dynamic_axes["output"] == {0: "batch", 2: "seq"}


def test_export_retry_keeps_json_stdout_pure(tmp_path):
    # AdaptiveAvgPool1d(4) cannot export at a variable length: the failed attempt made torch dump its IR
    # graph from C++ onto stdout (20 lines before the JSON), where Python's redirect cannot reach
    import json
    import subprocess
    import sys

    (tmp_path / "pool.py").write_text(textwrap.dedent("""
        import torch, torch.nn as nn
        def build():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv1d(1, 8, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool1d(4),
                                 nn.Flatten(), nn.Linear(32, 4))
    """))
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).normal(size=(40, 1, 128)).astype(np.float32))
    r = subprocess.run([sys.executable, "-m", "edgekit", "compress", f"{tmp_path / 'pool.py'}:build",
                        "--calib", str(tmp_path / "calib.npy"), "--quantize", "none", "--no-profile", "--json",
                        "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Torch IR graph" not in r.stdout + r.stderr
    man = json.loads(r.stdout)
    assert any("sequence length fixed" in n for a in man["artifacts"] for n in a.get("notes", [])), man["artifacts"]
