"""One labelled file as --calib and no --eval: the samples held out of calibrating are scored against the
file's labels. They were read without labels, so the metric was fidelity to FP32 ('no labels confirm it')
while the labels sat in the file: the accuracy cost went unmeasured unless the same file was also given
as --eval."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from sklearn.datasets import load_digits

from cliutil import run_cli

MODEL_PY = '''
import torch.nn as nn


def build():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
'''


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """A digits MLP trained for a second here, and 600 labelled digits as one .npz."""
    d = tmp_path_factory.mktemp("calib_labels")
    (d / "mlp.py").write_text(MODEL_PY)
    ns = {}
    exec(MODEL_PY, ns)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None][:600]
    y = digits.target[:600].astype(np.int64)
    torch.manual_seed(0)
    model = ns["build"]()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
    torch.save(model.state_dict(), d / "mlp.pt")
    np.savez(d / "digits.npz", x=x, y=y)
    return d, x, y


def _accuracy(onnx_path, x, y) -> float:
    s = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return float(np.mean(s.run(None, {s.get_inputs()[0].name: x})[0].argmax(1) == y))


def test_compress_scores_the_held_out_calibration_samples_against_their_labels(digits_model, tmp_path, capsys):
    d, x, y = digits_model
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{d / 'mlp.py'}:build", "--weights", str(d / "mlp.pt"), "--calib",
                  str(d / "digits.npz"), "--no-profile", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "no --eval data: metrics are scored against the labels of 344 calibration samples not used for " \
           "calibrating" in err
    assert "no labels confirm it" not in err  # the labels confirm the classifier guess
    man = json.loads((out / "manifest.json").read_text())
    for art in man["artifacts"]:
        m = art["metrics"]
        assert m["name"] == "accuracy" and m["n"] == 344 and m["data"].endswith("[256:600]"), m
        # INT8 too: each file is scored on the held-out rows against the labels, not against FP32
        assert m["value"] == pytest.approx(_accuracy(out / art["path"], x[256:], y[256:])), art["path"]
    assert man["artifacts"][0]["metrics"]["value"] > 0.8  # a trained model, so the labels are what is scored


def test_a_small_labelled_calib_is_scored_whole_and_unlabelled_calib_keeps_fidelity(digits_model, tmp_path,
                                                                                    capsys):
    d, x, y = digits_model
    np.savez(tmp_path / "small.npz", x=x[:150], y=y[:150])
    out = tmp_path / "small"
    rc = run_cli(["compress", f"{d / 'mlp.py'}:build", "--weights", str(d / "mlp.pt"), "--calib",
                  str(tmp_path / "small.npz"), "--no-tune", "--no-profile", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "metrics are scored against the labels of the 150 calibration inputs, the same ones INT8 calibrates on" \
           in err
    m = json.loads((out / "manifest.json").read_text())["artifacts"][0]["metrics"]
    assert m["name"] == "accuracy" and m["n"] == 150
    assert m["value"] == pytest.approx(_accuracy(out / "model.fp32.onnx", x[:150], y[:150]))
    # without labels nothing changes: fidelity to FP32 on the held-out samples
    np.save(tmp_path / "x.npy", x)
    rc = run_cli(["compress", f"{d / 'mlp.py'}:build", "--weights", str(d / "mlp.pt"), "--calib",
                  str(tmp_path / "x.npy"), "--no-tune", "--no-profile", "-o", str(tmp_path / "nolab")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "no --eval data: metrics are fidelity to FP32 on 344 calibration samples not used for calibrating" in err
    m = json.loads((tmp_path / "nolab" / "manifest.json").read_text())["artifacts"][0]["metrics"]
    assert m["name"] == "top1_agreement" and m["n"] == 344


def test_quantize_and_prune_score_a_labelled_calib_against_its_labels(digits_model, tmp_path, capsys):
    d, x, y = digits_model
    out = tmp_path / "c"
    assert run_cli(["compress", f"{d / 'mlp.py'}:build", "--weights", str(d / "mlp.pt"), "--eval",
                    str(d / "digits.npz"), "--quantize", "none", "--no-profile", "-o", str(out)]) == 0
    capsys.readouterr()
    rc = run_cli(["quantize", str(out / "model.fp32.onnx"), "--calib", str(d / "digits.npz"), "--no-tune",
                  "-o", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert rc in (0, None), err
    assert "no --eval: scored against the labels of 344 calibration samples not used for calibrating" in err
    man = json.loads((tmp_path / "q" / "manifest.json").read_text())
    for art in man["artifacts"]:
        assert art["metrics"]["name"] == "accuracy" and art["metrics"]["n"] == 344
        assert art["metrics"]["value"] == pytest.approx(_accuracy(tmp_path / "q" / art["path"], x[256:], y[256:]))
    rc = run_cli(["prune", f"{d / 'mlp.py'}:build", "--weights", str(d / "mlp.pt"), "--calib",
                  str(d / "digits.npz"), "--ratio", "0.25", "--no-distill", "-o", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert rc in (0, None), err
    man = json.loads((tmp_path / "p" / "manifest.json").read_text())
    fp32 = man["artifacts"][0]["metrics"]
    assert fp32["name"] == "accuracy" and fp32["value"] == pytest.approx(_accuracy(tmp_path / "p" / "model.fp32.onnx",
                                                                                  x, y))


def test_calib_labels_that_cannot_be_class_indices_are_one_line(digits_model, tmp_path, capsys):
    d, x, y = digits_model
    np.savez(tmp_path / "float_y.npz", x=x, y=y.astype(np.float32) + 0.5)
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{d / 'mlp.py'}:build", "--weights", str(d / "mlp.pt"), "--calib",
                  str(tmp_path / "float_y.npz"), "--task", "classification", "--no-profile", "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and str(tmp_path / "float_y.npz") in err and "class indices" in err, err


def test_labels_saved_under_another_name_are_the_labels_when_no_input_takes_it(digits_model, tmp_path, capsys):
    """np.savez(path, x=x, labels=y): 'unexpected labels; the model's inputs are x'. With the model's inputs
    known, an array named labels / label / targets / target that no input takes can only be the labels."""
    from edgekit.calibration import read_dataset

    d, x, y = digits_model
    spec = [{"name": "x", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]
    np.savez(tmp_path / "labels.npz", x=x[:20], labels=y[:20])
    ds = read_dataset(tmp_path / "labels.npz", spec, labels=True)
    assert ds.labels.tolist() == y[:20].tolist() and ds.extra["label_key"] == "labels"
    assert read_dataset(tmp_path / "labels.npz", spec).labels is None  # calibration reads no labels, as for 'y'
    # a model that takes an input of that name is fed it, as before (a HuggingFace model's `labels`)
    both = [*spec, {"name": "labels", "shape": ["batch"], "dtype": "int64"}]
    fed = read_dataset(tmp_path / "labels.npz", both, labels=True)
    assert fed.labels is None and fed.inputs["labels"].tolist() == y[:20].tolist()
    # the CLI: learned inputs (the file is the only data) and a known model both score against them
    np.savez(tmp_path / "target.npz", x=x, target=y)
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{d / 'mlp.py'}:build", "--weights", str(d / "mlp.pt"), "--calib",
                  str(tmp_path / "target.npz"), "--quantize", "none", "--no-profile", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "its array 'target' is taken as the labels" in err
    # an untrained model scores at chance: the hint names the array the labels came from
    ns = {}
    exec(MODEL_PY, ns)
    torch.manual_seed(1)
    torch.save(ns["build"]().state_dict(), tmp_path / "untrained.pt")
    rc = run_cli(["compress", f"{d / 'mlp.py'}:build", "--weights", str(tmp_path / "untrained.pt"), "--calib",
                  str(tmp_path / "target.npz"), "--quantize", "none",
                  "--no-profile", "-o", str(tmp_path / "untrained")])
    err = capsys.readouterr().err
    assert rc == 0 and "that 'target' holds this model's class indices" in err, err
    m = json.loads((out / "manifest.json").read_text())["artifacts"][0]["metrics"]
    # --quantize none calibrates nothing: the first 500 samples are scored
    assert m["name"] == "accuracy" and m["value"] == pytest.approx(_accuracy(out / "model.fp32.onnx", x[:500],
                                                                           y[:500]))


def test_a_model_that_brings_its_eval_set_ignores_calib_labels(tmp_path, capsys):
    """zoo:digits-cnn scores on its own held-out digits: labels in --calib (here class folders) stay unread, as
    before: no class-numbering note for data whose labels nothing uses."""
    from PIL import Image

    digits = load_digits()
    for i in range(40):
        (tmp_path / "calib" / str(digits.target[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[i] * 16).astype(np.uint8)).save(tmp_path / "calib" / str(digits.target[i])
                                                                        / f"{i}.png")
    out = tmp_path / "out"
    rc = run_cli(["compress", "zoo:digits-cnn", "--calib", str(tmp_path / "calib"), "--quantize", "none",
                  "--no-profile", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "class folders" not in err and "no --eval data" not in err, err
    m = json.loads((out / "manifest.json").read_text())["artifacts"][0]["metrics"]
    assert m["name"] == "accuracy" and "calib" not in m["data"]


@pytest.mark.parametrize("mode", ["int8-dynamic", "none"])
def test_modes_that_calibrate_nothing_score_every_calibration_sample(digits_model, tmp_path, capsys, mode):
    """Only static INT8 calibrates on the first --calib-size samples; dynamic INT8 (scales per input), FP16 and
    no quantization held them out anyway, so 300 samples were scored as 44."""
    d, x, y = digits_model
    np.savez(tmp_path / "d.npz", x=x[:300], y=y[:300])
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{d / 'mlp.py'}:build", "--weights", str(d / "mlp.pt"), "--calib",
                  str(tmp_path / "d.npz"), "--quantize", mode, "--no-profile", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"scored against the labels of the 300 calibration inputs (--quantize {mode} calibrates on none" in err
    for art in json.loads((out / "manifest.json").read_text())["artifacts"]:
        assert art["metrics"]["n"] == 300 and art["metrics"]["name"] == "accuracy"
        assert art["metrics"]["value"] == pytest.approx(_accuracy(out / art["path"], x[:300], y[:300]))


def test_prune_and_distill_without_eval_say_they_score_on_the_data_they_learn_from(digits_model, tmp_path, capsys):
    """prune / distill with --calib only score the result on those samples, which they also learn from: the
    printed results (on stderr, as rich prints them) read like a held-out measurement unless a note says so (and the record keeps it)."""
    d, x, y = digits_model
    rc = run_cli(["prune", f"{d / 'mlp.py'}:build", "--weights", str(d / "mlp.pt"), "--calib", str(d / "digits.npz"),
                  "--ratio", "0.25", "--no-distill", "-o", str(tmp_path / "p")])
    out = capsys.readouterr().err
    assert rc in (0, None)
    said = ("no --eval: the results are scored on the 600 --calib samples against their labels, the same samples "
            "pruning and distillation learn from; give --eval to score held-out data")
    assert said in " ".join(out.split()), out  # rich may wrap the line
    assert said in json.loads((tmp_path / "p" / "manifest.json").read_text())["pruning"]["notes"]
    np.save(tmp_path / "x.npy", x)
    rc = run_cli(["distill", "--teacher", f"{d / 'mlp.py'}:build", "--weights", str(d / "mlp.pt"), "--student",
                  f"{d / 'mlp.py'}:build", "--calib", str(tmp_path / "x.npy"), "--epochs", "1", "-o",
                  str(tmp_path / "k")])
    out = capsys.readouterr().err
    assert rc in (0, None)
    assert ("no --eval: the results are scored on the 600 --calib samples by agreement with the original model, "
            "the same samples") in " ".join(out.split()), out
    # with --eval, nothing to say
    rc = run_cli(["prune", f"{d / 'mlp.py'}:build", "--weights", str(d / "mlp.pt"), "--calib", str(tmp_path / "x.npy"),
                  "--eval", str(d / "digits.npz"), "--ratio", "0.25", "--no-distill", "-o", str(tmp_path / "p2")])
    assert rc in (0, None) and "no --eval" not in capsys.readouterr().err
