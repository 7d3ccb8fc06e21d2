"""Compare outputs of two runtimes; collect every mismatch, then raise once with a table."""
from __future__ import annotations

import numpy as np

from .errors import NumericsError


def max_abs_diff(ref: list, got: list) -> list:
    return [float(np.max(np.abs(np.asarray(r, np.float64) - np.asarray(g, np.float64)))) if np.size(r) else 0.0
            for r, g in zip(ref, got)]


def check_outputs(ref: list, got: list, names: list, *, atol: float, rtol: float, where: str) -> dict:
    """Return {"max_abs_diff", "per_output", "tolerance"}; raise NumericsError listing every output that fails."""
    bad, per = [], {}
    for name, r, g in zip(names, ref, got):
        r = np.asarray(r, np.float64)
        g = np.asarray(g, np.float64)
        if r.shape != g.shape:
            bad.append(f"{name}: shape {list(g.shape)} != {list(r.shape)}")
            continue
        if not np.all(np.isfinite(g)):
            bad.append(f"{name}: non-finite values")
            continue
        diff = float(np.max(np.abs(r - g))) if r.size else 0.0
        limit = atol + rtol * float(np.max(np.abs(r))) if r.size else atol
        per[name] = {"max_abs_diff": diff, "limit": limit}
        if diff > limit:
            bad.append(f"{name}: max|diff| {diff:.3g} > {limit:.3g}")
    if bad:
        raise NumericsError(f"{where}: outputs differ from the source model: " + "; ".join(bad))
    return {"max_abs_diff": max((v["max_abs_diff"] for v in per.values()), default=0.0),
            "per_output": per, "atol": atol, "rtol": rtol}
