"""`edgekit prune` and `edgekit distill` on a user's model file (not in the zoo), end to end."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgekit.artifact import load_manifest
from tests.cliutil import run_cli as _run
from edgekit.fsutil import sha256_file

MODEL = '''
import torch.nn as nn

def build():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))

def small():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))
'''


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("EDGEKIT_QUIET", "1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def user_model(tmp_path):
    f = tmp_path / "net.py"
    f.write_text(MODEL)
    ns = {}
    exec(MODEL, ns)
    torch.manual_seed(0)
    m = ns["build"]()
    w = tmp_path / "net.pt"
    torch.save(m.state_dict(), w)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 1, 12, 12)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x[:16])
    np.savez(tmp_path / "eval.npz", input=x[16:], y=rng.integers(0, 4, 32))
    return tmp_path, f, w


def test_prune_cli_writes_outdir_and_refuses_to_clobber(user_model):
    d, f, w = user_model
    out = d / "out"
    argv = ["prune", f"{f}:build", "--weights", str(w), "--calib", str(d / "calib.npy"), "--eval",
            str(d / "eval.npz"), "--ratio", "0.5", "--epochs", "2", "--target", "x86-laptop", "-o", str(out)]
    assert _run(argv) == 0
    man = load_manifest(out)
    kinds = {a.kind: a for a in man.artifacts}
    assert set(kinds) == {"fp32", "distilled"}
    for a in man.artifacts:
        assert sha256_file(out / a.path) == a.sha256 and a.metrics["name"] == "accuracy"
    assert kinds["distilled"].params < kinds["fp32"].params
    assert man.pruning["channels"]["3"] == [32, 16, 0.5] and man.pruning["channels"]["0"] == [16, 16, 0.0]
    assert json.loads((out / "pruning.json").read_text())["params_after"] == man.pruning["params_after"]
    obj = torch.load(out / "pruned.pt", weights_only=True)
    assert obj["format"] == "edgekit.pruned/1"
    before = sorted(p.name for p in out.iterdir())
    assert _run(argv) == 2  # OUTDIR holds a run: refused, untouched
    assert sorted(p.name for p in out.iterdir()) == before

    # the pruned model can be distilled further with `edgekit distill --student pruned.pt`
    out2 = d / "out2"
    assert _run(["distill", "--teacher", f"{f}:build", "--weights", str(w), "--student", str(out / "pruned.pt"),
                 "--calib", str(d / "calib.npy"), "--eval", str(d / "eval.npz"), "--epochs", "1", "-o", str(out2)]) == 0
    hist = json.loads((out2 / "distill.json").read_text())
    assert hist["params_student"] == man.pruning["params_after"] and len(hist["history"]) == 2


def test_distill_cli_into_a_smaller_architecture(user_model):
    d, f, w = user_model
    out = d / "kd"
    assert _run(["distill", "--teacher", f"{f}:build", "--weights", str(w), "--student", f"{f}:small",
                 "--calib", str(d / "calib.npy"), "--eval", str(d / "eval.npz"), "--epochs", "2", "-o", str(out)]) == 0
    man = load_manifest(out)
    assert {a.kind for a in man.artifacts} == {"fp32", "distilled"}
    # the saved student reloads from its own factory
    from edgekit.pruning import serialize

    obj = serialize.read(out / "pruned.pt")
    assert obj["spec"].endswith(":small")


def test_prune_cli_usage_errors(user_model):
    d, f, w = user_model
    base = ["prune", f"{f}:build", "--weights", str(w), "--calib", str(d / "calib.npy")]
    assert _run(base + ["-o", str(d / "o1")]) == 2  # nothing to prune
    assert _run(base + ["--ratio", "0.5", "--method", "nope", "-o", str(d / "o2")]) == 2
    assert _run(base + ["--target-latency", "fast", "-o", str(d / "o3")]) == 2
    assert not (d / "o3").exists()


def test_compress_with_pruning_says_where_distillation_time_went(user_model):
    d, f, w = user_model
    out = d / "out"
    assert _run(["compress", f"{f}:build", "--weights", str(w), "--calib", str(d / "calib.npy"),
                 "--eval", str(d / "eval.npz"), "--prune", "0.5", "--quantize", "none", "--no-profile",
                 "-o", str(out)]) in (0, None)
    st = {s.name: s for s in load_manifest(out).stages}
    # the stage table showed "distill 0.0 s" and the training time under prune, unexplained
    assert st["distill"].status == "done" and "ran inside the prune stage" in st["distill"].reason
    assert "ran inside the prune stage" in (out / "report.md").read_text()


def test_sparse_prune_says_what_it_zeroed(user_model, capsys):
    # the step table was printed empty for --sparsity, and --ratio beside 2:4 was ignored
    d, f, w = user_model
    base = ["prune", f"{f}:build", "--weights", str(w), "--calib", str(d / "calib.npy"), "--eval",
            str(d / "eval.npz"), "--no-distill", "--sparsity", "2:4"]
    assert _run(base + ["-o", str(d / "sp")]) == 0
    man = load_manifest(d / "sp")
    sp = man.pruning["sparsity"]
    err = " ".join(capsys.readouterr().err.split())  # the summary goes to stderr, wrapped by rich
    assert f"{sp['zeros']:,} of {sp['total']:,} weights zero ({sp['sparsity']:.1%})" in err, err
    assert "latency ms" not in err  # no empty step table
    assert _run(base + ["--ratio", "0.3", "-o", str(d / "sp2")]) == 2 and not (d / "sp2").exists()
    assert "--ratio 0.3 does not apply to 2:4 sparsity" in capsys.readouterr().err


def test_stage_notes_say_what_pruning_really_did(user_model, capsys):
    d, f, w = user_model
    base = ["compress", f"{f}:build", "--weights", str(w), "--calib", str(d / "calib.npy"), "--eval",
            str(d / "eval.npz"), "--quantize", "none", "--no-profile", "--no-distill"]
    # 0.95 of 32 channels rounds up to 8 kept (75% removed): the manifest said "ratio 0.95", silently
    assert _run(base + ["--prune", "0.95", "-o", str(d / "a")]) in (0, None)
    man = load_manifest(d / "a")
    lost = [r for _, after, r in man.pruning["channels"].values() if r > 0]
    assert max(lost) < 0.9
    note = next(n for n in man.pruning["notes"] if n.startswith("asked to remove 95% of channels"))
    err = capsys.readouterr().err
    assert "channel_multiple, 8" in note and note in err
    assert _run(base + ["--prune", "0", "-o", str(d / "c")]) in (0, None)
    assert "--train" not in capsys.readouterr().err  # not given, not mentioned (the data falls back to --calib)
    assert note in {s.name: s for s in man.stages}["prune"].reason
    # --prune 0 with --train: "pruning is off (--prune RATIO to enable)" although --prune was given,
    # and the training data went unused without a word
    np.save(d / "train.npy", np.zeros((8, 1, 12, 12), np.float32))
    assert _run(base + ["--prune", "0", "--train", str(d / "train.npy"), "-o", str(d / "b")]) in (0, None)
    reason = {s.name: s for s in load_manifest(d / "b").stages}["prune"].reason
    assert "ratio 0" in reason and "--train data was not used" in reason
    assert "--train data was not used" in capsys.readouterr().err


def test_student_without_pruning_says_nothing_was_pruned(user_model):
    d, f, w = user_model
    out = d / "s"
    assert _run(["compress", f"{f}:build", "--weights", str(w), "--calib", str(d / "calib.npy"), "--eval",
                 str(d / "eval.npz"), "--student", f"{f}:small", "--quantize", "none", "--no-profile",
                 "-o", str(out)]) in (0, None)
    st = {s.name: s for s in load_manifest(out).stages}
    assert "nothing pruned" in st["prune"].reason
    assert "the --student model, nothing pruned" in st["distill"].reason


def test_a_parametrized_model_prunes_and_keeps_its_parametrizations(tmp_path):
    # Torch-Pruning on a weight_norm / spectral_norm layer: "internal error: KeyError: attribute 'weight'
    # already exists"
    (tmp_path / "par.py").write_text(
        "import torch, torch.nn as nn\n"
        "from torch.nn.utils.parametrizations import weight_norm, spectral_norm\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return nn.Sequential(weight_norm(nn.Conv2d(1, 16, 3, padding=1)), nn.ReLU(),\n"
        "                         spectral_norm(nn.Conv2d(16, 16, 3, padding=1)), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))\n")
    x = np.random.default_rng(0).standard_normal((40, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x)
    out = tmp_path / "out"
    assert _run(["compress", f"{tmp_path / 'par.py'}:build", "--calib", str(tmp_path / "calib.npy"), "--prune", "0.5",
                 "--no-distill", "--quantize", "none", "--no-profile", "-o", str(out)]) in (0, None)
    man = load_manifest(out)
    assert man.pruning["channels"]["2"][1] == 8  # the spectral_norm conv lost half its channels
    assert any("parametrizations" in n and "baked" in n for n in man.pruning["notes"])
    assert {a.kind for a in man.artifacts} == {"fp32", "pruned"}
