"""Compare outputs of two runtimes; collect every mismatch, then raise once with a table."""
from __future__ import annotations

import numpy as np

from .errors import NumericsError


# float32's smallest normal number. edgekit's sessions flush subnormal floats to zero (SESSION_CONFIG in
# runner/edgekit_runner.py) and torch does not: an output of subnormals (an untrained HuggingFace MobileViT's logits,
# ~1e-40) failed the check with "torch 1.15e-40, onnx -2.5e-43", a difference no float32 math can resolve
FLUSHED = float(np.finfo(np.float32).tiny)


def rule(atol: float, rtol: float) -> str:
    """The check check_outputs applies, in words, for the manifest."""
    return (f"per element |onnx - torch| <= atol + {rtol:g} * |torch|, with atol = {atol:g} * the median of the "
            f"output's nonzero finite |torch| values ({atol:g} when it has none) and at least float32's smallest "
            f"normal number ({FLUSHED:.3g}); an infinity matches the same "
            "infinity and a NaN matches only a NaN at the same position")


def max_abs_diff(ref: list, got: list) -> list:
    return [float(np.max(np.abs(np.asarray(r, np.float64) - np.asarray(g, np.float64)))) if np.size(r) else 0.0
            for r, g in zip(ref, got)]


def output_floor(ref: np.ndarray, atol: float) -> float:
    """atol in the output's own units. An element's rounding error follows the magnitude it was computed
    from; for an element near zero (a cancellation) the output's typical magnitude stands in for that. The
    median, not the maximum: a heat map in (0, 1) concatenated with pixel coordinates near 4e3 keeps the
    heat map's scale, and an output near 1e-6 gets a floor near 1e-9, not a fixed 1e-4 that hides noise.
    Never below FLUSHED."""
    a = np.abs(ref[np.isfinite(ref)])
    a = a[a > 0]
    return max(atol * float(np.median(a)) if a.size else atol, FLUSHED)


def _at(index) -> str:
    return "[" + ", ".join(str(int(i)) for i in index) + "]"


def compare_output(name: str, ref, got, *, atol: float, rtol: float) -> tuple[dict, str]:
    """({max_abs_diff, atol, worst}, '' or the failure in words) for one output, element by element."""
    r = np.asarray(ref, np.float64)
    g = np.asarray(got, np.float64)
    if r.shape != g.shape:
        return {}, f"{name}: shape {list(g.shape)} != {list(r.shape)}"
    floor = output_floor(r, atol)
    fin = np.isfinite(r) & np.isfinite(g)
    diff = np.zeros(r.shape)
    diff[fin] = np.abs(r[fin] - g[fin])
    limit = floor + rtol * np.where(fin, np.abs(r), 0.0)
    ratio = np.divide(diff, limit, out=np.where(diff > 0, np.inf, 0.0), where=limit > 0)
    # both non-finite and equal (the same infinity), or both NaN: a -inf mask reproduced exactly passes;
    # a NaN in torch's output passes only where ONNX has a NaN too
    same = ~fin & ((r == g) | (np.isnan(r) & np.isnan(g)))
    bad_value = fin & (ratio > 1)
    bad_nonfinite = ~fin & ~same
    rec = {"max_abs_diff": float(diff.max()) if r.size else 0.0, "atol": floor,
           "max_diff_over_limit": float(ratio.max()) if r.size else 0.0}
    if (~np.isfinite(r)).any():
        rec["non_finite"] = int((~np.isfinite(r)).sum())
    if not bad_value.any() and not bad_nonfinite.any():
        return rec, ""
    parts = []
    if bad_value.any():
        i = np.unravel_index(int(np.argmax(np.where(bad_value, ratio, -1.0))), r.shape)
        parts.append(f"max|diff| {rec['max_abs_diff']:.3g}, {int(bad_value.sum())} of {r.size} values out of "
                     f"tolerance (worst at {_at(i)}: torch {r[i]:.6g}, onnx {g[i]:.6g}, "
                     f"allowed {limit[i]:.3g})")
    if bad_nonfinite.any():
        i = tuple(int(v[0]) for v in np.nonzero(bad_nonfinite))
        parts.append(f"{int(bad_nonfinite.sum())} non-finite values not matched (first at {_at(i)}: "
                     f"torch {r[i]:g}, onnx {g[i]:g})")
    return rec, f"{name}: " + "; ".join(parts)


def check_outputs(ref: list, got: list, names: list, *, atol: float, rtol: float, where: str,
                  between: str = "from the source model") -> dict:
    """Return {"max_abs_diff", "per_output", "rule", "atol", "rtol"}; raise NumericsError listing every
    output that fails the element-wise rule (see rule())."""
    bad, per = [], {}
    for name, r, g in zip(names, ref, got):
        rec, why = compare_output(name, r, g, atol=atol, rtol=rtol)
        if rec:
            per[name] = rec
        if why:
            bad.append(why)
    if bad:
        err = NumericsError(f"{where}: outputs differ {between}: " + "; ".join(bad))
        err.reason = "; ".join(bad)  # without the where: a caller that words its own message
        raise err
    return {"max_abs_diff": max((v["max_abs_diff"] for v in per.values()), default=0.0),
            "per_output": per, "rule": rule(atol, rtol), "atol": atol, "rtol": rtol}
