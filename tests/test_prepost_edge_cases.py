"""edgekit.prepost on inputs at the edges of their types: integer scores, float64 maps, out-of-range spec
values, empty batches, and the device runner's cache and environment."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit import prepost as pp
from edgekit.prepost import PrepostError

BACKENDS = ["numba", "numpy"] if pp.HAVE_NUMBA else ["numpy"]


def _greedy_nms(boxes, scores, thr):
    """The textbook loop in plain Python: best score first (ties: lower index), drop IoU > thr."""
    order = sorted(range(len(scores)), key=lambda i: (-int(scores[i]), i))
    keep = []
    for i in order:
        ok = True
        for j in keep:
            (a1, b1, a2, b2), (c1, d1, c2, d2) = boxes[i], boxes[j]
            inter = max(min(a2, c2) - max(a1, c1), 0) * max(min(b2, d2) - max(b1, d1), 0)
            union = (a2 - a1) * (b2 - b1) + (c2 - c1) * (d2 - d1) - inter
            if union > 0 and inter / union > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


# ------------------------------------------------------------------------------------------- nms


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64", "int8", "int16"])
def test_nms_integer_scores_rank_by_value(dtype, backend):
    # a quantized head's minimum score must not outrank the real detection it overlaps
    lo = np.iinfo(dtype).min
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([lo, 100, 50], dtype)
    assert pp.nms(boxes, scores, 0.5, backend=backend).tolist() == [1, 2]
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 60, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (300, 2))], 1)
    info = np.iinfo(dtype)
    scores = rng.integers(max(info.min, -50), min(info.max, 50), 300, endpoint=True).astype(dtype)
    scores[::7] = info.min
    scores[::11] = info.max
    keep = pp.nms(boxes, scores, 0.45, backend=backend)
    assert keep.tolist() == _greedy_nms(boxes.tolist(), scores.tolist(), 0.45)
    kept = pp.nms(boxes, scores, 0.45, score_threshold=0, backend=backend)
    assert kept.tolist() == [i for i in keep.tolist() if scores[i] >= 0]


# --------------------------------------------------------------------------------- argmax_segmentation


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "int32", "uint32", "int64", "uint64", "float32", "float16", "uint8"])
def test_argmax_segmentation_is_exact_for_every_dtype(dtype, backend):
    # values closer than float32's resolution are different classes, not ties
    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind == "f":
        x = (1000 + rng.normal(0, 1e-4, (2, 21, 16, 16))).astype(dtype)
    else:
        info = np.iinfo(dtype)
        base = min(info.max - 64, 2 ** 24 if info.bits == 32 else 2 ** 60 if info.bits == 64 else 0)
        x = (base + rng.integers(0, 20, (2, 21, 16, 16))).astype(dtype)
    ref = np.array([[[max(range(21), key=lambda c: (x[n, c, i, j], -c)) for j in range(16)] for i in range(16)]
                    for n in range(2)])
    np.testing.assert_array_equal(pp.argmax_segmentation(x, backend=backend), ref)
    np.testing.assert_array_equal(pp.argmax_segmentation(x.transpose(0, 2, 3, 1), "NHWC", backend=backend), ref)
    np.testing.assert_array_equal(pp.argmax_segmentation(x[1], backend=backend), ref[1])


@pytest.mark.parametrize("dtype", ["float64", "int32"])
def test_argmax_segmentation_float64_build_still_refuses_nan_and_ties_go_low(dtype):
    x = np.zeros((1, 3, 2, 2), dtype)
    x[0, 1] = x[0, 2] = 16777217
    assert pp.argmax_segmentation(x).tolist() == [[[1, 1], [1, 1]]]
    if dtype == "float64":
        x[0, 2, 1, 1] = np.nan
        with pytest.raises(PrepostError, match="NaN"):
            pp.argmax_segmentation(x)


# --------------------------------------------------------------------------------------- spec checks

INF = float("inf")
RESIZE = {"op": "resize_normalize", "size": [24, 24]}
SPEC_HOLES = {
    "k-inf": ({"post": [{"op": "softmax_topk", "k": INF}]},
              r"post\[0\] \(softmax_topk\): k: expected an integer, got inf"),
    "size-inf": ({"pre": [{**RESIZE, "size": [INF, 24]}]}, r"size\[0\]: expected an integer, got inf"),
    "max_det-inf": ({"post": [{"op": "nms", "max_detections": INF}]},
                    r"\(nms\): max_detections: expected an integer"),
    "max_det-nan": ({"post": [{"op": "nms", "max_detections": float("nan")}]}, r"max_detections: NaN is not allowed"),
    "max_length-inf": ({"pre": [{"op": "pad_truncate", "max_length": -INF}]}, r"max_length: expected an integer"),
    "pad_id-1e20": ({"pre": [{"op": "pad_truncate", "pad_id": 1e20}]},
                    r"\(pad_truncate\): pad_id: 1e\+20 is out of int64 range"),
    "pad_id-2**63": ({"pre": [{"op": "pad_truncate", "pad_id": 2 ** 63}]}, r"pad_id: \d+ is out of int64 range"),
    "pad_id-10**400": ({"pre": [{"op": "pad_truncate", "pad_id": 10 ** 400}]}, r"pad_id: \d+ is out of int64 range"),
    "mean-1e39": ({"pre": [{**RESIZE, "mean": 1e39}]},
                  r"\(resize_normalize\): mean: values must be within float32 range"),
    "std-tiny": ({"pre": [{**RESIZE, "std": [1e-37, 1, 1]}]}, r"mean/std: \(value - mean\) / std overflows float32"),
    "pad-huge": ({"pre": [{**RESIZE, "mean": 3e38, "std": 1, "pad_value": -3e38}]}, r"overflows float32"),
    "scale-1e39": ({"post": [{"op": "dequantize", "scale": [1e39, 1], "axis": 1}]},
                   r"\(dequantize\): scale: values must be within float32"),
    "scale-zp-count": ({"post": [{"op": "dequantize", "scale": [0.1, 0.2], "zero_point": [1, 2, 3], "axis": 1}]},
                       r"\(dequantize\): scale and zero_point must each have 1 value or one per channel.*"
                       r"scale 2, zero_point 3"),
    "per-channel-no-axis": ({"post": [{"op": "dequantize", "scale": [0.1, 0.2]}]},
                            r"\(dequantize\): axis: per-channel scale/zero_point \(2/1 values\) needs axis"),
}


@pytest.mark.parametrize("spec,msg", SPEC_HOLES.values(), ids=SPEC_HOLES.keys())
def test_spec_values_that_would_fail_later_are_refused_at_check_time(spec, msg):
    # a one-line PrepostError naming the op and field when the spec is checked, not on the device
    with pytest.raises(PrepostError, match=msg) as e:
        pp.validate_spec(spec)
    assert "\n" not in str(e.value)
    with pytest.raises(PrepostError, match=msg):
        pp.Pipeline.from_spec(spec)


def test_spec_values_at_the_edges_of_their_ranges_still_run():
    # the largest values that fit are accepted and give finite, exact results
    img = np.full((8, 8, 3), 200, np.uint8)
    p = pp.Pipeline.from_spec({"pre": [{"op": "resize_normalize", "size": [4, 4], "mean": 3e38, "std": 2.0,
                                        "pad_value": 3e38}]})
    out = p.preprocess(img)
    assert np.isfinite(out).all() and np.allclose(out, -1.5e38, rtol=1e-6)
    p = pp.Pipeline.from_spec({"pre": [{"op": "pad_truncate", "pad_id": -2 ** 63, "max_length": 3.0}]})
    assert p.preprocess([[1, 2], [3]])["input_ids"].tolist() == [[1, 2], [3, -2 ** 63]]
    p = pp.Pipeline.from_spec({"post": [{"op": "dequantize", "scale": [0.5, 2.0], "zero_point": 1, "axis": -1}]})
    assert p.postprocess(np.array([[3, 3]], np.int8)).tolist() == [[1.0, 4.0]]
    with pytest.raises(PrepostError, match="overflows float32"):  # the direct API refuses it as well
        pp.resize_normalize(img, (4, 4), 0.0, 1e-37)


# --------------------------------------------------------------------------------------- dequantize


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,axis", [((0, 3, 4, 4), 1), ((0, 3), -1), ((2, 3, 0), 1), ((0, 3, 0, 2), 1),
                                        ((0,), 0)])
def test_dequantize_per_channel_on_an_empty_batch(shape, axis, backend):
    q = np.zeros(shape, np.int8)
    ch = shape[axis]
    out = pp.dequantize(q, [0.5] * ch if ch else 0.5, 1, axis=axis, backend=backend)
    assert out.shape == shape and out.dtype == np.float32
    # and the same call on a non-empty batch still gives (q - zero_point) * scale per channel
    full = np.arange(2 * 3 * 2, dtype=np.int8).reshape(2, 3, 2)
    got = pp.dequantize(full, [0.5, 1.0, 2.0], [1, 0, -1], axis=1, backend=backend)
    want = (full.astype(np.float64) - np.array([1, 0, -1])[None, :, None]) * np.array([0.5, 1, 2])[None, :, None]
    np.testing.assert_array_equal(got, want.astype(np.float32))


# ------------------------------------------------------------------------------------- device runner

REPO = Path(__file__).resolve().parents[1]


def _flashed_version(dev, name):
    """A version directory as flash leaves it: the runner and edgekit/prepost, every file at mtime 0."""
    v = dev / "versions" / name
    shutil.copytree(REPO / "edgekit" / "prepost", v / "edgekit" / "prepost",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (v / "edgekit" / "__init__.py").write_text('"""edgekit subset shipped in a bundle: prepost only."""\n')
    shutil.copyfile(REPO / "edgekit" / "runner" / "edgekit_runner.py", v / "edgekit_runner.py")
    for p in v.rglob("*"):
        os.utime(p, (0, 0))
    return v


def _run_on_device(dev, env):
    code = ("import json, sys, numpy as np; sys.path.insert(0, sys.argv[1]); import edgekit_runner as r\n"
            "pipe = r.load_prepost(sys.argv[1], {'post': [{'op': 'decode_boxes'}]})\n"
            "out = pipe.postprocess(np.array([[10, 20, 4, 6]], np.float32))\n"
            "from edgekit.prepost import _jit\n"
            "print(json.dumps({'out': out.tolist(), 'pkg': sys.modules['edgekit.prepost'].__file__,\n"
            "                  'backend': pipe.backend, 'cache': _jit.compile_info('decode_boxes')}))\n")
    r = subprocess.run([sys.executable, "-B", "-c", code, str(dev / "current")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _snapshot(d):
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime) for p in sorted(d.rglob("*"))}


@pytest.mark.skipif(not pp.HAVE_NUMBA, reason="numba is a required dependency of edgekit")
def test_runner_keeps_numba_cache_out_of_the_flashed_version(tmp_path):
    dev = tmp_path / "dev"
    v1 = _flashed_version(dev, "fp32-1111")
    (dev / "current").symlink_to("versions/fp32-1111")
    before = _snapshot(v1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "EDGEKIT_"))}
    env.update(XDG_CACHE_HOME=str(tmp_path / "home-cache"), PYTHONPATH="")
    first = _run_on_device(dev, env)
    assert first["pkg"].startswith(str(dev / "current")) and first["backend"] == "numba"
    assert first["out"] == [[8.0, 17.0, 12.0, 23.0]]
    assert _snapshot(v1) == before  # not a file added or touched in the verified directory
    cache = tmp_path / "home-cache" / "edgekit" / "numba"
    assert first["cache"]["cache"] == "miss" and first["cache"]["cache_path"].startswith(str(cache))
    assert list(cache.rglob("*.nbi"))
    # the cache still does its job: the next run loads the kernels instead of compiling them
    again = _run_on_device(dev, env)
    assert again["cache"]["cache"] == "hit" and again["out"] == first["out"]
    # a new version behind the same `current` link never gets the previous version's kernels
    _flashed_version(dev, "fp32-2222")
    (dev / "current").unlink()
    (dev / "current").symlink_to("versions/fp32-2222")
    other = _run_on_device(dev, env)
    assert other["cache"]["cache"] == "miss" and other["cache"]["cache_path"] != first["cache"]["cache_path"]
    assert _snapshot(v1) == before


# ------------------------------------------------------------------------------------- environment


@pytest.mark.parametrize("threads,par_min,want_threads,want_min,warned", [
    ("abc", "1e3", None, 32768, ["EDGEKIT_PREPOST_THREADS='abc'", "EDGEKIT_PREPOST_PARALLEL_MIN='1e3'"]),
    ("1", " 5 ", 1, 5, []),
])
def test_prepost_thread_settings_from_the_environment(threads, par_min, want_threads, want_min, warned):
    # a value that is not an integer is ignored with a warning; it used to fail the import, so every
    # edgekit command and the device runner ended in an internal error
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "EDGEKIT_"))}
    env.update(EDGEKIT_PREPOST_THREADS=threads, EDGEKIT_PREPOST_PARALLEL_MIN=par_min)
    code = ("import json, numba, numpy as np, edgekit.prepost as pp\n"
            "from edgekit.prepost import _jit\n"
            "probs, idx = pp.softmax_topk(np.array([1.0, 3.0, 2.0], np.float32), 2, backend='numpy')\n"
            "print(json.dumps({'threads': numba.get_num_threads(), 'default': numba.config.NUMBA_NUM_THREADS,\n"
            "                  'min': _jit.PARALLEL_MIN_WORK, 'idx': idx.tolist()}))\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["idx"] == [1, 2] and got["min"] == want_min
    assert got["threads"] == (got["default"] if want_threads is None else want_threads)
    for w in warned:
        assert f"RuntimeWarning: edgekit.prepost: ignoring {w}, not an integer" in r.stderr
    if not warned:
        assert "Warning" not in r.stderr


@pytest.mark.parametrize("axis", [5, -6, 3, -1])
def test_dequantize_spec_with_any_axis_warms_up(axis):
    # the warm-up example was always 4-D: axis 5 passed the spec check, then warm-up raised IndexError
    p = pp.Pipeline.from_spec({"post": [{"op": "dequantize", "scale": [0.5, 2.0], "zero_point": 1, "axis": axis}]})
    assert p.warmup()["first_call_s"] >= 0
    q = np.full([2 if i == (axis % 6) else 1 for i in range(6)], 3, np.int8)
    assert sorted(p.postprocess(q).ravel().tolist()) == [1.0, 4.0]


@pytest.mark.skipif(not pp.HAVE_NUMBA, reason="numba is a required dependency of edgekit")
def test_numba_caches_of_versions_removed_from_the_device_are_dropped(tmp_path):
    """Retention removes old versions from the device; their compiled kernels stayed in the cache for ever."""
    dev = tmp_path / "dev"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "EDGEKIT_"))}
    env.update(XDG_CACHE_HOME=str(tmp_path / "home-cache"), PYTHONPATH="")
    caches = {}
    for v in ("fp32-1111", "fp32-2222"):
        _flashed_version(dev, v)
        if (dev / "current").is_symlink():
            (dev / "current").unlink()
        (dev / "current").symlink_to(f"versions/{v}")
        caches[v] = Path(_run_on_device(dev, env)["cache"]["cache_path"])
    root = tmp_path / "home-cache" / "edgekit" / "numba"
    mine = {c.relative_to(root).parts[0] for c in caches.values()}
    assert len(mine) == 2 and all((root / m).is_dir() for m in mine)
    foreign = root / "not-ours"  # no mark: not a cache this runner made, never touched
    foreign.mkdir()
    shutil.rmtree(dev / "versions" / "fp32-1111")  # what flash retention does to an old version
    _run_on_device(dev, env)
    gone = caches["fp32-1111"].relative_to(root).parts[0]
    kept = caches["fp32-2222"].relative_to(root).parts[0]
    assert not (root / gone).exists() and (root / kept).is_dir() and foreign.is_dir()
