import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from edgekit.artifact import TensorSpec
from edgekit.dataset import Dataset
from edgekit.errors import NumericsError
from edgekit.evaluate import Evaluator, score, with_drop
from edgekit.source import SourceModel
from edgekit.stages.export import export_module, verify_against_torch
from edgekit.verify import check_outputs


def _source(module, shape=(1, 8)):
    return SourceModel(spec="test", kind="torch", module=module, task="classification",
                       inputs=[TensorSpec("x", ["batch", *shape[1:]], "float32")], outputs=["y"],
                       dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})


def test_export_writes_checked_verified_artifact(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    src = _source(net)
    data = Dataset({"x": np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)})
    art = export_module(net, src, tmp_path / "model.fp32.onnx", data=data)
    onnx.checker.check_model(str(tmp_path / "model.fp32.onnx"))
    assert art.kind == "fp32" and art.params == 8 * 16 + 16 + 16 * 4 + 4
    assert art.inputs[0]["name"] == "x" and art.inputs[0]["shape"][1] == 8
    assert art.verify["max_abs_diff"] < 1e-5 and art.verify["n"] == 16
    assert art.bytes == (tmp_path / "model.fp32.onnx").stat().st_size and len(art.sha256) == 64
    # no temp files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp32.onnx"]


def test_numeric_mismatch_is_an_error(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 4)).eval()
    src = _source(net)
    data = Dataset({"x": np.ones((4, 8), np.float32)})
    export_module(net, src, tmp_path / "m.onnx", data=data)
    with torch.no_grad():
        net[0].bias += 1.0  # the torch model no longer matches the exported file
    with pytest.raises(NumericsError, match=r"m.onnx: outputs differ.*y: max\|diff\|"):
        verify_against_torch(net, src, tmp_path / "m.onnx", data, where="m.onnx")


class _PerCallScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x, scale):
        return self.fc(x) / scale  # [N, 2] / [N]: broadcasts at N == 2 (the export's batch) only


def test_a_model_that_fails_at_the_check_batch_is_a_data_error_naming_the_file(tmp_path):
    # it exported at batch 2 and failed at the check's 16: "internal error: RuntimeError", naming nothing
    from edgekit.errors import InputError

    torch.manual_seed(0)
    net = _PerCallScale().eval()
    src = SourceModel(spec="test", kind="torch", module=net, task="classification", outputs=["y"],
                      inputs=[TensorSpec("x", ["batch", 8], "float32"), TensorSpec("scale", ["batch"], "float32")],
                      dynamic_axes={"x": {0: "batch"}, "scale": {0: "batch"}, "y": {0: "batch"}})
    data = Dataset({"x": np.ones((20, 8), np.float32), "scale": np.full(20, 2.0, np.float32)}, None, "calib_t.npz")
    with pytest.raises(InputError, match=r"^calib_t.npz: forward\(\) failed on 16 samples \(x\[16, 8\], "
                                         r"scale\[16\]\): RuntimeError: .*one row per sample"):
        export_module(net, src, tmp_path / "m.onnx", data=data)
    assert not (tmp_path / "m.onnx").exists()


def test_check_outputs_collects_every_mismatch():
    ref = [np.zeros(3), np.zeros(2)]
    with pytest.raises(NumericsError) as e:
        check_outputs(ref, [np.ones(3), np.zeros(3)], ["a", "b"], atol=1e-3, rtol=0, where="w")
    assert "a: max|diff|" in str(e.value) and "b: shape" in str(e.value)


def test_scores():
    logits = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    assert score([logits], "classification", labels=np.array([0, 1, 1])) == pytest.approx(2 / 3)
    assert score([logits], "classification", reference=[logits]) == 1.0
    emb = np.array([[1, 0], [0, 1]], np.float32)
    assert score([emb], "embedding", reference=[np.array([[1, 0], [1, 0]], np.float32)]) == pytest.approx(0.5)
    m = with_drop({"name": "accuracy", "value": 0.9}, {"name": "accuracy", "value": 1.0})
    assert m["drop_abs"] == pytest.approx(0.1) and m["drop_rel"] == pytest.approx(0.1)


def test_evaluator_fidelity_without_labels(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 4)).eval()
    src = _source(net)
    data = Dataset({"x": np.random.default_rng(1).normal(size=(30, 8)).astype(np.float32)})
    export_module(net, src, tmp_path / "a.onnx", data=data)
    ev = Evaluator(data, "classification", tmp_path / "a.onnx", batch_size=7)
    r = ev(tmp_path / "a.onnx")
    # no batch-dependent op (dynamic INT8): scored at the evaluator's own batch, which the result records
    assert r == {"name": "top1_agreement", "value": 1.0, "n": 30, "data": "", "batch": 7}


def test_transformer_encoder_layer_exports(tmp_path):
    torch.manual_seed(0)
    net = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 1).eval()
    src = SourceModel(spec="enc", kind="torch", module=net, task="generic",
                      inputs=[TensorSpec("x", ["batch", 5, 16], "float32")], outputs=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    data = Dataset({"x": np.random.default_rng(0).normal(size=(4, 5, 16)).astype(np.float32)})
    art = export_module(net, src, tmp_path / "enc.onnx", data=data)
    assert art.verify["max_abs_diff"] < 1e-4


def test_parametrized_layers_export_baked_and_the_users_module_keeps_them(tmp_path):
    # spectral_norm's power iteration (aten::vdot) has no ONNX export: the run failed with
    # "UnsupportedOperatorError"; weight_norm exported its g * v / ||v|| into the graph
    from torch.nn.utils import parametrize
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm

    torch.manual_seed(0)
    net = nn.Sequential(weight_norm(nn.Linear(8, 16)), nn.ReLU(), spectral_norm(nn.Linear(16, 4)))
    with torch.no_grad():
        net(torch.randn(32, 8))  # a training-mode call runs spectral_norm's power iteration once
    net.eval()
    data = Dataset({"x": np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)})
    art = export_module(net, _source(net), tmp_path / "m.onnx", data=data)
    assert art.verify["max_abs_diff"] < 1e-5
    assert art.params == 8 * 16 + 16 + 16 * 4 + 4  # one weight per layer, not g and v
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert "ReduceL2" not in ops and "Div" not in ops, ops
    assert parametrize.is_parametrized(net[0]) and parametrize.is_parametrized(net[2])
    with torch.no_grad():
        assert net(torch.from_numpy(data.inputs["x"][:3])).shape == (3, 4)  # the user's module still runs


class _Packed(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(4, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h = self.gru(packed)
        return self.fc(h[-1])


def test_an_unexportable_call_in_forward_is_named_with_the_way_out(tmp_path):
    # the exporter's own words were a C++ "vector::_M_range_check" with nothing to act on
    from edgekit.errors import EdgekitError

    net = _Packed().eval()
    src = SourceModel(spec="packed.py:build", kind="torch", module=net, task="classification", outputs=["y"],
                      inputs=[TensorSpec("x", ["batch", 6, 4], "float32"), TensorSpec("lengths", ["batch"], "int64")],
                      dynamic_axes={"x": {0: "batch"}, "lengths": {0: "batch"}, "y": {0: "batch"}})
    data = Dataset({"x": np.ones((4, 6, 4), np.float32), "lengths": np.array([6, 3, 5, 2])})
    with pytest.raises(EdgekitError, match=r"ONNX export failed: .*forward\(\) calls pack_padded_sequence, which "
                                           r"torch's ONNX exporter cannot convert: run the RNN on the padded batch"):
        export_module(net, src, tmp_path / "m.onnx", data=data)
