"""The speed gate: INT8 is recommended only if it measured faster than FP32 on the target.

Both models run in one process, interleaved; the INT8 model's operator profile says which
operators still compute in FP32, how much time Q/DQ conversion costs, and which nodes ran on
a provider other than the target's (a silent fallback elsewhere is reported here).
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np

from ..runner.edgekit_runner import SESSION_CONFIG
from .isa import target_facts
from .timing import (balanced, classify, measure, median_interval, op_profile, order_balanced_ratios,
                     session_config, SPIN_OFF, timed_on_host, usable)

# INT8 passes when the whole confidence interval of its latency ratio to FP32 lies below this
FASTER_THAN = 0.98
CONFIDENCE = 0.95
# session pairs (each timed both ways round) measured first: 6 is the fewest whose interval for the
# median reaches 95% (the full range of 6 covers it with 96.9%)
PAIRS = 6
MORE_PAIRS = 2  # added per step while the interval straddles the threshold
# an undecided gate may take this multiple of its first measurement's time (which grows with the model's
# latency through the runs per measurement), and no more than MAX_SECONDS unless the first one did
EXTEND = 2.5
MAX_SECONDS = 12.0
MIN_CHUNK_RUNS = 6  # timed runs per model in one session pair, however slow the model


EMULATED = "timings under emulation are correctness only, never a speed verdict"


def gate(fp32_path, q_path, target, feeds, *, min_runs: int = 50, min_seconds: float = 1.0) -> dict:
    """Speed verdict for q_path against fp32_path: min_runs / min_seconds are the first measurement's,
    spread over PAIRS fresh session pairs; it is extended while the interval straddles FASTER_THAN."""
    facts = target_facts(target)
    if getattr(target, "emulated", False):  # qemu's ratio said INT8 ran 7x faster: not the device's
        return {facts["name"]: {"status": "emulated", "reason": f"{facts['name']} is emulated: {EMULATED}",
                                "passed": False}}
    paths = {"fp32": fp32_path, "int8": q_path}
    per = {"min_runs": max(MIN_CHUNK_RUNS, math.ceil(min_runs / (2 * PAIRS))),
           "min_seconds": min_seconds / (2 * PAIRS)}
    t_all = time.perf_counter()
    per["using"] = measure  # looked up here, at call time
    timed = timed_on_host(lambda: balanced(paths, target, feeds, pairs=PAIRS, **per), target)
    chunks, busy = timed.chunks, timed.busy
    a, b = chunks[-1]["fp32"], chunks[-1]["int8"]
    if a.get("emulated") or b.get("emulated"):
        return {facts["name"]: {"status": "emulated", "reason": f"measured under emulation: {EMULATED}",
                                "passed": False}}
    if not order_balanced_ratios(chunks, "int8", "fp32"):
        reason = b.get("reason") or a.get("reason") or "not measured"
        return {facts["name"]: {"status": "unavailable", "reason": reason, "passed": False}}
    # more pairs while undecided, timed as the kept ones were
    with session_config(SPIN_OFF) if timed.note else contextlib.nullcontext():
        chunks = _extend(chunks, paths, target, feeds, per, timed.seconds)
    if not order_balanced_ratios(chunks, "int8", "fp32"):
        c = chunks[-1]
        reason = c["int8"].get("reason") or c["fp32"].get("reason") or "not measured"
        return {facts["name"]: {"status": "unavailable", "reason": reason, "passed": False}}
    rec = verdict(chunks)
    if busy is not None:
        rec["host_other_cores"] = round(busy, 3)
    if timed.note:
        rec["timing_note"] = timed.note
    rec.update({"seconds": round(time.perf_counter() - t_all, 2),
                "batch": int(next(iter(feeds.values())).shape[0]) if feeds else None,
                "session_config": chunks[0]["fp32"].get("session_config") or dict(SESSION_CONFIG)})
    provs, on = _profile_providers(target)
    rec["op_profile_on"] = on
    try:
        prof = op_profile(q_path, feeds, threads=facts["threads"], providers=provs)
    except Exception as e:  # profiling is diagnostic: a failure must not hide the timing verdict
        rec["op_profile"] = f"unavailable: {type(e).__name__}: {e}"
        if not rec["passed"]:
            rec["why"] = explain(rec)
        return {facts["name"]: rec}
    groups = classify(prof["nodes"])
    want = provs[0][0]
    fell_back = [n for n in prof["nodes"] if n["provider"] not in (want, "?")]
    rec.update({
        "fp32_ops": groups["fp32"],
        "int8_ops": groups["int8"],
        "qdq_share": round(sum(x["share"] for x in groups["qdq"]), 4),
        "fallback_nodes": len(fell_back),
        "fallback": [{"node": n["name"], "op_type": n["op_type"], "provider": n["provider"]} for n in fell_back][:20],
    })
    if not rec["passed"]:
        rec["why"] = explain(rec)
    return {facts["name"]: rec}


def _profile_providers(target) -> tuple[list, str]:
    """([(provider, options)], where) the INT8 model's operator profile runs on: a local target's providers
    that can run here, as its timings did; a remote or emulated device's profile is read on this host's CPU.

    It once always ran on the CPU and counted nodes against the target's first provider: on an H200 the
    nvidia-gpu gate said "67 nodes fell back to another provider" (every node, against TensorRT, which was
    not even installed) and explained a CUDA slowdown with the CPU's QLinearConv times."""
    from ..runner.edgekit_runner import provider_status

    if target is None or getattr(target, "address", "local") != "local":
        return [("CPUExecutionProvider", {})], "this host's CPU"
    provs = [p if isinstance(p, (tuple, list)) else (p, {})
             for p in getattr(target, "providers", None) or ["CPUExecutionProvider"]]
    usable, _, _ = provider_status(provs, getattr(target, "required_providers", None))
    usable = usable or [("CPUExecutionProvider", {})]
    return usable, usable[0][0]


def _extend(chunks, paths, target, feeds, per, first_s: float) -> list:
    """More session pairs while the interval straddles the threshold, within the time budget."""
    budget = max(first_s, min(EXTEND * first_s, MAX_SECONDS))
    t0 = time.perf_counter() - first_s
    step_s = first_s * MORE_PAIRS / PAIRS
    while True:
        lo, _, hi, _ = median_interval(order_balanced_ratios(chunks, "int8", "fp32"), CONFIDENCE)
        if hi < FASTER_THAN or lo >= FASTER_THAN or time.perf_counter() - t0 + step_s > budget:
            return chunks
        if not all(map(usable, chunks)):
            return chunks  # a measurement failed on the way: judge on what was measured
        chunks = chunks + balanced(paths, target, feeds, pairs=MORE_PAIRS, **per)


def verdict(chunks: list) -> dict:
    """The gate's record from its measurements: passed only when the whole interval is below FASTER_THAN."""
    ok = [c for c in chunks if usable(c)]
    units = order_balanced_ratios(chunks, "int8", "fp32")
    lo, mid, hi, cov = median_interval(units, CONFIDENCE)
    passed = hi < FASTER_THAN
    within_noise = not passed and lo < FASTER_THAN
    return {"status": "ok", "fp32_ms": round(float(np.median([c["fp32"]["p50_ms"] for c in ok])), 4),
            "int8_ms": round(float(np.median([c["int8"]["p50_ms"] for c in ok])), 4),
            "ratio": round(mid, 4), "ratio_interval": [round(lo, 4), round(hi, 4)], "confidence": round(cov, 4),
            "passed": bool(passed), "threshold": FASTER_THAN,
            "verdict": "faster" if passed else "not faster (within noise)" if within_noise else "not faster",
            "runs": min(sum(c[k].get("runs", 0) for c in ok) for k in ("fp32", "int8")),
            "session_pairs": len(units)}


def interval_text(rec: dict) -> str:
    lo, hi = rec["ratio_interval"]
    return (f"{rec['ratio']:.3f}x FP32 latency, {rec['confidence']:.1%} interval {lo:.3f}-{hi:.3f} from "
            f"{rec['session_pairs']} order-balanced session pairs, {rec['runs']} runs each")


def explain(rec: dict) -> str:
    lead = "the difference is within timing noise: " if rec.get("verdict") == "not faster (within noise)" else ""
    parts = [f"{lead}INT8 p50 {rec['int8_ms']:.3f} ms vs FP32 {rec['fp32_ms']:.3f} ms ({interval_text(rec)}; "
             f"faster means the whole interval below {rec['threshold']})"]
    if rec.get("qdq_share"):
        parts.append(f"Q/DQ conversion takes {rec['qdq_share']:.0%} of INT8 time")
    fp = rec.get("fp32_ops") or []
    if fp:
        top = ", ".join(f"{o['op_type']} {o['share']:.0%}" for o in fp[:4])
        parts.append(f"still FP32: {top}")
    if rec.get("fallback_nodes"):
        parts.append(f"{rec['fallback_nodes']} nodes fell back to another provider")
    if rec.get("op_profile_on") == "CUDAExecutionProvider" and not rec.get("int8_ops"):
        # measured on an H200 (2026-12-04): digits-cnn's QDQ INT8 took 2.0x FP32's time under CUDA
        parts.append("onnxruntime's CUDA provider has no INT8 kernels for these operators: it runs QDQ as "
                     "dequantize, float op, quantize (INT8 pays on NVIDIA GPUs through TensorRT)")
    return "; ".join(parts)
