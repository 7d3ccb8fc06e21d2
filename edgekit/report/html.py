"""The report as one self-contained HTML file: inline CSS, inline SVG plots, no scripts, no URLs.

It opens offline and can be mailed or attached to a ticket as is.
"""
from __future__ import annotations

from html import escape

from . import fmt, plots as plotmod, tables

CSS = """
:root{--ink:#1f2329;--muted:#5f6b76;--line:#e3e6ea;--bg:#f6f7f9;--card:#fff;--good:#1a7f4b;--good-bg:#e6f4ec;
--bad:#b42318;--bad-bg:#fdecea;--warn:#8a5a00;--warn-bg:#fff4dc;--accent:#1f6fb4}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,"Segoe UI",
"DejaVu Sans",Helvetica,Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:28px 28px 48px}
header{margin-bottom:18px}
h1{font-size:26px;margin:0 0 6px;letter-spacing:-.01em}
h2{font-size:19px;margin:34px 0 12px;padding-bottom:6px;border-bottom:2px solid var(--line)}
h3{font-size:15px;margin:22px 0 8px;color:var(--muted);font-weight:600}
.meta{color:var(--muted);margin:0}
nav{display:flex;flex-wrap:wrap;gap:6px;margin:14px 0 0}
nav a{color:var(--accent);text-decoration:none;background:var(--card);border:1px solid var(--line);
border-radius:999px;padding:3px 11px;font-size:12.5px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(290px,1fr));gap:14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:14px 16px;
box-shadow:0 1px 2px rgba(0,0,0,.04);border-top:4px solid var(--accent)}
.card.none{border-top-color:#9aa3ad}
.card .target{font-size:12px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);font-weight:600}
.card .pick{font-size:22px;font-weight:700;margin:4px 0 2px}
.card .path{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px;color:var(--muted)}
.card .figs{display:flex;gap:18px;margin:10px 0 8px}
.card .figs div{display:flex;flex-direction:column}
.card .figs b{font-size:17px}
.card .figs span{font-size:11.5px;color:var(--muted)}
.card .reason{font-size:12.5px;color:var(--muted);margin:0}
.tablewrap{overflow-x:auto;background:var(--card);border:1px solid var(--line);border-radius:10px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:7px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top;white-space:nowrap}
td.status,td.mono,td.wrap{white-space:normal}
td.status{min-width:170px;vertical-align:middle}
th{background:#fafbfc;font-weight:600;color:var(--muted);font-size:12px;white-space:nowrap}
th.group{text-align:center;color:var(--ink);border-left:1px solid var(--line)}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
td.first-of-group,th.first-of-group{border-left:1px solid var(--line)}
tr:last-child td{border-bottom:none}
td .sub{display:block;font-size:11px;color:var(--muted);font-weight:400}
td.kind{font-weight:700}
td.strong{font-weight:700}
td.mono{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px;word-break:break-all}
td.good{color:var(--good);background:var(--good-bg)}
td.bad{color:var(--bad);background:var(--bad-bg)}
td.warn{color:var(--warn);background:var(--warn-bg)}
td.status{font-style:italic;color:var(--muted);text-align:left}
td.status-unavailable,td.status-missing{background:repeating-linear-gradient(135deg,#f7f8fa 0 8px,#fff 8px 16px)}
td.status-failed{color:var(--bad);background:var(--bad-bg)}
td.status-emulated{color:var(--warn);background:var(--warn-bg)}
td.status-ok{font-style:normal;color:var(--good)}
td.stage-done{color:var(--good)}td.stage-failed{color:var(--bad);font-weight:700}
td.stage-skipped,td.stage-not-applicable{color:var(--muted)}
.note{color:var(--muted);font-size:12.5px;margin:6px 2px 0}
.warning{color:var(--warn);background:var(--warn-bg);border:1px solid var(--warn);border-radius:8px;
padding:8px 12px;margin:8px 0;font-weight:600}
figure{margin:16px 0;background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}
figure h3{margin:0 0 6px;color:var(--ink)}
figure svg{width:100%;height:auto;display:block}
figcaption{color:var(--muted);font-size:12.5px;margin-top:4px}
.empty{color:var(--muted);font-style:italic}
footer{margin-top:40px;color:var(--muted);font-size:12px}
"""


def _table(t: tables.Table) -> str:
    cols = t.columns
    out = [f'<p class="warning" role="alert">⚠ {escape(w)}</p>' for w in t.warnings]
    out.append('<div class="tablewrap"><table>')
    first_of_group = set()
    prev = None
    for i, c in enumerate(cols):
        if c.group and c.group != prev:
            first_of_group.add(i)
        prev = c.group
    if any(c.group for c in cols):
        out.append("<thead><tr>")
        i = 0
        while i < len(cols):
            g = cols[i].group
            j = i
            while j < len(cols) and cols[j].group == g:
                j += 1
            out.append(f'<th class="group" colspan="{j - i}">{escape(g)}</th>' if g else f'<th colspan="{j - i}"></th>')
            i = j
        out.append("</tr><tr>")
    else:
        out.append("<thead><tr>")
    for i, c in enumerate(cols):
        cls = " ".join(x for x in ("num" if c.num else "", "first-of-group" if i in first_of_group else "") if x)
        out.append(f'<th class="{cls}">{escape(c.name)}</th>' if cls else f"<th>{escape(c.name)}</th>")
    out.append("</tr></thead><tbody>")
    rowspans, skip = _merge_status_runs(t.rows)
    for ri, row in enumerate(t.rows):
        out.append("<tr>")
        ci = 0
        for cell in row:
            if (ri, ci) in skip:
                ci += cell.span
                continue
            col = cols[min(ci, len(cols) - 1)]
            cls = [cell.cls] if cell.cls else []
            if col.num and cell.span == 1 and "status" not in cell.cls:
                cls.append("num")
            if ci in first_of_group:
                cls.append("first-of-group")
            attrs = f' class="{" ".join(cls)}"' if cls else ""
            if cell.span > 1:
                attrs += f' colspan="{cell.span}"'
            if rowspans.get((ri, ci), 1) > 1:
                attrs += f' rowspan="{rowspans[(ri, ci)]}"'
            if cell.title:
                attrs += f' title="{escape(cell.title)}"'
            sub = f'<span class="sub">{escape(cell.sub)}</span>' if cell.sub else ""
            out.append(f"<td{attrs}>{escape(cell.text)}{sub}</td>")
            ci += cell.span
        out.append("</tr>")
    out.append("</tbody></table></div>")
    if t.note:
        out.append(f'<p class="note">{escape(t.note)}</p>')
    return "".join(out)


def _merge_status_runs(rows):
    """The same status and reason in consecutive rows of a column becomes one tall cell (HTML only)."""
    rowspans, skip, anchor = {}, set(), {}
    for ri, row in enumerate(rows):
        ci, seen = 0, set()
        for cell in row:
            key = (ci, cell.span, cell.text) if "status" in cell.cls else None
            prev = anchor.get(ci)
            if key is not None and prev is not None and prev[0] == key and prev[2] == ri - 1:
                skip.add((ri, ci))
                rowspans[prev[1]] = rowspans.get(prev[1], 1) + 1
                anchor[ci] = (key, prev[1], ri)
            else:
                anchor[ci] = (key, (ri, ci), ri) if key is not None else None
            seen.add(ci)
            ci += cell.span
        for c in list(anchor):
            if c not in seen:
                anchor[c] = None
    return rowspans, skip


def _cards(report) -> str:
    multi = len(report["runs"]) > 1
    out = []
    for r in report["runs"]:
        if multi:
            out.append(f"<h3>{escape(r['label'])}</h3>")
        out.append('<div class="cards">')
        for t, rec in r["recommended"].items():
            if rec["status"] != "ok":
                out.append(f'<div class="card none"><div class="target">{escape(t)}</div>'
                           f'<div class="pick">no recommendation</div>'
                           f'<p class="reason">{escape(fmt.status_text(rec))}</p></div>')
                continue
            v = next((x for x in r["variants"] if x["path"] == rec["path"]), None)
            lat = (v or {}).get("latency", {}).get(t, {})
            figs = []
            if lat.get("status") == "ok":
                figs.append((fmt.ms(lat["p50_ms"]) + " ms", "p50 latency"))
                if lat.get("speedup_vs_fp32") is not None:
                    figs.append((fmt.ratio(lat["speedup_vs_fp32"]), "vs FP32"))
            if v:
                figs.append((fmt.size(v["bytes"]), "size"))
                if v["metric"]:
                    figs.append((fmt.metric_value(v["metric"]), v["metric"]["name"]))
            fig_html = "".join(f"<div><b>{escape(a)}</b><span>{escape(b)}</span></div>" for a, b in figs)
            out.append(f'<div class="card"><div class="target">{escape(t)}</div>'
                       f'<div class="pick">{escape(str(rec.get("kind") or (v or {}).get("kind") or "?"))}</div>'
                       f'<div class="path">{escape(rec["path"])}</div><div class="figs">{fig_html}</div>'
                       f'<p class="reason">{escape(rec.get("reason") or "")}</p></div>')
        out.append("</div>")
    return "".join(out)


def _figure(p: plotmod.Plot) -> str:
    return (f'<figure id="plot-{escape(p.key)}" data-plot="{escape(p.key)}"><h3>{escape(p.title)}</h3>'
            f"{plotmod.to_svg(p)}<figcaption>{escape(p.caption)}</figcaption></figure>")


def render(report, plots=None) -> str:
    plots = plotmod.all_plots(report) if plots is None else plots
    by = {}
    for p in plots:
        by.setdefault(p.key.split("-")[0], []).append(p)
    multi = len(report["runs"]) > 1
    runs = report["runs"]

    def per_run(fn):
        parts = []
        for r in runs:
            got = fn(r)
            for t in (got if isinstance(got, list) else [got] if got else []):
                head = f"<h3>{escape(r['label'])}</h3>" if multi else ""
                parts.append(head + _table(t))
        return "".join(parts)

    sections = []  # (id, title, html)
    sections.append(("recommended", "Recommended artifact per target", _cards(report)))
    sections.append(("summary", "Summary", per_run(tables.summary)))
    notes = per_run(tables.artifact_notes)
    if notes:
        sections.append(("notes", "Notes", notes))
    comp = tables.comparison(report)
    if comp:
        sections.append(("comparison", "Comparison between runs", _table(comp)))
    lat_html = "".join(_figure(p) for k in ("pareto", "dist", "ops") for p in by.get(k, []))
    if not lat_html:
        lat_html = f'<p class="empty">{escape(tables.no_latency_reason(report))} (See the summary.)</p>'
    sections.append(("latency", "Latency", lat_html))
    pp = per_run(tables.prepost)
    if pp or by.get("prepost"):
        sections.append(("prepost", "Pre/post-processing", "".join(_figure(p) for p in by.get("prepost", [])) + pp))
    if by.get("prune"):
        sections.append(("pruning", "Pruning", "".join(_figure(p) for p in by["prune"])))
    qt = per_run(tables.quant_trials)
    if qt or by.get("quant"):
        sections.append(("quantization", "Quantization", "".join(_figure(p) for p in by.get("quant", [])) + qt))
    sections.append(("conditions", "Measurement conditions", per_run(tables.conditions)))
    sections.append(("stages", "Pipeline stages", per_run(tables.stages)))
    sections.append(("provenance", "Provenance", per_run(tables.provenance)))

    hosts = sorted({r["host"].get("cpu") for r in runs if r["host"].get("cpu")})
    meta = [f"{len(runs)} runs" if multi else (runs[0].get("created") or ""), " · ".join(hosts),
            f"edgekit {report['edgekit_version']}"]
    nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{escape(title)}</h2>{html}</section>' for sid, title, html in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(report['title'])}</title><style>{CSS}</style></head><body><main>"
            f"<header><h1>{escape(report['title'])}</h1>"
            f"<p class=\"meta\">{escape(' · '.join(m for m in meta if m))}</p><nav>{nav}</nav></header>"
            f"{body}<footer>Generated {escape(report['generated'])} by edgekit {escape(report['edgekit_version'])}"
            f" · schema {escape(report['schema'])} · self-contained: no network access needed.</footer>"
            "</main></body></html>\n")
