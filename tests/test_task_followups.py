"""--task follow-ups (sweep31 F1-F4): classification on a one-value output is refused, distillation
scored by a clipped R^2 sees progress below 0, float regression targets in 'y' are unused rather than
refused for a regression, and a recipe's bad enum value names the recipe."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cliutil import run_cli

MODELS_PY = '''
import torch.nn as nn


def one():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))


def four():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))


def small():
    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 4))
'''


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("taskfu")
    (d / "m.py").write_text(MODELS_PY)
    ns = {}
    exec(MODELS_PY, ns)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 6)).astype(np.float32)
    np.save(d / "x.npy", x)
    np.savez(d / "eval.npz", x=x[:80])
    np.savez(d / "eval_f.npz", x=x[:80], y=rng.normal(size=(80, 4)).astype(np.float32))  # regression targets
    np.savez(d / "train_f.npz", x=x, y=rng.normal(size=(240, 4)).astype(np.float32))
    torch.manual_seed(0)
    for name in ("one", "four"):
        m = ns[name]().eval()
        torch.onnx.export(m, (torch.from_numpy(x[:2]),), str(d / f"{name}.onnx"), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                          opset_version=17, dynamo=False)
    # a teacher whose targets sit far from where a fresh student starts (offsets of 1000): its clipped R^2
    # is 0 for many epochs while the loss falls
    t = ns["four"]()
    with torch.no_grad():
        t[2].bias += torch.tensor([1000.0, -1000.0, 500.0, 2000.0])
    torch.save(t.state_dict(), d / "far.pt")
    return d


# F1 -------------------------------------------------------------------------------------------------------

def test_classification_on_one_value_onnx_output_is_refused(d, tmp_path, capsys):
    """argmax over one column never moves: every variant scored top1_agreement 1.0000."""
    rc = run_cli(["quantize", str(d / "one.onnx"), "--mode", "fp16", "--eval", str(d / "eval.npz"), "--task",
                  "classification", "-o", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "--task classification" in err and "[N, 1]" in err and "--task regression" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "q").exists()


def test_classification_on_one_value_torch_output_is_refused_before_pruning(d, tmp_path, capsys):
    rc = run_cli(["prune", f"{d / 'm.py'}:one", "--calib", str(d / "x.npy"), "--eval", str(d / "eval.npz"),
                  "--ratio", "0.3", "--epochs", "1", "--task", "classification", "-o", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "m.py:one's first output" in err and "C >= 2" in err and "internal error" not in err, err
    assert not (tmp_path / "p").exists()


# F2 -------------------------------------------------------------------------------------------------------

def test_distill_regression_trains_while_clipped_r2_is_flat(d, tmp_path, capsys):
    """The clipped mean R^2 read 0.0 every epoch, so early stopping kept epoch 0 after `patience` epochs and
    shipped the untrained student. The unclipped R^2 now breaks the tie; the floor is noted. --train's
    float 'y' (regression targets) is unused, not refused (F3)."""
    out = tmp_path / "ds"
    rc = run_cli(["distill", "--teacher", f"{d / 'm.py'}:four", "--weights", str(d / "far.pt"), "--student",
                  f"{d / 'm.py'}:small", "--calib", str(d / "x.npy"), "--train", str(d / "train_f.npz"),
                  "--epochs", "8", "--patience", "3", "--task", "regression", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc in (0, None), err
    h = json.loads((out / "distill.json").read_text())
    assert all(e["metric"] == 0.0 for e in h["history"]), h["history"]  # the repro's flat clipped metric
    assert h["epochs_run"] == 8 and h["best_epoch"] == 8, (h["epochs_run"], h["best_epoch"])
    r2 = [e["r2_unclipped"] for e in h["history"]]
    assert r2[-1] > r2[0], r2
    assert "floor of the clipped R^2" in err, err
    assert "train_f.npz: labels 'y' unused: --task regression" in err, err


def test_better_epoch_breaks_a_clipped_tie_on_unclipped_r2():
    from edgekit.stages.distill import better_epoch

    assert better_epoch({"metric": 0.0, "r2_unclipped": -5.0}, {"metric": 0.0, "r2_unclipped": -9.0}, None)
    assert not better_epoch({"metric": 0.0, "r2_unclipped": -9.0}, {"metric": 0.0, "r2_unclipped": -5.0}, None)
    assert not better_epoch({"metric": 0.5}, {"metric": 0.5}, None)  # other metrics: as before


# F3 -------------------------------------------------------------------------------------------------------

def test_float_regression_targets_in_eval_are_scored_for_regression(d, tmp_path, capsys):
    # they were unused (fidelity to FP32 only): now the artifacts are scored against them, R^2 and RMSE
    from edgekit.evaluate import mean_r2_fidelity

    rc = run_cli(["quantize", str(d / "four.onnx"), "--mode", "fp16", "--eval", str(d / "eval_f.npz"), "--task",
                  "regression", "-o", str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert rc in (0, None), err
    assert "eval_f.npz: labels 'y' are the regression targets: scored by r2_labels" in err, err
    man = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert {a["metrics"]["name"] for a in man["artifacts"]} == {"r2_labels"}
    fp32 = man["artifacts"][0]["metrics"]
    ev = np.load(d / "eval_f.npz")
    sess = ort.InferenceSession(str(d / "four.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"x": ev["x"]})[0]
    assert fp32["value"] == pytest.approx(mean_r2_fidelity(out, ev["y"]), abs=1e-6)
    assert fp32["rmse"] == pytest.approx(float(np.sqrt(np.mean((out - ev["y"]) ** 2))), rel=1e-5)


def test_regression_targets_that_do_not_fit_the_output_are_one_line(d, tmp_path, capsys):
    rc = run_cli(["quantize", str(d / "one.onnx"), "--mode", "fp16", "--eval", str(d / "eval_f.npz"), "--task",
                  "regression", "-o", str(tmp_path / "q")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("edgekit: error")]
    assert rc == 2 and len(err) == 1 and not (tmp_path / "q").exists(), err
    assert "eval_f.npz: labels 'y' hold 4 target(s) per sample; the model's first output [80, 1] has 1" in err[0]


@pytest.mark.parametrize("y, problem", [
    (np.linspace(0.1, 7.9, 80), "labels 'y' must be integer class indices"),  # one target per sample
    (np.array(["cat", "dog"] * 40), "labels are class names ('cat', 'dog'), not class indices"),
])
def test_one_dimensional_labels_that_are_no_class_indices(d, tmp_path, capsys, y, problem):
    # 1-D float targets or class names crashed the reader ('internal error: ValueError: not enough values to
    # unpack'); unused for a regression, one line for a classifier, as 2-D float targets are
    np.savez(tmp_path / "eval_1d.npz", x=np.load(d / "x.npy")[:80], y=y)
    for task, model, want_rc in (("regression", "one", 0), ("classification", "four", 2)):
        out = tmp_path / task
        rc = run_cli(["quantize", str(d / f"{model}.onnx"), "--mode", "fp16", "--eval",
                      str(tmp_path / "eval_1d.npz"), "--task", task, "-o", str(out)])
        err = capsys.readouterr().err
        assert (rc or 0) == want_rc, err
        if task == "regression":  # one value per sample: the targets; names: unused
            what = "are the regression targets" if y.dtype.kind == "f" else "unused: --task regression scores"
            assert f"eval_1d.npz: labels 'y' {what}" in err, err
        else:
            assert f"eval_1d.npz: {problem}" in err and not out.exists(), err


def test_float_labels_still_refused_for_a_classifier(d, tmp_path, capsys):
    for task in ("classification", "auto"):  # auto: [N, 4] float is guessed as class scores
        rc = run_cli(["quantize", str(d / "four.onnx"), "--mode", "fp16", "--eval", str(d / "eval_f.npz"),
                      "--task", task, "-o", str(tmp_path / task)])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert "eval_f.npz: labels 'y' must be 1-D class indices, got shape (80, 4)" in err, err
        assert not (tmp_path / task).exists()


# F4 -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line,section,said", [
    ('task = "regresion"', "", "task 'regresion' (did you mean 'regression'?)"),
    ('mode = "int9"', "quantize", "quantize.mode 'int9' (did you mean 'int8'?)"),
    ('method = "l3"', "prune", "prune.method 'l3'"),
])
def test_recipe_bad_value_names_the_recipe(tmp_path, line, section, said):
    from edgekit.config import load_recipe
    from edgekit.errors import ConfigError

    p = tmp_path / "bad.toml"
    body = 'model = "zoo:digits-cnn"\noutput = "out"\n'
    body += f"[{section}]\n{line}\n" if section else f"{line}\n"
    p.write_text(body)
    with pytest.raises(ConfigError) as e:
        load_recipe(p)
    assert str(e.value).startswith(f"{p}: {said}"), str(e.value)


def test_a_regressor_no_better_than_the_targets_mean_is_noted(d, tmp_path, capsys):
    # eval_f's targets are noise the untrained model does not predict: its R^2 against them is below 0
    rc = run_cli(["compress", str(d / "four.onnx"), "--calib", str(d / "x.npy"), "--eval", str(d / "eval_f.npz"),
                  "--task", "regression", "--quantize", "none", "--no-profile", "-o", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc in (0, None), err
    assert "the source model's r2_labels is 0.0000: it predicts the targets no better than their mean" in err, err


def test_float_targets_without_task_name_task_regression(d, tmp_path, capsys):
    np.savez(tmp_path / "e.npz", x=np.load(d / "x.npy")[:80], y=np.linspace(0.1, 7.9, 80))
    rc = run_cli(["quantize", str(d / "one.onnx"), "--mode", "fp16", "--eval", str(tmp_path / "e.npz"), "-o",
                  str(tmp_path / "q")])
    err = capsys.readouterr().err
    assert rc in (0, None), err
    assert "e.npz: labels 'y' unused" in err and "to score it against them as targets, pass --task regression" in err


def test_multi_label_targets_are_told_apart_when_refused(tmp_path, capsys):
    # 0/1 per class for a sigmoid classifier read as 'must be 1-D class indices', with no word of why
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5)).eval()
    torch.onnx.export(net, (torch.zeros(1, 16),), str(tmp_path / "ml.onnx"), input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ml.npz", x=rng.normal(size=(80, 16)).astype(np.float32),
             y=(rng.random((80, 5)) < 0.3).astype(np.int64))
    rc = run_cli(["quantize", str(tmp_path / "ml.onnx"), "--mode", "fp16", "--eval", str(tmp_path / "ml.npz"),
                  "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2, err
    line = [ln for ln in err.splitlines() if ln.startswith("edgekit: error")]
    assert len(line) == 1 and "labels 'y' must be 1-D class indices, got shape (80, 5); if they are 0/1 per " \
        "class (multi-label targets), pass --task multi-label" in line[0], err
    assert not (tmp_path / "out").exists()
    # as the error says: scored against them by F1
    rc = run_cli(["quantize", str(tmp_path / "ml.onnx"), "--mode", "fp16", "--eval", str(tmp_path / "ml.npz"),
                  "--task", "multi-label", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 0, err
    import json

    fp32 = json.loads((tmp_path / "out" / "manifest.json").read_text())["artifacts"][0]
    assert fp32["metrics"]["name"] == "f1_micro" and 0.0 < fp32["metrics"]["value"] < 1.0
