"""Damaged or unusable caches cost time, never the run: the calibration cache (quant-calib/<key>.json),
Numba's kernel cache (NUMBA_CACHE_DIR, and the device runner's $XDG_CACHE_HOME/edgekit/numba), and a
cache location that is not a directory."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgekit.prepost as pp
from edgekit.dataset import Dataset
from edgekit.fsutil import CacheDirError, cache_dir
from edgekit.quant import cache as qcache
from edgekit.quant import static
from edgekit.quant.spec import QuantSpec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def gemm(tmp_path):
    r = np.random.default_rng(3)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], "fc")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
                          [numpy_helper.from_array(r.normal(size=(8, 8)).astype(np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "m.onnx"))
    prep = tmp_path / "prep.onnx"
    static.preprocess(tmp_path / "m.onnx", prep)
    return prep, Dataset({"x": r.normal(size=(32, 8)).astype(np.float32)})


def _quantize(prep, data, dest, cache_root=None):
    return static.quantize(prep, dest, data, QuantSpec(), calib_size=32, input_names=["x"], cache_root=cache_root)


# ------------------------------------------------------------------------------ calibration cache

@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty-object", "null", "no-ranges", "directory"])
def test_damaged_calibration_cache_entry_is_computed_again(gemm, tmp_path, capsys, damage):
    # each of these failed every later run with the same inputs ("prep.onnx: static quantization ...
    # failed: JSONDecodeError" / "KeyError: 'calibration_method'"), until the user found the file
    prep, data = gemm
    cache = tmp_path / "cache"
    first = _quantize(prep, data, tmp_path / "a.onnx", cache)
    entry = cache / f"{first['cache_key']}.json"
    good = entry.read_text()
    if damage == "directory":
        entry.unlink()
        entry.mkdir()
    else:
        entry.write_text({"garbage": "garbage{{{\n", "truncated": good[:len(good) // 2], "empty-object": "{}",
                          "null": "null", "no-ranges": json.dumps({**json.loads(good), "data": {}})}[damage])
    capsys.readouterr()
    again = _quantize(prep, data, tmp_path / "b.onnx", cache)
    err = capsys.readouterr().err
    assert again["calibration"] == "computed" and again["cache_key"] == first["cache_key"]
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()
    notes = [ln for ln in err.splitlines() if "damaged calibration cache entry" in ln]
    assert len(notes) == 1 and str(entry) in notes[0] and notes[0].startswith("edgekit: note: ")
    # rewritten whole, and a hit from then on
    assert entry.is_file() and qcache.damage(entry) is None
    assert json.loads(entry.read_text()) == json.loads(good)
    assert _quantize(prep, data, tmp_path / "c.onnx", cache)["calibration"] == "cached"
    assert "damaged" not in capsys.readouterr().err
    assert sorted(p.name for p in cache.iterdir()) == [entry.name]


@pytest.mark.parametrize("var", ["XDG_CACHE_HOME", "EDGEKIT_CACHE"])
def test_cache_location_that_is_a_file_quantizes_without_the_cache(gemm, tmp_path, capsys, monkeypatch, var):
    # an internal NotADirectoryError (XDG_CACHE_HOME) or FileExistsError (EDGEKIT_CACHE) after the FP32 work
    prep, data = gemm
    afile = tmp_path / "afile"
    afile.write_text("x\n")
    monkeypatch.delenv("EDGEKIT_CACHE", raising=False)
    monkeypatch.setenv(var, str(afile))
    # the note, and the stand-in directory, are per process
    monkeypatch.setattr(qcache, "_dir_noted", False, raising=False)
    monkeypatch.setattr(qcache, "_private", None, raising=False)
    with pytest.raises(CacheDirError, match=f"^{afile}.*cannot be edgekit's cache directory .*set by {var}"):
        cache_dir()
    a = _quantize(prep, data, tmp_path / "a.onnx")
    b = _quantize(prep, data, tmp_path / "b.onnx")  # tuning trials in one run still share their ranges
    assert a["calibration"] == "computed" and b["calibration"] == "cached"
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "without the cache" in ln]
    assert len(notes) == 1 and str(afile) in notes[0]
    assert afile.read_text() == "x\n"


# ------------------------------------------------------------------------------ Numba kernel cache

_KERNEL = ("import json, sys, numpy as np\n"
           "from edgekit.prepost import _jit\n"
           "import edgekit.prepost\n"
           "d = _jit.get('decode_boxes')\n"
           "print(json.dumps({'cache': _jit.compile_info('decode_boxes')['cache']}))\n")


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "EDGEKIT_"))}
    env.update(PYTHONPATH=str(REPO), **extra)
    return env


def _run(code, env, *args):
    r = subprocess.run([sys.executable, "-B", "-c", code, *args], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr


def _damage(files, how):
    assert files
    for f in files:
        data = f.read_bytes()
        f.write_bytes(b"garbage\n" if how == "garbage" else data[:len(data) // 2])


@pytest.mark.slow
@pytest.mark.skipif(not pp.HAVE_NUMBA, reason="numba is a required dependency of edgekit")
@pytest.mark.parametrize("what,how", [("nbi", "garbage"), ("nbc", "truncated")])
def test_damaged_numba_cache_entry_is_compiled_again(tmp_path, what, how):
    # "edgekit: internal error: ValueError: invalid literal for int() with base 10: 'arbage\n'" from every
    # command using the kernel, for as long as the file stayed
    env = _env(NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    assert _run(_KERNEL, env)[0]["cache"] == "miss"
    _damage(list((tmp_path / "numba").rglob(f"*_decode_kernel-*.{what}")), how)
    got, err = _run(_KERNEL, env)
    assert got["cache"] == "miss"
    assert "RuntimeWarning: edgekit.prepost: dropped the damaged Numba cache entry" in err
    assert str(tmp_path / "numba") in err and "decode_boxes" in err
    got, err = _run(_KERNEL, env)  # written again: loaded from then on
    assert got["cache"] == "hit" and "Warning" not in err


_RUNNER = ("import json, sys, numpy as np; sys.path.insert(0, sys.argv[1]); import edgekit_runner as r\n"
           "pipe = r.load_prepost(sys.argv[1], {'post': [{'op': 'decode_boxes'}]})\n"
           "out = pipe.postprocess(np.array([[10, 20, 4, 6]], np.float32))\n"
           "from edgekit.prepost import _jit\n"
           "print(json.dumps({'out': out.tolist(), 'cache': _jit.compile_info('decode_boxes')['cache']}))\n")


@pytest.mark.slow
@pytest.mark.skipif(not pp.HAVE_NUMBA, reason="numba is a required dependency of edgekit")
def test_device_runner_recompiles_over_a_damaged_kernel_cache(tmp_path):
    # the runner keeps its kernels in $XDG_CACHE_HOME/edgekit/numba/<version>; damaged, every pre/post
    # step on the device failed
    v = tmp_path / "dev" / "versions" / "fp32-1111"
    shutil.copytree(REPO / "edgekit" / "prepost", v / "edgekit" / "prepost",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (v / "edgekit" / "__init__.py").write_text("")
    shutil.copyfile(REPO / "edgekit" / "runner" / "edgekit_runner.py", v / "edgekit_runner.py")
    env = _env(XDG_CACHE_HOME=str(tmp_path / "home-cache"))
    env["PYTHONPATH"] = ""
    first, _ = _run(_RUNNER, env, str(v))
    _damage(list((tmp_path / "home-cache" / "edgekit" / "numba").rglob("*.nbi")), "garbage")
    got, err = _run(_RUNNER, env, str(v))
    assert got["out"] == first["out"] == [[8.0, 17.0, 12.0, 23.0]] and got["cache"] == "miss"
    assert "dropped the damaged Numba cache entry" in err
    assert _run(_RUNNER, env, str(v))[0]["cache"] == "hit"
