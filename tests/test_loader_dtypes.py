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
