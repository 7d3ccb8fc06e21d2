"""The input dtype a file.py model is exported with comes from the model, not from the data file."""
import textwrap

import numpy as np
import pytest

from edgekit.loader import load_python

MODELS = textwrap.dedent("""
    import torch.nn as nn

    def mlp():
        return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, ids):
            return self.fc(self.emb(ids).mean(1))

    def tokens():
        return Tokens()
""")


@pytest.fixture
def models(tmp_path):
    p = tmp_path / "models.py"
    p.write_text(MODELS)
    return str(p)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int32, np.uint8])
def test_float_model_takes_float32_whatever_the_data(models, dtype):
    # scikit-learn hands out float64; images often come as uint8
    src = load_python(models, "mlp", sample_inputs={"input": np.ones((5, 6), dtype=dtype)})
    assert [i.dtype for i in src.inputs] == ["float32"]


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_token_model_keeps_integer_ids(models, dtype):
    src = load_python(models, "tokens", sample_inputs={"ids": np.ones((5, 7), dtype=dtype)})
    assert [i.dtype for i in src.inputs] == ["int64"]


U8_MODELS = '''
import torch, torch.nn as nn

class Frames(nn.Module):
    def __init__(self):
        super().__init__()
        self.l = nn.Linear(6, 3)

    def forward(self, x):
        return self.l(x.float() / 255)

class Ids(nn.Module):
    def __init__(self):
        super().__init__()
        self.e = nn.Embedding(10, 4)

    def forward(self, ids):
        return self.e(ids).mean(1)

def frames():
    return Frames()

def ids():
    return Ids()
'''


def test_uint8_frames_stay_uint8_and_uint8_ids_widen_for_an_embedding(tmp_path):
    """uint8 camera frames were declared int64: the device had to widen every frame 8x to feed the model."""
    import onnxruntime as ort

    from edgekit.stages.export import export_module

    p = tmp_path / "u8models.py"
    p.write_text(U8_MODELS)
    frames = np.random.default_rng(0).integers(0, 256, size=(5, 6)).astype(np.uint8)
    src = load_python(str(p), "frames", sample_inputs={"x": frames})
    assert [i.dtype for i in src.inputs] == ["uint8"]
    export_module(src.module, src, tmp_path / "f.onnx")
    sess = ort.InferenceSession(str(tmp_path / "f.onnx"))
    assert sess.get_inputs()[0].type == "tensor(uint8)"
    import torch

    np.testing.assert_allclose(sess.run(None, {"x": frames})[0],
                               src.module(torch.from_numpy(frames)).detach().numpy(), atol=1e-5)
    src = load_python(str(p), "ids", sample_inputs={"ids": np.ones((5, 7), dtype=np.uint8)})
    assert [i.dtype for i in src.inputs] == ["int64"]


def test_int32_token_ids_exported_as_int64_are_noted(models, tmp_path):
    # the device model takes int64 ids; an application feeding its int32 ids got onnxruntime's type error
    from tests.test_quant_cli import _cli

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", ids=rng.integers(0, 20, (40, 7)).astype(np.int32))
    r = _cli("compress", f"{models}:tokens", "--calib", "calib.npz", "--no-profile", "--no-tune", "-o", "out",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "edgekit: note: input 'ids' is int64 in the ONNX model (the data is int32)" in r.stderr
    np.savez(tmp_path / "calib64.npz", ids=rng.integers(0, 20, (40, 7)))
    r = _cli("compress", f"{models}:tokens", "--calib", "calib64.npz", "--no-profile", "--no-tune", "-o", "out2",
             cwd=tmp_path)
    assert r.returncode == 0 and "in the ONNX model (the data is" not in r.stderr
