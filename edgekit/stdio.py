"""Terminal output: native libraries that write to the process's stdout/stderr behind Python's back,
and text from outside (device output, paths) made safe to print."""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys

# an escape sequence as a whole (CSI, OSC/DCS/APC... strings up to BEL or ST, two-byte ESC x), then any single
# C0 control but tab and newline, DEL and C1: dropping only ESC would leave "[2J" or "]0;TITLE" in the text
_CONTROLS = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]?"
                       r"|\x1b[\]PX^_][^\x07\x1b]*(?:\x07|\x1b\\)?"
                       r"|\x1b[ -~]?"
                       r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text) -> str:
    """str(text) without control characters or escape sequences: text a device (or a file) supplied must not
    retitle the window, clear the screen or forge lines on the user's terminal."""
    return _CONTROLS.sub("", str(text))


def markup_safe(text) -> str:
    """printable(text) for interpolation into Rich markup: a path like 'runs[/net]' is a closing tag to Rich,
    and a summary that raised MarkupError turned a completed flash or run into an internal error, exit 1."""
    from rich.markup import escape

    return escape(printable(text))


@contextlib.contextmanager
def native_stderr_muted():
    """Point file descriptor 2 at /dev/null for the duration. torch's exporter dumps its whole IR graph
    (std::cerr, unbuffered, once sent there) when an export attempt fails and edgekit retries another
    way, and C++ warnings go the same road; the failure itself comes back as the Python exception.
    Where stderr has no descriptor (captured by a test), nothing changes."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(null)
