"""Calibration cache: tensor ranges keyed by (model hash, data hash, method, options).

onnxruntime's quantize_static reads/writes a JSON range file (calibration_cache_path); this
module only decides where it lives and what it is keyed on, so that a rerun, or another
tuning trial with the same calibration, never runs the calibration pass again.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def data_hash(dataset, limit: int, batch_size: int = 64) -> str:
    """Hash of the first `limit` samples, streamed batch by batch (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    seen = 0
    for b in dataset.batches(batch_size):
        if seen >= limit:
            break
        take = min(limit - seen, len(next(iter(b.values()))))
        for k in sorted(b):
            a = np.ascontiguousarray(b[k][:take])
            h.update(f"{k}|{a.dtype}|{a.shape[1:]}".encode())
            h.update(a.tobytes())
        seen += take
    h.update(str(seen).encode())
    return h.hexdigest()


def cache_key(model_sha: str, data_sha: str, method: str, options: dict) -> str:
    import onnxruntime

    blob = json.dumps({"model": model_sha, "data": data_sha, "method": method, "options": options,
                       "ort": onnxruntime.__version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cache_path(key: str, root=None) -> Path:
    from ..fsutil import cache_dir

    d = Path(root) if root else cache_dir() / "quant-calib"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{key}.json"
