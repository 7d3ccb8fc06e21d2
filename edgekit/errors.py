"""Errors the library raises; the CLI maps them to exit codes.

Usage/config errors (bad flag, bad file, bad data) exit 2; everything else that
is an EdgekitError exits 1. Anything that is not an EdgekitError is a bug and
keeps its traceback under --debug.
"""
from __future__ import annotations


class EdgekitError(Exception):
    """A failure the user can act on. The message is one line."""

    exit_code = 1


class UsageError(EdgekitError):
    """The user asked for something impossible: bad option, missing or malformed input."""

    exit_code = 2


class ConfigError(UsageError):
    """A recipe, target file or option value is invalid."""


class InputError(UsageError):
    """A model, weights, calibration or eval file cannot be used (names the file)."""


class TargetError(EdgekitError):
    """A target cannot be reached or its runtime is unavailable."""


class CalibrationError(UsageError):
    """Calibration/eval data does not match the model's inputs."""


class NumericsError(EdgekitError):
    """An artifact's outputs do not match its source within tolerance."""


class FlashError(EdgekitError):
    """Deployment to a device failed; the message names the failed step."""


def did_you_mean(name: str, choices) -> str:
    """A ' (did you mean X?)' suffix when a close match exists, else the valid choices."""
    import difflib

    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (valid: {', '.join(choices)})" if choices else ""
