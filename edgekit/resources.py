"""Where shipped data lives: inside the installed package, or the repository for editable installs."""
from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """targets/ or calibration/: edgekit/data/<name> when installed, <repo>/<name> when editable."""
    for cand in (_PKG / "data" / name, _PKG.parent / name):
        if cand.is_dir():
            return cand
    return _PKG.parent / name


def targets_dir() -> Path:
    return shipped_dir("targets")


def calibration_dir() -> Path:
    return shipped_dir("calibration")
