"""The `edgekit profile` report: versioned JSON (edgekit.profile/1) and Markdown.

JSON layout::

    schema, edgekit_version, created, host{cpu, flags, cores, machine, os}, versions{...},
    settings{warmup, min_runs, min_seconds, max_seconds, op_profile, inputs},
    artifacts{label: {path, kind, sha256, bytes}},
    runs[{target, target_info{arch, address, providers, emulated}, batch, threads,
          results{label: measurement | {status, reason}}, ratios{label: p50 / p50(baseline)}}]

Every measurement carries target, provider, threads, batch, precision, runs, host_cpu and
emulated; an entry that could not be measured carries a status and a reason, never a number.
"""
from __future__ import annotations

import datetime as _dt

SCHEMA = "edgekit.profile/1"


def build_report(runs: list, artifacts: dict, settings: dict) -> dict:
    from . import __version__
    from .artifact import host_info, versions

    for run in runs:
        res = run["results"]
        base = next((k for k in res if res[k].get("status") == "ok"), None)
        base = next((k for k in res if res[k].get("precision") == "fp32" and res[k].get("status") == "ok"), base)
        run["baseline"] = base
        run["ratios"] = ({k: _ratio(v, res[base]) for k, v in res.items()} if base else {})
    return {"schema": SCHEMA, "edgekit_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "host": host_info(), "versions": versions(), "settings": settings, "artifacts": artifacts,
            "runs": runs}


def _ratio(a, b):
    from .profile import ratio

    r = ratio(a, b)
    return round(r, 4) if r is not None else None


def ok_count(report: dict) -> int:
    return sum(1 for run in report["runs"] for r in run["results"].values() if r.get("status") == "ok")


def _f(v, unit="", nd=3):
    if v is None:
        return "-"
    return f"{v:.{nd}f}{unit}"


def to_markdown(report: dict) -> str:
    h = report["host"]
    lines = [f"# edgekit profile", "",
             f"Host: {h.get('cpu')} ({h.get('cores')} cores, {h.get('machine')}), "
             f"onnxruntime {report['versions'].get('onnxruntime')}, edgekit {report['edgekit_version']}, "
             f"{report['created']}.", ""]
    s = report["settings"]
    lines += [f"Runs: {s.get('warmup')} warm-up, then at least {s.get('min_runs')} timed runs and "
              f"{s.get('min_seconds')} s (at most {s.get('max_seconds')} s) per artifact, interleaved "
              f"round-robin in one process; inputs: {s.get('inputs')}.", ""]
    for run in report["runs"]:
        ti = run["target_info"]
        emu = ti.get("emulated")
        title = f"## {run['target']} — batch {run['batch']}, threads {run['threads'] or 'default'}"
        if emu:
            title += " (EMULATED: qemu-user, correctness only, not device latency)"
        lines += [title, "", f"{ti.get('arch')}, {ti.get('address')}, providers: "
                  f"{', '.join(p['name'] for p in ti.get('providers', []))}", ""]
        cols = ["artifact", "precision", "provider", "p50 ms", "p90 ms", "p99 ms", "mean ± std ms",
                f"vs {run.get('baseline') or '-'}", "inf/s", "cold start ms", "peak RSS MB", "runs",
                "fallback nodes"]
        cross = any("arm_vs_host" in r for r in run["results"].values())
        if cross:
            cols.append("outputs vs this host: max abs diff (atol)")
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for label, r in run["results"].items():
            if r.get("status") != "ok":
                lines.append(f"| {label} | " + " | ".join([f"{r.get('status')}: {r.get('reason')}"]
                                                          + [""] * (len(cols) - 2)) + " |")
                continue
            rat = run["ratios"].get(label)
            row = [label, str(r.get("precision") or "-"), r["provider"].replace("ExecutionProvider", ""),
                   _f(r["p50_ms"]), _f(r["p90_ms"]), _f(r["p99_ms"]), f"{_f(r['mean_ms'])} ± {_f(r['std_ms'])}",
                   _f(rat, "x", 2), _f(r.get("throughput"), "", 1), _f(r.get("cold_start_ms"), "", 1),
                   _f(r.get("peak_rss_mb"), "", 0), str(r["runs"]), str(r.get("fallback_nodes", "-"))]
            if cross:
                av = r.get("arm_vs_host") or {}
                d = av.get("max_abs_diff") or {}
                if d:
                    verdict = "ok" if av.get("ok") else "MISMATCH"
                    row.append(f"{verdict} {max(d.values()):.3g} ({av.get('atol'):.3g})")
                else:
                    row.append(str(av.get("reason", "-")))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        lines += _op_section(run) + _prepost_section(run)
    return "\n".join(lines).rstrip() + "\n"


def _op_section(run) -> list:
    from .opprofile import top_ops

    out = []
    for label, r in run["results"].items():
        ops = r.get("op_breakdown")
        if r.get("status") == "ok" and ops:
            tops = ", ".join(f"{op} {ms:.3f} ms ({share:.0%})" for op, ms, share in top_ops(ops, 5))
            out.append(f"- {label}: {tops}")
    return (["Time per operator type (ONNX Runtime profiler, median per run):", ""] + out + [""]) if out else []


def _prepost_section(run) -> list:
    rows = []
    for label, r in run["results"].items():
        pp = r.get("prepost")
        if not pp:
            continue
        if pp.get("status") != "ok":
            rows.append(f"| {label} | {pp.get('status')}: {pp.get('reason')} | | | | |")
            continue
        rows.append(f"| {label} | {_f(r['p50_ms'])} | {_f(pp['pre']['p50_ms'])} | {_f(pp['model']['p50_ms'])} | "
                    f"{_f(pp['post']['p50_ms'])} | {_f(pp['e2e']['p50_ms'])} |")
    if not rows:
        return []
    return (["End to end with pre/post-processing (p50 ms):", "",
             "| artifact | model only | pre | model | post | end to end |", "|---|---|---|---|---|---|"]
            + rows + [""])
