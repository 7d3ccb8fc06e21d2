"""The report's tables as plain records, so the HTML and Markdown renderers show the same cells.

A Cell carries its text plus a CSS class (status, highlight) that HTML uses and Markdown ignores
(Markdown marks highlights with words/arrows in the text instead). A non-"ok" measurement becomes one
cell spanning the latency columns, holding the status and the reason, never a number.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..config import Tolerance
from ..errors import ConfigError
from . import fmt


@dataclass
class Cell:
    text: str
    cls: str = ""
    span: int = 1
    title: str = ""  # HTML tooltip: the full value where the cell shows a short one
    sub: str = ""  # a second, smaller line in HTML; appended in parentheses in Markdown


@dataclass
class Column:
    name: str
    group: str = ""  # a header spanning several columns (e.g. a target name)
    num: bool = False


@dataclass
class Table:
    key: str
    title: str
    columns: list
    rows: list = field(default_factory=list)  # lists of Cell (spans count as several columns)
    note: str = ""
    warnings: list = field(default_factory=list)  # shown above the table, in words both renderers keep


def _status_cell(lat, span):
    return Cell(fmt.status_text(lat), cls=f"status status-{lat.get('status')}", span=span)


def caveat(lat) -> str | None:
    """What a native measurement's figures do not say: the device is not the target's architecture, an
    optional provider did not run. The profiler records these; a table that shows the numbers says them."""
    parts = [lat.get("note"), lat.get("providers_note")]
    missing = lat.get("providers_missing") or []
    if missing and not lat.get("providers_note"):
        parts.append(f"{', '.join(missing)} not available; measured without it")
    return "; ".join(p for p in parts if p) or None


def caveats(run) -> list:
    """One line per target and caveat of its native measurements, for above the tables."""
    out = []
    for t in run["targets"]:
        for v in run["variants"]:
            lat = v["latency"][t]
            why = caveat(lat) if lat["status"] == "ok" else None
            if why and f"{t}: {why}" not in out:
                out.append(f"{t}: {why}")
    return out


def no_latency_reason(report) -> str:
    """Why the latency section has nothing to plot: profiling off everywhere is not a failure."""
    recs = [r for run in report.get("runs", []) for r in (run.get("recommended") or {}).values()]
    if recs and all(r.get("status") == "skipped" for r in recs):
        return "No latency to plot: profiling was off (--no-profile), so nothing was timed."
    return "No native latency measurement to plot: every target was emulated, unavailable or failed."


def summary(run) -> Table:
    cols = [Column("Variant"), Column("Size", num=True), Column("Params", num=True),
            Column("Metric", num=True), Column("vs FP32", num=True)]
    # a target with no native measurement at all gets one column for its status, not four empty ones
    measured = {t: any(v["latency"][t]["status"] == "ok" for v in run["variants"]) for t in run["targets"]}
    for t in run["targets"]:
        cols += ([Column("p50 ms", t, True), Column("p90 ms", t, True), Column("p99 ms", t, True),
                  Column("Speed-up", t, True)] if measured[t] else [Column("latency", t)])
    table = Table(f"summary-{run['label']}", "Summary", cols,
                  note="Latency per inference at batch 1 unless stated; speed-up is FP32 p50 ÷ variant p50 on the "
                       "same target (measured interleaved in one process).",
                  warnings=list(run.get("warnings") or []) + caveats(run))
    for v in run["variants"]:
        m = v["metric"]
        size_sub = f"{v['size_ratio']:.0%} of FP32" if v.get("size_ratio") is not None and v["kind"] != "fp32" else ""
        drop = fmt.metric_drop(m)
        drop_cls = "" if not m or m.get("drop_rel") is None else (
            "bad" if m["drop_rel"] > 0.01 else "warn" if m["drop_rel"] > 0.002 else "good")
        row = [Cell(v["kind"], cls="kind", sub=v["path"]),
               Cell(fmt.size(v["bytes"]), sub=size_sub, title=f"{v['bytes']} bytes"),
               Cell(fmt.count(v["params"]), title=str(v["params"])),
               Cell(fmt.metric_value(m), sub=(m["name"] + fmt.metric_units(m)) if m else "",
                    title=f"n={m.get('n')}" if m else "")
               if m else Cell("not evaluated", cls="status status-missing"),
               Cell(drop or ("reference" if v["kind"] == "fp32" and m else "—"), cls=drop_cls,
                    title=f"absolute {m['drop_abs']:+.4f}" if m and m.get("drop_abs") is not None else "")]
        for t in run["targets"]:
            lat = v["latency"][t]
            if lat["status"] != "ok":
                row.append(_status_cell(lat, 4 if measured[t] else 1))
                continue
            sp = lat.get("speedup_vs_fp32")
            row += [Cell(fmt.ms(lat["p50_ms"]), cls="strong"), Cell(fmt.ms(lat.get("p90_ms"))),
                    Cell(fmt.ms(lat.get("p99_ms"))),
                    Cell(fmt.ratio(sp), cls="" if sp is None or v["kind"] == "fp32" else
                         "good" if sp > 1.05 else "bad" if sp < 0.95 else "")]
        table.rows.append(row)
    return table


def _variant(run, v) -> str:
    """The kind, with the file where a run has two of that kind (int8 of the FP32 and of the pruned model)."""
    same = sum(1 for x in run["variants"] if x["kind"] == v["kind"])
    return v["kind"] if same == 1 else f"{v['kind']} ({v['path']})"


def conditions(run) -> Table:
    cols = [Column("Variant"), Column("Target"), Column("Status"), Column("Provider"), Column("Threads", num=True),
            Column("Batch", num=True), Column("Runs", num=True), Column("Mean ± std ms", num=True),
            Column("Throughput /s", num=True), Column("Cold start ms", num=True),
            Column("Session RSS +MB", num=True), Column("Process peak RSS MB", num=True), Column("Host CPU")]
    table = Table(f"conditions-{run['label']}", "Measurement conditions", cols,
                  note="Every figure above was measured under these conditions; emulated timings are never "
                       "reported as device latency. Session RSS +MB: the memory the artifact's session keeps "
                       "once created and run; process peak RSS: the measuring process's peak while timing, "
                       "every artifact and whatever the process already held (its RSS before timing) included.")
    for t in run["targets"]:
        for v in run["variants"]:
            lat = v["latency"][t]
            head = [Cell(_variant(run, v), cls="kind"), Cell(t)]
            if lat["status"] != "ok":
                table.rows.append(head + [_status_cell(lat, len(cols) - 2)])
                continue
            mean = f"{fmt.ms(lat.get('mean_ms'))} ± {fmt.ms(lat.get('std_ms'))}" if lat.get("mean_ms") else "—"
            table.rows.append(head + [
                Cell(f"ok ({caveat(lat)})" if caveat(lat) else "ok (native)", cls="status status-ok"),
                Cell(str(lat.get("provider", "—"))),
                Cell(str(lat.get("threads", "—"))), Cell(str(lat.get("batch", "—"))),
                Cell(str(int(lat["runs"])) if lat.get("runs") else "—"), Cell(mean),
                Cell(f"{lat['throughput']:.0f}" if lat.get("throughput") else "—"),
                Cell(fmt.ms(lat.get("cold_start_ms"))),
                # this artifact's own memory is what its session keeps; the peak is the whole process's
                Cell(f"{lat['rss_delta_mb']:.1f}" if lat.get("rss_delta_mb") is not None else "—"),
                _peak_cell(lat),
                Cell(str(lat.get("host_cpu") or run["host"].get("cpu") or "—"))])
    return table


def _peak_cell(lat) -> Cell:
    """The measuring process's peak, with its RSS before timing: in compress most of it is the run's own
    (data, torch), not inference memory."""
    peak, base = lat.get("peak_rss_mb"), lat.get("base_rss_mb")
    if not peak:
        return Cell("—")
    return Cell(f"{peak:.0f}", sub=f"{base:.0f} before timing" if base is not None else "")


def prepost(run) -> Table | None:
    cols = [Column("Variant"), Column("Target"), Column("Pre ms", num=True), Column("Model ms", num=True),
            Column("Post ms", num=True), Column("End-to-end p50 ms", num=True), Column("Outside the model", num=True)]
    table = Table(f"prepost-{run['label']}", "Pre/post-processing", cols)
    for t in run["targets"]:
        for v in run["variants"]:
            lat = v["latency"][t]
            pp = lat.get("prepost") if lat["status"] == "ok" else None
            if not pp:
                continue
            if pp.get("status", "ok") != "ok":
                table.rows.append([Cell(_variant(run, v), cls="kind"), Cell(t), _status_cell(pp, 5)])
                continue
            share = pp.get("share") or {}
            outside = sum(x for x in (share.get("pre"), share.get("post")) if x is not None) if share else None
            table.rows.append([Cell(_variant(run, v), cls="kind"), Cell(t), Cell(fmt.ms(pp.get("pre_ms"))),
                               Cell(fmt.ms(pp.get("model_ms"))), Cell(fmt.ms(pp.get("post_ms"))),
                               Cell(fmt.ms(pp.get("e2e_p50_ms"))), Cell(fmt.pct(outside))])
    return table if table.rows else None


def _trial_drop(q, tr) -> str:
    """The trial's drop in its tolerance's unit, as the reasons and 'Within tolerance' judge it: a relative
    drop in a 'pt' run's table disagreed with the 'drops N pt' beside it."""
    try:
        tol = Tolerance.parse(q["tolerance"])
    except (ConfigError, TypeError):
        tol = None
    if tol is None or q.get("reference") is None or tr["metric"] is None:
        return fmt.pct(tr["drop_rel"])
    return tol.format_drop(q["reference"], tr["metric"])


def quant_trials(run) -> list:
    out = []
    for q in run.get("quantization") or []:
        cols = [Column("#", num=True), Column("Trial"), Column("Phase"), Column("Metric", num=True), Column("Drop", num=True),
                Column("Latency ms", num=True), Column("FP32 ms, same round", num=True), Column("Speed-up", num=True),
                Column("Within tolerance"),
                Column("Kept in FP32")]
        parent = f" of {q['parent']}" if q.get("parent") else ""
        # each trial is timed interleaved with FP32 (minutes apart, on a host whose load moves): its speed-up
        # is over that FP32 time, not over the FP32 row of the latency table
        note = " ".join(x for x in (q.get("reason") or "", "Speed-up: the FP32 time measured in the same "
                                    "interleaved round as the trial, divided by the trial's latency.") if x)
        t = Table(f"quant-{run['label']}-{q.get('parent')}", f"Quantization trials{parent}", cols, note=note)
        for n, tr in enumerate(q["trials"], start=1):
            chosen = tr["name"] == q.get("chosen")
            if tr.get("error"):
                t.rows.append([Cell(str(n)), Cell(tr["name"]), Cell(str(tr.get("phase") or "")),
                               Cell(f"failed: {tr['error']}", cls="status status-failed", span=7)])
                continue
            t.rows.append([Cell(str(n)), Cell(tr["name"] + (" (chosen)" if chosen else ""), cls="strong" if chosen else ""),
                           Cell(str(tr.get("phase") or "")),
                           Cell("—" if tr["metric"] is None else f"{tr['metric']:.4f}"),
                           Cell(_trial_drop(q, tr)), Cell(fmt.ms(tr["latency_ms"])),
                           Cell(fmt.ms(tr.get("fp32_ms"))), Cell(fmt.ratio(tr["speedup"])),
                           Cell(fmt.bool_text(tr["passed"]), cls="good" if tr["passed"] else "bad"),
                           Cell(", ".join(tr["fp32_nodes"][:4]) + (" …" if len(tr["fp32_nodes"]) > 4 else "") or "—")])
        out.append(t)
    return out


def artifact_notes(run) -> Table | None:
    """Each artifact's notes (fell back to FP32, larger than its parent, weights still float, a fixed sequence
    length, folded blocks): they were in the manifest and report.json only. A note the recommendation above
    already quotes is not repeated."""
    shown = " ".join(str(r.get("reason") or "") for r in (run.get("recommended") or {}).values())
    t = Table(f"notes-{run['label']}", "Notes", [Column("Artifact"), Column("Note")])
    for v in run["variants"]:
        for n in v.get("notes") or []:
            if n and str(n) not in shown:
                t.rows.append([Cell(f"{v['kind']} ({v['path']})", cls="kind"), Cell(str(n), cls="wrap")])
    return t if t.rows else None


def stages(run) -> Table:
    t = Table(f"stages-{run['label']}", "Pipeline stages",
              [Column("Stage"), Column("Status"), Column("Time", num=True), Column("Note")])
    for s in run["stages"]:
        t.rows.append([Cell(str(s["name"])), Cell(str(s["status"]), cls=f"stage stage-{s['status']}"),
                       Cell(fmt.seconds(s.get("seconds")) if s.get("status") == "done" else "—"),
                       Cell(str(s.get("reason") or ""), cls="wrap")])
    return t


def provenance(run) -> Table:
    t = Table(f"prov-{run['label']}", "Provenance", [Column("Item"), Column("Value")])
    src, host = run["source"], run["host"]

    def add(k, v):
        if v not in (None, "", [], {}):
            t.rows.append([Cell(k), Cell(v if isinstance(v, str) else json.dumps(v, sort_keys=True), cls="mono")])

    add("Output directory", run["outdir"])
    add("Created", run.get("created"))
    add("Model", src.get("spec"))
    for k, v in src.items():
        if k != "spec":
            add(f"source.{k}", v if isinstance(v, str) else json.dumps(v))
    add("Host CPU", host.get("cpu"))
    add("Host", " · ".join(str(host[k]) for k in ("machine", "os") if host.get(k)) +
        (f" · {host['cores']} cores" if host.get("cores") else ""))
    add("ISA flags", ", ".join(host.get("flags") or []))
    for k, v in sorted(run["versions"].items()):
        add(k, v if v is not None else "not installed")
    add("Settings", run["settings"])
    for t_name, f in run.get("target_facts", {}).items():
        add(f"target {t_name}", f)
    return t


def comparison(report) -> Table | None:
    comp = report.get("comparison")
    if not comp:
        return None
    labels = [r["label"] for r in report["runs"]]
    base = comp["baseline"]
    cols = [Column("Variant"), Column("Target")]
    for lab in labels:
        cols.append(Column("p50 ms", lab, True))
        if lab != base:
            cols.append(Column(f"× {base}", lab, True))
        cols.append(Column("Metric", lab, True))
        if lab != base:
            cols.append(Column("Δ metric", lab, True))
    t = Table("comparison", "Comparison between runs", cols,
              note=f"Baseline: {base}. Latency ratios outside {comp['ratio_band'][0]}–{comp['ratio_band'][1]}× and "
                   f"metric changes beyond ±{comp['metric_delta_threshold']} are highlighted, unless timed under other "
                   "conditions (said in the cell). Runs on different hosts compare machines, not only artifacts."
                   + _not_compared(comp),
              warnings=list(comp.get("warnings") or []))
    for row in comp["rows"]:
        cells = [Cell(row["variant"], cls="kind"), Cell(row["target"])]
        for lab in labels:
            c = row["runs"][lab]
            if c["status"] != "ok":
                cells.append(_status_cell(c, 1 if lab == base else 2))
            else:
                cells.append(Cell(fmt.ms(c["p50_ms"]), title=c.get("host_cpu") or ""))
                if lab != base:
                    cells.append(_ratio_cell(c))
            cells.append(Cell("—" if c.get("metric") is None else f"{c['metric']:.4f}"))
            if lab != base and c.get("metric_note"):
                cells.append(Cell("not comparable", cls="warn", title=c["metric_note"],
                                  sub=c["metric_note"].removeprefix("not comparable: ")))
            elif lab != base:
                d, mf = c.get("metric_delta"), c.get("metric_flag", "")
                cells.append(Cell("—" if d is None else f"{d:+.4f}" + {"worse": " ▼", "better": " ▲"}.get(mf, ""),
                                  cls={"worse": "bad", "better": "good"}.get(mf, "")))
        t.rows.append(cells)
    return t


def _ratio_cell(c) -> Cell:
    """The latency ratio, flagged slower/faster, or, timed under other conditions (threads, batch, provider,
    CPU...), unflagged and saying which: the ratio is then not the file's change alone."""
    r = c.get("latency_ratio")
    if r is None:
        return Cell("—")
    if c.get("latency_note"):
        return Cell(fmt.ratio(r), cls="warn", title=c["latency_note"], sub=c["latency_note"])
    flag = c.get("latency_flag", "")
    arrow = {"slower": " ▲ slower", "faster": " ▼ faster"}.get(flag, "")
    return Cell(fmt.ratio(r) + arrow, cls={"slower": "bad", "faster": "good"}.get(flag, ""))


def _not_compared(comp) -> str:
    nc = comp.get("not_compared") or []
    if not nc:
        return ""
    pairs = ", ".join(f"{x['variant']} on {x['target']} ({'/'.join(sorted(set(x['statuses'].values())))})" for x in nc)
    return f" Not measured in any run, so not compared: {pairs}."
