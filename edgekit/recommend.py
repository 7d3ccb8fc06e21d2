"""Pick the artifact to ship per target: the fastest one whose metric is within tolerance of FP32.

FP32 is always a candidate, so an INT8 (or pruned) variant is recommended only when it
measured faster than FP32 on that target (INT8 and FP16 by the quantization stage's speed gate,
a pruned or distilled variant by the same margin on its p50); a quantization record that vetoed
its artifact (tolerance missed) keeps it out.
"""
from __future__ import annotations


def metric_veto(a, manifest, tolerance) -> str | None:
    """Why `a`'s metric rules it out (a drop from the run's FP32 beyond tolerance), or None."""
    fp32 = next((x for x in manifest.artifacts if x.kind == "fp32"), None)
    ref, val = ((fp32.metrics or {}).get("value") if fp32 else None), (a.metrics or {}).get("value")
    if a.kind == "fp32":
        return None
    if ref is not None and val is not None and not tolerance.allows(ref, val):
        # in the tolerance's own unit: a 'pt' drop printed with '%' read as a relative one of another size
        return f"{a.path}: metric drop {tolerance.format_drop(ref, val)} beyond {tolerance}"
    # with labels the metric is the first output's accuracy; every other output is held to FP32 by the
    # same tolerance (as INT8 tuning holds it), or a pruned model with a broken second head is "lossless"
    others = (a.metrics or {}).get("other_outputs_fidelity") or ()
    bad = [(i, v) for i, v in enumerate(others, 1) if v is not None and not tolerance.allows(1.0, v)]
    if bad:
        i, v = min(bad, key=lambda b: b[1])
        names = [o.get("name") if isinstance(o, dict) else getattr(o, "name", None) for o in a.outputs or ()]
        which = f"output '{names[i]}'" if i < len(names) and names[i] else f"output {i}"
        return f"{a.path}: {which} fidelity to FP32 {v:.4f} (drop {tolerance.format_drop(1.0, v)}) beyond {tolerance}"
    return None


def precision_veto(a, target) -> str | None:
    """Why `a` cannot be recommended for a target whose file limits its precisions, or None."""
    allowed = tuple(getattr(target, "precisions", ()) or ())
    if not allowed:
        return None
    p = {"int8": "int8", "int8-dynamic": "int8-dynamic", "fp16": "fp16"}.get(a.kind, "fp32")
    ok = p in allowed or (p == "int8-dynamic" and "int8" in allowed)  # dynamic INT8 runs where INT8 does
    return None if ok else f"{a.path}: {p} is not among {target.name}'s precisions ({', '.join(allowed)})"


def recommend(manifest, tolerance, targets) -> dict:
    fp32 = next((a for a in manifest.artifacts if a.kind == "fp32"), None)
    out = {}
    native = [t for t in targets if not getattr(t, "emulated", False)]
    for t in native + [t for t in targets if t not in native]:
        name = t.name if hasattr(t, "name") else str(t)
        if getattr(t, "emulated", False):
            out[name] = _emulated(name, out)
            continue
        cands, rejected = [], []
        for a in manifest.artifacts:
            lat = a.latency.get(name, {})
            if lat.get("status") != "ok":
                continue
            why = precision_veto(a, t)
            if why:
                rejected.append(why)
                continue
            why = metric_veto(a, manifest, tolerance)
            if why:
                rejected.append(why)
                continue
            q = manifest.quantization.get(a.parent or "", {}) if a.stage == "quantize" else {}
            why = _quantized_veto(a, q, fp32, name) if q and a.kind != "fp32" else _not_measurably_faster(a, fp32, name)
            if why:
                rejected.append(why)
                continue
            cands.append(a)
        if not cands and not any(a.latency.get(name) for a in manifest.artifacts):
            # nothing was even attempted (--no-profile): say so, rather than sound like a failure
            out[name] = {"status": "skipped", "reason": "not profiled (profiling was off), so nothing is "
                                                        "recommended for this target"}
            continue
        if not cands and rejected:
            # the target ran: what it measured is outside its precisions (or vetoed), which is not "unavailable",
            # the word for a runtime or device that is not there
            out[name] = {"status": "none", "reason": "no measured artifact can be recommended: " + "; ".join(rejected)}
            continue
        if not cands:
            reasons = [a.latency.get(name, {}).get("reason") for a in manifest.artifacts]
            reason = next((r for r in reasons if r), "no artifact was measured on this target")
            out[name] = {"status": "unavailable", "reason": reason}
            continue
        best = min(cands, key=lambda a: a.latency[name]["p50_ms"])
        fp = fp32.latency.get(name, {}) if fp32 else {}
        speed = (fp["p50_ms"] / best.latency[name]["p50_ms"]) if fp.get("status") == "ok" else None
        m = best.metrics or {}
        parts = [f"fastest within tolerance ({tolerance}) on {name}: p50 {best.latency[name]['p50_ms']:.3f} ms"]
        if speed is not None and best.kind != "fp32":
            parts.append(f"{speed:.2f}x faster than FP32")
        if m.get("value") is not None:
            parts.append(f"{m.get('name')} {m['value']:.4f}" +
                         (f" (drop {m['drop_rel']:.2%})" if m.get("drop_rel") is not None else ""))
        if best.kind == "fp32" and len(cands) + len(rejected) > 1:
            parts.append("no compressed variant was both faster and within tolerance"
                         + (f" ({'; '.join(rejected)})" if rejected else ""))
        out[name] = {"status": "ok", "path": best.path, "kind": best.kind, "speedup_vs_fp32": speed,
                     "reason": "; ".join(parts), "rejected": rejected}
    return out


def _quantized_veto(a, q: dict, fp32, target: str) -> str | None:
    """Why the quantization stage's record `q` rules out its artifact `a` on `target`, or None. A missed
    tolerance or a numeric veto holds on every target. The speed gate speaks only for the target it timed:
    another target has its own latency table to go by. Before, a second target took the gate's verdict as its
    own: x86-laptop refused a GPU target's INT8 "not faster than FP32 on nvidia-gpu", and a gate passed on one
    target recommended the file on another where nothing had measured it faster."""
    gates = q.get("speed_gate") or {}
    accuracy = q.get("tolerance_met") is False or bool((a.verify or {}).get("blocks_recommendation_above"))
    if q.get("recommend") is False and (accuracy or not gates or target in gates):
        return f"{a.path}: {q.get('reason', 'vetoed by the quantization stage')}"
    if not gates or target in gates:
        return None  # the gate passed here, or was switched off
    simulated = (a.metrics or {}).get("simulated")
    if simulated:
        # scored in exact QDQ arithmetic, as the gated target (a GPU, an ARM device) computes INT8; this
        # host's x86 kernels without VNNI saturate where it does not, so the score is not this target's
        return (f"{a.path}: built and scored for {', '.join(gates)} (its metric in {simulated}), not as {target} "
                f"computes INT8; name {target} first (--target) to have INT8 built, scored and timed for it")
    return _not_measurably_faster(a, fp32, target, where=f"the speed gate timed it on {', '.join(gates)}, not "
                                                        f"{target}; in {target}'s latency table ")


def _not_measurably_faster(a, fp32, target: str, where: str = "") -> str | None:
    """Why a pruned or distilled variant does not count as faster than FP32 on target, or None. INT8 and FP16
    have the quantization stage's speed gate; these have only the latency table, where a distilled tabular
    MLP at p50 0.016 ms beside FP32's 0.016 ms was recommended as "1.00x faster than FP32". The gate's margin
    applies: faster means at most FASTER_THAN of FP32's p50. `where` goes before the figures (which table)."""
    from .quant.speed_gate import FASTER_THAN

    if fp32 is None or a is fp32 or a.kind == "fp32":
        return None
    mine, ref = a.latency.get(target, {}), fp32.latency.get(target, {})
    if ref.get("status") != "ok" or not ref.get("p50_ms") or mine.get("p50_ms") is None:
        return None
    if mine["p50_ms"] <= ref["p50_ms"] * FASTER_THAN:
        return None
    return (f"{a.path}: {where}p50 {mine['p50_ms']:.3f} ms against FP32's {ref['p50_ms']:.3f} ms is not measurably faster "
            f"(faster means {FASTER_THAN:.2f}x FP32's p50 or less)")


def _emulated(name: str, picks: dict) -> dict:
    """Emulated timings (qemu) are 40-600x off and distort INT8/FP32 ratios: never rank by them."""
    native = next((v for v in picks.values() if v.get("status") == "ok"), None)
    rec = {"status": "emulated", "reason": f"{name} runs under user-mode emulation: its timings check correctness "
                                           "only and are not device latency"}
    if native:
        rec.update(path=native["path"], kind=native["kind"],
                   reason=rec["reason"] + f"; the native pick {native['path']} is shown for reference")
    return rec
