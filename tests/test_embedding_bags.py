"""An EmbeddingBag over [N, L] bags exports as a Gather and a reduction instead of torch's Loop: the Loop's body
hid the table from INT8 quantization (a bag-of-tokens digits classifier's INT8 file was larger than FP32) and
took 35% of the FP32 run time."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from edgekit.artifact import TensorSpec
from edgekit.dataset import Dataset
from edgekit.source import SourceModel
from edgekit.stages.export import export_module


class Bag(nn.Module):
    def __init__(self, mode, padding_idx=None):
        super().__init__()
        self.bag = nn.EmbeddingBag(50, 8, mode=mode, padding_idx=padding_idx)
        self.fc = nn.Linear(8, 3)

    def forward(self, tokens):
        return self.fc(self.bag(tokens))


def _source(dtype="int64"):
    return SourceModel(spec="bag.py:build", kind="torch", task="classification",
                       inputs=[TensorSpec("tokens", ["batch", 6], dtype)], outputs=["y"],
                       dynamic_axes={"tokens": {0: "batch"}, "y": {0: "batch"}})


@pytest.mark.parametrize("mode,padding_idx", [("mean", None), ("sum", None), ("max", None), ("mean", 0), ("sum", 0),
                                              ("max", 0)])
def test_fixed_length_bags_export_without_a_loop(tmp_path, mode, padding_idx):
    torch.manual_seed(0)
    net = Bag(mode, padding_idx).eval()
    tokens = np.random.default_rng(0).integers(0, 50, size=(40, 6))
    tokens[:5, :4] = 0  # some padding, and with padding_idx 0 ...
    tokens[5] = 0  # ... a bag of padding only
    art = export_module(net, _source(), tmp_path / "m.onnx", data=Dataset({"tokens": tokens}))
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert "Loop" not in ops and "Gather" in ops, ops
    assert art.verify["max_abs_diff"] < 1e-5
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"tokens": tokens})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, net(torch.from_numpy(tokens)).numpy(), rtol=1e-5, atol=1e-6)
    assert "forward" not in vars(net.bag)  # the module is left as it was


class Offsets(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag, self.fc = nn.EmbeddingBag(50, 8, mode="mean"), nn.Linear(8, 3)

    def forward(self, tokens):
        n, length = tokens.shape
        return self.fc(self.bag(tokens.reshape(-1), torch.arange(0, n * length, length)))


def test_bags_given_by_offsets_keep_torchs_export(tmp_path):
    """What the rewrite does not cover (a flat input with offsets) is exported as before, and still checked
    against PyTorch."""
    torch.manual_seed(0)
    net = Offsets().eval()
    tokens = np.random.default_rng(1).integers(0, 50, size=(40, 6))
    art = export_module(net, _source(), tmp_path / "m.onnx", data=Dataset({"tokens": tokens}))
    assert art.verify["max_abs_diff"] < 1e-5
    assert "Loop" in [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]


def test_the_table_is_quantized_once_it_is_no_loop_body(tmp_path):
    from edgekit.quant import float_weights, static
    from edgekit.quant.spec import QuantSpec

    torch.manual_seed(0)
    tokens = np.random.default_rng(2).integers(0, 50, size=(64, 6))
    data = Dataset({"tokens": tokens})
    export_module(Bag("mean").eval(), _source(), tmp_path / "m.onnx", data=data)
    static.preprocess(tmp_path / "m.onnx", tmp_path / "prep.onnx")
    static.quantize(tmp_path / "prep.onnx", tmp_path / "q.onnx", data, QuantSpec(), calib_size=64,
                    input_names=["tokens"], use_cache=False)
    c = float_weights.census(tmp_path / "q.onnx")
    assert c["float"] == 0 and c["int8"] == 50 * 8 + 8 * 3, c
