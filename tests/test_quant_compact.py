"""The INT8 file spends its bytes on weights: the quantizer's long tensor names and stored shapes go."""
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from edgekit.config import QuantizeConfig
from edgekit.dataset import Dataset
from edgekit.quant import compact, dynamic, static
from edgekit.quant.spec import QuantSpec
from edgekit.stages import quantize as stage
from tests.test_quant import _ctx, conv_model


def _small_cnn(path):
    """A 19k-parameter digits-sized CNN, exported as a user's would be (TorchScript names)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 48, 3, padding=1), torch.nn.BatchNorm2d(48), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(48, 10)).eval()
    torch.onnx.export(net, torch.zeros(1, 1, 8, 8), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
    return path


def _outputs(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def _tensor_names(path):
    g = onnx.load(str(path)).graph
    names = {i.name for i in g.initializer}
    for n in g.node:
        names.update(n.input)
        names.update(n.output)
    return names - {""}


def test_the_int8_file_of_a_small_cnn_is_its_weights_not_its_names(tmp_path):
    """Its int8 weights are 24% of the FP32 file; with the quantizer's names and value_info it was 37%."""
    p = _small_cnn(tmp_path / "cnn.onnx")
    data = Dataset({"x": np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)})
    parent, ctx = _ctx(tmp_path, p, data, tol="100%")
    parent.refresh_file_facts(tmp_path)
    art = stage.run(parent, ctx, QuantizeConfig(tune=False, speed_gate=False))
    rec = ctx.manifest.quantization[parent.path]["compacted"]
    assert rec["bytes_after"] == art.bytes < rec["bytes_before"], rec
    assert art.bytes <= 0.32 * parent.bytes, (art.bytes, parent.bytes)
    q = onnx.load(str(tmp_path / art.path))
    assert not q.graph.value_info
    assert not [t for t in _tensor_names(tmp_path / art.path) if t.endswith(("_Output", "_quantized"))]
    # the layers keep the names the FP32 model gave them: profiles and --keep-fp32 name them so
    assert {n.name for n in onnx.load(str(p)).graph.node if n.op_type == "Conv"} <= {n.name for n in q.graph.node}


def _quantized_conv(tmp_path, spec, n):
    """(pre-processed FP32 file, its quantized file as onnxruntime wrote it, the n samples it calibrated on)."""
    src = conv_model(tmp_path / "conv.onnx")
    prep = tmp_path / "prep.onnx"
    static.preprocess(src, prep)
    data = Dataset({"x": np.random.default_rng(n).normal(size=(n, 1, 16, 16)).astype(np.float32)})
    q = tmp_path / "q.onnx"
    if spec.mode == "int8-dynamic":
        dynamic.quantize(prep, q, spec)
    else:
        static.quantize(prep, q, data, spec, calib_size=n, input_names=["x"], use_cache=False)
    return prep, q, data


@pytest.mark.parametrize("spec", [QuantSpec(), QuantSpec(format="qoperator"), QuantSpec(per_channel=False),
                                  QuantSpec(mode="int8-dynamic")], ids=["qdq", "qoperator", "per-tensor", "dynamic"])
def test_compacting_changes_no_output_and_keeps_the_source_names(tmp_path, spec):
    prep, q, data = _quantized_conv(tmp_path, spec, 48)
    before = _tensor_names(q)
    shutil.copyfile(q, tmp_path / "raw.onnx")
    info = compact.compact_file(q, prep)  # no feeds: what is tested is the renaming itself
    assert info and info["bytes_after"] < info["bytes_before"] and info["names_shortened"] > 0, info
    x = np.asarray(data.inputs["x"])
    for a, b in zip(_outputs(tmp_path / "raw.onnx", x), _outputs(q, x)):
        assert np.array_equal(a, b)
    assert before & _tensor_names(prep) <= _tensor_names(q)  # what the source names is still so named
    onnx.checker.check_model(onnx.load(str(q)))


def _with_if(path):
    """An If whose branches read `h`, an outer tensor, by name, as every control-flow body does."""
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, None)
    then = helper.make_graph([helper.make_node("Relu", ["h_QuantizeLinear_Output"], ["o"])], "then", [], [out])
    other = helper.make_graph([helper.make_node("Neg", ["h_QuantizeLinear_Output"], ["o"])], "else", [], [out])
    nodes = [helper.make_node("Abs", ["x"], ["h_QuantizeLinear_Output"], "abs"),
             helper.make_node("ReduceSum", ["x"], ["s"], "sum", keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"], "gt"),
             helper.make_node("If", ["c"], ["y"], "if", then_branch=then, else_branch=other)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                          [onnx.numpy_helper.from_array(np.zeros((), np.float32), "zero")],
                          value_info=[helper.make_tensor_value_info("s", TensorProto.FLOAT, [])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_a_graph_with_a_body_keeps_every_name(tmp_path):
    p = _with_if(tmp_path / "if.onnx")
    src = onnx.load(str(p))
    src.graph.node[0].output[0] = "h"  # the source lacks the name, so it would be shortened
    m = onnx.load(str(p))
    assert compact.compacted(m, src) == 0
    assert "h_QuantizeLinear_Output" in {o for n in m.graph.node for o in n.output}
    assert not m.graph.value_info  # the stored shapes still go


def test_a_file_that_would_compute_otherwise_is_left_as_it_was(tmp_path, monkeypatch):
    prep, q, data = _quantized_conv(tmp_path, QuantSpec(), 16)
    raw = q.read_bytes()
    renamed = compact.compacted

    def wrong(model, source):  # a renaming that rewires: the first node's first input is another tensor's
        n = renamed(model, source)
        model.graph.node[0].input[1], model.graph.node[1].input[1] = (model.graph.node[1].input[1],
                                                                      model.graph.node[0].input[1])
        return n

    monkeypatch.setattr(compact, "compacted", wrong)
    assert compact.compact_file(q, prep, {"x": np.asarray(data.inputs["x"][:1])}) == {}
    assert q.read_bytes() == raw
    assert not list(tmp_path.glob("*.tmp"))
