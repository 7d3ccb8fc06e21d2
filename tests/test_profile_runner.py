"""The device runner as devices run it: a lone file with numpy + onnxruntime, JSON on stdout."""
import json
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from edgekit.runner import RUNNER_PATH

from profile_models import matmul_chain, small_cnn


@pytest.fixture()
def lone_runner(tmp_path):
    """The runner copied away from the edgekit package, as a bundle carries it."""
    d = tmp_path / "device"
    d.mkdir()
    return shutil.copy(RUNNER_PATH, d / "edgekit_runner.py")


def _run(runner, *args, cwd):
    # -s -E: no user site or PYTHON* variables; the copied file cannot see the edgekit package
    p = subprocess.run([sys.executable, "-s", "-E", str(runner), *map(str, args)], capture_output=True,
                       text=True, cwd=cwd, timeout=120)
    return p.returncode, json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def test_runner_imports_only_numpy_and_onnxruntime():
    src = RUNNER_PATH.read_text()
    imported = {line.split()[1].split(".")[0] for line in src.splitlines()
                if line.strip().startswith(("import ", "from ")) and not line.startswith("from __future__")}
    assert imported <= {"argparse", "json", "os", "platform", "re", "sys", "tempfile", "time", "numpy",
                        "onnxruntime", "resource", "bisect", "ctypes"}, imported


def test_bench_run_and_selftest(tmp_path, lone_runner):
    a, b = matmul_chain(tmp_path / "a.onnx", 2), matmul_chain(tmp_path / "b.onnx", 4)
    rc, rep, _ = _run(lone_runner, "bench", "--model", a, "--runs", 7, "--op-runs", 3, cwd=tmp_path)
    assert rc == 0 and rep["status"] == "ok" and rep["runs"] == 7 and len(rep["samples_ms"]) == 7
    assert rep["p50_ms"] > 0 and rep["op_breakdown"]["MatMul"] > 0 and "nodes" not in rep
    np.savez(tmp_path / "in.npz", x=np.ones((3, 256), np.float32))
    rc, rep, _ = _run(lone_runner, "bench", "--model", f"A={a}", "--model", f"B={b}", "--inputs", tmp_path / "in.npz",
                      "--runs", 5, "--outputs", tmp_path / "o.npz", cwd=tmp_path)
    assert rc == 0 and set(rep["results"]) == {"A", "B"} and rep["results"]["B"]["batch"] == 1
    with np.load(tmp_path / "o.npz") as z:
        assert set(z.files) == {"A::y", "B::y"} and z["A::y"].shape == (1, 256)
    rc, rep, _ = _run(lone_runner, "run", "--model", a, "--inputs", tmp_path / "in.npz", "--out", tmp_path / "y.npz",
                      cwd=tmp_path)
    ref = ort.InferenceSession(a, providers=["CPUExecutionProvider"]).run(None, {"x": np.ones((1, 256), np.float32)})
    with np.load(tmp_path / "y.npz") as z:
        assert rc == 0 and np.array_equal(z["y"], ref[0])

    # selftest against a bundle directory: pass, then a mismatch that exits 1 with a reason
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(a, bundle / "model.onnx")
    np.savez(bundle / "selftest.npz", x=np.ones((1, 256), np.float32))
    np.savez(bundle / "expected.npz", y=ref[0])
    meta = {"model": "model.onnx", "selftest": {"inputs": "selftest.npz", "expected": "expected.npz", "atol": 1e-5}}
    (bundle / "bundle.json").write_text(json.dumps(meta))
    rc, rep, _ = _run(lone_runner, "selftest", "--bundle", bundle, cwd=tmp_path)
    assert rc == 0 and rep["ok"] is True and rep["max_abs_diff"]["y"] <= 1e-5
    np.savez(bundle / "expected.npz", y=ref[0] + 0.01)
    rc, rep, _ = _run(lone_runner, "selftest", "--bundle", bundle, cwd=tmp_path)
    assert rc == 1 and rep["ok"] is False and "'y' differs by 0.01" in rep["reason"]
    (bundle / "bundle.json").write_text("{")
    rc, rep, _ = _run(lone_runner, "selftest", "--bundle", bundle, cwd=tmp_path)
    assert rc == 1 and rep["ok"] is False and "JSONDecodeError" in rep["reason"]


def test_bench_reports_a_missing_provider(tmp_path, lone_runner):
    a = small_cnn(tmp_path / "c.onnx")
    rc, rep, _ = _run(lone_runner, "bench", "--model", a, "--runs", 3, "--providers", '["CUDAExecutionProvider"]',
                      cwd=tmp_path)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    assert rc == 1 and rep["status"] == "unavailable" and "onnxruntime-gpu" in rep["reason"]
    assert "p50_ms" not in rep


def test_bench_runs_a_fixed_batch_model_at_its_own_batch(tmp_path, lone_runner):
    f4 = matmul_chain(tmp_path / "f4.onnx", 1, k=32, batch=4)
    rc, rep, _ = _run(lone_runner, "bench", "--model", f4, "--runs", 5, cwd=tmp_path)
    assert rc == 0 and rep["batch"] == 4 and rep["throughput"] == pytest.approx(4000 / rep["mean_ms"], rel=1e-6)
    rc, rep, _ = _run(lone_runner, "bench", "--model", f4, "--runs", 5, "--batch", 2, cwd=tmp_path)
    assert rc == 1 and rep["status"] == "unavailable" and "fixed batch of 4" in rep["reason"] and "p50_ms" not in rep
