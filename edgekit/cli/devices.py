"""`edgekit devices status`: versions on each device, the active one, and whether each is intact."""
from __future__ import annotations

import click

from .common import CONTEXT_SETTINGS, console, echo_json, json_option
from .flash import device_options, resolve


@click.group("devices", context_settings=CONTEXT_SETTINGS)
def devices():
    """Inspect devices that edgekit flashes."""


def _text(value) -> str:
    """A device-provided string for a Rich table: control characters (terminal escapes) dropped and
    markup escaped ('[/x]' in a path raised MarkupError; an OSC sequence retitled the terminal)."""
    from rich.markup import escape

    s = "".join(c for c in str(value) if c.isprintable() or c == " ")
    return escape(s)


@devices.command("status", context_settings=CONTEXT_SETTINGS)
@device_options
@click.option("--no-verify", is_flag=True, help="Skip rehashing the files on the device.")
@json_option
def status(devices, devices_file, targets, identity, known_hosts, accept_new_host_key, remote_python, jobs,
           no_verify, as_json):
    """List the versions on each device, the active one, their hashes and whether they are intact
    (every listed file matches its SHA-256 and no other file is in the version's folder).

    Exit status: 0 when every device was read and its active version is intact; 1 when a device could
    not be read, its active version is not intact, `current` points at a version that is gone, or
    `current` is not an edgekit link into versions/ (a folder, a link elsewhere) (--no-verify rechecks
    no hashes, so a damaged active version does not count then)."""
    from rich.table import Table

    from ..flash import fleet

    devs, ssh = resolve(devices, devices_file, targets, identity, known_hosts, accept_new_host_key, remote_python)
    reports = fleet.status_many(devs, ssh=ssh, jobs=jobs, verify=not no_verify)
    ok = all("error" not in r and r.get("healthy", True) for r in reports)
    if as_json:
        echo_json({"devices": reports, "ok": ok})
        return 0 if ok else 1
    con = console()
    for r in reports:
        if "error" in r:
            con.print(f"[red]{_text(r['device'])}: {_text(r['error'])}[/red]")
            continue
        tab = Table(title=f"{_text(r['device'])} (active: {_text(r['active'] or 'none')})")
        for col in ("", "version", "kind", "model", "model sha256", "activated", "rolled back", "intact"):
            tab.add_column(col)
        for v in r["versions"]:
            intact = "-" if "intact" not in v else (
                "yes" if v["intact"] else f"[red]no: {_text('; '.join(v['problems']))}[/red]")
            tab.add_row("*" if v["active"] else "", _text(v["version"]), _text(v.get("kind") or "-"),
                        _text(v.get("model") or "-"), _text((v.get("model_sha256") or "-")[:16]),
                        _text(v.get("activated") or "-"), _text(v.get("rolled_back") or "-"), intact)
        con.print(tab)
        if r["incoming"]:
            con.print(f"  unfinished uploads (resumed by the next flash): {_text(', '.join(r['incoming']))}")
        if r.get("note"):
            con.print(f"  [yellow]{_text(r['note'])}[/yellow]")
    return 0 if ok else 1
