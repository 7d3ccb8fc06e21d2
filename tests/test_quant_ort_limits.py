"""Nodes onnxruntime's quantizer cannot quantize in a candidate's form stay float in it (quant/ort_limits.py),
so the candidate is built instead of failing:
  - a LayerNorm over [C, H, W] (scale and bias of rank 3), per-channel QDQ: S8S8 per-channel (the
    dot-product ARM and GPU default) raised "The truth value of an array ... is ambiguous", so --no-tune on
    such a target stopped with "every quantization candidate failed";
  - a MatMul by a constant of rank 3, per-channel dynamic or QOperator: the graph was written and then
    refused at run time ("b zero point is not valid").
  - a grouped ConvTranspose, per-channel QDQ ("operands could not be broadcast together"), and an Add or
    Mul feeding a Where, QOperator ("Invalid model with unknown initializers/tensors").
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from edgekit.dataset import Dataset
from edgekit.quant import ort_limits, static
from edgekit.quant.spec import QuantSpec


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.norm = nn.LayerNorm([8, 8, 8])
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.norm(self.c1(x)))
        return self.fc(torch.relu(self.c2(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    d = tmp_path_factory.mktemp("wide")
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():  # a trained LayerNorm's affine part is not the identity
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.uniform_(-0.3, 0.3)
    p, prep = d / "m.onnx", d / "prep.onnx"
    torch.onnx.export(model, (torch.zeros(2, 1, 8, 8),), str(p), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False)
    static.preprocess(p, prep)
    x = np.random.default_rng(0).uniform(0, 1, size=(64, 1, 8, 8)).astype(np.float32)
    return p, prep, Dataset({"x": x})


def test_wide_layernorm_is_found(wide):
    _, prep, _ = wide
    names = ort_limits.unquantizable(prep, QuantSpec())
    ops = {n.name: n.op_type for n in onnx.load(str(prep)).graph.node}
    assert len(names) == 1 and ops[names[0]] == "LayerNormalization"


def _host_reduce_range() -> bool:
    """What edgekit's ISA defaults give this host (quant/isa.py)."""
    from edgekit.quant import isa

    facts = isa.target_facts(None)
    return isa.choose(facts["isa"], arch=facts["arch"]).reduce_range


@pytest.mark.parametrize("act, sym", [("s8", True), ("s8", False)])
def test_per_channel_s8s8_quantizes_and_runs(wide, tmp_path, act, sym):
    p, prep, data = wide
    out = tmp_path / "q.onnx"
    # the host's weight range: AVX2 without VNNI saturates 8-bit weights (relative error 0.17 against 0.1 here)
    spec = QuantSpec(activation_type=act, symmetric_activation=sym, per_channel=True, reduce_range=_host_reduce_range())
    info = static.quantize(prep, out, data, spec, calib_size=48, input_names=["x"], cache_root=tmp_path / "c")
    assert info["float_for_onnxruntime"] == ort_limits.unquantizable(prep, spec)
    m = onnx.load(str(out))
    ln = next(n for n in m.graph.node if n.op_type == "LayerNormalization")
    producers = {o: n.op_type for n in m.graph.node for o in n.output}
    assert all(producers.get(i) != "DequantizeLinear" for i in ln.input[1:]), "LayerNorm weights stay float"
    assert sum(n.op_type == "DequantizeLinear" for n in m.graph.node) >= 4  # the convs and the Gemm are INT8
    run = lambda path: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": data.inputs["x"][48:]})[0]
    ref, got = run(p), run(out)
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.85
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.1


def test_per_tensor_leaves_it_to_onnxruntime(wide, tmp_path):
    """Per tensor, onnxruntime quantizes it; nothing is taken away from that case."""
    _, prep, data = wide
    info = static.quantize(prep, tmp_path / "q.onnx", data, QuantSpec(activation_type="s8", per_channel=False),
                           calib_size=48, input_names=["x"], cache_root=tmp_path / "c")
    assert "float_for_onnxruntime" not in info


class Batched(nn.Module):
    """One weight matrix per group: a MatMul by a constant of rank 3."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 16, 16) * 0.3)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        h = torch.relu(torch.matmul(x.reshape(-1, 4, 4, 16), self.w))  # [N, 4, 4, 16]
        return self.fc(h.mean(2).flatten(1))


@pytest.fixture(scope="module")
def batched(tmp_path_factory):
    d = tmp_path_factory.mktemp("batched")
    torch.manual_seed(0)
    p, prep = d / "m.onnx", d / "prep.onnx"
    torch.onnx.export(Batched().eval(), (torch.zeros(2, 256),), str(p), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False)
    static.preprocess(p, prep)
    x = np.random.default_rng(1).normal(size=(96, 256)).astype(np.float32)
    return p, prep, Dataset({"x": x})


@pytest.mark.parametrize("spec", [QuantSpec(mode="int8-dynamic"), QuantSpec(format="qoperator")],
                         ids=["dynamic", "qoperator"])
def test_batched_constant_matmul_per_channel_quantizes_and_runs(batched, tmp_path, spec):
    from edgekit.quant import dynamic

    p, prep, data = batched
    out = tmp_path / "q.onnx"
    if spec.mode == "int8-dynamic":
        info = dynamic.quantize(prep, out, spec)
    else:
        info = static.quantize(prep, out, data, spec, calib_size=64, input_names=["x"], cache_root=tmp_path / "c")
    kept = info["float_for_onnxruntime"]
    assert len(kept) == 1 and "MatMul" in kept[0]
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "MatMul" in ops and any(o in ops for o in ("MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul",
                                                      "QGemm", "DynamicQuantizeLinear", "QuantizeLinear"))
    run = lambda path: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": data.inputs["x"][64:]})[0]
    ref, got = run(p), run(out)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.1
    # per channel in QDQ they run as they are: nothing is kept back there
    assert ort_limits.unquantizable(prep, QuantSpec()) == []


class GroupedUp(nn.Module):
    """A grouped transposed conv (learned upsampling per group of channels)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 8, 3, padding=1)
        self.t = nn.ConvTranspose2d(8, 8, 2, stride=2, groups=2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.t(torch.relu(self.c(x)))).mean((2, 3)))


class LeakyWhere(nn.Module):
    """A leaky ReLU written with torch.where: a Mul feeding a Where."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.c(x)
        return self.fc(torch.where(x > 0, x, 0.1 * x).mean((2, 3)))


def _prepared(tmp_path, model):
    torch.manual_seed(0)
    p, prep = tmp_path / "m.onnx", tmp_path / "prep.onnx"
    torch.onnx.export(model.eval(), (torch.zeros(2, 1, 8, 8),), str(p), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False)
    static.preprocess(p, prep)
    x = np.random.default_rng(2).uniform(0, 1, size=(96, 1, 8, 8)).astype(np.float32)
    return p, prep, Dataset({"x": x})


@pytest.mark.parametrize("model, spec, op", [
    (GroupedUp, QuantSpec(), "ConvTranspose"),
    (LeakyWhere, QuantSpec(format="qoperator"), "Mul"),
    (LeakyWhere, QuantSpec(format="qoperator", per_channel=False), "Mul"),
], ids=["grouped-convtranspose-qdq", "mul-into-where-qoperator", "mul-into-where-qoperator-per-tensor"])
def test_other_forms_onnxruntime_cannot_quantize(tmp_path, model, spec, op):
    torch.manual_seed(0)
    p, prep, data = _prepared(tmp_path, model())
    out = tmp_path / "q.onnx"
    info = static.quantize(prep, out, data, spec, calib_size=64, input_names=["x"], cache_root=tmp_path / "c")
    ops = {n.name: n.op_type for n in onnx.load(str(prep)).graph.node}
    assert [ops[n] for n in info["float_for_onnxruntime"]] == [op]
    run = lambda path: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": data.inputs["x"][64:]})[0]
    ref, got = run(p), run(out)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.1
    # the form that can quantize them leaves them to onnxruntime
    other = QuantSpec(per_channel=False) if op == "ConvTranspose" else QuantSpec()
    assert ort_limits.unquantizable(prep, other) == []
