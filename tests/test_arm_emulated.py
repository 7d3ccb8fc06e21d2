"""ARM (aarch64) ONNX Runtime under qemu-user: setup, profiling labelled emulated, outputs vs x86.

Stated tolerance, ARM vs x86 on the same inputs: FP32 max abs diff <= 1e-4 x max(1, |output|)
(kernels sum in a different order); INT8 within one output quantization step (in practice equal).
"""
import json
import shutil
import time

import numpy as np
import onnxruntime as ort
import pytest

from edgekit import emulation
from edgekit.errors import TargetError
from edgekit.profile import _output_quantum, profile_models, ratio
from edgekit.runner import RUNNER_PATH

from arm_device import rootfs_fixture
from profile_models import digits_batches, quantize_qdq, small_cnn

FAST = {"warmup": 1, "min_runs": 3, "min_seconds": 0.0, "max_seconds": 20.0}


def test_not_set_up_is_unavailable_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "empty-cache"))
    m = small_cnn(tmp_path / "c.onnx")
    res = profile_models({"c": m}, "arm64-emulated", **FAST)["c"]
    assert res["status"] == "unavailable" and "edgekit targets setup arm64-emulated" in res["reason"]
    assert "p50_ms" not in res


@pytest.mark.skipif(not shutil.which("debootstrap"), reason="debootstrap is installed by .ci/run")
def test_failed_setup_leaves_no_half_built_rootfs(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEKIT_CACHE", str(cache))
    with pytest.raises(TargetError, match="debootstrap"):
        emulation.setup(mirror="http://127.0.0.1:9/debian")  # nothing listens on the discard port
    assert not (cache / "arm64-rootfs").exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".arm64-rootfs.tmp")]


@pytest.fixture(scope="module")
def rootfs():
    yield from rootfs_fixture()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("arm-models")
    fp32 = small_cnn(d / "model.fp32.onnx")
    int8 = quantize_qdq(fp32, d / "model.int8.onnx", digits_batches(32))
    return {"fp32": fp32, "int8": int8}


@pytest.mark.slow
def test_setup_is_idempotent(rootfs):
    t0 = time.monotonic()
    again = emulation.setup()
    assert time.monotonic() - t0 < 10
    assert again["built"] == rootfs["built"]  # reused, not rebuilt


@pytest.mark.slow
def test_arm_outputs_match_x86_and_timings_are_labelled_emulated(rootfs, models):
    x = digits_batches(4)
    feeds = [{"x": x[i:i + 1]} for i in range(4)]
    arm = profile_models(models, "arm64-emulated", inputs=feeds, return_outputs=True, **FAST)
    native = profile_models(models, "x86-laptop", inputs=feeds, **FAST)
    for kind, path in models.items():
        r = arm[kind]
        assert r["status"] == "ok", r
        assert r["emulated"] is True and r["target"] == "arm64-emulated" and r["provider"] == "CPUExecutionProvider"
        assert r["threads"] == 1 and r["runs"] >= 3 and r["p50_ms"] > 0 and r["precision"] == kind
        assert r["arm_vs_host"]["ok"] is True, r["arm_vs_host"]
        assert ratio(r, native[kind]) is None  # emulated and native timings never mix
        ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds[0])[0]
        got = r["outputs"]["logits"]
        assert got.shape == ref.shape == (1, 10)
        diff = float(np.max(np.abs(got - ref)))
        if kind == "fp32":
            assert diff <= 1e-4 * max(1.0, float(np.abs(ref).max())), diff
        else:
            q = _output_quantum(path)
            assert q and diff <= q * 1.0001, (diff, q)  # INT8: exact or one quantum
    assert ratio(arm["int8"], arm["fp32"]) is not None  # two emulated figures do compare
    assert any("QLinear" in op or "Integer" in op for op in arm["int8"]["op_breakdown"])


@pytest.mark.slow
def test_runner_selftest_runs_under_qemu(rootfs, models, tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(models["int8"], bundle / "model.onnx")
    x = digits_batches(1)
    ref = ort.InferenceSession(models["int8"], providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.savez(bundle / "selftest.npz", x=x)
    np.savez(bundle / "expected.npz", logits=ref)
    (bundle / "bundle.json").write_text(json.dumps({"model": "model.onnx", "selftest": {
        "inputs": "selftest.npz", "expected": "expected.npz", "atol": 1e-3}}))
    p = emulation.run_python([str(RUNNER_PATH), "selftest", "--bundle", str(bundle)], timeout=300)
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert p.returncode == 0 and rep["ok"] is True and rep["machine"] == "aarch64", (rep, p.stderr[-500:])
