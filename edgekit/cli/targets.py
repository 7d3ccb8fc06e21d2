"""`edgekit targets list|show|setup`: the device profiles in targets/ (or a user's file)."""
from __future__ import annotations

import click

from .common import CONTEXT_SETTINGS, console, echo_json, json_option


@click.group(context_settings=CONTEXT_SETTINGS)
def targets():
    """Device profiles: architecture, execution providers, threads, precisions, ISA, address."""


@targets.command("list", context_settings=CONTEXT_SETTINGS)
@json_option
def list_cmd(as_json):
    """List the shipped target profiles."""
    from ..targets import DEFAULT_TARGET, list_targets

    ts = list_targets()
    if as_json:
        echo_json([t.to_dict() for t in ts])
        return
    from rich.table import Table

    table = Table(title="edgekit targets")
    for c in ("name", "arch", "address", "providers", "threads", "precisions"):
        table.add_column(c, overflow="fold")
    from ..stdio import markup_safe as ms

    for t in ts:  # names and addresses come from the user's TOML files
        table.add_row(ms(t.name) + (" (default)" if t.name == DEFAULT_TARGET else ""), t.arch, ms(t.address),
                      ", ".join(n.replace("ExecutionProvider", "") + ("?" if n in t.optional_providers else "")
                                for n in t.provider_names),
                      str(t.threads or "default"), ", ".join(t.precisions))
    from rich.console import Console

    Console().print(table)


@targets.command("show", context_settings=CONTEXT_SETTINGS)
@click.argument("name")
@json_option
def show_cmd(name, as_json):
    """Describe one target: NAME of a shipped profile or a path to a .toml file."""
    from ..targets import load_target

    t = load_target(name)
    d = t.to_dict()
    if t.address == "emulated":  # qemu on this host (an ssh:// device declared emulated has nothing here)
        from .. import emulation

        d["emulation"] = emulation.status()
    if as_json:
        echo_json(d)
        return
    for k, v in d.items():
        if k == "providers":
            v = "; ".join(f"{p['name']}{'' if p['required'] else ' (optional)'}"
                          f"{' ' + str(p['options']) if p['options'] else ''}" for p in v)
        elif isinstance(v, (list, tuple)):
            v = ", ".join(map(str, v)) or "-"
        elif k == "threads" and v is None:
            v = "default (runtime)"
        elif isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
        click.echo(f"{k:17} {v if v not in (None, '') else '-'}")


@targets.command("setup", context_settings=CONTEXT_SETTINGS)
@click.argument("name")
@click.option("--force", is_flag=True, help="Rebuild even if it is already set up.")
@json_option
def setup_cmd(name, force, as_json):
    """Prepare a target's runtime on this host (arm64-emulated: an arm64 rootfs run with qemu).

    Exit 1 when the target cannot run here (a local target whose execution providers are missing)."""
    from ..errors import UsageError
    from ..targets import load_target

    t = load_target(name)
    if t.address == "local":
        from ..runner.edgekit_runner import provider_status

        _, missing, reason = provider_status(list(t.providers), t.required_providers)
        st = {"target": t.name, "ready": reason is None, "reason": reason, "providers_missing": missing}
        (echo_json(st) if as_json else click.echo(
            f"{t.name}: runs locally; " + ("ready" if reason is None else f"unavailable: {reason}")))
        return 0 if reason is None else 1  # a script checking setup must not read "unavailable" as success
    if t.address != "emulated":
        raise UsageError(f"target {t.name} is reached at {t.address}; nothing to set up here "
                         "(use `edgekit flash` to deploy to it)")
    from .. import emulation

    con = console()
    with con.status("setting up arm64-emulated") as s:
        def say(msg):
            s.update(f"arm64-emulated: {msg}")
            con.log(msg)

        st = emulation.setup(progress=say, force=force)
    if as_json:
        echo_json(st)
    else:
        click.echo(f"arm64-emulated ready: {st['rootfs']} (onnxruntime {st.get('onnxruntime')}, "
                   f"numpy {st.get('numpy')}, QEMU_CPU={st.get('qemu_cpu')})")
