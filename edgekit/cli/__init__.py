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


class _LazyGroup(click.Group):
    """Imports a command's module when click asks for the command, not when edgekit.cli is imported: the
    console script imports this package before main() runs, and a Ctrl-C during those imports (the first
    second of every command) came before main_entry could catch it, a KeyboardInterrupt traceback."""

    def list_commands(self, ctx):
        return sorted(n for n in COMMANDS if self.get_command(ctx, n) is not None)

    def get_command(self, ctx, name):
        if name not in self.commands and name in COMMANDS:
            try:
                m = importlib.import_module(f"{__name__}.{name}")
            except ModuleNotFoundError as e:  # a command module not written yet must not break the others
                if e.name != f"{__name__}.{name}":
                    raise
                return None
            self.add_command(getattr(m, COMMANDS[name]), name)
        return super().get_command(ctx, name)


@click.group(cls=_LazyGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="edgekit", prog_name="edgekit")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx, debug):
    """edgekit: compress a PyTorch model for an edge device, with its accuracy cost measured."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv=None):
    return main_entry(cli, argv)
