"""Run the edgekit CLI in this process, as a user's shell would see its exit status."""
from edgekit.cli import main


def run_cli(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # click's standalone mode ends every command with one
        return e.code
