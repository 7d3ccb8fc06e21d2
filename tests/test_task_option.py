"""--task: a model predicting C continuous values ([N, C] float, C >= 2) is scored and distilled as a
regression when told so. The shape alone reads as class scores: sweep27 F1's 4-target regressor was
distilled with a softmax loss and scored on argmax agreement (1.0000) while one target's R^2 to FP32 was
-5.5."""
import json
import tomllib

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from cliutil import run_cli

MODEL_PY = '''
import torch.nn as nn


def build():
    return nn.Sequential(nn.Linear(10, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 4))
'''


def _data(n=600, seed=0):
    """4 targets of different scales and offsets: a softmax over them sees neither."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 10)).astype(np.float32)
    w = rng.normal(size=(10, 4)).astype(np.float32)
    y = np.tanh(x @ w) * np.array([1.0, 3.0, 0.5, 2.0]) + np.array([5.0, -3.0, 10.0, 0.0])
    return x, y.astype(np.float32)


@pytest.fixture(scope="module")
def mreg(tmp_path_factory):
    d = tmp_path_factory.mktemp("mreg")
    (d / "m.py").write_text(MODEL_PY)
    ns = {}
    exec(MODEL_PY, ns)
    torch.manual_seed(0)
    model = ns["build"]()
    x, y = _data()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xt, yt = torch.from_numpy(x[:400]), torch.from_numpy(y[:400])
    for _ in range(300):
        loss = nn.functional.mse_loss(model(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.save(model.state_dict(), d / "m.pt")
    np.save(d / "train.npy", x[:400])
    np.savez(d / "eval.npz", x=x[400:])
    model.eval()
    with torch.no_grad():  # labels a classifier would get right: only their being integers matters here
        labels = model(torch.from_numpy(x[400:])).argmax(1).numpy()
    np.savez(d / "eval_labelled.npz", x=x[400:], y=labels)
    torch.onnx.export(model, (xt[:2],), str(d / "m.onnx"), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False)
    return d


def _run(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _r2_per_target(got, ref):
    return 1 - ((got - ref) ** 2).sum(0) / ((ref - ref.mean(0)) ** 2).sum(0)


def test_mean_r2_scores_every_target():
    from edgekit.evaluate import mean_r2_fidelity, per_output

    ref = np.random.default_rng(1).normal(size=(50, 3)) * [1, 10, 100] + [0, 5, -50]
    got = ref.copy()
    got[:, 0] = ref[:, 0].mean()  # the small target lost entirely: its R^2 is 0
    assert mean_r2_fidelity(got, ref) == pytest.approx(2 / 3)
    assert per_output([got], "regression", [ref])[0] == pytest.approx(2 / 3)
    # argmax agreement (the classification guess) cannot see it
    assert per_output([got], "classification", [ref])[0] == 1.0


@pytest.mark.slow
def test_prune_distill_regression_reports_r2(mreg, tmp_path, capsys):
    out = tmp_path / "out"
    rc = run_cli(["prune", f"{mreg}/m.py:build", "--weights", str(mreg / "m.pt"), "--eval", str(mreg / "eval.npz"),
                  "--train", str(mreg / "train.npy"), "--ratio", "0.5", "--epochs", "25", "--task", "regression",
                  "-o", str(out)])
    assert rc in (0, None)
    assert "class scores" not in capsys.readouterr().err  # told: no guessing note
    man = json.loads((out / "manifest.json").read_text())
    assert (man["source"]["task"], man["source"]["task_from"]) == ("regression", "--task")
    assert man["settings"]["task"] == "regression"
    assert man["pruning"]["metric_name"] == "r2"
    art = {a["path"]: a for a in man["artifacts"]}
    m = art["model.distilled.onnx"]["metrics"]
    assert m["name"] == "r2"
    x = np.load(mreg / "eval.npz")["x"]
    r2 = _r2_per_target(_run(out / "model.distilled.onnx", x), _run(out / "model.fp32.onnx", x))
    # what is reported is the mean over targets of each target's R^2 to FP32 (clipped to [0, 1])
    assert m["value"] == pytest.approx(float(np.mean(np.clip(r2, 0, 1))), abs=1e-4)
    # distilled with a regression loss, every target keeps its function (softmax KD: -5.5 on one)
    assert r2.min() > 0.5, r2


def test_quantize_auto_notes_guess_and_task_overrides(mreg, tmp_path, capsys):
    model, ev = str(mreg / "m.onnx"), str(mreg / "eval.npz")
    assert run_cli(["quantize", model, "--eval", ev, "--mode", "fp16", "-o", str(tmp_path / "auto")]) in (0, None)
    err = capsys.readouterr().err
    assert err.count("--task regression") == 1, err  # once per run, with the way out
    assert "distillation" not in err, err  # quantize trains nothing: the note names only what the guess changes
    man = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    assert (man["source"]["task"], man["source"]["task_from"]) == ("classification", "output shape")

    assert run_cli(["quantize", model, "--eval", ev, "--mode", "fp16", "--task", "regression",
                    "-o", str(tmp_path / "reg")]) in (0, None)
    assert "--task regression" not in capsys.readouterr().err
    man = json.loads((tmp_path / "reg" / "manifest.json").read_text())
    assert man["source"]["task"] == "regression" and man["settings"]["task"] == "regression"
    assert {a["metrics"]["name"] for a in man["artifacts"]} == {"r2"}

    # integer labels say the columns are classes: nothing to note
    assert run_cli(["quantize", model, "--eval", str(mreg / "eval_labelled.npz"), "--mode", "fp16",
                    "-o", str(tmp_path / "lab")]) in (0, None)
    assert "--task regression" not in capsys.readouterr().err


@pytest.mark.slow
def test_compress_recipe_repeats_task(mreg, tmp_path):
    out = tmp_path / "c"
    assert run_cli(["compress", f"{mreg}/m.py:build", "--weights", str(mreg / "m.pt"), "--eval",
                    str(mreg / "eval.npz"), "--quantize", "fp16", "--no-profile", "--task", "regression",
                    "-o", str(out)]) in (0, None)
    assert tomllib.loads((out / "compress.toml").read_text())["task"] == "regression"
    again = tmp_path / "again"
    assert run_cli(["compress", "--config", str(out / "compress.toml"), "-o", str(again)]) in (0, None)
    man = json.loads((again / "manifest.json").read_text())
    assert man["source"]["task"] == "regression"
    assert {a["metrics"]["name"] for a in man["artifacts"]} == {"r2"}


def test_unknown_task_in_recipe_is_refused(tmp_path):
    from edgekit.config import from_dict
    from edgekit.errors import ConfigError

    with pytest.raises(ConfigError, match="task 'regresion'"):
        from_dict({"model": "zoo:x", "output": str(tmp_path), "task": "regresion"})


def test_labels_that_cannot_be_the_targets_are_refused_for_a_regression(mreg, tmp_path, capsys):
    """With --task regression, labelled --eval is scored as the targets: one class id per sample for a model
    of 4 targets cannot be, and says so in one line (it was unused, which hid the mistake), not that the
    output is 'not [N, C] class scores' (it is [N, 4])."""
    rc = run_cli(["compress", str(mreg / "m.onnx"), "--calib", str(mreg / "train.npy"), "--eval",
                  str(mreg / "eval_labelled.npz"), "--task", "regression", "--quantize", "none", "--no-profile",
                  "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "eval_labelled.npz: labels 'y' hold 1 target(s) per sample; the model's first output [200, 4] has 4" \
        in err, err
    assert "not [N, C] class scores" not in err and not (tmp_path / "out").exists()


def test_compress_scores_a_regression_against_its_targets(mreg, tmp_path, capsys):
    """--eval targets [N, 4] of a 4-target regressor: r2_labels against them, RMSE beside it, in the manifest."""
    x, y = _data()
    np.savez(tmp_path / "eval_t.npz", x=x[400:], y=y[400:])
    rc = run_cli(["compress", str(mreg / "m.onnx"), "--calib", str(mreg / "train.npy"), "--eval",
                  str(tmp_path / "eval_t.npz"), "--task", "regression", "--quantize", "int8-dynamic", "--no-profile",
                  "-o", str(tmp_path / "out")])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    fp32 = man["artifacts"][0]["metrics"]
    r2 = _r2_per_target(_run(mreg / "m.onnx", x[400:]), y[400:])
    assert fp32["name"] == "r2_labels" and fp32["value"] == pytest.approx(float(np.mean(np.clip(r2, 0, 1))), abs=1e-5)
    assert 0.5 < fp32["value"] < 1.0 and fp32["rmse"] > 0, fp32  # a trained model, scored against real targets
    assert all(a["metrics"]["name"] == "r2_labels" for a in man["artifacts"])
    # the RMSE, in the targets' units, where the metric is shown (the report; the console table alike)
    assert f"(r2_labels, RMSE {fp32['rmse']:.4g})" in (tmp_path / "out" / "report.md").read_text()


def test_task_classification_checks_train_labels_before_pruning(tmp_path, capsys):
    """prune applies --task before it checks --train's labels: a one-value output told to be a classifier
    with labels 0/1 is refused up front, not in the middle of training."""
    (tmp_path / "one.py").write_text("import torch.nn as nn\n\n\ndef build():\n"
                                     "    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))\n")
    x, _ = _data(120)
    np.savez(tmp_path / "train.npz", x=x, y=(x[:, 0] > 0).astype(np.int64))
    rc = run_cli(["prune", f"{tmp_path / 'one.py'}:build", "--calib", str(tmp_path / "train.npz"), "--train",
                  str(tmp_path / "train.npz"), "--task", "classification", "--ratio", "0.3", "-o",
                  str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "train.npz" in err and "internal error" not in err, err
    assert not (tmp_path / "out").exists()


def test_prune_without_distillation_does_not_promise_it(mreg, tmp_path, capsys):
    # sweep37 F6: prune --no-distill noted (and recorded) '(top-1 agreement, softmax distillation)'
    out = tmp_path / "out"
    rc = run_cli(["prune", f"{mreg}/m.py:build", "--weights", str(mreg / "m.pt"), "--eval", str(mreg / "eval.npz"),
                  "--ratio", "0.5", "--no-distill", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc in (0, None), err
    assert "--task regression" in err and "distillation)" not in err, err
    notes = json.dumps(json.loads((out / "manifest.json").read_text()))
    assert "scored by top-1 agreement" in notes and "softmax distillation" not in notes
