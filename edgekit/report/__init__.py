"""Reports from one or more edgekit output directories: self-contained HTML, Markdown + PNGs, JSON.

    write_reports([outdir, ...], html="report.html", markdown="report.md", json_path="report.json")

All three are rendered from one report dict (schema ``edgekit.report/1``, docs/report-schema.md)
built from the manifests, so they always agree.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .model import SCHEMA, build_report

__all__ = ["SCHEMA", "build_report", "write_reports"]


def write_reports(outdirs, *, html=None, markdown=None, json_path=None, title=None, shown_as=None) -> dict:
    """Write whichever of html / markdown / json_path are given (atomically); return the report dict.

    Markdown plots go into '<markdown stem>_files/' beside the .md file. shown_as: the directories the
    runs will be published as, when they are written from a staging folder that is renamed afterwards.
    """
    from ..fsutil import write_json_atomic, write_text_atomic

    if isinstance(outdirs, (str, Path)):
        outdirs = [outdirs]
    from .outputs import check_distinct

    check_distinct((("-o/--output", html), ("--markdown", markdown), ("--json-out", json_path)))
    report = build_report(list(outdirs), title=title, shown_as=shown_as)
    run_warnings = [f"{r['label']}: {w}" for r in report["runs"] for w in r.get("warnings") or []]
    for w in run_warnings + list((report.get("comparison") or {}).get("warnings") or []):
        # said where the user runs the command too: a report file may never be opened before numbers are quoted
        print(f"edgekit: warning: {w}", file=sys.stderr)
    plots = None
    if html is not None or markdown is not None:
        import matplotlib

        matplotlib.use("Agg", force=False)  # figures are built without pyplot; this only guards stray imports
        from .plots import all_plots

        plots = all_plots(report)
    try:
        if markdown is not None:
            from .markdown import png_name
            from .outputs import check_plot_folder

            check_plot_folder(markdown, [png_name(p) for p in plots])  # before anything is written
        if markdown is not None:
            from .markdown import render as render_md

            write_text_atomic(markdown, render_md(report, markdown, plots=plots))
        if html is not None:
            from .html import render as render_html

            write_text_atomic(html, render_html(report, plots=plots))
    finally:
        for p in plots or []:
            p.fig.clear()
    if json_path is not None:
        from .fmt import json_safe

        write_json_atomic(json_path, json_safe(report))  # standard JSON: no bare NaN or Infinity
    return report
