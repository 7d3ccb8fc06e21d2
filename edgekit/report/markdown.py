"""The report as GitHub-flavoured Markdown, with its plots as PNG files in a folder beside it."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from . import fmt, plots as plotmod, tables


def _esc(s) -> str:
    """Text from the runs (labels, folders, reasons) as Markdown text, never as HTML or a broken cell."""
    return fmt.md_text(s)


def _table(t: tables.Table) -> str:
    heads = [f"{c.group} {c.name}".strip() for c in t.columns]
    warn = "".join(f"> **Warning:** {_esc(w)}\n>\n" for w in t.warnings).removesuffix(">\n")
    lines = ["| " + " | ".join(_esc(h) for h in heads) + " |",
             "|" + "|".join("---:" if c.num else "---" for c in t.columns) + "|"]
    for row in t.rows:
        cells = []
        for cell in row:
            text = _esc(cell.text + (f" ({cell.sub})" if cell.sub else ""))
            if "status" in cell.cls and cell.cls != "status status-ok":
                text = f"*{text}*"  # a measurement that is not a number reads as words, in italics
            elif cell.cls == "strong" or cell.cls == "kind":
                text = f"**{text}**"
            cells.append(text)
            cells += [""] * (cell.span - 1)
        lines.append("| " + " | ".join(cells) + " |")
    out = (warn + "\n" if warn else "") + "\n".join(lines) + "\n"
    if t.note:
        out += f"\n_{_esc(t.note)}_\n"
    return out


def _recommended(report) -> str:
    out = []
    for r in report["runs"]:
        prefix = f"{_esc(r['label'])} · " if len(report["runs"]) > 1 else ""
        for t, rec in r["recommended"].items():
            if rec["status"] != "ok":
                out.append(f"- **{prefix}{_esc(t)}**: no recommendation ({_esc(fmt.status_text(rec))})")
                continue
            out.append(f"- **{prefix}{_esc(t)}**: **{_esc(rec.get('kind'))}** {_code(rec['path'])} — "
                       f"{_esc(rec.get('reason') or '')}")
    return "\n".join(out) + "\n"


def _code(s) -> str:
    """s as a code span, or as escaped text where it holds what a code span would show raw (entities) or end at."""
    s = str(s)
    return f"`{s}`" if not set(s) & set("`<>&|\n") else _esc(s)


def plot_folder(dest) -> Path:
    dest = Path(dest)
    return dest.parent / f"{dest.stem}_files"


def png_name(plot) -> str:
    return f"{plot.key}.png"


def render(report, dest, plots=None) -> str:
    """Markdown text for dest; writes the PNG plots into '<stem>_files/' beside dest."""
    files = plot_folder(dest)
    plots = plotmod.all_plots(report) if plots is None else plots
    images = {}
    for p in plots:
        png = files / png_name(p)
        plotmod.to_png(p, png)
        images.setdefault(p.key.split("-")[0], []).append((p, f"{files.name}/{png.name}"))
    multi = len(report["runs"]) > 1

    def per_run(fn):
        parts = []
        for r in report["runs"]:
            got = fn(r)
            for t in (got if isinstance(got, list) else [got] if got else []):
                parts.append((f"#### {_esc(r['label'])}\n\n" if multi else "") + _table(t))
        return "\n".join(parts)

    def figs(*keys):
        # the folder is named after the .md file: a ')', space or '<' in it must not end or break the link
        return "".join(f"**{_esc(p.title)}**\n\n![{_esc(p.title)}]({quote(src)})\n\n_{_esc(p.caption)}_\n\n"
                       for k in keys for p, src in images.get(k, []))

    out = [f"# {_esc(report['title'])}\n",
           f"_Generated {_esc(report['generated'])} by edgekit {_esc(report['edgekit_version'])} · "
           f"schema {_esc(report['schema'])}_\n",
           "## Recommended artifact per target\n", _recommended(report),
           "## Summary\n", per_run(tables.summary)]
    notes = per_run(tables.artifact_notes)
    if notes:
        out += ["## Notes\n", notes]
    comp = tables.comparison(report)
    if comp:
        out += ["## Comparison between runs\n", _table(comp)]
    out += ["## Latency\n", figs("pareto", "dist", "ops") or f"_{tables.no_latency_reason(report)}_\n"]
    pp = per_run(tables.prepost)
    if pp or images.get("prepost"):
        out += ["## Pre/post-processing\n", figs("prepost"), pp]
    if images.get("prune"):
        out += ["## Pruning\n", figs("prune")]
    qt = per_run(tables.quant_trials)
    if qt or images.get("quant"):
        out += ["## Quantization\n", figs("quant"), qt]
    out += ["## Measurement conditions\n", per_run(tables.conditions),
            "## Pipeline stages\n", per_run(tables.stages),
            "## Provenance\n", per_run(tables.provenance)]
    return "\n".join(x.rstrip("\n") + "\n" for x in out if x)
