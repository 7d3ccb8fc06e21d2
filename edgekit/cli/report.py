"""`edgekit report OUTDIR [OUTDIR...] -o report.html`: HTML, Markdown and JSON reports of one or more runs."""
from __future__ import annotations

from pathlib import Path

import click

from .common import CONTEXT_SETTINGS, check_output_file, console, echo_json, json_option


@click.command("report", context_settings=CONTEXT_SETTINGS)
@click.argument("outdirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="HTML report to write (self-contained). Default: OUTDIR/report.html for one run, "
                   "./report.html for several.")
@click.option("--markdown", type=click.Path(path_type=Path),
              help="Also write Markdown here; its plots go as PNGs into '<name>_files/' beside it.")
@click.option("--json-out", type=click.Path(path_type=Path),
              help="Also write the JSON report (schema edgekit.report/1) here.")
@click.option("--title", help="Report title (default: from the model spec).")
@json_option
def report(outdirs, output, markdown, json_out, title, as_json):
    """Render the report of one or more edgekit output directories.

    Several OUTDIRs (two machines, or before/after a change) give one report with a
    table per run and a comparison table against the first run.
    """
    from ..errors import UsageError
    from ..report import write_reports

    if output is None:
        output = outdirs[0] / "report.html" if len(outdirs) == 1 else Path("report.html")
    if output.suffix.lower() in (".md", ".json"):
        # -o one.md wrote HTML into it: a suffix that names another format picks that format
        flag = "--markdown" if output.suffix.lower() == ".md" else "--json-out"
        raise UsageError(f"-o/--output {output}: writes the HTML report; for {output.suffix} use {flag} {output}")
    from ..report.outputs import check_report_path

    for p, flag, fmt in ((output, "-o/--output", "report-html"), (markdown, "--markdown", "report-md"),
                         (json_out, "--json-out", "report-json")):
        check_output_file(p, flag)
        check_report_path(p, flag, fmt)
    data = write_reports(list(outdirs), html=output, markdown=markdown, json_path=json_out, title=title)
    if as_json:
        echo_json(data)
        return
    from ..stdio import markup_safe as ms

    con = console()
    for p in (output, markdown, json_out):
        if p is not None:
            con.print(f"wrote {ms(p)}")
    for r in data["runs"]:
        for t, rec in r["recommended"].items():
            # a non-ok status (emulated, unavailable, none...) is said as such, never as "recommended"
            pick = (f"recommended {rec['kind']} ({rec['path']})" if rec["status"] == "ok"
                    else f"no recommendation ({rec['status']}: {rec.get('reason')})")
            con.print(f"{ms(r['label'])} · {ms(t)}: {ms(pick)}")
