"""`edgekit profile ARTIFACT... --target NAME...`: latency on each target, interleaved, with a report."""
from __future__ import annotations

from pathlib import Path

import click

from ..targets import MAX_THREADS
from .common import CONTEXT_SETTINGS, FiniteFloatRange, check_output_file, console, echo_json, json_option


@click.command(context_settings=CONTEXT_SETTINGS)
@click.argument("artifacts", nargs=-1, required=True)
@click.option("--target", "-t", "targets", multiple=True,
              help="Target name or .toml path (repeatable). Default: this host's CPU (x86-laptop).")
@click.option("--inputs", type=click.Path(dir_okay=False),
              help=".npz of real inputs (one array per input name; a .npy or .csv rows for a single-input model).")
@click.option("--batch", "batches", type=click.IntRange(min=1), multiple=True,
              help="Batch size (repeat to sweep). Default: the model's own (its fixed batch, else 1).")
@click.option("--threads", "threads", type=click.IntRange(1, MAX_THREADS), multiple=True,
              help="Intra-op threads (repeat to sweep). Default: the target's.")
@click.option("--with-prepost", is_flag=True, help="Also time pre/post-processing and end to end.")
@click.option("--raw", type=click.Path(dir_okay=False), help="Raw input for --with-prepost: an image file (.jpg, .png, ...) or an .npy.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True)
@click.option("--min-runs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--min-seconds", type=FiniteFloatRange(min=0), default=1.0, show_default=True)
@click.option("--max-seconds", type=FiniteFloatRange(min=0.01), default=30.0, show_default=True)
@click.option("--no-op-profile", is_flag=True, help="Skip the per-operator breakdown.")
# ssh:// targets: the options of `edgekit flash`, whose advice (--accept-new-host-key) profile repeats
@click.option("--identity", type=click.Path(exists=True, dir_okay=False), metavar="KEY",
              help="SSH private key for ssh:// targets (default: your SSH keys and agent).")
@click.option("--known-hosts", type=click.Path(dir_okay=False), metavar="FILE",
              help="known_hosts file used to verify host keys (default: ~/.ssh/known_hosts).")
@click.option("--accept-new-host-key", is_flag=True,
              help="Trust a host key seen for the first time and record it in the known-hosts file. "
                   "A changed key is always refused.")
@click.option("--remote-python", default="python3", show_default=True, metavar="CMD",
              help="Python on ssh:// targets (needs numpy and onnxruntime).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the report here: .html as a self-contained page, .md as Markdown, else JSON "
                   "(and the Markdown beside it, .md).")
@json_option
def profile(artifacts, targets, inputs, batches, threads, with_prepost, raw, warmup, min_runs, min_seconds,
            max_seconds, no_op_profile, identity, known_hosts, accept_new_host_key, remote_python, output,
            as_json):
    """Measure ARTIFACT(s) (.onnx files or edgekit output directories) on each target.

    Artifacts on the same target are timed interleaved in one process, so their ratio holds on
    a busy machine. A target whose runtime is missing (e.g. a GPU here) is reported as
    unavailable with the reason; the exit status is 0 when at least one measurement succeeded.
    """
    from ..errors import EdgekitError
    from ..flash.transport_ssh import SshOptions
    from ..fsutil import write_json_atomic, write_text_atomic
    from ..profile_report import ok_count, to_console, to_html, to_markdown
    from ..profiling import run_profile
    from ..report.outputs import check_report_path
    from ..targets import DEFAULT_TARGET

    for path, fmt in _report_files(output):  # the Markdown beside a JSON report is written too
        check_output_file(path, "-o/--output")
        check_report_path(path, "-o/--output", fmt)
    if click.get_current_context().get_parameter_source("min_seconds") == click.core.ParameterSource.DEFAULT:
        min_seconds = min(min_seconds, max_seconds)  # --max-seconds 0.5 alone caps the default 1 s, no conflict
    con = console()
    # a target, batch or thread count named twice is one: measuring it twice only doubled the sweep
    report = run_profile(list(artifacts), list(dict.fromkeys(targets)) or [DEFAULT_TARGET], inputs=inputs,
                         batches=tuple(dict.fromkeys(batches)), threads=tuple(dict.fromkeys(threads)) or (None,),
                         with_prepost=with_prepost, raw=raw, warmup=warmup, min_runs=min_runs,
                         min_seconds=min_seconds, max_seconds=max_seconds, op_profile=not no_op_profile,
                         ssh=SshOptions(identity=identity, known_hosts=known_hosts,
                                        accept_new_host_key=accept_new_host_key, remote_python=remote_python),
                         progress=lambda m: con.log(f"profiling {m}"))
    md = to_markdown(report)
    for path, fmt in _report_files(output):
        # the suffix asked for a format: JSON under report.html was written silently (and report.html.md)
        if fmt == "profile-html":
            write_text_atomic(path, to_html(report))
        elif fmt == "profile-md":
            write_text_atomic(path, md)
        else:
            write_json_atomic(path, report)
    if as_json:
        echo_json(report)
    else:
        click.echo(to_console(report))
    if ok_count(report) == 0:
        why = "; ".join(sorted({f"{run['target']}: {r.get('status')}: {r.get('reason')}"
                                for run in report["runs"] for r in run["results"].values()}))
        raise EdgekitError(f"no measurement succeeded: {why}")


def _report_files(output) -> list:
    """[(path, format)] that -o writes: .html/.htm a page, .md Markdown, else JSON plus its Markdown beside it."""
    if not output:
        return []
    out = Path(output)
    if out.suffix.lower() in (".html", ".htm"):
        return [(out, "profile-html")]
    if out.suffix.lower() == ".md":
        return [(out, "profile-md")]
    return [(out, "profile-json"), (out.with_suffix(".md") if out.suffix == ".json" else Path(f"{out}.md"), "profile-md")]
