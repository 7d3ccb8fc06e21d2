"""Calibration cache: tensor ranges keyed by (model hash, data hash, method, options).

onnxruntime's quantize_static reads/writes a JSON range file (calibration_cache_path); this
module only decides where it lives and what it is keyed on, so that a rerun, or another
tuning trial with the same calibration, never runs the calibration pass again.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np


def data_hash(dataset, limit: int, batch_size: int = 64) -> str:
    """Hash of the first `limit` samples, streamed batch by batch (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    seen = 0
    # no batch past the limit is fetched: an image folder decodes what it hands out, and a broken image
    # beyond the samples used must not fail the run
    for b in dataset.batches(max(1, min(batch_size, limit))):
        if seen >= limit:
            break
        take = min(limit - seen, len(next(iter(b.values()))))
        for k in sorted(b):
            a = np.ascontiguousarray(b[k][:take])
            h.update(f"{k}|{a.dtype}|{a.shape[1:]}".encode())
            h.update(a.tobytes())
        seen += take
        if seen >= limit:
            break
    h.update(str(seen).encode())
    return h.hexdigest()


def cache_key(model_sha: str, data_sha: str, method: str, options: dict) -> str:
    import onnxruntime

    blob = json.dumps({"model": model_sha, "data": data_sha, "method": method, "options": options,
                       "ort": onnxruntime.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cache_path(key: str, root=None) -> Path:
    """Where the ranges for `key` live: a file there is a hit. An entry that does not load as ranges (a
    crash or a full disk mid-write of another tool, a sync conflict) is removed, so the ranges are computed
    again and rewritten; it failed every later run with the same inputs. Where no cache directory can be
    used, a private one for this process stands in: the cache only saves time."""
    d = _calib_dir(root)
    p = d / f"{key}.json"
    if not (p.exists() or p.is_symlink()):
        return p
    why = damage(p)
    if why is None:
        return p
    if _drop(p):
        _note(f"{p}: ignoring a damaged calibration cache entry ({why}); calibrating again")
        return p
    _note(f"{p}: ignoring a damaged calibration cache entry ({why}) that cannot be removed; "
          "calibrating without the cache")
    return _private_dir() / p.name


def damage(path) -> str | None:
    """Why the range file at `path` cannot be used (one line), or None when it loads as ranges."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, load_tensors_data

    try:
        ranges = load_tensors_data(path)
        if not isinstance(ranges.calibration_method, CalibrationMethod):
            return f"unknown calibration method {ranges.calibration_method!r}"
        if not ranges.data:
            return "no tensor ranges"
        lacking = [k for k, t in ranges.items() if not (hasattr(t, "lowest") and hasattr(t, "highest"))]
        if lacking:
            return f"tensor {lacking[0]!r} has no range"
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        return f"{type(e).__name__}: {msg}"[:200]
    return None


def _drop(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink(missing_ok=True)
    except OSError:
        return False
    return True


def _calib_dir(root) -> Path:
    from ..fsutil import CacheDirError, cache_dir

    try:
        d = Path(root) if root else cache_dir() / "quant-calib"
        d.mkdir(parents=True, exist_ok=True)
        if not os.access(d, os.W_OK | os.X_OK):
            raise PermissionError(f"{d}: not writable")
        return d
    except (OSError, CacheDirError) as e:
        global _dir_noted
        if not _dir_noted:
            _dir_noted = True
            _note(f"calibrating without the cache: {e}")
        return _private_dir()


_private = None
_dir_noted = False


def _private_dir() -> Path:
    """A cache directory for this process alone (tuning trials still share their ranges), removed at exit."""
    global _private
    if _private is None:
        import atexit
        import shutil
        import tempfile

        _private = Path(tempfile.mkdtemp(prefix="edgekit-calib-"))
        atexit.register(shutil.rmtree, _private, True)
    return _private


def _note(msg: str) -> None:
    import sys

    print(f"edgekit: note: {msg}", file=sys.stderr)
