"""Latency-targeted pruning: find the smallest pruning ratio whose exported ONNX model meets a
measured latency target ('0.6x' of the unpruned model, or '2.5ms'), not a MAC estimate.

Candidates are timed interleaved with the unpruned model in one process, so a busy machine
slows both alike and the ratio stays meaningful; a bisection over a handful of candidates
keeps the search to a few exports.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path


from ..errors import ConfigError

LO, HI = 0.05, 0.9


@dataclass(frozen=True)
class LatencyTarget:
    value: float
    relative: bool  # True: fraction of the unpruned model's latency

    @classmethod
    def parse(cls, text: str) -> "LatencyTarget":
        s = str(text).strip().lower()
        m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(x|ms)", s)
        if not m or float(m.group(1)) <= 0:
            raise ConfigError(f"target latency {text!r}: expected e.g. '0.6x' (of the unpruned model) or '2.5ms'")
        v = float(m.group(1))
        if m.group(2) == "x" and v >= 1:
            raise ConfigError(f"target latency {text!r}: a relative target must be below 1x")
        return cls(v, m.group(2) == "x")

    def met(self, ms: float, base_ms: float) -> bool:
        return ms <= (self.value * base_ms if self.relative else self.value)

    def __str__(self):
        return f"{self.value:g}x" if self.relative else f"{self.value:g}ms"


def measure(paths: dict, feeds: dict, target=None, *, min_runs: int = 30, min_seconds: float = 0.5) -> dict:
    """{label: p50 ms}; the shared profiler when it exists, else an interleaved onnxruntime loop here."""
    try:
        from ..profile import profile_models
    except ImportError:
        profile_models = None
    if profile_models is not None and target is not None:
        res = profile_models(paths, target, inputs=[feeds], min_runs=min_runs, min_seconds=min_seconds,
                             op_profile=False)
        return {k: float(v["p50_ms"]) for k, v in res.items() if v.get("status") == "ok"}
    return _interleaved(paths, feeds, min_runs=min_runs, min_seconds=min_seconds)


def _interleaved(paths, feeds, *, min_runs, min_seconds) -> dict:
    """p50 per model when no target profile is given: the quantization stage's interleaved loop."""
    from ..quant.timing import interleaved

    res = interleaved(paths, feeds, min_runs=min_runs, min_seconds=min_seconds, warmup=5, max_seconds=20.0)
    return {k: v["p50_ms"] for k, v in res.items()}


def search(candidate, export, feeds: dict, target: LatencyTarget, *, base_module, primary=None,
           max_candidates: int = 6, progress=None) -> tuple[float | None, list]:
    """Bisect the pruning ratio. candidate(ratio) -> pruned module; export(module, path) -> None.

    Returns (smallest measured ratio that met the target or None, records of every candidate).
    """
    records = []
    with tempfile.TemporaryDirectory(prefix="edgekit-latency-") as td:
        base = Path(td) / "base.onnx"
        export(base_module, base)

        def trial(ratio):
            path = Path(td) / f"r{ratio:.3f}.onnx"
            module = candidate(ratio)
            export(module, path)
            t = measure({"base": base, "cand": path}, feeds, primary)
            rec = {"ratio": round(ratio, 3), "latency_ms": t["cand"], "base_ms": t["base"],
                   "latency_x": t["cand"] / t["base"], "met": target.met(t["cand"], t["base"])}
            records.append(rec)
            if progress:
                progress(len(records), f"ratio {ratio:.2f}: {rec['latency_x']:.2f}x")
            return rec

        lo, hi, best = LO, HI, None
        top = trial(hi)
        if not top["met"]:
            return None, records
        best = top
        for _ in range(max_candidates - 1):
            if hi - lo < 0.02:
                break
            mid = round((lo + hi) / 2, 3)
            rec = trial(mid)
            if rec["met"]:
                hi, best = mid, rec
            else:
                lo = mid
    return best["ratio"], records
