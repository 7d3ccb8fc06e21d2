"""Dynamic INT8 candidates with the residual Adds before LayerNormalization written as Sum."""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from edgekit.quant import layernorm
from edgekit.quant.spec import QuantSpec
from edgekit.quant.tuning import Tuner
from profile_models import _save


def residual_block(path, *, extra_user=False):
    """y = LayerNorm(x @ w + x): the post-attention residual of a BERT layer, on [1, 4, 8]."""
    r = np.random.default_rng(0)
    inits = {"w": r.normal(size=(8, 8)).astype(np.float32), "g": r.uniform(0.5, 1.5, 8).astype(np.float32),
             "b": r.normal(size=8).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], "mm"),
             helper.make_node("Add", ["h", "x"], ["s"], "residual"),
             helper.make_node("LayerNormalization", ["s", "g", "b"], ["y"], "ln", axis=-1, epsilon=1e-5)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])]
    if extra_user:  # the sum is also read elsewhere: not a SkipLayerNormalization pattern
        nodes.append(helper.make_node("Relu", ["s"], ["z"], "other"))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8]))
    return Path(_save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])], outputs, path))


def _optimized_ops(path, tmp_path):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_the_residual_add_becomes_a_sum_that_onnxruntime_does_not_fuse(tmp_path):
    p = residual_block(tmp_path / "m.onnx")
    x = np.random.default_rng(1).normal(size=(1, 4, 8)).astype(np.float32)
    before = _run(p, x)
    assert "SkipLayerNormalization" in _optimized_ops(p, tmp_path)  # what the rewrite is for
    assert layernorm.residual_adds_as_sum(p) == 1
    assert [n.op_type for n in onnx.load(str(p)).graph.node] == ["MatMul", "Sum", "LayerNormalization"]
    assert "SkipLayerNormalization" not in _optimized_ops(p, tmp_path)
    np.testing.assert_allclose(_run(p, x), before, rtol=1e-5, atol=1e-5)
    assert not list(tmp_path.glob("*.tmp"))


def test_an_add_read_by_more_than_the_layernorm_is_left_alone(tmp_path):
    p = residual_block(tmp_path / "m.onnx", extra_user=True)
    data = p.read_bytes()
    assert layernorm.residual_adds_as_sum(p) == 0
    assert p.read_bytes() == data


def test_the_transformer_grid_tries_the_fused_candidate_with_plain_layernorm():
    t = Tuner.__new__(Tuner)
    specs = t.grid(QuantSpec(), pinned=set(), transformer_like=True)
    plain = [s for s in specs if s.plain_layernorm]
    assert plain == [QuantSpec(mode="int8-dynamic", per_channel=True, fuse_transformer=True, plain_layernorm=True)]
    assert plain[0].name() == "dynamic per-channel fused plain-layernorm"
    pinned = t.grid(QuantSpec(mode="int8-dynamic"), pinned={"mode"}, transformer_like=True)
    assert any(s.plain_layernorm and s.fuse_transformer for s in pinned)
    assert not any(s.plain_layernorm for s in t.grid(QuantSpec(), pinned=set(), transformer_like=False))
