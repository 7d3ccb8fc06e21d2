"""The `edgekit profile` report: versioned JSON (edgekit.profile/1) and Markdown.

JSON layout::

    schema, edgekit_version, created, host{cpu, flags, cores, machine, os}, versions{...},
    settings{warmup, min_runs, min_seconds, max_seconds, op_profile, inputs (one line: --inputs, a run's own
             OUTDIR/sample_inputs.npz, or generated and why), inputs_by_artifact{label: the same per artifact}},
    artifacts{label: {path, kind, sha256, bytes, run (the edgekit output folder it belongs to, or null)}
              (with external data: bytes and sha256 cover the data files too, listed in
              external_data{location: {bytes, sha256}}, and onnx_bytes is the .onnx file's own)},
    runs[{target, target_info{arch, address, providers, emulated}, batch, threads,
          results{label: measurement | {status, reason}}, baselines{label: label or null},
          baseline (the one label when all share it, else null), ratios{label: p50 / p50(its baseline)}}]

Non-finite numbers are written as the strings "NaN", "Infinity" and "-Infinity" (standard JSON).
Every measurement carries target, provider, threads, batch, precision, runs, host_cpu and
emulated (and, from run_profile, input_shapes{input name: the shape timed}); an entry that could
not be measured carries a status and a reason, never a number. With --with-prepost a measurement
also has prepost{status, batch, pre, model, post, e2e}: each part's times are per iteration (one
batch), and every throughput here, the model's and each part's, is inferences (samples) per second.
cold_start_ms is session creation + first run, after a throwaway session has paid onnxruntime's
one-time set-up: the median of cold_start_runs sessions (up to five, each alone). peak_rss_mb is the measuring process's peak while it timed (base_rss_mb: its RSS
before), the same for every artifact timed in it, not the artifact's own; rss_delta_mb is what the
artifact's session keeps once created and run once (RSS after it less RSS before it, the heap's free
memory handed back to the system on both sides; left out where the C library cannot do that).
"""
from __future__ import annotations

import datetime as _dt
import json

from .report.fmt import json_safe, md_text

# set while the console copy is written: a terminal shows the text as written, not its Markdown escapes
# ('TensorShape&amp;', '\\[ONNXRuntimeError\\]'); only '|' stays escaped, so a cell cannot split the table
_PLAIN = []


def _md(s) -> str:
    return " ".join(str(s).splitlines()).replace("|", "\\|") if _PLAIN else md_text(s)


SCHEMA = "edgekit.profile/1"


def build_report(runs: list, artifacts: dict, settings: dict) -> dict:
    from . import __version__
    from .artifact import host_info, versions

    for run in runs:
        res = run["results"]
        bases = baselines(res, artifacts)
        # one baseline for the whole run when every artifact shares it (the usual case)
        run["baseline"] = next(iter(set(bases.values()))) if len(set(bases.values())) == 1 else None
        run["baselines"] = bases
        run["ratios"] = {k: _ratio(v, res[bases[k]]) if bases.get(k) else None for k, v in res.items()}
    # standard JSON however it is written (json.dumps allows NaN by default): no bare NaN or Infinity
    return json_safe({"schema": SCHEMA, "edgekit_version": __version__,
                      "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      "host": host_info(), "versions": versions(), "settings": settings, "artifacts": artifacts,
                      "runs": runs})


def baselines(res: dict, artifacts: dict) -> dict:
    """{label: the label its ratio is taken against, or None}: the FP32 of its own edgekit run. Files
    that belong to no run are compared with the first FP32 among them; an artifact whose run has no FP32
    here gets no ratio: another run's FP32 is another model, and a column headed "vs FP32" must not be
    taken against an FP16 or INT8 model that happened to come first."""
    groups = {}
    for label in res:
        groups.setdefault((artifacts.get(label) or {}).get("run"), []).append(label)
    out = {}
    for run, labels in groups.items():
        ok = [k for k in labels if res[k].get("status") == "ok"]
        base = next((k for k in ok if res[k].get("precision") == "fp32"), None)
        out.update({k: base for k in labels})
    return out


def _ratio(a, b):
    from .profile import ratio

    r = ratio(a, b)
    return round(r, 4) if r is not None else None


def ok_count(report: dict) -> int:
    return sum(1 for run in report["runs"] for r in run["results"].values() if r.get("status") == "ok")


def _f(v, unit="", nd=3):
    if v is None:
        return "-"
    if isinstance(v, str):  # a non-finite number, as json_safe wrote it
        return v
    return f"{v:.{nd}f}{unit}"


def to_console(report: dict) -> str:
    """The Markdown report with user text left as written, for a terminal."""
    _PLAIN.append(True)
    try:
        return to_markdown(report)
    finally:
        _PLAIN.pop()


def to_markdown(report: dict) -> str:
    h = report["host"]
    lines = ["# edgekit profile", "",
             f"Host: {_md(h.get('cpu'))} ({h.get('cores')} cores, {_md(h.get('machine'))}), "
             f"onnxruntime {report['versions'].get('onnxruntime')}, edgekit {report['edgekit_version']}, "
             f"{report['created']}.", ""]
    s = report["settings"]
    # what the loop aims for, not what happened: the runs column and the note under a table say that
    lines += [f"Runs: {s.get('warmup')} warm-up, then the artifacts timed in turn (round-robin in one process) "
              f"until each has {s.get('min_runs')} runs and the loop has taken {s.get('min_seconds')} s, or "
              f"{s.get('max_seconds')} s have passed; inputs: {_md(s.get('inputs'))}. Cold start is session creation + "
              "first run, after a throwaway session took onnxruntime's one-time set-up; peak RSS is the measuring "
              "process's while it timed (under emulation the emulator's), shared by every artifact timed in it.", ""]
    for run in report["runs"]:
        ti = run["target_info"]
        emu = ti.get("emulated")
        title = f"## {_md(run['target'])} — {_md(_batch_title(run))}, threads {run['threads'] or 'default'}"
        if emu:
            title += " (EMULATED: qemu-user, correctness only, not device latency)"
        missing = {m for r in run["results"].values() if r.get("status") == "ok"
                   for m in r.get("providers_missing") or []}
        provs = [_md(p["name"]) + (" (not available: not used)" if p["name"] in missing else "")
                 for p in ti.get("providers", [])]
        lines += [title, "", f"{_md(ti.get('arch'))}, {_md(ti.get('address'))}, providers: {', '.join(provs)}", ""]
        cols = ["artifact", "precision", "provider", "p50 ms", "p90 ms", "p99 ms", "mean ± std ms",
                f"latency vs {_md(run.get('baseline') or 'FP32 of its run')} (< 1x: faster)", "inf/s", "cold start ms", "process peak RSS MB",
                "runs", "fallback nodes"]
        cross = any("arm_vs_host" in r for r in run["results"].values())
        if cross:
            cols.append("outputs vs this host: max abs diff (atol)")
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for label, r in run["results"].items():
            if r.get("status") != "ok":
                lines.append(f"| {_md(label)} | " + " | ".join([_md(f"{r.get('status')}: {r.get('reason')}")]
                                                          + [""] * (len(cols) - 2)) + " |")
                continue
            rat = run["ratios"].get(label)
            row = [_md(label), _md(r.get("precision") or "-"), _md(r["provider"].replace("ExecutionProvider", "")),
                   _f(r["p50_ms"]), _f(r["p90_ms"]), _f(r["p99_ms"]), f"{_f(r['mean_ms'])} ± {_f(r['std_ms'])}",
                   _f(rat, "x", 2), _f(r.get("throughput"), "", 1), _f(r.get("cold_start_ms"), "", 1),
                   _f(r.get("peak_rss_mb"), "", 0), str(r["runs"]), str(r.get("fallback_nodes", "-"))]
            if cross:
                row.append(_cross_cell(r.get("arm_vs_host") or {}))
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        lines += _shapes_line(run) + _notes(run, s)
        lines += _baseline_note(run, report["artifacts"])
        lines += _op_section(run) + _prepost_section(run)
    return "\n".join(lines).rstrip() + "\n"


def _g(v) -> str:
    """A number as %.3g; a JSON-safe stand-in for a non-finite one ("NaN", "Infinity") as it is."""
    return f"{v:.3g}" if isinstance(v, (int, float)) else str(v)


def _cross_cell(av: dict) -> str:
    """The outputs-vs-host verdict, its largest difference and tolerance, and why it failed (NaN where the
    host has a number, a missing output) or what was left out (ZipMap's sequence of maps): "MISMATCH 0"
    alone reads as a contradiction."""
    d = av.get("max_abs_diff") or {}
    if not d:
        return _md(av.get("reason", "-"))
    worst = [v for v in d.values() if not isinstance(v, (int, float))] or [max(d.values())]
    cell = f"{'ok' if av.get('ok') else 'MISMATCH'} {_g(worst[0])} ({_g(av.get('atol'))})"
    if av.get("reason"):
        cell += f": {av['reason']}"
    if av.get("not_compared"):
        cell += "; not compared: " + ", ".join(f"{k} ({v})" for k, v in av["not_compared"].items())
    return _md(cell)


def _batch_title(run) -> str:
    """The batch the results ran, which can differ from the one planned: a model without a batch axis (an
    unbatched [3, 8, 8] image) is timed as one sample per run, and its inf/s are per sample."""
    planned = run.get("batch")
    ran = {k: r["batch"] for k, r in run["results"].items() if r.get("status") == "ok" and r.get("batch") is not None}
    if not ran or set(ran.values()) == {planned}:
        return f"batch {planned}"
    if len(set(ran.values())) == 1:
        return f"batch {next(iter(ran.values()))} (planned as batch {planned}: see the note)"
    return f"batch {planned} (" + ", ".join(f"{k} ran batch {b}" for k, b in ran.items() if b != planned) + ")"


def _shapes_line(run) -> list:
    """The input shapes timed, once when every artifact ran the same ones (latency scales with them)."""
    shapes = {k: r["input_shapes"] for k, r in run["results"].items()
              if r.get("status") == "ok" and r.get("input_shapes")}
    if not shapes:
        return []

    def fmt(sh):
        return ", ".join(f"{_md(n)} [{', '.join(_md(d) for d in v)}]" for n, v in sh.items())
    distinct = {json.dumps(v, sort_keys=True) for v in shapes.values()}
    if len(distinct) == 1 and len(shapes) == len(run["results"]):
        return [f"Input shapes timed: {fmt(next(iter(shapes.values())))}.", ""]
    return ["Input shapes timed: " + "; ".join(f"{_md(k)}: {fmt(v)}" for k, v in shapes.items()) + ".", ""]


def _notes(run, settings=None) -> list:
    """The caveats the JSON results carry (a device that reports another architecture, an optional
    provider that failed to start), once each, so the Markdown people paste says them too."""
    seen = {}
    want = (settings or {}).get("min_runs")
    short = {k: r["runs"] for k, r in run["results"].items() if r.get("status") == "ok" and want
             and r.get("runs", want) < want}
    if short:
        seen[f"--max-seconds {settings.get('max_seconds')} s stopped the timing before {want} runs: "
             + ", ".join(f"{k} got {n}" for k, n in short.items())] = list(run["results"])
    for label, r in run["results"].items():
        if r.get("status") != "ok":
            continue
        for note in (r.get("note"), r.get("providers_note"), r.get("batch_note")):
            if note:
                seen.setdefault(note, []).append(label)
    if not seen:
        return []
    return [f"_Note: {_md(note)}" + ("" if len(labels) == len(run["results"]) else f" ({_md(', '.join(labels))})") + "._"
            for note, labels in seen.items()] + [""]


def _baseline_note(run, artifacts: dict) -> list:
    """Which FP32 each measured artifact's ratio is against, when they differ, and why one has none."""
    bases = run.get("baselines") or {}
    if run.get("baseline") or not bases:
        return []
    res = run["results"]
    parts = [f"{k} vs {b}" if b else f"{k}: none ({_why_no_baseline(k, res, artifacts)})"
             for k, b in bases.items() if k != b and res[k].get("status") == "ok"]
    if not parts:  # nothing measured lacks its FP32: the rows already say why they have no numbers
        return []
    return [f"_Ratios are taken within each run, never across models: {_md('; '.join(parts))}._", ""]


def _why_no_baseline(label: str, res: dict, artifacts: dict) -> str:
    """The FP32 of its run not given here, or given but not measured on this target (with its status)."""
    from .profile import precision_of

    run = (artifacts.get(label) or {}).get("run")
    fp32 = [k for k in res if k != label and (artifacts.get(k) or {}).get("run") == run
            and ((artifacts.get(k) or {}).get("kind") or precision_of(k, {}, (artifacts.get(k) or {}).get("path")))
            == "fp32"]
    if not fp32:
        return ("no FP32 model was given among these files; add one to compare" if run is None
                else "no FP32 of its own run was given; add it to compare")
    r = res[fp32[0]]
    return f"the FP32 of its run, {fp32[0]}, was not measured on this target: {r.get('status')}: {r.get('reason')}"


def _op_section(run) -> list:
    from .opprofile import top_ops

    out = []
    for label, r in run["results"].items():
        ops = r.get("op_breakdown")
        if r.get("status") == "ok" and ops:
            tops = ", ".join(f"{op} {ms:.3f} ms ({share:.0%})" for op, ms, share in top_ops(ops, 5))
            out.append(f"- {_md(label)}: {_md(tops)}")
    return (["Time per operator type (ONNX Runtime profiler, median per run):", ""] + out + [""]) if out else []


def _prepost_section(run) -> list:
    rows, batches = [], set()
    for label, r in run["results"].items():
        pp = r.get("prepost")
        if not pp:
            continue
        if pp.get("status") != "ok":
            rows.append(f"| {_md(label)} | {_md(str(pp.get('status')) + ': ' + str(pp.get('reason')))} | | | | |")
            continue
        # a report from before pre/post was timed at the run's batch timed one sample
        batches.add(pp.get("batch", 1))
        rows.append(f"| {_md(label)} | {_f(r['p50_ms'])} | {_f(pp['pre']['p50_ms'])} | {_f(pp['model']['p50_ms'])} | "
                    f"{_f(pp['post']['p50_ms'])} | {_f(pp['e2e']['p50_ms'])} |")
    if not rows:
        return []
    per = ", ".join(str(b) for b in sorted(batches))
    head = ("End to end with pre/post-processing (p50 ms):" if batches <= {1} else
            f"End to end with pre/post-processing (p50 ms per batch of {per}: each sample pre-processed, "
            "the model run on the batch, each sample post-processed):")
    return ([head, "",
             "| artifact | model only | pre | model | post | end to end |", "|---|---|---|---|---|---|"]
            + rows + [""])


def to_html(report: dict) -> str:
    """The Markdown report as one self-contained HTML page, in the compress report's style (inline CSS, no
    scripts, no URLs). Converted from to_markdown so the two cannot say different things."""
    import re
    from html import escape, unescape

    from .report.html import CSS

    def inline(text):
        # the Markdown's escapes (\| \[ &lt; ...) back to the text they stand for, then escaped for HTML
        em = len(text) > 2 and text[0] == text[-1] == "_"
        text = escape(unescape(re.sub(r"\\([\\|\[\]*])", r"\1", text[1:-1] if em else text)))
        return f"<em>{text}</em>" if em else text

    out, rows, items = [], [], []

    def flush():
        if rows:
            head, body = rows[0], [r for r in rows[1:] if not all(set(c.strip()) <= set("-:") for c in r)]
            out.append('<div class="tablewrap"><table><thead><tr>'
                       + "".join(f"<th>{inline(c.strip())}</th>" for c in head) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c.strip())}</td>" for c in r) + "</tr>"
                                 for r in body) + "</tbody></table></div>")
            rows.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in to_markdown(report).splitlines():
        if line.startswith("|") and line.endswith("|"):
            rows.append(re.split(r"(?<!\\)\|", line[1:-1]))  # a cell's own '|' is escaped
            continue
        if line.startswith("- "):
            items.append(line[2:])
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{inline(line[2:])}</h1>")
        elif line.startswith("_") and line.endswith("_"):
            out.append(f'<p class="note">{inline(line)}</p>')
        elif line:
            out.append(f"<p>{inline(line)}</p>")
    flush()
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>edgekit profile</title>'
            f"<style>{CSS}</style></head><body><main>\n" + "\n".join(out) + "\n</main></body></html>\n")
