"""A first output whose rows have unit length is an L2-normalised embedding (a face or sentence embedder), not
class scores: guessed as classes, a MiniLM's dynamic INT8 scored 0.85 "top-1 agreement" (the argmax of an
embedding) where its cosine to FP32 was 0.991 (benchmarks/tasks/embedding_guess.py)."""
import json

import numpy as np
import pytest
import torch

from cliutil import run_cli
from edgekit.loader import unit_rows

MODEL_PY = '''
import torch.nn as nn
import torch.nn.functional as F


class Embedder(nn.Module):
    def __init__(self, softmax=False):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 32))
        self.softmax = softmax

    def forward(self, x):
        y = self.f(x)
        return F.softmax(y * 50, -1) if self.softmax else F.normalize(y, dim=-1)


def embedder():
    return Embedder().eval()


def confident_classifier():
    return Embedder(softmax=True).eval()
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("unit")
    (d / "m.py").write_text(MODEL_PY)
    ns = {}
    exec(MODEL_PY, ns)
    torch.manual_seed(0)
    model = ns["embedder"]()
    x = np.random.default_rng(0).normal(size=(64, 12)).astype(np.float32)
    np.save(d / "x.npy", x)
    torch.onnx.export(model, (torch.from_numpy(x[:2]),), str(d / "emb.onnx"), input_names=["x"],
                      output_names=["e"], dynamic_axes={"x": {0: "n"}, "e": {0: "n"}}, opset_version=17, dynamo=False)
    # torch's exporter leaves the normalised width symbolic; exporters that keep it (a sentence-transformers
    # MiniLM's [batch, 384]) make the output read as [N, C] class scores
    import onnx

    m = onnx.load(str(d / "emb.onnx"))
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 32
    onnx.save(m, str(d / "emb.onnx"))
    return d


def test_unit_rows_tells_embeddings_from_probabilities_and_logits():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(16, 32))
    assert unit_rows(v / np.linalg.norm(v, axis=1, keepdims=True)) == 16
    assert unit_rows(v) == 0  # logits
    one_hot = np.eye(32)[rng.integers(0, 32, 16)] * (1 - 1e-5) + 1e-5 / 32  # a confident softmax: unit length too
    assert unit_rows(one_hot) == 0
    half = v / np.linalg.norm(v, axis=1, keepdims=True)
    half[3] *= 0.5  # one row is not of unit length
    assert unit_rows(half) == 0
    assert unit_rows(None) == 0 and unit_rows(half[:1]) == 0


def test_an_onnx_embedder_is_scored_by_cosine_without_being_told(files, tmp_path, capsys):
    out = tmp_path / "q"
    rc = run_cli(["quantize", str(files / "emb.onnx"), "--calib", str(files / "x.npy"), "--mode", "fp16",
                  "-o", str(out)])
    err = " ".join(capsys.readouterr().err.split())
    assert rc in (0, None), err
    assert "its first output's rows have unit length on 16 samples of" in err and "taken as an L2-normalised" in err
    assert "taken as class scores" not in err
    man = json.loads((out / "manifest.json").read_text())
    assert (man["source"]["task"], man["source"]["task_from"]) == ("embedding", "first output rows of unit length")
    assert {a["metrics"]["name"] for a in man["artifacts"]} == {"cosine"}


def test_a_told_task_and_a_confident_softmax_stay_classes(files, tmp_path, capsys):
    rc = run_cli(["quantize", str(files / "emb.onnx"), "--calib", str(files / "x.npy"), "--mode", "fp16",
                  "--task", "classification", "-o", str(tmp_path / "told")])
    assert rc in (0, None)
    assert "unit length" not in capsys.readouterr().err
    man = json.loads((tmp_path / "told" / "manifest.json").read_text())
    assert man["source"]["task"] == "classification"
    # a PyTorch model whose softmax is near one-hot: rows of unit length, but probabilities
    rc = run_cli(["prune", f"{files / 'm.py'}:confident_classifier", "--calib", str(files / "x.npy"), "--ratio",
                  "0.25", "--no-distill", "-o", str(tmp_path / "soft")])
    err = capsys.readouterr().err
    assert rc in (0, None), err
    assert "unit length" not in err and "class scores" in err


def test_a_pytorch_embedder_is_pruned_and_distilled_as_one(files, tmp_path, capsys):
    rc = run_cli(["prune", f"{files / 'm.py'}:embedder", "--calib", str(files / "x.npy"), "--ratio", "0.25",
                  "--epochs", "1", "-o", str(tmp_path / "p")])
    err = " ".join(capsys.readouterr().err.split())
    assert rc in (0, None), err
    assert "taken as an L2-normalised embedding (scored by cosine similarity to FP32, distilled by it)" in err
    rec = json.loads((tmp_path / "p" / "pruning.json").read_text())
    assert rec["metric_name"] == "cosine"
