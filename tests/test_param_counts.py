"""An artifact's `params` counts learned weights only, the same for the FP32, FP16 and INT8 builds of one
network: BatchNorm running statistics, a Resize's scales and a non-persistent buffer are no parameters
(FP32 counted the BN statistics; FP16/INT8 counted the constants their converters made initializers)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgekit.artifact import TensorSpec
from edgekit.dataset import Dataset
from edgekit.onnxutil import graph_facts
from edgekit.quant import dynamic, fp16, static
from edgekit.quant.spec import QuantSpec
from edgekit.source import SourceModel
from edgekit.stages.export import export_module


class LinearBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 4)
        self.register_buffer("gain", torch.linspace(0.5, 1.5, 16), persistent=False)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x)) * self.gain))


class ConvResize(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.c2(F.interpolate(torch.relu(self.bn(self.c1(x))), scale_factor=2.0, mode="nearest"))


class Tokens(nn.Module):  # embedding, LayerNorm, a Linear on 3-d input (MatMul + a separate bias Add)
    def __init__(self):
        super().__init__()
        self.emb, self.ln, self.fc = nn.Embedding(20, 8), nn.LayerNorm(8), nn.Linear(8, 6)

    def forward(self, ids):
        return self.fc(self.ln(self.emb(ids)))


class Recurrent(nn.Module):  # dynamic INT8 turns the LSTM into com.microsoft DynamicQuantizeLSTM
    def __init__(self):
        super().__init__()
        self.lstm, self.fc = nn.LSTM(6, 12, batch_first=True), nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(self.lstm(x)[0][:, -1])


class EmbLinear(nn.Module):  # dynamic INT8 gathers uint8 rows straight into MatMulInteger
    def __init__(self):
        super().__init__()
        self.emb, self.fc = nn.Embedding(30, 8), nn.Linear(8, 4)
        self.pos = nn.Parameter(torch.randn(1, 5, 8) * 0.02)  # a learned positional embedding, added

    def forward(self, ids):
        return self.fc(self.emb(ids) + self.pos).mean(1)


def _export(net, name, dtype, shape, data, tmp_path):
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            # trained-like statistics: equal to weight/bias (a fresh BN) the exporter would share their tensors
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()
    src = SourceModel(spec="test", kind="torch", module=net, task="classification",
                      inputs=[TensorSpec("x", ["batch", *shape[1:]], dtype)], outputs=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    path = tmp_path / f"{name}.fp32.onnx"
    export_module(net, src, path, data=Dataset({"x": data}))
    return path


@pytest.mark.parametrize("name", ["linear_bn", "conv_resize", "tokens", "lstm", "emb_linear"])
def test_fp32_fp16_int8_count_the_same_learned_parameters(tmp_path, name):
    torch.manual_seed(0)
    r = np.random.default_rng(0)
    if name == "linear_bn":
        # export folds the BatchNorm1d into the Linear before it (stages/gemm_bn_fold.py): its scale+bias go
        net, shape, x = LinearBN(), (1, 8), r.normal(size=(16, 8)).astype(np.float32)
        want = sum(p.numel() for p in net.parameters()) - 2 * 16
        modes = ("int8", "int8-dynamic", "fp16")
    elif name == "conv_resize":
        net, shape, x = ConvResize(), (1, 3, 6, 6), r.normal(size=(16, 3, 6, 6)).astype(np.float32)
        want = sum(p.numel() for p in net.parameters()) - 2 * 8  # export folds the BN into c1: its scale+bias go
        modes = ("int8", "int8-dynamic", "fp16")
    elif name == "lstm":
        net, shape, x = Recurrent(), (1, 7, 6), r.normal(size=(16, 7, 6)).astype(np.float32)
        want = sum(p.numel() for p in net.parameters())
        modes = ("int8-dynamic", "fp16")
    else:
        net = Tokens() if name == "tokens" else EmbLinear()
        shape, x = (1, 5), r.integers(0, 20, size=(16, 5)).astype(np.int64)
        want = sum(p.numel() for p in net.parameters())
        modes = ("int8-dynamic", "fp16")
    src = _export(net, name, str(x.dtype), shape, x, tmp_path)
    got = {"fp32": graph_facts(src)["params"]}
    # onnxruntime's pre-processing (and the quantizer) turn Constant nodes into initializers: the Resize
    # scales and the non-persistent buffer then sit beside the weights
    src = _constants_to_initializers(src, tmp_path / f"{name}.prep.onnx")
    got["fp32-prep"] = graph_facts(src)["params"]
    for mode in modes:
        dest = tmp_path / f"{name}.{mode}.onnx"
        if mode == "int8":
            static.quantize(src, dest, Dataset({"x": x}), QuantSpec(), calib_size=16, input_names=["x"],
                            cache_root=tmp_path / "cache")
        elif mode == "int8-dynamic":
            dynamic.quantize(src, dest, QuantSpec(mode="int8-dynamic"))
        else:
            fp16.convert(src, dest)
        got[mode] = graph_facts(dest)["params"]
    assert got == {k: want for k in got}


def _constants_to_initializers(src, dest):
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src))
    keep = []
    for n in m.graph.node:
        value = next((a.t for a in n.attribute if a.name == "value"), None) if n.op_type == "Constant" else None
        if value is None:
            keep.append(n)
        else:
            m.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(value), n.output[0]))
    del m.graph.node[:]
    m.graph.node.extend(keep)
    onnx.save(m, str(dest))
    return dest


def test_only_constants_in_weight_slots_count(tmp_path):
    # the same 4-value constant as a Resize scale is no parameter, as a Conv bias it is
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    shape = numpy_helper.from_array(np.array([1, 4, 16], np.int64), "shape")
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="nearest"),
             helper.make_node("Conv", ["r", "w"], ["c"]),
             helper.make_node("Reshape", ["c", "shape"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16])], [w, scales, shape])
    from onnx.helper import make_model

    assert graph_facts_of(make_model(g), tmp_path) == 12


def graph_facts_of(model, tmp_path):
    import onnx

    p = tmp_path / "m.onnx"
    onnx.save(model, str(p))
    return graph_facts(p)["params"]


def test_fused_bert_counts_the_same_after_dynamic_int8(tmp_path):
    # zoo:minilm's path: attention and embedding fusion, then dynamic INT8 (QAttention, QEmbedLayerNormalization)
    from test_prune_models import TinyBert

    torch.manual_seed(0)
    net = TinyBert().eval()
    ids, mask = torch.randint(1, 64, (2, 10)), torch.ones(2, 10, dtype=torch.long)
    src = tmp_path / "b.onnx"
    torch.onnx.export(net, (ids, mask), str(src), input_names=["input_ids", "attention_mask"], output_names=["out"],
                      dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}}, dynamo=False)
    static.preprocess(src, tmp_path / "p.onnx")
    assert dynamic.fuse_transformer(tmp_path / "p.onnx", tmp_path / "f.onnx")
    dynamic.quantize(tmp_path / "f.onnx", tmp_path / "fq.onnx", QuantSpec(mode="int8-dynamic"))
    fused = graph_facts(tmp_path / "f.onnx")["params"]
    assert graph_facts(tmp_path / "fq.onnx")["params"] == fused > 0.9 * sum(p.numel() for p in net.parameters())
