"""Native libraries that write to the process's stdout/stderr behind Python's back."""
from __future__ import annotations

import contextlib
import io
import os
import sys


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
