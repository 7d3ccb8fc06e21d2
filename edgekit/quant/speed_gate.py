"""The speed gate: INT8 is recommended only if it measured faster than FP32 on the target.

Both models run in one process, interleaved; the INT8 model's operator profile says which
operators still compute in FP32, how much time Q/DQ conversion costs, and which nodes ran on
a provider other than the target's (a silent fallback elsewhere is reported here).
"""
from __future__ import annotations

from ..runner.edgekit_runner import SESSION_CONFIG
from .isa import target_facts
from .timing import classify, measure, op_profile

# INT8 must beat FP32 by more than run-to-run noise of interleaved p50s
FASTER_THAN = 0.98


EMULATED = "timings under emulation are correctness only, never a speed verdict"


def gate(fp32_path, q_path, target, feeds, *, min_runs: int = 50, min_seconds: float = 1.0) -> dict:
    facts = target_facts(target)
    if getattr(target, "emulated", False):  # qemu's ratio said INT8 ran 7x faster: not the device's
        return {facts["name"]: {"status": "emulated", "reason": f"{facts['name']} is emulated: {EMULATED}",
                                "passed": False}}
    lat = measure({"fp32": fp32_path, "int8": q_path}, target, feeds, min_runs=min_runs, min_seconds=min_seconds)
    a, b = lat["fp32"], lat["int8"]
    if a.get("emulated") or b.get("emulated"):
        return {facts["name"]: {"status": "emulated", "reason": f"measured under emulation: {EMULATED}",
                                "passed": False}}
    if a.get("status") != "ok" or b.get("status") != "ok":
        reason = b.get("reason") or a.get("reason") or "not measured"
        return {facts["name"]: {"status": "unavailable", "reason": reason, "passed": False}}
    ratio = b["p50_ms"] / a["p50_ms"]
    rec = {"status": "ok", "fp32_ms": round(a["p50_ms"], 4), "int8_ms": round(b["p50_ms"], 4),
           "ratio": round(ratio, 4), "passed": bool(ratio < FASTER_THAN), "threshold": FASTER_THAN,
           "runs": min(a.get("runs", 0), b.get("runs", 0)),
           "batch": int(next(iter(feeds.values())).shape[0]) if feeds else None,
           "session_config": a.get("session_config") or dict(SESSION_CONFIG)}
    try:
        prof = op_profile(q_path, feeds, threads=facts["threads"])
    except Exception as e:  # profiling is diagnostic: a failure must not hide the timing verdict
        rec["op_profile"] = f"unavailable: {type(e).__name__}: {e}"
        return {facts["name"]: rec}
    groups = classify(prof["nodes"])
    want = facts["providers"][0]
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


def explain(rec: dict) -> str:
    parts = [f"INT8 p50 {rec['int8_ms']:.3f} ms vs FP32 {rec['fp32_ms']:.3f} ms ({rec['ratio']:.2f}x)"]
    if rec.get("qdq_share"):
        parts.append(f"Q/DQ conversion takes {rec['qdq_share']:.0%} of INT8 time")
    fp = rec.get("fp32_ops") or []
    if fp:
        top = ", ".join(f"{o['op_type']} {o['share']:.0%}" for o in fp[:4])
        parts.append(f"still FP32: {top}")
    if rec.get("fallback_nodes"):
        parts.append(f"{rec['fallback_nodes']} nodes fell back to another provider")
    return "; ".join(parts)
