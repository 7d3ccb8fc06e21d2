"""The device runner: edgekit_runner.py is one file needing only numpy + onnxruntime.

It is bundled onto devices, run under qemu for the arm64-emulated target, and imported here
by edgekit.profile, so timing and statistics code exists once.
"""
from pathlib import Path

RUNNER_PATH = Path(__file__).resolve().parent / "edgekit_runner.py"

