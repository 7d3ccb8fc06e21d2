"""edgekit flash leaves a device ready: after the self-test and the switch it compiles the bundle's pre/post
kernels into the cache `edgekit_runner.py run --bundle current` uses, outside the verified version folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgekit.flash.bundle import build_bundle
from flash_fixtures import make_outdir, rebuild_bundle, tree_hashes

def _env(tmp_path):
    """A device user's environment: no NUMBA_CACHE_DIR (the tests' shared one), a home cache of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "EDGEKIT_"))}
    env.update(XDG_CACHE_HOME=str(tmp_path / "home-cache"), EDGEKIT_QUIET="1")
    return env


def _edgekit(env, *args, timeout=600):
    r = subprocess.run([sys.executable, "-m", "edgekit", *args], env=env, capture_output=True, text=True,
                       timeout=timeout)
    return r.returncode, r.stdout, r.stderr


def _run_cache_state(dev, env, spec):
    """Whether the runner's `run --bundle DEV/current` path loads the bundle's kernel from its cache: the
    pipeline loaded as run loads it, in a fresh process, then the kernel's compile record."""
    code = ("import json, sys, numpy as np; sys.path.insert(0, sys.argv[1]); import edgekit_runner as r\n"
            "pipe = r.load_prepost(sys.argv[1], json.loads(sys.argv[2]))\n"
            "pipe.postprocess(np.array([[0.1, 2.0, 0.3, 1.5]], np.float32))\n"
            "from edgekit.prepost import _jit\n"
            "print(json.dumps(_jit.compile_info('softmax_topk')))\n")
    r = subprocess.run([sys.executable, "-B", "-c", code, str(dev / "current"), json.dumps(spec)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def bundle(tmp_path):
    out = make_outdir(tmp_path / "out")  # post: softmax_topk, a Numba kernel
    build_bundle(out, tmp_path / "b.ekb")
    return tmp_path / "b.ekb"


@pytest.mark.slow
def test_flash_warms_the_kernels_run_uses_and_leaves_the_version_intact(tmp_path, bundle):
    # the first run after a flash compiled the kernels (15.9-22.7 s, ~4 s once warm)
    env, dev = _env(tmp_path), tmp_path / "card" / "models"
    dev.parent.mkdir()
    rc, out, err = _edgekit(env, "flash", str(bundle), "--device", str(dev), "--json")
    assert rc == 0, err
    res = json.loads(out)["results"][0]
    assert res["status"] == "flashed", res
    warm = res["warmup"]
    assert warm["ran"] and warm["ok"] and warm["steps"] == ["softmax_topk"] and warm["seconds"] > 0, warm
    assert warm["cache_dir"].startswith(str(tmp_path / "home-cache" / "edgekit" / "numba")), warm
    state = _run_cache_state(dev, env, {"post": [{"op": "softmax_topk", "k": 2}]})
    assert state["cache"] == "hit", state
    assert state["cache_path"].startswith(warm["cache_dir"]), state
    # nothing written into the verified version: its files are the bundle's, and status calls it intact
    meta = json.loads((dev / "current" / "bundle.json").read_text())
    assert set(tree_hashes(dev / "current")) == set(meta["files"]) | {"bundle.json"}
    rc, out, err = _edgekit(env, "devices", "status", "--device", str(dev), "--json")
    assert rc == 0, out + err
    (status,) = [v for v in json.loads(out)["devices"][0]["versions"] if v["active"]]
    assert status["intact"] is True and status["problems"] == [], status
    # an up-to-date flash warms too (a cold device is made ready), loading what is there
    rc, out, err = _edgekit(env, "flash", str(bundle), "--device", str(dev), "--json")
    res = json.loads(out)["results"][0]
    assert rc == 0 and res["status"] == "up-to-date" and res["warmup"]["ok"], res
    assert set(tree_hashes(dev / "current")) == set(meta["files"]) | {"bundle.json"}


@pytest.mark.parametrize("how", ["flag", "env"])
def test_no_warm_skips_the_warm_up_and_says_so(tmp_path, bundle, how):
    env, dev = _env(tmp_path), tmp_path / "card" / "models"
    dev.parent.mkdir()
    if how == "env":  # as click reads it: the test suite sets it so flashes that test other things don't compile
        env["EDGEKIT_FLASH_NO_WARM"] = "1"
    rc, out, err = _edgekit(env, "flash", str(bundle), "--device", str(dev), *(["--no-warm"] if how == "flag" else []),
                            "--json")
    assert rc == 0, err
    res = json.loads(out)["results"][0]
    assert res["status"] == "flashed" and res["warmup"] == {"ran": False, "ok": True, "reason": "skipped (--no-warm)"}
    assert not (tmp_path / "home-cache" / "edgekit" / "numba").exists()


def _break_prepost(d):
    # the model and its self-test are fine; the device cannot import the pre/post package run needs
    with open(d / "edgekit" / "prepost" / "__init__.py", "a") as f:
        f.write("\nraise ImportError('this device cannot load the kernels')\n")


@pytest.mark.slow
def test_a_failed_warm_up_keeps_the_flashed_version_and_exits_1(tmp_path, bundle):
    # a verified, self-tested version is not rolled back for a warm-up; the failure is named and exit is 1
    env, dev = _env(tmp_path), tmp_path / "card" / "models"
    dev.parent.mkdir()
    broken = tmp_path / "broken.ekb"
    version = rebuild_bundle(bundle, broken, _break_prepost)
    rc, out, err = _edgekit(env, "flash", str(broken), "--device", str(dev), "--json")
    doc = json.loads(out)
    res = doc["results"][0]
    assert res["status"] == "flashed" and os.readlink(dev / "current") == f"versions/{version}", res
    assert res["warmup"]["ran"] and not res["warmup"]["ok"], res["warmup"]
    assert "this device cannot load the kernels" in res["warmup"]["reason"], res["warmup"]
    assert rc == 1 and doc["ok"] is False
    assert any(w.startswith("warmup: ") and f"{version} is active" in w for w in res["warnings"]), res["warnings"]
    # the table says it too, and the same exit
    rc, out, err = _edgekit(env, "flash", str(broken), "--device", str(dev))
    table = " ".join((out + err).split())  # the table folds long cells
    assert rc == 1 and "warm-up FAILED" in table and "up-to-date" in table, table


@pytest.mark.slow
def test_a_warm_up_cut_by_sigterm_is_reported_as_not_finished(tmp_path, bundle):
    # was: warmup null, as for a flash that never tried, and no word that the first run will compile (sweep44 F4)
    import signal
    import time

    env, dev = _env(tmp_path), tmp_path / "card" / "models"
    dev.parent.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "edgekit", "flash", str(bundle), "--device", str(dev), "--json"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(dev.glob(".incoming/warmup-*.pid")):  # the device's warm-up has started
        assert p.poll() is None and time.monotonic() < deadline, "flash ended before its warm-up started"
        time.sleep(0.05)
    time.sleep(0.5)  # the warm-up is compiling
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    res = json.loads(out)["results"][0]
    assert res["status"] == "flashed" and (dev / "current").is_symlink(), res
    assert res["warmup"] == {"ran": True, "ok": False, "reason": "interrupted before it finished"}, res
    assert any(w.startswith("warmup: interrupted;") and "warmup --bundle current" in w for w in res["warnings"])
