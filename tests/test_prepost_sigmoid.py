"""sigmoid_threshold: the post step of a multi-label model (a yes/no per class), so the device gets the same
decisions edgekit scored (multilabel.decisions: a logit above 0, a probability above 0.5). There was no such
step: a multi-label bundle could only ship its raw logits, or softmax_topk, which ranks classes that are not
exclusive."""
import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from cliutil import run_cli
from edgekit import multilabel
from edgekit import prepost as pp
from edgekit.prepost import Pipeline, PrepostError, validate_spec

BACKENDS = ["numpy", "numba"] if pp.HAVE_NUMBA else ["numpy"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_decisions_are_the_logit_test_edgekit_scores_by(backend):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 37)) * 6).astype(np.float32)
    x[0, :4] = [1e-9, -1e-9, 200.0, -200.0]  # a sigmoid rounds 1e-9 to 0.5: the logit decides
    probs, on = pp.sigmoid_threshold(x, backend=backend)
    assert on.dtype == np.bool_ and probs.dtype == np.float32 and probs.shape == x.shape
    np.testing.assert_array_equal(on, multilabel.decisions(x))
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-x.astype(np.float64))), rtol=1e-6, atol=1e-7)
    assert probs[0, 2] == 1.0 and probs[0, 3] == 0.0
    # another threshold: probability above 0.8, as 1 / (1 + exp(-x)) > 0.8 reads it
    _, on8 = pp.sigmoid_threshold(x, 0.8, backend=backend)
    np.testing.assert_array_equal(on8, x > np.log(4.0))
    # one sample: (C,) in, (C,) out
    p1, on1 = pp.sigmoid_threshold(x[3], backend=backend)
    np.testing.assert_array_equal(on1, on[3])
    np.testing.assert_array_equal(p1, probs[3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_model_that_gives_probabilities_is_cut_as_edgekit_cuts_them(backend):
    p = np.random.default_rng(1).random((20, 5)).astype(np.float32)
    probs, on = pp.sigmoid_threshold(p, probabilities=True, backend=backend)
    np.testing.assert_array_equal(probs, p)
    np.testing.assert_array_equal(on, multilabel.decisions(p))
    with pytest.raises(PrepostError, match=r"scores: probabilities must lie in \[0, 1\]"):
        pp.sigmoid_threshold(p * 3 - 1, probabilities=True, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_is_refused(backend):
    x = np.zeros((3, 4), np.float32)
    x[2, 1] = np.nan
    with pytest.raises(PrepostError, match="scores: contains NaN"):
        pp.sigmoid_threshold(x, backend=backend)


@pytest.mark.parametrize("threshold", [0.0, 1.0, 1.5, -0.1, float("nan"), "half", True])
def test_a_threshold_outside_0_1_is_refused_when_the_spec_is_read(threshold):
    with pytest.raises(PrepostError, match="threshold"):
        validate_spec({"post": [{"op": "sigmoid_threshold", "threshold": threshold}]})


def test_it_is_a_post_step_of_the_registry():
    pipe = Pipeline({"post": [{"op": "sigmoid_threshold", "threshold": 0.3}]})
    x = np.array([[-1.0, 0.0, 2.0]], np.float32)
    out = pipe.postprocess([x], names=["logits"])
    assert out["labels"].tolist() == [[False, True, True]]  # sigmoid(-1) = 0.27, sigmoid(0) = 0.5
    with pytest.raises(PrepostError):
        validate_spec({"pre": [{"op": "sigmoid_threshold"}]})


MODEL_PY = '''
import torch
import torch.nn as nn


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
'''


def test_a_multi_label_bundle_gives_the_device_the_decisions_edgekit_scored(tmp_path, capsys):
    from edgekit.flash.bundle import build_bundle, read_bundle

    (tmp_path / "m.py").write_text(MODEL_PY)
    x = np.random.default_rng(2).normal(size=(60, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    spec = json.dumps({"post": [{"op": "sigmoid_threshold"}]})
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{tmp_path / 'm.py'}:net", "--calib", str(tmp_path / "x.npy"), "--task", "multi-label",
                  "--quantize", "none", "--no-profile", "--preprocess", spec, "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    build_bundle(out, tmp_path / "m.ekb", artifact="fp32")
    root = read_bundle(tmp_path / "m.ekb", tmp_path).root
    np.savez(tmp_path / "in.npz", **{"input": x})
    r = subprocess.run([sys.executable, "-s", "-E", str(root / "edgekit_runner.py"), "run", "--bundle", str(root),
                        "--inputs", str(tmp_path / "in.npz"), "--out", str(tmp_path / "y.npz")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300, env=dict(os.environ))
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["prepost"]["post"] == ["sigmoid_threshold"]
    sess = ort.InferenceSession(str(out / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with np.load(tmp_path / "y.npz") as z:
        np.testing.assert_array_equal(z["labels"], multilabel.decisions(logits))
        np.testing.assert_allclose(z["probs"], 1 / (1 + np.exp(-logits.astype(np.float64))), rtol=1e-5, atol=1e-6)


def test_softmax_topk_on_a_multi_label_model_gets_a_note_naming_sigmoid_threshold(tmp_path, capsys):
    (tmp_path / "m.py").write_text(MODEL_PY)
    np.save(tmp_path / "x.npy", np.random.default_rng(2).normal(size=(40, 16)).astype(np.float32))
    base = ["compress", f"{tmp_path / 'm.py'}:net", "--calib", str(tmp_path / "x.npy"), "--quantize", "none",
            "--no-profile"]
    spec = json.dumps({"post": [{"op": "softmax_topk", "k": 2}]})
    rc = run_cli(base + ["--task", "multi-label", "--preprocess", spec, "-o", str(tmp_path / "a")])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 0, err
    assert ("--preprocess: softmax_topk takes the classes as exclusive, but --task multi-label scores a yes/no per "
            "class; the sigmoid_threshold post step") in err
    # a classifier's softmax_topk is what it is for
    rc = run_cli(base + ["--task", "classification", "--preprocess", spec, "-o", str(tmp_path / "b")])
    assert rc == 0 and "sigmoid_threshold" not in capsys.readouterr().err
