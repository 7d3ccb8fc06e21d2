"""`edgekit quantize` on a bare ONNX file: artifacts + manifest, and one-line errors for bad data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.test_quant import conv_model


ROOT = str(Path(__file__).resolve().parents[1])


def _cli(*args, cwd):
    env = {**os.environ, "EDGEKIT_QUIET": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def test_quantize_command_writes_artifacts_and_manifest(tmp_path):
    model = conv_model(tmp_path / "net.onnx")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.normal(size=(40, 1, 16, 16)).astype(np.float32))
    r = _cli("quantize", str(model), "--calib", str(tmp_path / "calib.npy"), "--max-trials", "2",
             "-o", str(tmp_path / "out"), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    man = json.loads(r.stdout)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["artifacts"] == man["artifacts"]
    kinds = {a["kind"]: a for a in man["artifacts"]}
    assert set(kinds) == {"fp32", "int8"}
    assert (tmp_path / "out" / "net.int8.onnx").stat().st_size == kinds["int8"]["bytes"]
    assert kinds["int8"]["metrics"]["name"] == "top1_agreement"  # fidelity: no --eval given
    q = man["quantization"]["net.onnx"]
    assert len(q["trials"]) == 2 and q["isa"]["reason"] and "recommend" in q
    # a second run refuses to clobber the first
    r2 = _cli("quantize", str(model), "--calib", str(tmp_path / "calib.npy"), "-o", str(tmp_path / "out"),
              cwd=tmp_path)
    assert r2.returncode == 2 and "--overwrite" in r2.stderr


def test_quantize_command_bad_calibration_is_one_line_exit_2(tmp_path):
    model = conv_model(tmp_path / "net.onnx")
    np.save(tmp_path / "bad.npy", np.zeros((4, 3, 16, 16), np.float32))
    r = _cli("quantize", str(model), "--calib", str(tmp_path / "bad.npy"), "-o", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "bad.npy" in err[0] and "axis 1: 3 != 1" in err[0], r.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()
