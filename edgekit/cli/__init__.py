"""The `edgekit` command line. Only this package imports click.

Each subcommand lives in its own module here and is listed in COMMANDS, so
adding a command is adding a file and one line. Heavy backends (torch,
onnxruntime) are imported inside the command functions: `edgekit --help` stays fast.
"""
from __future__ import annotations

import importlib

import click

from .common import CONTEXT_SETTINGS, main_entry

# module name -> attribute holding the click command or group
COMMANDS = {
    "compress": "compress",
    "quantize": "quantize",
    "prune": "prune",
    "distill": "distill",
    "profile": "profile",
    "targets": "targets",
    "report": "report",
    "bundle": "bundle",
    "flash": "flash",
    "devices": "devices",
    "prepost": "prepost",
}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="edgekit", prog_name="edgekit")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx, debug):
    """edgekit: compress a PyTorch model for an edge device, with its accuracy cost measured."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


for _mod, _attr in COMMANDS.items():
    try:
        _m = importlib.import_module(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _e:  # a command module not written yet must not break the others
        if _e.name != f"{__name__}.{_mod}":
            raise
        continue
    cli.add_command(getattr(_m, _attr))


def main(argv=None):
    return main_entry(cli, argv)
