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


def _has_control(s: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7f for c in s)


def shown(path) -> str:
    """A path as a one-line message shows it: as is, or repr-quoted when it holds a control character (a
    newline in a path cut the message there, and the user saw neither the file nor the problem)."""
    s = str(path)
    return repr(s) if _has_control(s) else s


_TOKEN_END = " \t'\",:;()[]"


def quote_paths(message: str, given) -> str:
    """message with every path of `given` (the words on the command line) that holds a control character
    repr-quoted, together with the rest of the path around it ('/abs/nl\\nout/compress.toml'): messages
    name such paths as given, absolute or joined with a file name, and were cut at the newline."""
    for word in sorted({w for w in given if isinstance(w, str) and _has_control(w)}, key=len, reverse=True):
        start = 0
        while (i := message.find(word, start)) >= 0:
            a, b = i, i + len(word)
            while a > 0 and message[a - 1] not in _TOKEN_END + "\n":
                a -= 1
            while b < len(message) and message[b] not in _TOKEN_END and not _has_control(message[b]):
                b += 1
            token = shown(message[a:b])
            message = message[:a] + token + message[b:]
            start = a + len(token)
    return message
