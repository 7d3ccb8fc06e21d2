"""compress, prune and distill hand the eval data to the export check (d435dc8 checks a few eval samples when
given them): a branch that tracing froze on the calibration data was reported verified, and the ONNX file
differed from PyTorch on every eval sample (sweep26 F1)."""
import numpy as np
import pytest

from tests.cliutil import run_cli as _run

MODEL = '''
import torch, torch.nn as nn

class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 4), nn.Linear(16, 4)

    def forward(self, x):
        if x.sum() > 0:  # a Python branch on the data: tracing keeps the one taken
            return self.a(x)
        return self.b(x)

def build():
    torch.manual_seed(0)
    return M()
'''


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("EDGEKIT_QUIET", "1")


@pytest.mark.parametrize("cmd", ["compress", "distill"])
def test_a_branch_frozen_on_the_calibration_data_is_caught_on_the_eval_data(tmp_path, cmd, capsys):
    (tmp_path / "m.py").write_text(MODEL)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", np.abs(rng.standard_normal((16, 16))).astype(np.float32))  # sums > 0
    x = rng.standard_normal((16, 16)).astype(np.float32)
    x[::2] = -np.abs(x[::2])  # half of them take the other branch
    np.savez(tmp_path / "eval.npz", x=x, y=rng.integers(0, 4, 16))
    model = f"{tmp_path / 'm.py'}:build"
    args = ["compress", model, "--quantize", "none", "--no-profile"] if cmd == "compress" else \
        ["distill", "--teacher", model, "--student", model, "--epochs", "1"]
    rc = _run(args + ["--calib", str(tmp_path / "calib.npy"), "--eval", str(tmp_path / "eval.npz"),
                      "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    # was: rc 0, "verified" on 16 calibration samples that all take the same branch
    assert rc == 1 and "outputs differ from PyTorch on" in err and "eval.npz" in err, err
    assert "if x.sum() > 0" in err  # torch's tracer warning, which was silenced
    assert not (tmp_path / "out").exists()


DROPOUT_ON = '''
import torch, torch.nn as nn, torch.nn.functional as F

class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.b(F.dropout(torch.relu(self.a(x)), 0.3, training=True))  # Monte-Carlo dropout

def build():
    torch.manual_seed(0)
    return M()
'''


def test_a_model_that_is_not_deterministic_is_told_so_not_an_export_mismatch(tmp_path, capsys):
    # was: "outputs differ from PyTorch ... 64 of 64 values out of tolerance", as if the exporter were wrong
    (tmp_path / "m.py").write_text(DROPOUT_ON)
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32))
    rc = _run(["compress", f"{tmp_path / 'm.py'}:build", "--quantize", "none", "--no-profile",
               "--calib", str(tmp_path / "calib.npy"), "-o", str(tmp_path / "out")])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("edgekit: error:")]
    assert rc == 1 and len(err) == 1, err
    assert "forward() is not deterministic: two PyTorch runs on the same " in err[0] and "calib.npy" in err[0], err
    assert "dropout" in err[0] and not (tmp_path / "out").exists()
