"""`edgekit bundle OUTDIR -o model.ekb`: one artifact + self-test + runner in a verified archive."""
from __future__ import annotations

import click

from .common import CONTEXT_SETTINGS, check_output_file, console, echo_json, json_option, output_option


@click.command("bundle", context_settings=CONTEXT_SETTINGS)
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--artifact", metavar="KIND|PATH",
              help="Artifact to pack (default: the first recommended one, else the smallest compressed variant "
                   "within tolerance that no measurement showed slower, else fp32).")
@click.option("--inputs", type=click.Path(dir_okay=False), metavar="FILE",
              help="A .npz (one array per input name) or .npy holding a real input for the on-device self-test "
                   "(default: OUTDIR/sample_inputs.npz or the run's eval/calib data, else a generated input).")
@click.option("--atol", type=click.FloatRange(min=0), help="Self-test tolerance (default: from the output scale).")
@output_option(help="Bundle file to write (.ekb).")
@json_option
def bundle(outdir, artifact, inputs, atol, output, as_json):
    """Pack an artifact of OUTDIR, its manifest entry, pre/post config, the device runner and a
    self-test into one .ekb archive with SHA-256 hashes of every file and a content-derived version."""
    from ..flash.bundle import build_bundle
    from ..progress import task

    check_output_file(output, "-o/--output")
    with task(f"bundling {outdir}"):
        info = build_bundle(outdir, output, artifact=artifact, inputs=inputs, atol=atol)
    if as_json:
        echo_json(info)
        return
    st = info["selftest"]
    from ..stdio import markup_safe as ms

    # names are the user's: '[/v].ekb' is a closing tag to Rich, and a written bundle ended as an internal error
    console().print(f"[bold]{ms(info['path'])}[/bold]: version {ms(info['version'])}, {ms(info['artifact']['kind'])} "
                    f"({ms(info['artifact']['path'])}), {info['files']} files, {info['bytes'] / 1024:.1f} KiB; "
                    f"self-test input: {ms(st['input_origin'])}, atol {st['atol']:.3g}")
