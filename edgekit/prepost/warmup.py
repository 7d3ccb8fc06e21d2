"""Warm-up and compile-time measurement for every kernel.

    python -m edgekit.prepost [--json] [--cold]

In-process, `warmup_all()` compiles each kernel (or loads it from Numba's on-disk cache) and times
its first call. `cold_and_warm()` runs that in two fresh processes sharing an empty cache
directory: the first pays the full compile ("cold"), the second only loads ("warm"), so the two
costs a device sees are reported separately. Self-contained (numpy + optional numba): it runs in
a bundle on the device as well, where it hands over to `edgekit_runner.py warmup`, which warms the
bundle's steps into the cache the runner's `run` uses, outside the verified version directory.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import _jit
from .errors import PrepostError
from .ops import OPS, REQUIRED

# values for the required parameters when warming an op up without a spec
EXAMPLE_PARAMS = {"resize_normalize": {"size": [224, 224]}, "dequantize": {"scale": 0.05}}


def _params(name):
    p = {k: v for k, (v, _) in OPS[name].params.items() if v is not REQUIRED}
    p.update(EXAMPLE_PARAMS.get(name, {}))
    return p


def _names(ops):
    names = list(OPS) if not ops else list(ops)
    for n in names:
        if n not in OPS:
            raise PrepostError(f"op: unknown op {n!r}; valid ops: {', '.join(sorted(OPS))}")
    return names


def warmup_all(backend: str = "auto", ops=None) -> dict:
    """Compile or load the kernels of `ops` (default: every registered op) and time each op's first call."""
    be = _jit.resolve_backend(backend)
    names = _names(ops)
    ops = {}
    total_compile = total_first = 0.0
    for name in names:
        d = OPS[name]
        params = _params(name)
        fn = d.build(params, be)
        args = d.example(params)
        t0 = time.perf_counter()
        if be == "numba":
            for k in d.kernels:
                for serial in _jit.variants(k):
                    _jit.get(k, serial)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        fn(*args)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        fn(*args)
        again = time.perf_counter() - t0
        ops[name] = {"compile_s": compile_s, "first_call_s": first, "second_call_s": again,
                     "kernels": {k: _jit.compile_info(k) for k in d.kernels} if be == "numba" else {}}
        total_compile += compile_s
        total_first += first
    return {"backend": be, **_jit.backend_info(), "compile_s": total_compile, "first_call_s": total_first,
            "ops": ops}


def cold_and_warm(cache_dir: str | None = None, backend: str = "auto", ops=None, timeout: float = 600.0) -> dict:
    """Two fresh processes on one cache dir (a new temporary one by default): {"cold": ..., "warm": ...}."""
    extra = [a for n in _names(ops) for a in ("--op", n)] if ops else []
    root = str(Path(__file__).resolve().parents[2])  # the directory holding the edgekit package
    tmp = None
    if cache_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="edgekit-numba-cache-")
        cache_dir = tmp.name
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir,
               PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    out = {}
    try:
        for label in ("cold", "warm"):
            # -B: measuring writes nothing beside the source (in a bundle: the verified version directory)
            cmd = [sys.executable, "-B", "-m", "edgekit.prepost", "--json", "--backend", backend, *extra]
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
            if r.returncode != 0:
                tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
                raise RuntimeError(f"warm-up subprocess ({label}) failed: {tail[0]}")
            out[label] = json.loads(r.stdout)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return out


def _bundle_root():
    """The flashed version directory this package was shipped in (bundle.json and the runner beside the
    edgekit folder), else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "bundle.json").is_file() and (root / "edgekit_runner.py").is_file() else None


def _as_run_sees_it(root: Path) -> Path:
    """DEVICE/current when it links to this version (`run --bundle current`, as documented), else the version
    itself: Numba files its cache under the path the package was imported from, so a warm-up through the
    real path was never found by a run through the link."""
    link = root.parent.parent / "current"
    try:
        return link if link.is_symlink() and link.resolve() == root else root
    except OSError:
        return root


def _runner_warmup(root: Path, ops) -> dict:
    """`edgekit_runner.py warmup` of this bundle, in a fresh process: Numba, imported here already, caches
    beside the source, inside the verified version directory (flash then calls the version damaged), and
    `run` looks for the kernels in its own cache dir, which only the runner knows how to choose."""
    cmd = [sys.executable, "-B", str(root / "edgekit_runner.py"), "warmup", "--bundle", str(_as_run_sees_it(root))]
    cmd += [a for n in (ops or []) for a in ("--op", n)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = r.stdout.strip().splitlines()
    res = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if r.returncode != 0 or res.get("status") != "ok":
        tail = res.get("reason") or ((r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"])[0]
        raise PrepostError(f"{root / 'edgekit_runner.py'} warmup failed: {tail}")
    return res


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m edgekit.prepost", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--cold", action="store_true", help="measure a cold and a warm cache in two subprocesses")
    ap.add_argument("--backend", default="auto", choices=_jit.BACKENDS)
    ap.add_argument("--op", action="append", choices=sorted(OPS), help="only this op (repeatable)")
    a = ap.parse_args(argv)
    try:
        return _main(a)
    except PrepostError as e:  # one line, as every edgekit error: a traceback hid what failed
        print(f"python -m edgekit.prepost: error: {e}", file=sys.stderr)
        return 1


def _main(a) -> int:
    if a.cold:
        res = cold_and_warm(backend=a.backend, ops=a.op)
        runs = res.items()
    else:
        bundle = _bundle_root()
        handed = bundle is not None and not os.environ.get("NUMBA_CACHE_DIR") and \
            _jit.resolve_backend(a.backend) == "numba"
        res = _runner_warmup(bundle, a.op) if handed else warmup_all(a.backend, a.op)
        runs = [("the runner's cache" if handed else "this process", res)]
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        for label, r in runs:
            print(f"{label}: backend {r['backend']}, compile {r['compile_s']:.3f} s, "
                  f"first calls {r['first_call_s'] * 1e3:.1f} ms")
    return 0
