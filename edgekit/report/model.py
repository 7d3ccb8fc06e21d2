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
             "peak_rss_mb", "base_rss_mb", "rss_delta_mb")
FACT_KEYS = ("provider", "providers", "providers_active", "threads", "batch", "precision", "host_cpu",
             "fallback_nodes", "onnxruntime", "session_config", "op_profile_error",
             # caveats of the measurement (a device of another architecture, a provider that did not run)
             "note", "providers_note", "providers_missing")
KIND_ORDER = ("fp32", "pruned", "distilled", "sparse", "fp16", "int8", "int8-dynamic")
# comparison highlights: a latency ratio outside this band, or a metric change beyond this, is flagged
RATIO_BAND = (0.9, 1.1)
METRIC_DELTA = 0.005
NOT_COMPARABLE_EVAL = "not comparable: different eval data"
# what a latency was timed under, kept even when unset (threads null: the runtime's default), so that two
# runs' timings of one file are compared only under the same conditions
CONDITION_KEYS = ("threads", "batch", "provider", "onnxruntime", "host_cpu", "arch", "emulated")


def _num(v):
    """A finite float, or None: NaN/inf and non-numbers never reach a table cell."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _stats(raw) -> dict:
    """The STAT_KEYS raw has as numbers; runs stays an int (a count, as in the manifest)."""
    out = {k: _num(raw.get(k)) for k in STAT_KEYS if _num(raw.get(k)) is not None}
    if "runs" in out:
        out["runs"] = int(out["runs"])
    return out


def latency_entry(raw, fp32_raw=None) -> dict:
    """Normalise one manifest latency entry (see the manifest schema) for the report."""
    if not isinstance(raw, dict) or not raw:
        return {"status": "missing", "reason": "not measured on this target"}
    status = str(raw.get("status", "ok" if "p50_ms" in raw else "missing"))
    facts = {k: raw[k] for k in FACT_KEYS if raw.get(k) not in (None, [], "")}
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
        timing = _stats(raw)
        if status == "emulated" and timing:
            out["emulated_timing"] = timing
        return out
    out = {"status": "ok", **facts, "emulated": False, **_stats(raw),
           "conditions": {k: raw[k] for k in CONDITION_KEYS if k in raw}}
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
    for k in ("reference", "drop_abs", "drop_rel", "rmse"):
        if _num(m.get(k)) is not None:
            out[k] = _num(m[k])
    if m.get("n") is not None:
        out["n"] = int(m["n"])
    if m.get("data"):
        out["data"] = str(m["data"])
    return out


def _kind_key(v):
    k = v["kind"]
    return (KIND_ORDER.index(k) if k in KIND_ORDER else len(KIND_ORDER), v["path"])


def file_warnings(manifest, files_in) -> tuple[dict, list]:
    """({artifact path: "missing"|"changed"}, one warning per such artifact): the figures the manifest
    holds describe the files the run made; `bundle` and `profile` refuse a changed one, and a report
    must not present them silently as the file that is there now."""
    state, warnings = {}, []
    for a in manifest.artifacts:
        why = a.change(files_in)
        if why:
            state[a.path] = "missing" if not (Path(files_in) / a.path).is_file() else "changed"
            warnings.append(f"{a.path} ({a.kind}): {why}; the figures shown for it are the run's, "
                            "not of the file there now")
    return state, warnings


def run_model(manifest, outdir, label: str, files_in=None) -> dict:
    """One manifest (edgekit.artifact.Manifest) -> the report's run record. files_in: the folder whose
    artifact files are checked against the manifest (None: a run's own staging, whose files it has just
    written and hashed)."""
    arts = list(manifest.artifacts)
    file_state, warnings = file_warnings(manifest, files_in) if files_in is not None else ({}, [])
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
             "metric": metric_entry(a.metrics), "verify": dict(a.verify or {}), "notes": list(a.notes or []),
             "file": file_state.get(a.path, "ok")}
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
        elif r.get("path") and r.get("status", "ok") != "ok":
            # an emulated target's native reference pick: a reader that checks status must not ship it
            recommended[t] = {"status": str(r["status"]), "reason": str(r.get("reason") or ""),
                              "path": r["path"], "kind": r.get("kind")}
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
        "eval_data": eval_data(manifest, fp32),
        "quantization": quantization_records(manifest.quantization),
        "pruning": pruning_record(manifest.pruning),
        "warnings": warnings,
    }


def eval_data(manifest, fp32) -> dict | None:
    """What the run's metrics were measured on: the load stage's eval facts, else the FP32 metric's
    (the quantize/prune commands record only the latter); None when neither says."""
    for s in manifest.stages:
        d = s if isinstance(s, dict) else {"name": s.name, "details": s.details}
        ev = (d.get("details") or {}).get("eval") if d.get("name") == "load" else None
        if isinstance(ev, dict) and ev.get("source"):
            return {"source": str(ev["source"]), "n": ev.get("n"), "labelled": ev.get("labelled")}
    m = fp32.metrics if fp32 is not None and isinstance(fp32.metrics, dict) else {}
    if m.get("data"):
        return {"source": str(m["data"]), "n": m.get("n"), "labelled": None}
    return None


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
                           "fp32_ms": _num(t.get("fp32_ms")),
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


def _base_name(source: str) -> str:
    # the same file is spelt differently on two machines (/home/a/eval.npz, ./eval.npz): the name and
    # the sample count decide; the manifest has no content hash of the eval data to do better
    return source.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def _eval_desc(e: dict) -> str:
    return f"'{e['source']}'" + (f", {e['n']} samples" if e.get("n") is not None else "")


def eval_difference(a: dict | None, b: dict | None) -> str | None:
    """Why metrics on eval data a and b are not comparable, or None (also when either is unknown)."""
    if not a or not b:
        return None
    same = _base_name(a["source"]) == _base_name(b["source"])
    for k in ("n", "labelled"):
        if a.get(k) is not None and b.get(k) is not None and a[k] != b[k]:
            same = False
    return None if same else f"{_eval_desc(a)} vs {_eval_desc(b)}"


def _fp32_sha(run) -> str | None:
    return next((v["sha256"] for v in run["variants"] if v["kind"] == "fp32" and v.get("sha256")), None)


def model_difference(base: dict, run: dict) -> str | None:
    """Why two runs' source models differ, or None when they are (or may be) the same model.

    An identical FP32 file proves the same model; else the weights hashes decide when both runs have
    them, else the spec. A different FP32 file from the same spec proves a different model only under
    the same torch and edgekit versions: another exporter writes other bytes for the same weights."""
    sa, sb = base["source"], run["source"]
    if sa.get("task") and sb.get("task") and sa["task"] != sb["task"]:
        return f"task {sa['task']} vs {sb['task']}"
    fa, fb = _fp32_sha(base), _fp32_sha(run)
    if fa and fb and fa == fb:
        return None
    if fa and fb and sa.get("kind") == sb.get("kind") == "onnx" \
            and base.get("edgekit_version") == run.get("edgekit_version"):
        # an ONNX source's FP32 is the source itself (copied, external data merged): other bytes, other
        # model, whatever the source hashes say (older manifests hashed the .onnx without its data file)
        return f"FP32 sha256 {fa[:12]} vs {fb[:12]} (ONNX sources)"
    wa, wb = sa.get("weights_sha256"), sb.get("weights_sha256")
    if wa and wb:
        return None if wa == wb else f"weights sha256 {wa[:12]} vs {wb[:12]}"
    if sa.get("spec") and sb.get("spec") and sa["spec"] != sb["spec"]:
        return f"spec {sa['spec']} vs {sb['spec']}"
    same_exporter = (base["versions"].get("torch") and base["versions"].get("torch") == run["versions"].get("torch")
                     and base.get("edgekit_version") == run.get("edgekit_version"))
    if fa and fb and not (wa or wb) and same_exporter:
        return f"FP32 sha256 {fa[:12]} vs {fb[:12]} from the same spec, torch and edgekit"
    return None


def _cond_value(k, v) -> str:
    if k == "threads" and v is None:
        return "default"
    return str(v).removesuffix("ExecutionProvider") if k == "provider" else str(v)


def condition_difference(a: dict | None, b: dict | None) -> list:
    """["threads default vs 1", ...]: the conditions two timings of one file were measured under that
    differ; a fact either entry does not record (an older manifest) is not guessed at."""
    if not a or not b:
        return []
    return [f"{k.replace('host_cpu', 'cpu')} {_cond_value(k, a[k])} vs {_cond_value(k, b[k])}"
            for k in CONDITION_KEYS if k in a and k in b and a[k] != b[k]]


def _paired_conditions(base: dict, run: dict) -> str | None:
    """Every condition difference between the cells of run and base that time the same file on the same
    target, once each, or None when they were all timed alike."""
    out = []
    for v in run["variants"]:
        bv = next((x for x in base["variants"] if x["path"] == v["path"]), None)
        for t in run["targets"]:
            la, lb = (bv or {}).get("latency", {}).get(t) or {}, v["latency"].get(t) or {}
            if la.get("status") == lb.get("status") == "ok":
                out += [d for d in condition_difference(la.get("conditions"), lb.get("conditions")) if d not in out]
    return "; ".join(out) or None


def run_differences(base: dict, runs: list) -> tuple[dict, list]:
    """({label: {"model": why or None, "eval": why or None, "conditions": why or None}}, warnings) for each
    run against the baseline."""
    diffs, warnings = {}, []
    for r in runs:
        d = {"model": model_difference(base, r),
             "eval": eval_difference(base.get("eval_data"), r.get("eval_data")),
             "conditions": _paired_conditions(base, r)}
        diffs[r["label"]] = d
        if d["model"]:
            warnings.append(f"{r['label']} is a different source model from {base['label']} ({d['model']}): "
                            "the comparison is between models, not runs of one model")
        if d["eval"]:
            warnings.append(f"{r['label']} was evaluated on different data from {base['label']} ({d['eval']}): "
                            "its metrics are not comparable and no metric delta is shown")
        if d["conditions"]:
            warnings.append(f"{r['label']} was timed under other conditions than {base['label']} ({d['conditions']}): "
                            "its latency ratios measure that change as well as the files', and are not flagged "
                            "slower or faster")
    return diffs, warnings


def _metric_note(run_diff: dict, b: dict | None, c: dict | None) -> str:
    """Why this cell's metric cannot be set against the baseline's ("" when it can)."""
    if run_diff.get("eval"):
        return NOT_COMPARABLE_EVAL
    if b and c and b["name"] != c["name"]:
        return f"not comparable: {c['name']} vs {b['name']}"
    if b and c and b.get("data") and c.get("data") and eval_difference(
            {"source": b["data"], "n": b.get("n")}, {"source": c["data"], "n": c.get("n")}):
        return NOT_COMPARABLE_EVAL
    return ""


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
    diffs, warnings = run_differences(base, runs[1:])
    rows, not_compared = [], []
    for path, t in keys:
        cells, metrics = {}, {}
        for r in runs:
            v = next((x for x in r["variants"] if x["path"] == path), None)
            if v is None:
                cells[r["label"]] = {"status": "missing", "reason": f"no {path} in this run"}
                continue
            metrics[r["label"]] = v["metric"]
            lat = v["latency"].get(t) or {"status": "missing", "reason": "not measured on this target"}
            c = {"status": lat["status"], "bytes": v["bytes"], "metric": (v["metric"] or {}).get("value"),
                 "host_cpu": lat.get("host_cpu") or r["host"].get("cpu")}
            if lat["status"] == "ok":
                c["p50_ms"] = lat["p50_ms"]
                c["conditions"] = dict(lat.get("conditions") or {})
            else:
                c["reason"] = lat.get("reason", "")
            cells[r["label"]] = c
        b = cells[base["label"]]
        for r in runs[1:]:
            c = cells[r["label"]]
            if c.get("p50_ms") and b.get("p50_ms"):
                c["latency_ratio"] = c["p50_ms"] / b["p50_ms"]
                other = condition_difference(b.get("conditions"), c.get("conditions"))
                if other:  # a flag would read as the file getting slower or faster: the conditions changed too
                    c["latency_note"] = "other conditions: " + "; ".join(other)
                else:
                    c["latency_flag"] = ("slower" if c["latency_ratio"] > RATIO_BAND[1]
                                         else "faster" if c["latency_ratio"] < RATIO_BAND[0] else "same")
            note = _metric_note(diffs[r["label"]], metrics.get(base["label"]), metrics.get(r["label"]))
            if c.get("metric") is not None and b.get("metric") is not None and note:
                c["metric_note"] = note  # a delta between different eval sets reads as a real change: none is given
            elif c.get("metric") is not None and b.get("metric") is not None:
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
            "rows": rows, "not_compared": not_compared, "differences": diffs, "warnings": warnings}


def build_report(outdirs, title=None, shown_as=None) -> dict:
    """Load each OUTDIR's manifest and build the report dict (schema edgekit.report/1)."""
    from .. import __version__
    from ..artifact import load_manifest
    from ..errors import UsageError

    outdirs = [Path(o) for o in outdirs]
    if not outdirs:
        raise UsageError("report: give at least one edgekit output directory")
    shown = [Path(o) for o in shown_as] if shown_as else outdirs
    # a run's own report (shown_as: written from its staging folder) describes the files it has just written
    runs = [run_model(load_manifest(o), where, lab, files_in=None if shown_as else o)
            for o, where, lab in zip(outdirs, shown, _labels(shown))]
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
