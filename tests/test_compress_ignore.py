"""compress --ignore: pruning's own errors tell the user to keep layers whole "with --ignore NAME", which
only `edgekit prune` accepted: compress answered "No such option: --ignore" (the setting was reachable only
as prune.ignore in a recipe)."""
import json
import tomllib

import numpy as np
import torch

from cliutil import run_cli

MODEL_PY = '''
import torch.nn as nn


def build():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10))
'''


def _setup(tmp_path):
    from sklearn.datasets import load_digits

    (tmp_path / "m.py").write_text(MODEL_PY)
    ns = {}
    exec(MODEL_PY, ns)
    torch.manual_seed(0)
    torch.save(ns["build"]().state_dict(), tmp_path / "m.pt")
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    np.save(tmp_path / "calib.npy", x[:128])
    np.savez(tmp_path / "eval.npz", x=x[1500:], y=d.target[1500:])


def test_compress_keeps_ignored_layers_whole_and_records_them(tmp_path):
    _setup(tmp_path)
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{tmp_path / 'm.py'}:build", "--weights", str(tmp_path / "m.pt"), "--calib",
                  str(tmp_path / "calib.npy"), "--eval", str(tmp_path / "eval.npz"), "--prune", "0.5",
                  "--ignore", "2", "--no-distill", "--quantize", "none", "--no-profile", "-o", str(out)])
    assert rc == 0
    pr = json.loads((out / "manifest.json").read_text())["pruning"]
    assert pr["channels"]["2"][:2] == [16, 16], pr["channels"]
    assert pr["channels"]["4"][1] < 16, pr["channels"]  # the layer not named is still pruned
    assert "2 (user)" in pr["ignored"]
    assert tomllib.loads((out / "compress.toml").read_text())["prune"]["ignore"] == ["2"]


def test_compress_ignore_of_no_such_module_is_one_line(tmp_path, capsys):
    _setup(tmp_path)
    rc = run_cli(["compress", f"{tmp_path / 'm.py'}:build", "--weights", str(tmp_path / "m.pt"), "--calib",
                  str(tmp_path / "calib.npy"), "--prune", "0.5", "--ignore", "conv9", "--no-distill",
                  "--quantize", "none", "--no-profile", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "--ignore 'conv9': no such module" in err, err
    assert not (tmp_path / "out").exists()
