"""sweep35 F1-F4: the on-device warm-up writes nothing into the flashed version and warms the runner's cache,
compress refuses swap_rb for a grey model, softmax_topk's kernel is O(C log k) with unchanged results, and
nms refuses boxes whose areas overflow."""
import json
import math
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from edgekit import prepost as pp
from edgekit.artifact import TensorSpec
from edgekit.prepost import PrepostError, nms, scores, softmax_topk
from edgekit.prepost.fit import check_pre_fits
from tests.test_prepost_spec_checks import _classifier, _compress

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ["numba", "numpy"] if pp.HAVE_NUMBA else ["numpy"]

# ------------------------------------------------------------------------------ F1: warm-up in a bundle


def _version(dev, name, spec):
    """A version directory as flash leaves it (runner, edgekit/prepost, bundle.json; files at mtime 0)."""
    v = dev / "versions" / name
    shutil.copytree(REPO / "edgekit" / "prepost", v / "edgekit" / "prepost",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (v / "edgekit" / "__init__.py").write_text('"""edgekit subset shipped in a bundle: prepost only."""\n')
    shutil.copyfile(REPO / "edgekit" / "runner" / "edgekit_runner.py", v / "edgekit_runner.py")
    (v / "bundle.json").write_text(json.dumps({"model": "m.onnx", "prepost": spec}))
    for p in v.rglob("*"):
        os.utime(p, (0, 0))
    (dev / "current").symlink_to(f"versions/{name}")
    return v


def _snapshot(d):
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime) for p in sorted(d.rglob("*"))}


def _env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "EDGEKIT_"))}
    env.update(XDG_CACHE_HOME=str(tmp_path / "home-cache"), PYTHONPATH="")
    return env


def _runner_cache_state(dev, env):
    """What the runner's own `run` path finds: its cache dir and whether decode_boxes loaded from it."""
    code = ("import json, sys, numpy as np; sys.path.insert(0, sys.argv[1]); import edgekit_runner as r\n"
            "pipe = r.load_prepost(sys.argv[1], {'post': [{'op': 'decode_boxes'}]})\n"
            "pipe.postprocess(np.array([[10, 20, 4, 6]], np.float32))\n"
            "from edgekit.prepost import _jit\n"
            "print(json.dumps(_jit.compile_info('decode_boxes')))\n")
    r = subprocess.run([sys.executable, "-B", "-c", code, str(dev / "current")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not pp.HAVE_NUMBA, reason="numba is a required dependency of edgekit")
def test_warmup_in_a_bundle_warms_the_runner_cache_and_leaves_the_version_intact(tmp_path):
    # `python -m edgekit.prepost` inside a flashed version cached the kernels beside their source, in the
    # verified directory (devices status: 'intact: no: edgekit/prepost/__pycache__'), and the next run
    # compiled again in its own cache
    dev = tmp_path / "dev"
    v = _version(dev, "fp32-1111", {"post": [{"op": "decode_boxes"}]})
    before = _snapshot(v)
    env = _env(tmp_path)
    # bytecode is Python's own, written on import before edgekit runs; a device warms up through the
    # runner (below), which never writes it
    r = subprocess.run([sys.executable, "-m", "edgekit.prepost", "--op", "decode_boxes"], cwd=dev / "current",
                       env={**env, "PYTHONDONTWRITEBYTECODE": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("the runner's cache: backend numba"), r.stdout
    assert _snapshot(v) == before
    state = _runner_cache_state(dev, env)
    assert state["cache"] == "hit", state
    assert state["cache_path"].startswith(str(tmp_path / "home-cache" / "edgekit" / "numba"))


@pytest.mark.skipif(not pp.HAVE_NUMBA, reason="numba is a required dependency of edgekit")
def test_runner_warmup_compiles_the_bundles_steps_into_its_cache(tmp_path):
    dev = tmp_path / "dev"
    v = _version(dev, "fp32-2222", {"post": [{"op": "decode_boxes"}]})
    before = _snapshot(v)
    env = _env(tmp_path)
    r = subprocess.run([sys.executable, str(dev / "current" / "edgekit_runner.py"), "warmup", "--bundle",
                        str(dev / "current")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "ok" and out["steps"] == ["decode_boxes"] and out["backend"] == "numba"
    assert out["kernels"]["decode_boxes"]["cache"] == "miss"
    assert _snapshot(v) == before  # not even bytecode: the runner imports the package without writing it
    assert _runner_cache_state(dev, env)["cache"] == "hit"


def test_runner_warmup_without_steps_says_so(tmp_path):
    dev = tmp_path / "dev"
    _version(dev, "fp32-3333", {})
    r = subprocess.run([sys.executable, str(dev / "current" / "edgekit_runner.py"), "warmup", "--bundle",
                        str(dev / "current")], env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    out = json.loads(r.stdout)
    assert r.returncode == 0 and out["steps"] == [] and "nothing to warm up" in out["note"]


# ------------------------------------------------------------------------ F2: swap_rb and a grey model


def test_compress_refuses_swap_rb_for_a_grey_model(tmp_path, capsys):
    # swap_rb fixes 3 or 4 channels as several mean/std values do; a 1-channel model was accepted, bundled,
    # and every raw input failed on the device
    _classifier(tmp_path / "grey.onnx", 1)
    np.save(tmp_path / "calib.npy", np.random.default_rng(1).random((16, 1, 8, 8)).astype(np.float32))
    spec = tmp_path / "grey_swap.json"
    spec.write_text(json.dumps({"pre": [{"op": "resize_normalize", "size": [8, 8], "mean": 127.5, "std": 127.5,
                                         "swap_rb": True}]}))
    rc, err, out = _compress(tmp_path, "grey.onnx", "calib.npy", str(spec), capsys)
    assert rc == 2 and err == [
        f"edgekit: error: {spec}: the pre-processing gives 'x' shape [1, 3, 8, 8] (prepost.pre[0] "
        f"(resize_normalize): swap_rb needs 3 or 4 channels), but {tmp_path / 'grey.onnx'} takes [N, 1, 8, 8]"], err
    assert not out.exists()


@pytest.mark.parametrize("layout, shape", [("NCHW", ["N", 3, 8, 8]), ("NCHW", ["N", 4, 8, 8]),
                                           ("NHWC", ["N", 8, 8, 3]), ("NCHW", ["N", "c", 8, 8])])
def test_swap_rb_still_fits_three_and_four_channel_models(layout, shape):
    spec = {"pre": [{"op": "resize_normalize", "size": [8, 8], "swap_rb": True, "layout": layout}]}
    check_pre_fits(spec, [TensorSpec("x", shape, "float32")], "m.onnx", "s.json")


def test_swap_rb_on_a_grey_nhwc_model_is_refused():
    spec = {"pre": [{"op": "resize_normalize", "size": [8, 8], "swap_rb": True, "layout": "NHWC"}]}
    with pytest.raises(PrepostError, match=r"^s\.json: .*swap_rb needs 3 or 4 channels\), but m\.onnx takes "
                                           r"\[N, 8, 8, 1\]$"):
        check_pre_fits(spec, [TensorSpec("x", ["N", 8, 8, 1], "float32")], "m.onnx", "s.json")


# ----------------------------------------------------------------------------- F3: top-k complexity


class _Counted(np.ndarray):
    writes = 0

    def __setitem__(self, key, value):
        _Counted.writes += 1
        super().__setitem__(key, value)


def _counting_numpy():
    """numpy, except that np.empty hands out arrays counting their element writes."""
    ns = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    ns.empty = lambda *a, **k: np.empty(*a, **k).view(_Counted)
    return ns


@pytest.mark.parametrize("kernel, dtype", [("_softmax_topk_kernel", np.float32),
                                           ("_softmax_topk_f64_kernel", np.float64)])
def test_topk_kernel_does_c_log_k_work(kernel, dtype):
    """The kernels' own source run as Python, counting writes to their scratch arrays: keeping the top k by
    insertion shifted up to k entries per logit (k * C: a full ranking of 50000 took 2.5 s, NumPy 20 ms)."""
    f = getattr(scores, kernel)
    g = types.FunctionType(f.__code__, {**f.__globals__, "np": _counting_numpy(), "prange": range}, f.__name__)
    c, k = 1000, 500
    x = np.arange(c, dtype=dtype)[None] / 100  # ascending: every logit enters the top k
    probs, idx = np.empty((1, k), dtype), np.empty((1, k), np.int64)
    _Counted.writes = 0
    assert g(x, probs, idx)
    assert idx[0].tolist() == list(range(c - 1, c - 1 - k, -1))
    # heap: ~2 writes per level for each of C entries and k extractions; scratch of size C besides
    assert _Counted.writes < 8 * c * math.log2(k), _Counted.writes


def _check_topk(x, backend):
    c = x.shape[1]
    for k in sorted({1, 5, c // 3, c - 1, c}):
        probs, idx = softmax_topk(x, k, backend=backend)
        want = np.argsort(-x, axis=1, kind="stable")[:, :k]
        assert np.array_equal(idx, want), (x.shape, k)
        e = np.exp(x.astype(np.float64) - x.max(1, keepdims=True))
        ref = np.take_along_axis(e, want, 1) / e.sum(1, keepdims=True)
        assert np.allclose(probs, ref, rtol=1e-5 if x.dtype == np.float32 else 1e-12, atol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_topk_matches_a_stable_sort_for_any_k(backend, dtype):
    """Same indices as a stable sort of -x (ties: lower index first) for small, large and full k, on random,
    ascending and tied rows and rows with -inf. A correctness check only: timings are in
    benchmarks/prepost/RESULTS.md."""
    rng = np.random.default_rng(0)
    grid = rng.integers(-3, 4, (3, 700)).astype(float)
    grid[rng.random(grid.shape) < 0.3] = -np.inf
    grid[:, 5] = 4
    for x in (rng.normal(size=(1, 5000)), np.sort(rng.normal(size=(1, 3000))), rng.integers(-3, 4, (3, 700)), grid):
        _check_topk(x.astype(dtype), backend)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_topk_parallel_build_matches_a_stable_sort(dtype):
    """64 x 600 logits run the parallel build (compiling it takes ~10 s on a busy host)."""
    _check_topk(np.random.default_rng(1).normal(size=(64, 600)).astype(dtype), BACKENDS[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_still_refuses_nan_and_inf_with_a_large_k(backend):
    for bad in (np.nan, np.inf):
        x = np.arange(50, dtype=np.float32)[None].copy()
        x[0, 20] = bad
        with pytest.raises(PrepostError, match="logits: contains NaN or \\+inf"):
            softmax_topk(x, 40, backend=backend)


# ---------------------------------------------------------------------------- F4: overflowing areas


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("side", [1e160, 1e200, -1e300])
def test_nms_refuses_boxes_whose_area_overflows(backend, side):
    # the area overflowed to inf, IoU was inf / inf = NaN, and a box identical to a kept one was kept too
    b = np.array([[0, 0, side, side], [0, 0, side, side], [0, 0, 1, 1]], np.float64)
    with pytest.raises(PrepostError, match=r"^boxes: coordinates beyond \+-1e\+150 \(largest \|value\| "
                                           r".*\); their areas would overflow float64$"):
        nms(b, np.array([0.9, 0.8, 0.7]), 0.5, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nms_at_the_largest_coordinates_still_drops_duplicates(backend):
    s = 1e150
    b = np.array([[0, 0, s, s], [0, 0, s, s], [-s, -s, s, s], [0, 0, 1, 1]], np.float64)
    assert nms(b, np.array([0.9, 0.8, 0.75, 0.7]), 0.5, backend=backend).tolist() == [0, 2, 3]
