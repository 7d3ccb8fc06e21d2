"""Structured pruning of tiny models of each kind: the pruned model runs, exports, has the expected
(rounded) channel counts, finite outputs, and the layers that must be kept are untouched."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgekit.config import DistillConfig, PruneConfig
from edgekit.errors import InputError, UsageError
from edgekit.onnxutil import session
from edgekit.pruning import graph, importance, serialize
from edgekit.stages import prune as stage
from edgekit.stages.export import export_module
from test_prune_models import (MaskedEncoder, TinyBert, TorchEncoder, depthwise_cnn, init_bn, make_ctx, make_source, mlp_bn,
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
    assert res.info["channels"]["3.conv1"] == [16, 8, 0.5]
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
    changed = {k: v for k, v in res.info["channels"].items() if v[1] != v[0]}
    assert changed
    for name, (before, after, removed) in changed.items():
        assert after % 16 == 0, (name, after)  # asked for explicitly: never relaxed


@pytest.mark.parametrize("current,asked,multiple,keep", [
    (32, 10, 8, 24),  # the tester's case: 32 at 0.3 used to become 16
    (64, 20, 8, 48),
    (512, 154, 8, 360),  # big layers keep the full multiple
    (16, 5, 8, 12),  # one step of 8 is half the layer: multiples of 4
    (32, 16, 8, 16),
    (6, 2, 8, 4),  # narrower than the multiple
    (32, 0, 8, 32),
])
def test_rounded_keep_stays_near_the_asked_fraction(current, asked, multiple, keep):
    assert graph.rounded_keep(current, asked, multiple) == keep


@pytest.mark.parametrize("current,asked,keep", [(32, 10, 24), (32, 16, 16), (6, 2, 6), (40, 12, 32)])
def test_a_multiple_the_user_asked_for_is_kept_exactly(current, asked, keep):
    # --channel-multiple 8 is a promise about every pruned layer; only a default may be relaxed
    assert graph.rounded_keep(current, asked, graph.StrictMultiple(8)) == keep
    assert graph.rounded_keep(current, asked, graph.StrictMultiple(8)) % 8 == 0 or keep == current


def test_depthwise_convs(tmp_path):
    src = make_source(init_bn(depthwise_cnn()), {"input": ((3, 16, 16), "float32", None)}, task="classification")
    res = _prune(src, tmp_path, ratio=0.5, method="bn", channel_multiple=8)
    m = res.module
    dws = [x for x in m.modules() if isinstance(x, nn.Conv2d) and x.groups > 1]
    assert dws and all(d.groups == d.in_channels == d.out_channels for d in dws)
    assert m[4].out_channels == 16 and m[8].out_channels == 24  # 32 -> 16, 48 -> 24
    assert dws[1].out_channels == 16  # follows the pointwise conv before it
    _export_and_run(res, src, tmp_path)


class GroupNormCnn(nn.Module):
    """stem -> depthwise -> pointwise -> GroupNorm -> depthwise -> pointwise -> fc."""

    def __init__(self, groups=4):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.gn = nn.GroupNorm(groups, 32)
        self.dw2 = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw2 = nn.Conv2d(32, 32, 1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.gn(self.pw(self.dw(x))))
        return self.fc(torch.relu(self.pw2(self.dw2(x))).mean((2, 3)))


@pytest.mark.parametrize("multiple", [None, 8])
def test_groupnorm_channels_are_cut_per_group(multiple, tmp_path):
    # GroupNorm(4, 32) is cut the same share in each of its 4 groups, as BatchNorm would be cut;
    # it used to keep all 32 channels (and those of pw and dw2) at any ratio
    src = make_source(GroupNormCnn(), {"input": ((3, 8, 8), "float32", None)})
    res = _prune(src, tmp_path, ratio=0.9, channel_multiple=multiple)
    m = res.module
    assert m.pw.out_channels == m.gn.num_channels == m.dw2.out_channels == m.pw2.in_channels == 8
    assert m.gn.num_groups == 4 and m.gn.weight.shape == (8,)
    assert not any(n.startswith("pruning removed") for n in res.info["notes"])
    _export_and_run(res, src, tmp_path)


def test_groupnorm_that_cannot_shrink_is_named(tmp_path, capsys):
    # one channel per group: nothing in the group can go, and the note says so instead of blaming
    # the (small) stem and output layer
    src = make_source(GroupNormCnn(groups=32), {"input": ((3, 8, 8), "float32", None)})
    res = _prune(src, tmp_path, ratio=0.9)
    assert res.module.pw.out_channels == 32
    note = next(n for n in res.info["notes"] if n.startswith("pruning removed"))
    assert "pw (Conv2d, 544 params)" in note and "stem (Conv2d, 448 params; first conv)" in note
    assert "gn (GroupNorm with 32 groups of one channel" in note
    assert "most of the model" not in note
    assert note in capsys.readouterr().err


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


def test_encoder_with_padding_mask_prunes_and_leaves_the_fast_path_as_it_was(tmp_path):
    # with a padding mask in eval mode, torch runs nn.TransformerEncoder on nested tensors, which
    # Torch-Pruning's MAC counter could not size ("NestedTensorImpl doesn't support sizes")
    torch.manual_seed(0)
    src = make_source(MaskedEncoder().eval(), {"input": ((6, 8), "float32", None),
                                               "attention_mask": ((6,), "int64", 2)}, task="embedding")
    assert torch.backends.mha.get_fastpath_enabled()
    res = _prune(src, tmp_path, ratio=0.5, channel_multiple=8)
    assert torch.backends.mha.get_fastpath_enabled()  # restored for the user's process
    assert res.module.enc.layers[0].linear1.out_features == 32
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
    assert res.info["channels"]["bert.encoder.layer.0.attention.self.heads"] == [4, 3, 0.25]
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
    with pytest.raises(UsageError, match=r"--ratio 0.3 does not apply to 2:4 sparsity"):  # it was ignored silently
        stage.run(src, ctx, PruneConfig(sparsity="2:4", ratio=0.3), NO_DISTILL, distill_enabled=False)
    with pytest.raises(UsageError, match=r"--head-ratio 0.3 does not apply to --sparsity"):
        stage.run(src, ctx, PruneConfig(sparsity="2:4", head_ratio=0.3), NO_DISTILL, distill_enabled=False)


def test_two_four_groups_run_along_input_channels(tmp_path):
    # sparse tensor cores group 4 input channels at one kernel position (NHWC GEMM); groups of the flattened
    # in x kh x kw axis mixed kernel positions of one channel
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    src = make_source(model.eval(), {"input": ((3, 8, 8), "float32", None)})
    res = stage.run(src, make_ctx(src, tmp_path), PruneConfig(sparsity="2:4"), NO_DISTILL, distill_enabled=False)
    w = res.module[2].weight  # [16, 8, 3, 3]
    groups = w.permute(0, 2, 3, 1).reshape(16, 3, 3, 2, 4)  # 4 input channels at each kernel position
    assert ((groups == 0).sum(-1) == 2).all()
    assert torch.equal(res.module[0].weight, src.module[0].weight)  # 3 input channels: not applicable


def test_head_counts_helper_and_example_inputs():
    src = make_source(TinyBert().eval(), {"input_ids": ((10,), "int64", 64), "attention_mask": ((10,), "int64", 2)})
    ex = graph.example_inputs(src)
    assert [t.dtype for t in ex] == [torch.int64, torch.int64]
    counts = graph.channel_counts(src.module)
    assert counts["bert.encoder.layer.1.attention.self.heads"] == 4


# ---------------------------------------------------------------- recurrent layers and several outputs

class Recurrent(nn.Module):
    """An optional Linear in front of an RNN/GRU/LSTM, a classifier on its last step or its final state."""

    def __init__(self, cell, layers=1, pre=False, from_state=False, bidirectional=False):
        super().__init__()
        self.pre = nn.Linear(8, 16) if pre else None
        self.rnn = cell(16 if pre else 8, 32, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(64 if bidirectional else 32, 4)
        self.from_state = from_state

    def forward(self, x):
        if self.pre is not None:
            x = torch.relu(self.pre(x))
        out, state = self.rnn(x)
        if self.from_state:
            h = state[0] if isinstance(state, tuple) else state
            return self.fc(h[-1])
        return self.fc(out[:, -1])


def _kill_units(model, units, inputs=()):
    """Make hidden units (and outputs of `pre`) contribute exactly nothing: then pruning them,
    and only them, leaves the outputs bit-for-bit the same, which checks every index mapping."""
    rnn, h = model.rnn, model.rnn.hidden_size
    g = {nn.LSTM: 4, nn.GRU: 3}.get(type(rnn), 1)
    rows = [u + k * h for u in units for k in range(g)]
    with torch.no_grad():
        for k in range(rnn.num_layers):
            for name in (f"weight_ih_l{k}", f"weight_hh_l{k}", f"bias_ih_l{k}", f"bias_hh_l{k}"):
                getattr(rnn, name)[rows] = 0
            getattr(rnn, f"weight_hh_l{k}")[:, units] = 0
            if k:
                getattr(rnn, f"weight_ih_l{k}")[:, units] = 0
        model.fc.weight[:, units] = 0
        if inputs:
            model.pre.weight[list(inputs)] = 0
            model.pre.bias[list(inputs)] = 0
    return model


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("layers,pre,from_state", [(1, False, False), (2, True, False), (1, True, True)])
def test_recurrent_hidden_units_pruned_exactly(cell, layers, pre, from_state):
    torch.manual_seed(0)
    model = Recurrent(cell, layers, pre, from_state).eval()
    dead = [1, 5, 9, 12, 18, 22, 27, 30]  # 8 of 32: what ratio 0.25 removes
    _kill_units(model, dead, inputs=[0, 3, 7, 11] if pre else ())
    x = torch.randn(3, 7, 8)
    with torch.no_grad():
        ref = model(x)
    plan = graph.make_plan(model, (x,))
    pruner = graph.make_pruner(model, (x,), plan, importance.make("l2", model)[0], ratio=0.25, round_to=8)
    graph.step(pruner, plan)
    assert model.rnn.hidden_size == 24 and model.fc.in_features == 24
    assert model.rnn.weight_hh_l0.shape == ({nn.LSTM: 4, nn.GRU: 3}.get(cell, 1) * 24, 24)
    if pre:
        assert model.pre.out_features == model.rnn.input_size == 12
    with torch.no_grad():
        got = model(x)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_recurrent_classifier_through_the_stage(cell, tmp_path):
    # the tester's models: Torch-Pruning's LSTM pruner raised IndexError; a GRU was left as it was
    torch.manual_seed(0)
    src = make_source(Recurrent(cell), {"input": ((20, 8), "float32", None)})
    res = _prune(src, tmp_path, ratio=0.3, channel_multiple=8)
    assert res.info["channels"]["rnn"] == [32, 24, 0.25]
    assert res.info["params_after"] < res.info["params_before"]
    _export_and_run(res, src, tmp_path)
    # the saved structure reloads: an RNN reads its weights through _flat_weights, not its parameters
    serialize.save(res.module, tmp_path / "pruned.pt", spec="test:model")
    again = serialize.apply(Recurrent(cell), torch.load(tmp_path / "pruned.pt", weights_only=True))
    x = torch.from_numpy(src.eval.take(4).inputs["input"])
    with torch.no_grad():
        assert torch.allclose(again(x), res.module(x), atol=1e-6)


def test_bidirectional_rnn_kept_with_what_feeds_it(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = nn.Linear(8, 16)
            self.rnn = nn.GRU(16, 32, batch_first=True, bidirectional=True)
            self.mid = nn.Linear(64, 32)
            self.fc = nn.Linear(32, 4)

        def forward(self, x):
            out, _ = self.rnn(torch.relu(self.pre(x)))
            return self.fc(torch.relu(self.mid(out[:, -1])))

    torch.manual_seed(0)
    src = make_source(Net(), {"input": ((10, 8), "float32", None)})
    res = _prune(src, tmp_path, ratio=0.5, channel_multiple=8)
    m = res.module
    assert (m.pre.out_features, m.rnn.input_size, m.rnn.hidden_size, m.mid.in_features) == (16, 16, 32, 64)
    assert m.mid.out_features == 16 and m.fc.in_features == 16  # what is not coupled to the GRU is cut
    assert any("bidirectional" in n for n in res.info["ignored"])
    _export_and_run(res, src, tmp_path)


def test_nothing_prunable_is_said_not_exported(tmp_path):
    # a bidirectional GRU feeding the output layer: a "pruned" copy of the same model would be
    # misleading, so the stage refuses with the reason
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(8, 32, batch_first=True, bidirectional=True)
            self.fc = nn.Linear(64, 4)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1])

    src = make_source(Net(), {"input": ((10, 8), "float32", None)})
    with pytest.raises(UsageError, match=r"nothing in this model can be pruned: kept: fc \(output layer\), "
                                         r"rnn \(GRU, bidirectional"):
        stage.run(src, make_ctx(src, tmp_path), PruneConfig(ratio=0.3), NO_DISTILL, distill_enabled=False)


def test_small_removal_is_noted(tmp_path, capsys):
    # most parameters sit in the (kept) stem: the record and stderr say how little went
    model = nn.Sequential(nn.Conv2d(3, 64, 7, padding=3), nn.ReLU(), nn.Conv2d(64, 8, 1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    src = make_source(model, {"input": ((3, 8, 8), "float32", None)})
    res = _prune(src, tmp_path, ratio=0.5, channel_multiple=4)
    assert res.info["channels"]["2"] == [8, 4, 0.5]
    note = next(n for n in res.info["notes"] if n.startswith("pruning removed"))
    # the stem holds them and is named with its size; the output layer lost inputs, so it is not named
    assert "at ratio 0.5" in note and "most parameters are in layers pruning left whole: 0 (Conv2d, 9,472 params; " \
        "first conv)" in note and "6 (" not in note
    assert note in capsys.readouterr().err


class TwoHeads(nn.Module):
    """A shared body and two heads; `form` is how forward() returns them."""

    def __init__(self, form="tuple"):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
        self.cls = nn.Linear(32, 3)
        self.aux = nn.Linear(32, 5)
        self.form = form

    def forward(self, x):
        h = self.body(x)
        if self.form == "aux-first":  # the last layer called is not the first output
            b = self.aux(h)
            return self.cls(h), b
        a, b = self.cls(h), self.aux(h)
        return {"tuple": (a, b), "dict": {"cls": a, "aux": b}, "nested": (a, [b])}[self.form]


def _shapes(out):
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    return [s for v in (out.values() if isinstance(out, dict) else out) for s in _shapes(v)]


@pytest.mark.parametrize("form", ["tuple", "aux-first"])
def test_every_output_traced_and_every_head_kept(form, tmp_path):
    # the tester's case: the body was cut for the first head only, the second failed on 16 vs 32
    torch.manual_seed(0)
    src = make_source(TwoHeads(form), {"input": ((13,), "float32", None)})
    x = torch.from_numpy(src.eval.take(4).inputs["input"])
    with torch.no_grad():
        before = _shapes(src.module(x))
    res = _prune(src, tmp_path, ratio=0.5, channel_multiple=8)
    m = res.module
    assert m.body[2].out_features == 16
    assert m.cls.in_features == m.aux.in_features == 16  # the second head follows the body
    assert (m.cls.out_features, m.aux.out_features) == (3, 5)
    assert {"cls (output layer)", "aux (output layer)"} <= set(res.info["ignored"])
    with torch.no_grad():
        assert _shapes(m(x)) == before


@pytest.mark.parametrize("form", ["dict", "nested"])
def test_outputs_in_dicts_and_nested_lists(form):
    torch.manual_seed(0)
    model = TwoHeads(form).eval()
    x = torch.randn(4, 13)
    with torch.no_grad():
        before = _shapes(model(x))
    plan = graph.make_plan(model, (x,))
    graph.step(graph.make_pruner(model, (x,), plan, importance.make("l2", model)[0], ratio=0.5, round_to=8), plan)
    assert model.cls.in_features == model.aux.in_features == model.body[2].out_features == 16
    with torch.no_grad():
        assert _shapes(model(x)) == before


def test_layernorm_over_channels_and_space_is_a_one_line_refusal(tmp_path):
    from edgekit.errors import UsageError

    # the conv's channels run through the LayerNorm: pruning them must resize a [C, H, W] norm
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.LayerNorm([16, 8, 8]), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    src = make_source(model, {"input": ((3, 8, 8), "float32", None)})
    with pytest.raises(UsageError, match=r"LayerNorm '1' normalises over \[16, 8, 8\]") as e:
        _prune(src, tmp_path, ratio=0.3)
    assert "\n" not in str(e.value)


def test_a_layernorm_over_channels_and_space_keeps_its_conv_and_the_first_conv_is_cut_instead(tmp_path, capsys):
    # the second conv is held by the norm; with the first conv's width kept this was refused as well
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                          nn.LayerNorm([16, 8, 8]), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    src = make_source(model, {"input": ((3, 8, 8), "float32", None)})
    res = _prune(src, tmp_path, ratio=0.5)
    assert res.module[0].out_channels == 8 and res.module[2].out_channels == 16
    assert any(k.startswith("2 (") and "LayerNorm '3' normalises over [16, 8, 8]" in k for k in res.info["ignored"])
    assert "with the first conv's width kept, nothing could be pruned (kept: 0 (first conv), " in capsys.readouterr().err
    _export_and_run(res, src, tmp_path)


class MixerBlock(nn.Module):
    def __init__(self, tokens, dim):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.tok = nn.Sequential(nn.Linear(tokens, 32), nn.GELU(), nn.Linear(32, tokens))
        self.ch = nn.Sequential(nn.Linear(dim, 64), nn.GELU(), nn.Linear(64, dim))

    def forward(self, x):
        x = x + self.tok(self.n1(x).transpose(1, 2)).transpose(1, 2)  # mixes tokens, not channels
        return x + self.ch(self.n2(x))


class Mixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.pre = nn.Conv2d(1, 4, 1)
        self.stem = nn.Conv2d(4, 32, 2, 2)
        self.blocks = nn.Sequential(MixerBlock(16, 32), MixerBlock(16, 32))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(self.pre(x)).flatten(2).transpose(1, 2)
        return self.head(self.blocks(x).mean(1))


def test_mlp_mixer_prunes_what_it_can(tmp_path):
    # Torch-Pruning couples the residual stream's 32 channels with the token-mixing Linear over 16
    # tokens (through the transpose) and failed with "index 16 is out of bounds": that group is kept
    # whole and named, the channel- and token-mixing hidden layers are still cut
    torch.manual_seed(0)
    src = make_source(Mixer(), {"input": ((1, 8, 8), "float32", None)})
    res = _prune(src, tmp_path, ratio=0.5)
    m = res.module
    assert m.stem.out_channels == 32 and m.blocks[0].ch[2].out_features == 32
    assert m.blocks[0].ch[0].out_features < 64 and m.blocks[1].tok[0].out_features < 32
    assert any("a transpose or reshape pruning cannot follow" in n for n in res.info["ignored"])
    _export_and_run(res, src, tmp_path)


class ImageAndMeta(nn.Module):
    """An image branch's flattened features concatenated with a metadata Linear's: Torch-Pruning sizes the
    torch.cat's parts before the flatten (8 channels, not 128) and couples the metadata Linear's 16 outputs
    with the first conv's channels, 18 indices into 16."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten())
        self.meta = nn.Linear(8, 16)
        self.hidden, self.fc = nn.Linear(8 * 16 + 16, 64), nn.Linear(64, 10)

    def forward(self, image, meta):
        h = torch.cat([self.conv(image), torch.relu(self.meta(meta))], 1)
        return self.fc(torch.relu(self.hidden(h)))


def test_a_concatenation_pruning_cannot_follow_is_named_and_the_rest_pruned(tmp_path):
    # the group holding the first conv was skipped whole, so the metadata Linear kept its width with no
    # reason given ("nothing in this model can be pruned: kept: conv.0 (first conv), fc (output layer)"
    # when there was no hidden layer)
    torch.manual_seed(0)
    src = make_source(ImageAndMeta(), {"image": ((1, 8, 8), "float32", None), "meta": ((8,), "float32", None)})
    res = _prune(src, tmp_path, ratio=0.5)
    m = res.module
    assert m.meta.out_features == 16 and m.conv[0].out_channels == 8
    assert m.hidden.out_features < 64
    said = [n for n in res.info["ignored"] if n.startswith("meta ")]
    assert len(said) == 1 and "torch.cat" in said[0], res.info["ignored"]
    _export_and_run(res, src, tmp_path)


class ResidualOnStem(nn.Module):
    """c2 adds onto the first conv's output and dw is depthwise over that sum: all tied to the kept stem."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.c3 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = torch.relu(self.b1(self.c1(x)))
        h = torch.relu(h + self.b2(self.c2(h)))
        return self.fc(torch.relu(self.c3(torch.relu(self.dw(h)))).mean((2, 3)))


def test_layers_held_whole_by_a_kept_layer_are_named(tmp_path, capsys):
    # "ratio 0.5" with only c3 cut (31% of parameters, above the old threshold): no note said that c2 and
    # dw were held at full width by the kept first conv through the residual add
    src = make_source(init_bn(ResidualOnStem()), {"input": ((3, 8, 8), "float32", None)})
    res = _prune(src, tmp_path, ratio=0.5, channel_multiple=4)
    assert res.info["channels"]["c3"][:2] == [32, 16]
    note = next(n for n in res.info["notes"] if n.startswith("pruning removed"))
    for name in ("c2", "dw"):
        assert f"{name} (Conv2d, " in note and "tied to a layer kept whole" in note, note
    assert "c1 (Conv2d, 448 params; first conv)" in note
    assert note in capsys.readouterr().err


class TCN(nn.Module):
    """A temporal conv net: every dilated block adds onto the first conv's output, so each channel of the
    network is coupled to the first conv's."""

    def __init__(self):
        super().__init__()
        self.c = nn.ModuleList([nn.Conv1d(8 if i == 0 else 32, 32, 3, padding=d, dilation=d)
                                for i, d in enumerate((1, 2, 4))])
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        for i, c in enumerate(self.c):
            y = torch.relu(c(x))
            x = y if i == 0 else x + y
        return self.fc(x.mean(-1))


def test_a_network_coupled_whole_to_its_first_conv_is_pruned_through_it(tmp_path, capsys):
    # was "nothing in this model can be pruned: kept: c.0 (first conv), fc (output layer)": keeping the first
    # conv's width is a choice, and here it was the only thing in the way
    torch.manual_seed(0)
    src = make_source(TCN().eval(), {"input": ((8, 16), "float32", None)}, n=48)
    res = stage.run(src, make_ctx(src, tmp_path), PruneConfig(ratio=0.5),
                    DistillConfig(epochs=2, batch_size=16, patience=0), distill_enabled=True)
    assert "nothing could be pruned (kept: c.0 (first conv), fc (output layer)): its output channels are pruned" \
        in capsys.readouterr().err
    assert res.kind == "distilled" and res.info["distill"]["feature_layers"] == ["c.0", "c.1", "c.2"]
    assert [res.module.c[i].out_channels for i in range(3)] == [16, 16, 16] and res.module.c[0].in_channels == 8
    assert not any("first conv" in k for k in res.info["ignored"]), res.info["ignored"]
    _export_and_run(res, src, tmp_path)

