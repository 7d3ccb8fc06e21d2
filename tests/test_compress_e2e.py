"""End to end through the CLI, as a user runs it: zoo model, a user model, an ONNX model, bad inputs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.fsutil import sha256_file

NET = Path(__file__).parent / "models" / "tiny_net.py"
FAST = ["--no-tune"]


def edgekit(*args, check=False):
    env = dict(os.environ, EDGEKIT_QUIET="1")
    p = subprocess.run([sys.executable, "-m", "edgekit", *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=600)
    if check and p.returncode:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


@pytest.mark.slow
def test_digits_run_manifest_matches_files(digits_run):
    m = json.loads((digits_run / "manifest.json").read_text())
    kinds = {a["kind"] for a in m["artifacts"]}
    assert {"fp32", "int8"} <= kinds
    for a in m["artifacts"]:
        p = digits_run / a["path"]
        assert sha256_file(p) == a["sha256"] and p.stat().st_size == a["bytes"]
        assert a["metrics"]["name"] == "accuracy" and a["metrics"]["n"] >= 500
        lat = a["latency"]["x86-laptop"]
        assert lat["status"] == "ok" and 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
    fp32 = next(a for a in m["artifacts"] if a["kind"] == "fp32")
    assert fp32["metrics"]["value"] > 0.95 and fp32["verify"]["max_abs_diff"] < 1e-3
    assert {s["name"]: s["status"] for s in m["stages"]} == {
        "load": "done", "prune": "skipped", "distill": "skipped", "export": "done", "quantize": "done",
        "evaluate": "done", "profile": "done", "report": "done"}
    for key in ("torch", "onnx", "onnxruntime", "edgekit"):
        assert m["versions"][key]
    assert m["host"]["cpu"] and m["source"]["weights_sha256"]
    assert (digits_run / "report.md").stat().st_size > 200
    assert m["recommended"]["x86-laptop"]["path"] in {a["path"] for a in m["artifacts"]}


@pytest.mark.slow
def test_rerun_never_destroys_previous_run(digits_run):
    before = {p.name: sha256_file(p) for p in digits_run.iterdir() if p.is_file()}
    r = edgekit("compress", "zoo:digits-cnn", "-o", digits_run, "--quantize", "none")
    assert r.returncode == 2 and "--overwrite" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert {p.name: sha256_file(p) for p in digits_run.iterdir() if p.is_file()} == before


@pytest.fixture(scope="module")
def user_model(tmp_path_factory):
    """tests/models/tiny_net.py trained for a few seconds on the real 8x8 digits."""
    import torch
    from importlib.util import module_from_spec, spec_from_file_location
    from sklearn.datasets import load_digits

    d = tmp_path_factory.mktemp("user")
    spec = spec_from_file_location("tiny_net", NET)
    mod = module_from_spec(spec)
    spec.loader.exec_module(mod)
    digits = load_digits()
    x = (digits.images[:, None] / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    torch.manual_seed(0)
    net = mod.build()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(6):
        for i in range(0, 1400, 64):
            loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x[i:i + 64])), torch.from_numpy(y[i:i + 64]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.save(net.state_dict(), d / "tiny.pt")
    np.save(d / "calib.npy", x[:200])
    np.savez(d / "eval.npz", input=x[1400:], y=y[1400:])
    return d


@pytest.mark.slow
def test_user_model_end_to_end(user_model, tmp_path):
    out = tmp_path / "out"
    r = edgekit("compress", f"{NET}:build", "--weights", user_model / "tiny.pt", "--calib", user_model / "calib.npy",
                "--eval", user_model / "eval.npz", "-o", out, "--json", *FAST, check=True)
    m = json.loads(r.stdout)
    fp32 = next(a for a in m["artifacts"] if a["kind"] == "fp32")
    int8 = next(a for a in m["artifacts"] if a["kind"] == "int8")
    assert fp32["metrics"]["value"] > 0.8 and fp32["metrics"]["n"] == len(np.load(user_model / "eval.npz")["y"])
    assert int8["bytes"] < fp32["bytes"] and int8["parent"] == fp32["path"]
    assert abs(int8["metrics"]["drop_abs"]) < 0.1
    assert m["source"]["weights_sha256"] == sha256_file(user_model / "tiny.pt")
    # the same settings can be replayed from the recorded recipe
    assert "calib" in (out / "compress.toml").read_text()


@pytest.mark.slow
def test_onnx_model_runs_only_onnx_stages(digits_run, user_model, tmp_path):
    out = tmp_path / "onnx-out"
    calib = tmp_path / "c.npy"
    from edgekit.zoo.digits_cnn import digits_arrays

    xtr, xte, ytr, yte = digits_arrays(0)
    np.save(calib, xtr[:64])
    np.savez(tmp_path / "e.npz", input=xte[:100], y=yte[:100])
    r = edgekit("compress", digits_run / "model.fp32.onnx", "--calib", calib, "--eval", tmp_path / "e.npz",
                "-o", out, "--json", *FAST, check=True)
    m = json.loads(r.stdout)
    st = {s["name"]: s["status"] for s in m["stages"]}
    assert st["prune"] == st["distill"] == "not-applicable" and st["quantize"] == "done"
    assert m["source"]["kind"] == "onnx"


@pytest.mark.parametrize("args,needle", [
    (["compress", "missing.py:build", "--input-shape", "1,1,8,8", "-o", "{tmp}/o"], "missing.py: file not found"),
    (["compress", "zoo:digits-cnn", "--calib", "{tmp}/none.npy", "-o", "{tmp}/o"], "none.npy"),
    (["compress", "zoo:nope", "-o", "{tmp}/o"], "no such zoo model"),
    (["compress", "{tmp}/bad.onnx", "-o", "{tmp}/o"], "bad.onnx: not a valid ONNX model"),
    (["compress", f"{NET}:build", "--input-shape", "1,3,8,8", "--quantize", "none", "-o", "{tmp}/o"],
     "forward() failed"),
    (["compress", "zoo:digits-cnn", "--tolerance", "much", "-o", "{tmp}/o"], "tolerance"),
    (["compress", "zoo:digits-cnn", "--target", "no-such-device", "-o", "{tmp}/o"], "no-such-device"),
    (["compress", "zoo:digits-cnn", "-o", "{tmp}/afile"], "afile: exists and is not a directory"),
    (["compress", f"{NET}:build", "--calib", "{tmp}/empty", "-o", "{tmp}/o"], "empty: no images"),
])
def test_bad_input_one_line_exit_2(tmp_path, args, needle):
    (tmp_path / "bad.onnx").write_bytes(b"junk")
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    r = edgekit(*[a.format(tmp=tmp_path) for a in args])
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
    assert not [p for p in tmp_path.iterdir() if ".staging-" in p.name]


def test_help_does_not_import_torch():
    code = "import sys; from edgekit.cli import cli; print('torch' in sys.modules, 'onnxruntime' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.split() == ["False", "False"]
