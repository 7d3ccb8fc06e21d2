"""`edgekit flash`: verified, atomic deployment of a bundle to one or many devices, and rollback."""
from __future__ import annotations

import contextlib
import functools
import tempfile

import click

from ..stdio import markup_safe, printable
from .common import CONTEXT_SETTINGS, console, echo_json, json_option


def device_options(f):
    """--device/--devices-file/--target and the SSH trust options, shared with `edgekit devices`."""
    opts = [
        click.option("--device", "devices", multiple=True, metavar="ADDR",
                     help="ssh://user@host[:port]/path or a mounted path (repeatable)."),
        click.option("--devices-file", type=click.Path(dir_okay=False), metavar="FILE",
                     help="A file of device addresses, one per line ('#' starts a comment at a line's start or after a space)."),
        click.option("--target", "targets", multiple=True, metavar="NAME",
                     help="Use the address in the target profile NAME (repeatable)."),
        click.option("--identity", type=click.Path(exists=True, dir_okay=False), metavar="KEY",
                     help="SSH private key (default: your SSH keys and agent)."),
        click.option("--known-hosts", type=click.Path(dir_okay=False), metavar="FILE",
                     help="known_hosts file used to verify host keys (default: ~/.ssh/known_hosts)."),
        click.option("--accept-new-host-key", is_flag=True,
                     help="Trust a host key seen for the first time and record it in the known-hosts file. "
                          "A changed key is always refused."),
        click.option("--remote-python", default="python3", show_default=True, metavar="CMD",
                     help="Python on the device (needs numpy and onnxruntime for the self-test)."),
        click.option("--jobs", type=click.IntRange(min=1), default=4, show_default=True,
                     help="Devices handled at once."),
    ]
    return functools.reduce(lambda g, o: o(g), reversed(opts), f)


def resolve(devices, devices_file, targets, identity, known_hosts, accept_new_host_key, remote_python):
    from ..flash.devices import collect_devices
    from ..flash.transport_ssh import SshOptions

    devs = collect_devices(devices, devices_file, targets)
    ssh = SshOptions(identity=identity, known_hosts=known_hosts, accept_new_host_key=accept_new_host_key,
                     remote_python=remote_python)
    if any(d.kind == "ssh" for d in devs):
        ssh.check_local_files()
    return devs, ssh


class _Progress:
    """Per-device progress lines on stderr; safe to call from worker threads."""

    def __init__(self, devices):
        import os
        import sys

        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        quiet = os.environ.get("EDGEKIT_QUIET") == "1" or not sys.stderr.isatty()
        # labels are paths: plain text, never markup ('card[/models]' is a closing tag to Rich)
        self.p = Progress(TextColumn("{task.description}", markup=False),
                          TextColumn("{task.fields[step]}", markup=False), BarColumn(), DownloadColumn(),
                          console=console(), disable=quiet)
        self.ids = {d.label: self.p.add_task(printable(d.label), total=None, step="waiting") for d in devices}

    def __call__(self, device, step, info):
        tid = self.ids.get(device)
        if tid is None:
            return
        if step == "upload" and info:
            self.p.update(tid, step=step, completed=info["sent"], total=info["total"])
        else:
            self.p.update(tid, step=step)

    def __enter__(self):
        self.p.start()
        return self

    def __exit__(self, *exc):
        self.p.stop()


def summary_table(results, title):
    """Every string in it is escaped and stripped of control characters: labels are user paths, and reasons,
    warnings and version names come from the device (a self-test's output), so '[/...]' in one raised
    MarkupError after the flash had succeeded, and escape sequences reached the terminal."""
    from rich.table import Table

    tab = Table(title=markup_safe(title))
    for col in ("device", "result", "version", "details"):
        tab.add_column(col, overflow="fold")
    colour = {"flashed": "green", "up-to-date": "cyan", "rolled-back": "yellow", "failed": "red"}
    for r in results:
        if r.status == "failed":
            details = f"{r.step}: {r.reason}"
        elif r.status == "up-to-date":
            details = "same content already active: nothing sent"
        elif r.status == "flashed":
            details = f"sent {r.files_sent} files ({r.bytes_sent / 1024:.1f} KiB)"
            if r.files_resumed:
                details += f", {r.files_resumed} resumed"
            if r.previous:
                details += f"; previous {r.previous}"
            if r.removed:
                details += f"; removed {', '.join(r.removed)}"
        else:  # no previous: `current` named a deleted folder (its warning says which) or nothing
            details = f"from {r.previous}" if r.previous else "no intact version was active before"
        details += _warm_note(r.warmup)
        details += "".join(f"; warning: {w}" for w in r.warnings)
        tab.add_row(markup_safe(r.device), f"[{colour.get(r.status, 'white')}]{markup_safe(r.status)}[/]",
                    markup_safe(r.version or "-"), markup_safe(details))
    return tab


def _warm_note(w) -> str:
    """The warm-up's outcome for the details column (a failure is also among the warnings)."""
    if not w or (not w["ran"] and w["reason"].startswith("no pre/post steps")):
        return ""  # no version was made active, or nothing to compile
    if not w["ok"]:
        return "; warm-up FAILED"
    return f"; warmed up in {w['seconds']:.1f} s" if w["ran"] else f"; not warmed up: {w['reason']}"


@contextlib.contextmanager
def _report_interrupt(devs, title, as_json):
    """On Ctrl-C/SIGTERM, the results so far before the abort: a device already switched runs the new
    version, and 'Aborted.' alone read as if none did."""
    from ..flash.deploy import FlashInterrupted

    try:
        yield
    except FlashInterrupted as e:
        got = {r.device for r in e.results}
        untouched = [d.label for d in devs if d.label not in got]
        if as_json:
            echo_json({"results": [r.to_dict() for r in e.results], "ok": False, "interrupted": True,
                       "not_done": untouched})
        else:
            if e.results:
                console().print(summary_table(e.results, f"{title} (interrupted)"))
            if untouched:
                click.echo(f"edgekit: interrupted before the switch on {printable(', '.join(untouched))}: "
                           "the previous version stays active there", err=True)
        raise e.cause from None


@click.command("flash", context_settings=CONTEXT_SETTINGS)
@click.argument("source", required=False, type=click.Path(), metavar="BUNDLE|OUTDIR")
@device_options
@click.option("--artifact", metavar="KIND|PATH", help="With an OUTDIR: the artifact to bundle (default: recommended).")
@click.option("--keep", type=click.IntRange(min=1), default=3, show_default=True,
              help="Versions kept on each device (the active and previous ones always are).")
@click.option("--rollback", is_flag=True, help="Switch each device back to its previous version instead.")
@click.option("--selftest-timeout", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Seconds allowed for the on-device self-test (and for the warm-up).")
@click.option("--no-warm", is_flag=True, envvar="EDGEKIT_FLASH_NO_WARM", show_envvar=True,
              help="Do not compile the bundle's pre/post kernels on the device after the switch (the first run "
                   "then does).")
@json_option
def flash(source, devices, devices_file, targets, identity, known_hosts, accept_new_host_key, remote_python,
          jobs, artifact, keep, rollback, selftest_timeout, no_warm, as_json):
    """Deploy BUNDLE (.ekb) or OUTDIR to devices: upload beside the active version, verify every hash
    there, run the self-test there, then switch PATH/current in one rename. Any failure leaves the
    previous version active. Then the active version's pre/post kernels are compiled into the cache
    `edgekit_runner.py run` uses (--no-warm skips it; it runs for an up-to-date device too). Exit status
    1 if any device failed, or its warm-up did (its new version stays active).

    A mounted-path device's folder is created if missing, but its parent must exist: on an unmounted
    card (--device /media/sd/models with /media/sd absent) nothing is written and the command exits 2.
    Give a folder on the card, not the mount point itself, which exists even when nothing is mounted."""
    from ..flash import deploy, fleet
    from ..flash.bundle import open_source

    devs, ssh = resolve(devices, devices_file, targets, identity, known_hosts, accept_new_host_key, remote_python)
    fleet.check_path_devices(devs, rollback=rollback)  # before bundling an OUTDIR: fail fast, write nothing
    opts = deploy.FlashOptions(keep=keep, selftest_timeout=selftest_timeout, warm=not no_warm)
    if rollback:
        if source:
            raise click.UsageError("--rollback takes no BUNDLE|OUTDIR: it returns to the version before the active one")
        title = "edgekit flash --rollback"
        with _report_interrupt(devs, title, as_json), _Progress(devs) as prog:
            results = fleet.rollback_many(devs, opts=opts, ssh=ssh, jobs=jobs, emit=prog)
    else:
        if not source:
            raise click.UsageError("missing BUNDLE|OUTDIR (or pass --rollback)")
        with tempfile.TemporaryDirectory(prefix="edgekit-flash-") as work:
            b = open_source(source, work, artifact=artifact)
            title = f"edgekit flash {b.version}"
            with _report_interrupt(devs, title, as_json), _Progress(devs) as prog:
                results = fleet.flash_many(devs, b, opts=opts, ssh=ssh, jobs=jobs, emit=prog)
    if as_json:
        echo_json({"results": [r.to_dict() for r in results], "ok": all(r.ready for r in results)})
    else:
        console().print(summary_table(results, title))
    return 0 if all(r.ready for r in results) else 1
