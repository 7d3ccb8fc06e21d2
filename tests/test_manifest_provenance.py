"""A manifest records enough to reproduce its run: every option at the value used, the data read (path,
format, sample count, content hash) and the model's code and weights (sweep24 F2)."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import tracemalloc

import numpy as np
import pytest

from edgekit.artifact import Manifest, load_manifest
from tests.cliutil import run_cli as _run
from edgekit.dataset import Dataset
from edgekit.fsutil import sha256_file
from tests.test_quant import conv_model

NET = '''
import torch, torch.nn as nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
'''


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("EDGEKIT_QUIET", "1")


def _data(tmp_path, n=40, size=16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 1, size, size)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x)
    np.savez(tmp_path / "eval.npz", input=x, y=rng.integers(0, 4, n))
    return tmp_path / "calib.npy", tmp_path / "eval.npz"


def test_quantize_settings_hold_every_option_at_its_effective_value(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    model = conv_model(tmp_path / "net.onnx")
    calib, _ = _data(tmp_path)
    # was: {mode, method, format, tolerance, target, calib, eval, max_trials: 12}, the same for --calib-size 16
    # (another INT8 file) and without it; --no-tune said max_trials 12
    assert _run(["quantize", str(model), "--calib", str(calib), "--eval", str(calib), "--method", "minmax",
                 "--no-tune", "--calib-size", "16", "--per-tensor", "--weight-rounding", "nearest",
                 "--bias-correction", "off", "-o", str(tmp_path / "out")]) == 0
    man = load_manifest(tmp_path / "out")
    s = man.settings
    assert (s["calib_size"], s["tune"], s["max_trials"], s["per_channel"]) == (16, False, 1, False), s
    assert (s["weight_rounding"], s["bias_correction"], s["method"]) == ("nearest", "off", "minmax"), s
    assert {"preprocess", "format", "tolerance", "target", "calib", "eval", "mode"} <= set(s)
    # calib and eval are one file: one hash, the one sha256sum prints
    want = {"path": str(calib), "format": "npy", "samples": 40, "sha256": sha256_file(calib), "hash_of": "file"}
    assert man.data == {"calib": want, "eval": want}


def test_quantize_calib_size_is_capped_at_the_samples_there_are(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    model = conv_model(tmp_path / "net.onnx")
    calib, _ = _data(tmp_path)
    assert _run(["quantize", str(model), "--calib", str(calib), "--method", "minmax", "--no-tune",
                 "--weight-rounding", "nearest", "-o", str(tmp_path / "out")]) == 0
    s = load_manifest(tmp_path / "out").settings
    assert (s["calib_size"], s["per_channel"], s["eval"]) == (40, None, None)  # 256 asked, 40 there


def test_folder_of_images_is_hashed_over_the_images_read(tmp_path):
    from PIL import Image

    from edgekit.artifact import TensorSpec, data_record
    from edgekit.calibration import read_dataset

    folder = tmp_path / "img"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "._0.png").write_bytes(b"AppleDouble")  # hidden: never read, so not part of the data
    (folder / "notes.txt").write_text("not an image")
    rec = data_record(folder, read_dataset(folder, [TensorSpec("x", ["batch", 3, 6, 6], "float32")]))
    # as `cd img && sha256sum $(ls *.png) | sha256sum` prints it
    lines = "".join(f"{sha256_file(folder / n)}  {n}\n" for n in ("0.png", "1.png", "2.png"))
    assert rec == {"path": str(folder), "format": "images", "samples": 3, "hash_of": "folder",
                   "sha256": hashlib.sha256(lines.encode()).hexdigest()}
    (folder / "1.png").rename(folder / "3.png")  # same bytes, other order of samples
    assert data_record(folder, None)["sha256"] != rec["sha256"]


def test_large_data_file_is_hashed_streamed(tmp_path):
    from edgekit.artifact import data_record

    big = tmp_path / "big.npy"
    np.save(big, np.zeros((32, 1 << 18), np.float32))  # 32 MiB
    tracemalloc.start()
    try:
        rec = data_record(big, None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rec["sha256"] == hashlib.sha256(big.read_bytes()).hexdigest()
    assert peak < 8 << 20, peak


def test_data_without_a_file_is_hashed_over_samples_and_labels():
    from edgekit.artifact import data_record

    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    a = data_record(None, Dataset({"input": x}, np.zeros(6, np.int64), "zoo:x held-out split"))
    b = data_record(None, Dataset({"input": x}, np.ones(6, np.int64), "zoo:x held-out split"))
    assert (a["path"], a["format"], a["samples"], a["hash_of"]) == (None, "arrays", 6, "samples")
    assert a["sha256"] != b["sha256"]


def test_python_model_records_its_code_and_weights(tmp_path):
    import torch

    from edgekit.loader import load_source

    (tmp_path / "net.py").write_text(NET)
    spec = importlib.util.spec_from_file_location("prov_net", tmp_path / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.save(mod.build().state_dict(), tmp_path / "w.pt")
    src = load_source(f"{tmp_path / 'net.py'}:build", weights=str(tmp_path / "w.pt"), input_shape=(1, 1, 8, 8))
    p = src.provenance()
    # was: no hash of net.py (other code gives another model from the same state dict)
    assert p["source_file"] == str(tmp_path / "net.py") and p["source_sha256"] == sha256_file(tmp_path / "net.py")
    assert p["weights"] == str(tmp_path / "w.pt") and p["weights_sha256"] == sha256_file(tmp_path / "w.pt")


def test_compress_load_records_data_and_effective_settings(tmp_path):
    from edgekit import pipeline
    from edgekit.pipeline import Run, stage_load

    (tmp_path / "net.py").write_text(NET)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "cal.npy", rng.normal(size=(12, 1, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "tr.npz", input=rng.normal(size=(10, 1, 8, 8)).astype(np.float32), y=rng.integers(0, 4, 10))
    cfg = pipeline.resolve(f"{tmp_path / 'net.py'}:build", output=str(tmp_path / "out"), calib=str(tmp_path / "cal.npy"),
                           train=str(tmp_path / "tr.npz"), quantize={"tune": False}, prune={"ratio": 0.5})
    run = Run(cfg, tmp_path / "staging")
    run.manifest.settings = pipeline.effective_settings(cfg) if hasattr(pipeline, "effective_settings") \
        else cfg.to_dict()  # before the fix: the whole config as given
    stage_load(run)
    m = run.manifest
    # was: settings.calib 'cal.npy' and settings.train 'tr.npz' only; max_trials 12 with tune off; distill null
    assert m.data["calib"]["sha256"] == sha256_file(tmp_path / "cal.npy") and m.data["calib"]["samples"] == 12
    assert m.data["train"]["sha256"] == sha256_file(tmp_path / "tr.npz") and m.data["train"]["format"] == "npz"
    assert "eval" not in m.data  # none given: a slice of the calibration data stands in (the load stage says so)
    q = m.settings["quantize"]
    assert (q["max_trials"], q["calib_size"], m.settings["distill"]["enabled"]) == (1, 12, True)
    assert m.source["source_sha256"] == sha256_file(tmp_path / "net.py")


def test_prune_manifest_records_load_options_data_and_targets(tmp_path):
    (tmp_path / "net.py").write_text(NET)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "c.npy", rng.normal(size=(16, 1, 8, 8)).astype(np.float32))
    assert _run(["prune", f"{tmp_path / 'net.py'}:build", "--ratio", "0.5", "--no-distill", "--calib",
                 str(tmp_path / "c.npy"), "--input-shape", "1,1,8,8", "-o", str(tmp_path / "out")]) == 0
    man = load_manifest(tmp_path / "out")
    # was: {model, prune, distill, seed, preprocess}: no data, weights, input shape or target
    assert man.settings["calib"] == str(tmp_path / "c.npy") and man.settings["input_shape"] == [1, 1, 8, 8]
    assert man.settings["targets"] and "weights" in man.settings and "trust_pickle" in man.settings
    assert man.data["calib"]["sha256"] == sha256_file(tmp_path / "c.npy")
    assert man.source["source_sha256"] == sha256_file(tmp_path / "net.py")


def test_older_manifest_without_data_still_loads(tmp_path):
    d = Manifest(settings={"tag": "old"}).to_dict()
    del d["data"]
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    man = load_manifest(tmp_path)
    assert man.data == {} and man.settings == {"tag": "old"}
    assert Manifest.from_dict(man.to_dict()).data == {}
