"""A BatchNorm1d after or before a Linear is folded into the Gemm at export (the exporter folds a Conv's only):
it ran as its own node in FP32, and in INT8 it stood between the Gemm and its ReLU."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from edgekit.artifact import TensorSpec
from edgekit.dataset import Dataset
from edgekit.source import SourceModel
from edgekit.stages import gemm_bn_fold
from edgekit.stages.export import export_module


def _trained_stats(net, x):
    """BatchNorms with running statistics and affine parameters far from their initial 1 / 0."""
    torch.manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.weight.data.uniform_(0.5, 2.0)
            m.bias.data.normal_()
    net.train()
    with torch.no_grad():
        for _ in range(20):
            net(x)
    return net.eval()


def _source(shape):
    return SourceModel(spec="tab.py:build", kind="torch", task="classification",
                       inputs=[TensorSpec("x", ["batch", *shape[1:]], "float32")], outputs=["y"],
                       dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})


def test_a_tabular_mlp_exports_without_batchnorm_nodes(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm1d(13), nn.Linear(13, 32), nn.BatchNorm1d(32), nn.ReLU(),
                        nn.Linear(32, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(256, 13) * 5 + 3  # raw features: the input BatchNorm has work to do
    net = _trained_stats(net, x)
    data = Dataset({"x": x.numpy()})
    art = export_module(net, _source((1, 13)), tmp_path / "m.onnx", data=data)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert "BatchNormalization" not in ops and ops.count("Gemm") == 3, ops
    assert art.verify["max_abs_diff"] < 1e-4  # checked against PyTorch, as every export is
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x[:7].numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x[:7]).numpy(), rtol=1e-4, atol=1e-4)
    assert art.params == sum(p.numel() for p in net.parameters())  # PyTorch's count, as before


def _gemm_bn_model(path, *, trans_b: int, alpha: float, beta: float, bias_shape, bn_first: bool,
                   extra_use: str | None = None):
    r = np.random.default_rng(3)
    k, n = 6, 5
    w = r.normal(size=(n, k) if trans_b else (k, n)).astype(np.float32)
    c = r.normal(size=bias_shape).astype(np.float32)
    f = k if bn_first else n
    bn_init = {"sc": r.uniform(0.5, 2, f), "bb": r.normal(size=f), "mu": r.normal(size=f), "var": r.uniform(0.1, 3, f)}
    inits = {"w": w, "c": c, **{key: v.astype(np.float32) for key, v in bn_init.items()}}
    gemm_in, gemm_out = ("b", "y") if bn_first else ("x", "h")
    nodes = [helper.make_node("Gemm", [gemm_in, "w", "c"], [gemm_out], "fc", transB=trans_b, alpha=alpha, beta=beta)]
    bn_io = (["x"], ["b"]) if bn_first else (["h"], ["y"])
    nodes.insert(0 if bn_first else 1, helper.make_node("BatchNormalization", bn_io[0] + ["sc", "bb", "mu", "var"],
                                                        bn_io[1], "bn", epsilon=1e-3))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", n])]
    if extra_use:  # the intermediate tensor is also read by another node
        nodes.append(helper.make_node("Relu", [extra_use], ["side"], "side"))
        outs.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", k])], outs,
                          [numpy_helper.from_array(v, key) for key, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})


@pytest.mark.parametrize("bn_first", [False, True], ids=["gemm-bn", "bn-gemm"])
@pytest.mark.parametrize("trans_b,alpha,beta,bias_shape", [(1, 1.0, 1.0, (5,)), (0, 0.7, 1.3, (1, 5)),
                                                            (1, 2.0, 0.5, ())])
def test_each_gemm_form_folds_to_the_same_function(tmp_path, bn_first, trans_b, alpha, beta, bias_shape):
    p = _gemm_bn_model(tmp_path / "m.onnx", trans_b=trans_b, alpha=alpha, beta=beta, bias_shape=bias_shape,
                       bn_first=bn_first)
    x = np.random.default_rng(4).normal(size=(9, 6)).astype(np.float32) * 3
    want = _run(p, x)[0]
    assert gemm_bn_fold.fold_file(p) == ["bn"]
    m = onnx.load(str(p))
    onnx.checker.check_model(m)
    assert [n.op_type for n in m.graph.node] == ["Gemm"]
    assert {i.name for i in m.graph.initializer} == set(m.graph.node[0].input[1:])  # the BN's tensors are gone
    np.testing.assert_allclose(_run(p, x)[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bn_first", [False, True], ids=["gemm-bn", "bn-gemm"])
def test_a_tensor_another_node_reads_is_not_folded_away(tmp_path, bn_first):
    p = _gemm_bn_model(tmp_path / "m.onnx", trans_b=1, alpha=1.0, beta=1.0, bias_shape=(5,), bn_first=bn_first,
                       extra_use="b" if bn_first else "h")
    before = p.read_bytes()
    assert gemm_bn_fold.fold_file(p) == []
    assert p.read_bytes() == before


def test_a_batchnorm_over_another_axis_than_the_linears_features_stays(tmp_path):
    """BatchNorm1d on [N, C, L] normalises axis 1; a Linear on it works on L: no per-feature fold exists."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(10, 8, bias=False), nn.Flatten(), nn.Linear(32, 3))
    x = torch.randn(64, 4, 10) * 2 + 1
    net = _trained_stats(net, x)
    art = export_module(net, _source((1, 4, 10)), tmp_path / "m.onnx", data=Dataset({"x": x.numpy()}))
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert "BatchNormalization" in ops and "MatMul" in ops, ops
    assert art.verify["max_abs_diff"] < 1e-4
