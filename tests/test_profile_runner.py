"""The device runner as devices run it: a lone file with numpy + onnxruntime, JSON on stdout."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

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


def _run(runner, *args, cwd, env=None):
    # -s -E: no user site or PYTHON* variables; the copied file cannot see the edgekit package
    p = subprocess.run([sys.executable, "-s", "-E", str(runner), *map(str, args)], capture_output=True,
                       text=True, cwd=cwd, timeout=120, env={**os.environ, **(env or {})})
    return p.returncode, json.loads(p.stdout.strip().splitlines()[-1]), p.stderr


def test_runner_imports_only_numpy_and_onnxruntime():
    src = RUNNER_PATH.read_text()
    imported = {line.split()[1].split(".")[0] for line in src.splitlines()
                if line.strip().startswith(("import ", "from ")) and not line.startswith("from __future__")}
    # the standard library (hashlib names the Numba cache of each bundle, shutil drops removed versions'
    # caches, stat and atexit check and clean a private fallback cache, statistics takes the median cold
    # start) plus numpy and onnxruntime
    assert imported <= {"argparse", "json", "os", "platform", "re", "sys", "tempfile", "time", "numpy",
                        "onnxruntime", "resource", "bisect", "ctypes", "importlib", "hashlib", "shutil", "stat",
                        "atexit", "statistics", "contextlib", "io"}, imported


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
    with np.load(tmp_path / "y.npz") as z:  # every sample of in.npz, one row each
        assert rc == 0 and rep["samples"] == 3 and z["y"].shape == (3, 256)
        assert all(np.allclose(row, ref[0][0], atol=1e-5) for row in z["y"])

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


def _rows_of(model, x):
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


def test_run_keeps_every_sample(tmp_path, lone_runner):
    x = np.random.default_rng(0).standard_normal((70, 32)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    want = _rows_of(matmul_chain(tmp_path / "ref.onnx", 2, k=32), x)  # same weights (seed) for every batch
    # dynamic batch (more samples than one chunk), fixed batch 4 (10 = 4 + 4 + 2, the last padded), fixed batch 1
    for name, batch in (("dyn", "batch"), ("f4", 4), ("f1", 1)):
        model = matmul_chain(tmp_path / f"{name}.onnx", 2, k=32, batch=batch)
        n = 10 if name == "f4" else 70
        np.savez(tmp_path / "x.npz", x=x[:n])
        rc, rep, _ = _run(lone_runner, "run", "--model", model, "--inputs", tmp_path / "x.npz",
                          "--out", tmp_path / "y.npz", cwd=tmp_path)
        assert rc == 0 and rep["samples"] == n and rep["outputs"] == {"y": [n, 32]}, (name, rep)
        with np.load(tmp_path / "y.npz") as z:
            np.testing.assert_allclose(z["y"], want[:n], atol=1e-5)
    two = tmp_path / "two.npz"
    np.savez(two, x=x[:5], x2=x[:4])
    from profile_models import _save
    from onnx import TensorProto, helper

    add = _save([helper.make_node("Add", ["x", "x2"], ["y"])], {},
                [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 32]) for n in ("x", "x2")],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])], tmp_path / "add.onnx")
    rc, rep, _ = _run(lone_runner, "run", "--model", add, "--inputs", two, "--out", tmp_path / "y.npz", cwd=tmp_path)
    assert rc == 1 and rep["reason"] == ("ValueError: inputs hold different numbers of samples (x: 5, x2: 4); "
                                         "give every input the same leading sample axis")


def _flashed(tmp_path, prepost=None):
    """make_outdir's linear model (post: softmax_topk k=2) flashed to a mounted-path device; its version dir."""
    from edgekit.flash import collect_devices, flash_many, read_bundle
    from edgekit.flash.bundle import build_bundle

    from flash_fixtures import make_outdir

    out = make_outdir(tmp_path / "out")
    if prepost is not None:
        man = json.loads((out / "manifest.json").read_text())
        man["prepost"] = prepost
        (out / "manifest.json").write_text(json.dumps(man))
    build_bundle(out, tmp_path / "m.ekb", artifact="fp32")
    dev = tmp_path / "dev"
    res = flash_many(collect_devices([str(dev)]), read_bundle(tmp_path / "m.ekb", tmp_path))[0]
    assert res.status == "flashed", res
    return dev / "current"


# the runner under a Python where numba cannot be imported, as on a device without it
NO_NUMBA = ("import runpy, sys; sys.modules['numba'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")


def test_run_on_a_flashed_bundle_applies_its_post_steps(tmp_path):
    from edgekit.prepost import Pipeline

    cur = _flashed(tmp_path)
    meta = json.loads((cur / "bundle.json").read_text())
    assert meta["prepost"] == {"pre": [], "post": [{"op": "softmax_topk", "k": 2}]}
    x = np.random.default_rng(1).standard_normal((7, 16)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    logits = _rows_of(cur / "model.fp32.onnx", x)
    want = Pipeline.from_spec(meta["prepost"]).postprocess([logits], names=["y"])
    args = ["run", "--model", cur / "model.fp32.onnx", "--inputs", tmp_path / "x.npz", "--out", tmp_path / "p.npz"]
    rc, rep, err = _run(cur / "edgekit_runner.py", *args, cwd=tmp_path)
    assert rc == 0, (rep, err)
    # the package shipped in the bundle ran, not the edgekit installed here
    assert rep["prepost"]["post"] == ["softmax_topk"] and rep["prepost"]["package"] == str(cur / "edgekit" / "prepost")
    assert rep["samples"] == 7 and rep["outputs"] == {"probs": [7, 2], "indices": [7, 2]}
    with np.load(tmp_path / "p.npz") as z:
        np.testing.assert_array_equal(z["indices"], want["indices"])
        np.testing.assert_allclose(z["probs"], want["probs"], rtol=1e-5)
    p = subprocess.run([sys.executable, "-s", "-E", "-c", NO_NUMBA, str(cur / "edgekit_runner.py"),
                        *map(str, args[:-1]), str(tmp_path / "q.npz")], capture_output=True, text=True, cwd=tmp_path,
                       timeout=120)
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert p.returncode == 0 and rep["prepost"]["backend"] == "numpy", (rep, p.stderr)
    with np.load(tmp_path / "q.npz") as z:
        np.testing.assert_array_equal(z["indices"], want["indices"])
    # --no-prepost: the model's own outputs, every row
    rc, rep, _ = _run(cur / "edgekit_runner.py", *args, "--no-prepost", cwd=tmp_path)
    assert rc == 0 and rep["outputs"] == {"y": [7, 4]} and "--no-prepost" in rep["prepost"]
    with np.load(tmp_path / "p.npz") as z:
        np.testing.assert_allclose(z["y"], logits, atol=1e-6)
    rc, rep, _ = _run(cur / "edgekit_runner.py", "selftest", "--bundle", cur, cwd=tmp_path)
    assert rc == 0 and rep["ok"] is True  # the model's self-test, pre/post aside


def test_run_on_a_bundle_without_prepost_steps(tmp_path):
    cur = _flashed(tmp_path, prepost={})
    shutil.rmtree(cur / "edgekit")  # nothing to import: the runner must not need it
    x = np.ones((3, 16), np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    rc, rep, err = _run(cur / "edgekit_runner.py", "run", "--bundle", cur, "--inputs", tmp_path / "x.npz",
                        "--out", tmp_path / "y.npz", cwd=tmp_path)
    assert rc == 0 and rep["outputs"] == {"y": [3, 4]} and "prepost" not in rep, (rep, err)


def _image_bundle(lone_runner, channels: int, classes: int, spec: dict):
    """A bundle-like directory beside the runner: x[batch, C, 8, 8] -> Flatten -> MatMul w, bundle.json with
    `spec`, and the edgekit/prepost package. Returns (root, w)."""
    from onnx import TensorProto, helper

    from edgekit import prepost
    from profile_models import _save

    root = lone_runner.parent
    shutil.copytree(Path(prepost.__file__).parent, root / "edgekit" / "prepost",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "edgekit" / "__init__.py").write_text("")
    w = np.random.default_rng(0).normal(size=(channels * 64, classes)).astype(np.float32)
    _save([helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["logits"])], {"w": w},
          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels, 8, 8])],
          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])], root / "m.onnx")
    (root / "bundle.json").write_text(json.dumps({"model": "m.onnx", "prepost": spec}))
    return root, w


def test_run_with_pre_steps_reads_the_raw_input(tmp_path, lone_runner):
    from edgekit.prepost import Pipeline

    spec = {"pre": [{"op": "resize_normalize", "size": [8, 8]}], "post": [{"op": "softmax_topk", "k": 3}]}
    root, _ = _image_bundle(lone_runner, 3, 10, spec)
    imgs = np.random.default_rng(1).integers(0, 256, (5, 20, 30, 3), dtype=np.uint8)
    np.save(tmp_path / "raw.npy", imgs)
    rc, rep, err = _run(lone_runner, "run", "--bundle", root, "--inputs", tmp_path / "raw.npy",
                        "--out", tmp_path / "o.npz", cwd=tmp_path, env={"EDGEKIT_PREPOST_NUMBA": "0"})  # no JIT wait
    assert rc == 0 and rep["samples"] == 5 and rep["prepost"]["pre"] == ["resize_normalize"], (rep, err)
    pipe = Pipeline.from_spec(spec)
    x = pipe.preprocess(imgs)
    want = pipe.postprocess(ort.InferenceSession(str(root / "m.onnx")).run(None, {"x": x}))
    with np.load(tmp_path / "o.npz") as z:
        np.testing.assert_array_equal(z["indices"], want["indices"])
        np.testing.assert_allclose(z["probs"], want["probs"], rtol=1e-5)
    rc, rep, _ = _run(lone_runner, "run", "--bundle", root, "--out", tmp_path / "o.npz", cwd=tmp_path)
    assert rc == 1 and "needs a raw input" in rep["reason"]


def test_run_reads_a_stack_of_grey_frames_as_frames(tmp_path, lone_runner):
    root, w = _image_bundle(lone_runner, 1, 4, {"pre": [{"op": "resize_normalize", "size": [8, 8]}]})
    frames = np.random.default_rng(1).integers(0, 256, (30, 8, 8), dtype=np.uint8)  # a stack of Pillow 'L' images
    np.save(tmp_path / "raw.npy", frames)
    rc, rep, err = _run(lone_runner, "run", "--bundle", root, "--inputs", tmp_path / "raw.npy",
                        "--out", tmp_path / "o.npz", cwd=tmp_path, env={"EDGEKIT_PREPOST_NUMBA": "0"})
    # it was read as one 8 x 8 image of 8 channels: "got shape [1, 8, 8, 8]"
    assert rc == 0 and rep["samples"] == 30, (rep, err)
    with np.load(tmp_path / "o.npz") as z:
        got = z[next(iter(z.files))]
    want = (frames.reshape(30, 64).astype(np.float32) / 255) @ w
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
