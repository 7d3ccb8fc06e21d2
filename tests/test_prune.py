"""Structured pruning of tiny models of each kind: the pruned model runs, exports, has the expected
(rounded) channel counts, finite outputs, and the layers that must be kept are untouched."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgekit.config import DistillConfig, PruneConfig
from edgekit.errors import InputError
from edgekit.onnxutil import session
from edgekit.pruning import graph, serialize
from edgekit.stages import prune as stage
from edgekit.stages.export import export_module
from test_prune_models import (TinyBert, TorchEncoder, depthwise_cnn, init_bn, make_ctx, make_source, mlp_bn,
                          residual_cnn)

NO_DISTILL = DistillConfig(enabled=False, epochs=0)


@pytest.fixture(autouse=True)
def one_thread():
    # the test machine is shared: one thread avoids OpenMP spin-waiting against other processes
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _prune(src, tmp_path, **kw):
    res = stage.run(src, make_ctx(src, tmp_path), PruneConfig(**kw), NO_DISTILL, distill_enabled=False)
    assert res.kind == "pruned"
    assert res.module is not src.module
    return res


def _export_and_run(res, src, tmp_path):
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder fast path has no ONNX export
    try:
        art = export_module(res.module, src, tmp_path / "p.onnx", kind="pruned", data=src.calib)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    assert art.verify["max_abs_diff"] < 1e-3
    feeds = src.eval.take(4).inputs
    out = session(tmp_path / "p.onnx").run(None, feeds)[0]
    assert np.isfinite(out).all()
    with torch.no_grad():
        ref = src.module(*[torch.from_numpy(feeds[s.name]) for s in src.inputs])
    assert out.shape == tuple(ref.shape)  # the output layer keeps its width
    return out


def test_residual_cnn_with_bn(tmp_path):
    model = init_bn(residual_cnn())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    src = make_source(model, {"input": ((3, 16, 16), "float32", None)})
    res = _prune(src, tmp_path, ratio=0.5, channel_multiple=8)
    m = res.module
    # the stem (first conv) and the residual stream it feeds are kept; the rest halves
    assert m[0].out_channels == 16 and m[3].conv2.out_channels == 16
    assert m[3].conv1.out_channels == 8 and m[3].bn1.num_features == 8
    assert m[4].out_channels == 16 and m[7].out_channels == 16 and m[-1].in_features == 16
    assert m[-1].out_features == 10
    assert res.info["channels"]["3.conv1"] == [16, 8]
    assert res.info["params_after"] < 0.5 * res.info["params_before"]
    assert res.info["macs_after"] < res.info["macs_before"]
    assert [s["step"] for s in res.info["steps"]] == [0, 1]
    assert all(s["latency_ms"] > 0 for s in res.info["steps"])
    # the user's module is untouched
    assert all(torch.equal(before[k], v) for k, v in src.module.state_dict().items())
    _export_and_run(res, src, tmp_path)


def test_rounding_multiple_is_respected(tmp_path):
    src = make_source(init_bn(residual_cnn()), {"input": ((3, 16, 16), "float32", None)})
    res = _prune(src, tmp_path, ratio=0.3, channel_multiple=16)
    for name, (before, after) in res.info["channels"].items():
        if after != before:
            assert after % 16 == 0, (name, after)
    assert res.info["channels"]["7"] == [32, 16]  # 32 * 0.7 = 22.4 -> rounded to 16


def test_depthwise_convs(tmp_path):
    src = make_source(init_bn(depthwise_cnn()), {"input": ((3, 16, 16), "float32", None)}, task="classification")
    res = _prune(src, tmp_path, ratio=0.5, method="bn", channel_multiple=8)
    m = res.module
    dws = [x for x in m.modules() if isinstance(x, nn.Conv2d) and x.groups > 1]
    assert dws and all(d.groups == d.in_channels == d.out_channels for d in dws)
    assert m[4].out_channels == 16 and m[8].out_channels == 24  # 32 -> 16, 48 -> 24
    assert dws[1].out_channels == 16  # follows the pointwise conv before it
    _export_and_run(res, src, tmp_path)


def test_mlp_with_batchnorm1d(tmp_path):
    src = make_source(init_bn(mlp_bn()), {"input": ((20,), "float32", None)})
    res = _prune(src, tmp_path, ratio=0.5, method="l2", channel_multiple=8)
    m = res.module
    assert (m[0].out_features, m[1].num_features, m[3].out_features, m[4].num_features) == (32, 32, 32, 32)
    assert m[6].out_features == 3
    _export_and_run(res, src, tmp_path)


def test_torch_transformer_encoder_ffn(tmp_path):
    src = make_source(TorchEncoder().eval(), {"input": ((6, 8), "float32", None)}, task="embedding")
    res = _prune(src, tmp_path, ratio=0.5, channel_multiple=8)
    layer = res.module.layer
    assert layer.linear1.out_features == 32 and layer.linear2.in_features == 32
    assert layer.self_attn.embed_dim == 32 and layer.linear2.out_features == 32  # residual width kept
    _export_and_run(res, src, tmp_path)


def test_bert_heads_and_ffn(tmp_path):
    torch.manual_seed(0)
    src = make_source(TinyBert().eval(), {"input_ids": ((10,), "int64", 64), "attention_mask": ((10,), "int64", 2)},
                      task="embedding")
    res = _prune(src, tmp_path, ratio=0.5, head_ratio=0.25, channel_multiple=8)
    for layer in res.module.bert.encoder.layer:
        att = layer.attention.self
        assert att.num_attention_heads == 3 and att.query.out_features == 24 == att.value.out_features
        assert layer.attention.output.dense.in_features == 24 and layer.attention.output.dense.out_features == 32
        assert layer.intermediate.dense.out_features == 32 and layer.output.dense.in_features == 32
    assert res.info["channels"]["bert.encoder.layer.0.attention.self.heads"] == [4, 3]
    _export_and_run(res, src, tmp_path)


def test_ignored_layers_untouched(tmp_path):
    model = init_bn(residual_cnn())
    src = make_source(model, {"input": ((3, 16, 16), "float32", None)})
    # "ignored" keeps a layer's outputs; keeping its producer too leaves it bit-identical
    res = _prune(src, tmp_path, ratio=0.5, ignore=("4", "7"))
    for i in (0, 4, 7, 12):
        assert torch.equal(res.module[i].weight, model[i].weight), i
    assert res.module[3].conv1.out_channels == 8  # the rest is still pruned
    assert any("7 (user)" in n for n in res.info["ignored"])
    with pytest.raises(InputError, match="no such module"):
        _prune(src, tmp_path, ratio=0.5, ignore=("nope",))


def test_taylor_importance_uses_gradients(tmp_path):
    labels = np.random.default_rng(0).integers(0, 10, 32)
    src = make_source(init_bn(residual_cnn()), {"input": ((3, 16, 16), "float32", None)}, labels=labels)
    res = _prune(src, tmp_path, ratio=0.5, method="taylor")
    assert any("cross-entropy with labels" in n for n in res.info["notes"])
    assert res.module[3].conv1.out_channels == 8


def test_saved_pruned_model_reloads_into_the_factory(tmp_path):
    src = make_source(init_bn(residual_cnn()), {"input": ((3, 16, 16), "float32", None)})
    res = _prune(src, tmp_path, ratio=0.5)
    serialize.save(res.module, tmp_path / "pruned.pt", spec="test:model")
    obj = torch.load(tmp_path / "pruned.pt", weights_only=True)  # plain tensors and numbers only
    again = serialize.apply(residual_cnn(), obj)
    x = torch.from_numpy(src.eval.take(4).inputs["input"])
    with torch.no_grad():
        assert torch.allclose(again(x), res.module(x), atol=1e-6)


def test_sparsity_modes(tmp_path):
    src = make_source(init_bn(mlp_bn()), {"input": ((20,), "float32", None)})
    ctx = make_ctx(src, tmp_path)
    res = stage.run(src, ctx, PruneConfig(sparsity="unstructured", ratio=0.6), NO_DISTILL, distill_enabled=False)
    assert res.kind == "sparse" and abs(res.info["sparsity"]["sparsity"] - 0.6) < 0.02
    assert res.module[0].weight.shape == src.module[0].weight.shape  # dense shapes, zeros inside
    assert torch.equal(res.module[6].weight, src.module[6].weight)  # output layer kept
    assert any("does not run them faster" in n for n in res.info["notes"])
    assert res.info["compressed_bytes_after"] < res.info["compressed_bytes_before"]
    res = stage.run(src, ctx, PruneConfig(sparsity="2:4"), NO_DISTILL, distill_enabled=False)
    w = res.module[3].weight.reshape(64, -1, 4)
    assert ((w == 0).sum(-1) >= 2).all()


def test_head_counts_helper_and_example_inputs():
    src = make_source(TinyBert().eval(), {"input_ids": ((10,), "int64", 64), "attention_mask": ((10,), "int64", 2)})
    ex = graph.example_inputs(src)
    assert [t.dtype for t in ex] == [torch.int64, torch.int64]
    counts = graph.channel_counts(src.module)
    assert counts["bert.encoder.layer.1.attention.self.heads"] == 4
