"""An INT8 file whose weights are mostly still float says so, and why: `--quantize int8-dynamic` on a GRU
classifier wrote a file 0.1% smaller than FP32 with nothing said (onnxruntime has no INT8 GRU kernel)."""
import numpy as np
import torch
import torch.nn as nn

from edgekit.artifact import Artifact, Manifest
from edgekit.config import QuantizeConfig, Tolerance
from edgekit.context import RunContext
from edgekit.dataset import Dataset
from edgekit.evaluate import Evaluator
from edgekit.quant import float_weights
from edgekit.source import SourceModel
from edgekit.stages import quantize as stage


class Recurrent(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn = cell(6, 32, batch_first=True)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


def _onnx(tmp_path, cell):
    torch.manual_seed(0)
    net = Recurrent(cell).eval()
    path = tmp_path / f"{cell.__name__.lower()}.fp32.onnx"
    torch.onnx.export(net, (torch.randn(2, 5, 6),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    return path


def _run(tmp_path, path, cfg, shape=(64, 5, 6)):
    data = Dataset({"x": np.random.default_rng(0).normal(size=shape).astype(np.float32)})
    src = SourceModel(spec=str(path), kind="onnx", inputs=[], outputs=["y"], onnx_path=str(path))
    ev = Evaluator(Dataset(dict(data.inputs), None, "test"), "classification", path)
    parent = Artifact(kind="fp32", path=path.name)
    parent.metrics = ev(path)
    ctx = RunContext(outdir=tmp_path, source=src, manifest=Manifest(), calib=data, eval=data, evaluate=ev,
                     tolerance=Tolerance.parse("100%"))
    return stage.run(parent, ctx, cfg)


def test_dynamic_int8_of_a_gru_says_its_weights_stay_float(tmp_path):
    art = _run(tmp_path, _onnx(tmp_path, nn.GRU), QuantizeConfig(mode="int8-dynamic", tune=False, speed_gate=False))
    c = float_weights.census(tmp_path / art.path)
    assert c["int8"] == 32 * 4 and c["float_by_op"] == {"GRU": 3 * 32 * 6 + 3 * 32 * 32 + 2 * 3 * 32}, c
    said = [n for n in art.notes if n.startswith("most weights stay float")]
    assert len(said) == 1 and "GRU" in said[0] and "no INT8 GRU kernel" in said[0], art.notes


def test_static_int8_of_an_lstm_points_to_dynamic(tmp_path):
    art = _run(tmp_path, _onnx(tmp_path, nn.LSTM), QuantizeConfig(mode="int8", tune=False, speed_gate=False))
    said = [n for n in art.notes if n.startswith("most weights stay float")]
    assert len(said) == 1 and "LSTM" in said[0] and "--quantize int8-dynamic" in said[0], art.notes


def test_a_quantized_cnn_says_nothing(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    path = tmp_path / "cnn.fp32.onnx"
    torch.onnx.export(net, (torch.randn(2, 1, 8, 8),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    art = _run(tmp_path, path, QuantizeConfig(tune=False, speed_gate=False), shape=(64, 1, 8, 8))
    assert float_weights.census(tmp_path / art.path)["float"] == 0
    assert not [n for n in art.notes if n.startswith("most weights stay float")], art.notes


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag, self.fc = nn.EmbeddingBag(200, 16, mode="mean"), nn.Linear(16, 4)

    def forward(self, tokens):
        return self.fc(torch.relu(self.bag(tokens)))


def test_an_embedding_table_inside_a_loop_is_counted_and_named(tmp_path):
    """torch exports an EmbeddingBag as a Loop whose body reads the table: the INT8 file came out larger than
    FP32 with a note blaming quantization parameters on a model this small, while 99% of its weights (the
    table) stayed float where the quantizer does not go."""
    torch.manual_seed(0)
    path = tmp_path / "bag.fp32.onnx"
    torch.onnx.export(Bag().eval(), (torch.randint(0, 200, (2, 7)),), str(path), input_names=["tokens"],
                      output_names=["y"], dynamic_axes={"tokens": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    data = Dataset({"tokens": np.random.default_rng(0).integers(0, 200, size=(64, 7))})
    src = SourceModel(spec=str(path), kind="onnx", inputs=[], outputs=["y"], onnx_path=str(path))
    ev = Evaluator(Dataset(dict(data.inputs), None, "test"), "classification", path)
    parent = Artifact(kind="fp32", path=path.name)
    parent.metrics = ev(path)
    parent.refresh_file_facts(tmp_path)
    ctx = RunContext(outdir=tmp_path, source=src, manifest=Manifest(), calib=data, eval=data, evaluate=ev,
                     tolerance=Tolerance.parse("100%"))
    art = stage.run(parent, ctx, QuantizeConfig(tune=False, speed_gate=False))
    assert float_weights.census(tmp_path / art.path)["float_by_op"].get("Loop") == 200 * 16
    said = [n for n in art.notes if n.startswith("most weights stay float")]
    assert len(said) == 1 and "Loop" in said[0] and "EmbeddingBag" in said[0], art.notes
    larger = [n for n in art.notes if "larger than its parent" in n]
    assert larger and "most of its weights stay float" in larger[0], art.notes  # not "quantization parameters"
