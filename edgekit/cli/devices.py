"""`edgekit devices status`: versions on each device, the active one, and whether each is intact."""
from __future__ import annotations

import click

from .common import CONTEXT_SETTINGS, console, echo_json, json_option
from .flash import device_options, resolve


@click.group("devices", context_settings=CONTEXT_SETTINGS)
def devices():
    """Inspect devices that edgekit flashes."""


@devices.command("status", context_settings=CONTEXT_SETTINGS)
@device_options
@click.option("--no-verify", is_flag=True, help="Skip rehashing the files on the device.")
@json_option
def status(devices, devices_file, targets, identity, known_hosts, accept_new_host_key, remote_python, jobs,
           no_verify, as_json):
    """List the versions on each device, the active one, their hashes and whether they are intact."""
    from rich.table import Table

    from ..flash import fleet

    devs, ssh = resolve(devices, devices_file, targets, identity, known_hosts, accept_new_host_key, remote_python)
    reports = fleet.status_many(devs, ssh=ssh, jobs=jobs, verify=not no_verify)
    failed = any("error" in r for r in reports)
    if as_json:
        echo_json({"devices": reports, "ok": not failed})
        return 1 if failed else 0
    con = console()
    for r in reports:
        if "error" in r:
            con.print(f"[red]{r['device']}: {r['error']}[/red]")
            continue
        tab = Table(title=f"{r['device']} (active: {r['active'] or 'none'})")
        for col in ("", "version", "kind", "model", "model sha256", "activated", "intact"):
            tab.add_column(col)
        for v in r["versions"]:
            intact = "-" if "intact" not in v else ("yes" if v["intact"] else f"[red]no: {'; '.join(v['problems'])}[/red]")
            tab.add_row("*" if v["active"] else "", v["version"], v.get("kind") or "-", v.get("model") or "-",
                        (v.get("model_sha256") or "-")[:16], v.get("activated") or "-", intact)
        con.print(tab)
        if r["incoming"]:
            con.print(f"  unfinished uploads (resumed by the next flash): {', '.join(r['incoming'])}")
        if r.get("note"):
            con.print(f"  [yellow]{r['note']}[/yellow]")
    return 1 if failed else 0
