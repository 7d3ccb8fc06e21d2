"""Manifests -> the report model: one plain dict, schema ``edgekit.report/1`` (docs/report-schema.md).

Everything the HTML and Markdown renderers show comes from this dict, so the JSON a machine reads
and the page a person reads cannot disagree. Measurements are normalised to one of the statuses in
LATENCY_STATUS; only "ok" entries carry top-level numbers. Emulated timings are kept apart under
"emulated_timing" so that nobody reads them as device latency by accident.
"""
from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

SCHEMA = "edgekit.report/1"
LATENCY_STATUS = ("ok", "emulated", "unavailable", "failed", "missing")
STAT_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput", "runs", "cold_start_ms",
             "peak_rss_mb", "rss_delta_mb")
FACT_KEYS = ("provider", "providers", "providers_active", "threads", "batch", "precision", "host_cpu",
             "fallback_nodes", "onnxruntime", "session_config", "op_profile_error")
KIND_ORDER = ("fp32", "pruned", "distilled", "sparse", "fp16", "int8", "int8-dynamic")
# comparison highlights: a latency ratio outside this band, or a metric change beyond this, is flagged
RATIO_BAND = (0.9, 1.1)
METRIC_DELTA = 0.005


def _num(v):
    """A finite float, or None: NaN/inf and non-numbers never reach a table cell."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def latency_entry(raw, fp32_raw=None) -> dict:
    """Normalise one manifest latency entry (see the manifest schema) for the report."""
    if not isinstance(raw, dict) or not raw:
        return {"status": "missing", "reason": "not measured on this target"}
    status = str(raw.get("status", "ok" if "p50_ms" in raw else "missing"))
    facts = {k: raw[k] for k in FACT_KEYS if raw.get(k) is not None}
    if status == "ok" and raw.get("emulated"):
        status = "emulated"
    if status == "emulated-only":
        status = "emulated"
    if status not in LATENCY_STATUS:
        status = "failed" if status == "error" else "unavailable"
    if status == "ok" and _num(raw.get("p50_ms")) is None:
        return {"status": "failed", "reason": "measurement has no p50 latency", **facts}
    if status != "ok":
        out = {"status": status, "reason": str(raw.get("reason") or _default_reason(status)), **facts}
        timing = {k: _num(raw.get(k)) for k in STAT_KEYS if _num(raw.get(k)) is not None}
        if status == "emulated" and timing:
            out["emulated_timing"] = timing
        return out
    out = {"status": "ok", **facts, "emulated": False}
    for k in STAT_KEYS:
        if _num(raw.get(k)) is not None:
            out[k] = _num(raw[k])
    samples = [s for s in (_num(x) for x in raw.get("samples_ms") or []) if s is not None]
    if samples:
        out["samples_ms"] = samples
    ops = raw.get("op_breakdown")
    if isinstance(ops, dict):
        out["op_breakdown"] = {str(k): _num(v) for k, v in ops.items() if _num(v) is not None}
    pp = raw.get("prepost")
    if isinstance(pp, dict):
        out["prepost"] = prepost_entry(pp, out["p50_ms"])
    fp = latency_entry(fp32_raw) if fp32_raw is not None else None
    if fp and fp["status"] == "ok" and out["p50_ms"] > 0:
        out["speedup_vs_fp32"] = fp["p50_ms"] / out["p50_ms"]
    return out


def _default_reason(status):
    return {"emulated": "measured under emulation: not device latency",
            "missing": "not measured on this target"}.get(status, "no reason recorded")


def prepost_entry(pp: dict, model_ms: float) -> dict:
    """Pre/post timing in either manifest form: flat {pre_ms, post_ms, e2e_p50_ms} or the profiler's
    {"status", "pre": stats, "model": stats, "post": stats, "e2e": stats}; p50s are reported."""
    status = str(pp.get("status") or "ok")
    if status != "ok":
        return {"status": status if status in LATENCY_STATUS else "unavailable",
                "reason": str(pp.get("reason") or _default_reason(status))}

    def p50(part, flat):
        d = pp.get(part)
        return _num(d.get("p50_ms")) if isinstance(d, dict) else _num(pp.get(flat))

    pre, post, e2e = p50("pre", "pre_ms"), p50("post", "post_ms"), p50("e2e", "e2e_p50_ms")
    model_ms = p50("model", "model_ms") or model_ms  # the model time measured inside the same loop
    out = {"status": "ok", "pre_ms": pre, "post_ms": post, "model_ms": model_ms, "e2e_p50_ms": e2e}
    total = e2e or sum(x for x in (pre, post, model_ms) if x is not None)
    if total:
        out["share"] = {k: (v / total if v is not None else None)
                        for k, v in (("pre", pre), ("model", model_ms), ("post", post))}
    return out


def metric_entry(m) -> dict | None:
    if not isinstance(m, dict) or _num(m.get("value")) is None:
        return None
    out = {"name": str(m.get("name") or "metric"), "value": _num(m["value"])}
    for k in ("reference", "drop_abs", "drop_rel"):
        if _num(m.get(k)) is not None:
            out[k] = _num(m[k])
    if m.get("n") is not None:
        out["n"] = int(m["n"])
    return out


def _kind_key(v):
    k = v["kind"]
    return (KIND_ORDER.index(k) if k in KIND_ORDER else len(KIND_ORDER), v["path"])


def run_model(manifest, outdir, label: str) -> dict:
    """One manifest (edgekit.artifact.Manifest) -> the report's run record."""
    arts = list(manifest.artifacts)
    fp32 = next((a for a in arts if a.kind == "fp32"), None)
    targets = []
    for a in arts:
        for t in (a.latency or {}):
            if t not in targets:
                targets.append(t)
    for t in (manifest.recommended or {}):
        if t not in targets:
            targets.append(t)
    variants = []
    for a in arts:
        v = {"kind": a.kind, "path": a.path, "parent": a.parent, "stage": a.stage, "sha256": a.sha256,
             "bytes": int(a.bytes or 0), "params": a.params, "opset": a.opset,
             "metric": metric_entry(a.metrics), "verify": dict(a.verify or {}), "notes": list(a.notes or [])}
        if fp32 is not None and fp32.bytes and a.bytes:
            v["size_ratio"] = a.bytes / fp32.bytes
        v["latency"] = {t: latency_entry((a.latency or {}).get(t),
                                         (fp32.latency or {}).get(t) if fp32 is not None and a is not fp32 else None)
                        for t in targets}
        if a is fp32:
            for lat in v["latency"].values():
                if lat["status"] == "ok":
                    lat["speedup_vs_fp32"] = 1.0
        variants.append(v)
    variants.sort(key=_kind_key)
    recommended = {}
    for t in targets:
        r = (manifest.recommended or {}).get(t)
        if not isinstance(r, dict):
            recommended[t] = {"status": "missing", "reason": "no recommendation recorded for this target"}
        elif r.get("path"):
            recommended[t] = {"status": "ok", "path": r["path"], "kind": r.get("kind"),
                              "reason": str(r.get("reason") or ""),
                              "speedup_vs_fp32": _num(r.get("speedup_vs_fp32")),
                              "rejected": list(r.get("rejected") or [])}
        else:
            recommended[t] = {"status": r.get("status") or "unavailable", "reason": str(r.get("reason") or "")}
    stages = []
    for s in manifest.stages:
        d = s if isinstance(s, dict) else {"name": s.name, "status": s.status, "reason": s.reason, "seconds": s.seconds}
        stages.append({k: d.get(k) for k in ("name", "status", "reason", "seconds")})
    return {
        "label": label,
        "outdir": str(outdir),
        "manifest_schema": manifest.schema,
        "created": manifest.created,
        "edgekit_version": manifest.edgekit_version,
        "source": dict(manifest.source or {}),
        "settings": dict(manifest.settings or {}),
        "versions": dict(manifest.versions or {}),
        "host": dict(manifest.host or {}),
        "targets": targets,
        "target_facts": dict(manifest.profile or {}),
        "variants": variants,
        "recommended": recommended,
        "stages": stages,
        "quantization": quantization_records(manifest.quantization),
        "pruning": pruning_record(manifest.pruning),
    }


def quantization_records(q) -> list:
    """The manifest keeps one record per quantized parent ({parent: record}); a bare record is accepted too."""
    if not isinstance(q, dict) or not q:
        return []
    items = [("", q)] if "trials" in q else [(k, v) for k, v in q.items() if isinstance(v, dict)]
    out = []
    for parent, rec in items:
        trials = []
        for t in rec.get("trials") or []:
            if not isinstance(t, dict):
                continue
            trials.append({"name": str(t.get("name", "")), "phase": t.get("phase"),
                           "config": t.get("config") or {}, "metric": _num(t.get("metric")),
                           "drop_rel": _num(t.get("drop_rel")), "latency_ms": _num(t.get("latency_ms")),
                           "speedup": _num(t.get("speedup")), "passed": bool(t.get("passed")),
                           "fp32_nodes": list(t.get("fp32_nodes") or []), "error": t.get("error")})
        out.append({"parent": parent or None, "trials": trials, "isa": rec.get("isa") or {},
                    "speed_gate": rec.get("speed_gate") or {}, "chosen": rec.get("chosen"),
                    "tolerance": rec.get("tolerance"), "reference": _num(rec.get("reference")),
                    "recommend": rec.get("recommend"), "reason": rec.get("reason")})
    return out


def pruning_record(p) -> dict | None:
    if not isinstance(p, dict) or not p:
        return None
    sens = [s for s in p.get("sensitivity") or [] if isinstance(s, dict)]
    steps = [s for s in p.get("steps") or [] if isinstance(s, dict)]
    rest = {k: v for k, v in p.items() if k not in ("sensitivity", "steps") and not isinstance(v, (dict, list))}
    return {"sensitivity": [{"layer": str(s.get("layer")), "ratio": _num(s.get("ratio")),
                             "metric": _num(s.get("metric")), "drop": _num(s.get("drop"))} for s in sens],
            "steps": [{k: _num(s.get(k)) for k in ("ratio", "params", "macs", "latency_ms", "metric")} for s in steps],
            "facts": rest}


def _labels(outdirs) -> list:
    """Short, unique run labels: the directory name, widened with its parents until unique."""
    paths = [Path(o).resolve() for o in outdirs]
    depth = 1
    while True:
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels) or depth > max(len(p.parts) for p in paths):
            break
        depth += 1
    seen = {}
    out = []
    for lab in labels:  # the same directory twice: number the repeats
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} #{seen[lab]}")
    return out


def comparison(runs: list) -> dict | None:
    """Per (artifact file, target): each run's p50 and metric against the first run (the baseline).

    Rows are keyed by file name, not kind: a pruned run has both model.int8.onnx and
    model.distilled.int8.onnx, and matching on kind paired one run's file with the other's."""
    if len(runs) < 2:
        return None
    base = runs[0]
    keys = []
    for r in runs:
        for v in r["variants"]:
            for t in r["targets"]:
                if (v["path"], t) not in keys:
                    keys.append((v["path"], t))
    rows, not_compared = [], []
    for path, t in keys:
        cells = {}
        for r in runs:
            v = next((x for x in r["variants"] if x["path"] == path), None)
            if v is None:
                cells[r["label"]] = {"status": "missing", "reason": f"no {path} in this run"}
                continue
            lat = v["latency"].get(t) or {"status": "missing", "reason": "not measured on this target"}
            c = {"status": lat["status"], "bytes": v["bytes"], "metric": (v["metric"] or {}).get("value"),
                 "host_cpu": lat.get("host_cpu") or r["host"].get("cpu")}
            if lat["status"] == "ok":
                c["p50_ms"] = lat["p50_ms"]
            else:
                c["reason"] = lat.get("reason", "")
            cells[r["label"]] = c
        b = cells[base["label"]]
        for r in runs[1:]:
            c = cells[r["label"]]
            if c.get("p50_ms") and b.get("p50_ms"):
                c["latency_ratio"] = c["p50_ms"] / b["p50_ms"]
                c["latency_flag"] = ("slower" if c["latency_ratio"] > RATIO_BAND[1]
                                     else "faster" if c["latency_ratio"] < RATIO_BAND[0] else "same")
            if c.get("metric") is not None and b.get("metric") is not None:
                c["metric_delta"] = c["metric"] - b["metric"]
                c["metric_flag"] = ("worse" if c["metric_delta"] < -METRIC_DELTA
                                    else "better" if c["metric_delta"] > METRIC_DELTA else "same")
            if c.get("bytes") and b.get("bytes"):
                c["size_ratio"] = c["bytes"] / b["bytes"]
        if not any(c["status"] == "ok" for c in cells.values()):
            not_compared.append({"variant": path, "target": t,
                                 "statuses": {lab: c["status"] for lab, c in cells.items()}})
            continue  # nothing measured in any run: no comparison to show, but say so
        rows.append({"variant": path, "target": t, "runs": cells})
    return {"baseline": base["label"], "ratio_band": list(RATIO_BAND), "metric_delta_threshold": METRIC_DELTA,
            "rows": rows, "not_compared": not_compared}


def build_report(outdirs, title=None, shown_as=None) -> dict:
    """Load each OUTDIR's manifest and build the report dict (schema edgekit.report/1)."""
    from .. import __version__
    from ..artifact import load_manifest
    from ..errors import UsageError

    outdirs = [Path(o) for o in outdirs]
    if not outdirs:
        raise UsageError("report: give at least one edgekit output directory")
    shown = [Path(o) for o in shown_as] if shown_as else outdirs
    runs = [run_model(load_manifest(o), where, lab) for o, where, lab in zip(outdirs, shown, _labels(shown))]
    if title is None:
        specs = []
        for r in runs:
            s = r["source"].get("spec") or r["label"]
            if s not in specs:
                specs.append(s)
        title = "edgekit report: " + ", ".join(specs)
    return {
        "schema": SCHEMA,
        "title": title,
        "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "edgekit_version": __version__,
        "runs": runs,
        "comparison": comparison(runs),
    }
