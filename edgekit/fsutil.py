"""Atomic file writes and content hashes: nothing half-written, ever."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

from .errors import EdgekitError


def per_file_version(fn):
    """fn(path) computed once per version of the file (its path, mtime and size): facts read from a model
    that callers ask for again and again, where parsing a large graph each time takes seconds. OSError
    (a missing file) reaches the caller."""
    @functools.lru_cache(maxsize=64)
    def cached(path: str, mtime_ns: int, size: int):
        return fn(path)

    @functools.wraps(fn)
    def wrapper(path):
        st = os.stat(path)
        return cached(str(path), st.st_mtime_ns, st.st_size)
    return wrapper


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(dest):
    """Yield a temp path in dest's directory; rename it onto dest only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; artifacts and reports are meant to be shared, so honour the umask
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(dest)  # a full disk fails write() with no name: say which file it was
        raise


def write_bytes_atomic(dest, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(dest, text: str) -> None:
    write_bytes_atomic(dest, text.encode("utf-8"))


def write_json_atomic(dest, obj) -> None:
    write_text_atomic(dest, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class CacheDirError(EdgekitError):
    """edgekit's cache directory cannot be made (the setting points at a file, a read-only place)."""


def cache_dir() -> Path:
    """The user's cache directory for edgekit (XDG_CACHE_HOME respected). CacheDirError, one line naming
    the path and the variable that chose it, when it cannot be made: a setting that points at a file read
    as an internal NotADirectoryError. Callers that can work without a cache catch it."""
    var = "EDGEKIT_CACHE" if os.environ.get("EDGEKIT_CACHE") else \
        "XDG_CACHE_HOME" if os.environ.get("XDG_CACHE_HOME") else "HOME"
    base = os.environ.get("EDGEKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgekit"
    )
    p = Path(base)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = "a file, not a directory" if isinstance(e, FileExistsError) else e.strerror or str(e)
        raise CacheDirError(f"{p}: cannot be edgekit's cache directory ({why}; set by {var})") from None
    return p


@contextlib.contextmanager
def signals_deferred():
    """Hold SIGINT and SIGTERM for the block: a few steps that must not be split (rename OUTDIR aside and
    the new one in; switch a device's `current` and record it) complete, and the signal then reaches its
    handler as the block ends. Yields the list of held signal numbers: a caller that has finished the
    user's work may clear it (and say so) rather than report an abort. A second signal in the block is
    not held. Outside the main thread, where no handler runs, nothing is held."""
    import signal
    import threading

    held: list = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    before = {}

    def hold(signum, frame):
        prev = before.get(signum)
        if prev is signal.SIG_IGN:  # ignored before the block (nohup): not an interrupt to report or act on
            return
        if held and callable(prev):  # a second one: the user insists (a hung SSH call); act on it now
            held.clear()
            prev(signum, frame)
        held.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        before[sig] = signal.signal(sig, hold)
    try:
        yield held
    finally:
        for sig, handler in before.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if held:
            signal.raise_signal(held[0])
