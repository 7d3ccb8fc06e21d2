"""FP16 conversion keeps Resize's scales exact. onnxruntime's converter rounded a Constant-node scale of 0.8
to float16's 0.7998 (and cast it back), so a 20-pixel feature map came out 15 pixels wide instead of 16:
the model's next LayerNorm then refused the shape at run time."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgekit.quant import fp16


class Down(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale
        self.c = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return F.interpolate(torch.relu(self.c(x)), scale_factor=self.scale, mode="nearest")


@pytest.mark.parametrize("scale", [0.8, 1 / 3, 0.1])
def test_resize_scale_survives_fp16(tmp_path, scale):
    torch.manual_seed(0)
    src, dest = tmp_path / "m.onnx", tmp_path / "m.fp16.onnx"
    torch.onnx.export(Down(scale).eval(), (torch.zeros(1, 3, 20, 20),), str(src), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    assert any(n.op_type == "Constant" for n in onnx.load(str(src)).graph.node)  # the form that was rounded
    fp16.convert(src, dest)
    x = np.random.default_rng(0).uniform(size=(2, 3, 20, 20)).astype(np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref, got = run(src), run(dest)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert np.abs(got - ref).max() <= 2e-2 * np.abs(ref).max()
    m = onnx.load(str(dest))
    resize = next(n for n in m.graph.node if n.op_type == "Resize")
    inits = {i.name: i for i in m.graph.initializer}
    assert inits[resize.input[2]].data_type == onnx.TensorProto.FLOAT  # the scales themselves, no Cast
