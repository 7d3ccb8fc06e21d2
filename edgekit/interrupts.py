"""Ctrl-C and SIGTERM unwind the CLI as exceptions, but never from inside an import.

An exception that a Python signal handler raises while an extension module's import calls back into
Python (torch's, through pybind11) is swallowed there or aborts the process: measured, a SIGTERM 1.1 s
into `import torch` was lost, and the run went on to finish and exit 0. So a signal that arrives while
any module is being imported is held, and delivered again as soon as no import is under way (torch's
takes a few seconds); outside imports it acts at once.

An exception raised inside a finaliser or a weakref callback is printed and dropped as well ("Exception
ignored in ..."): a fresh-clone CI run saw a SIGTERM land in importlib's module-lock callback just after an
import had ended, and the run finished with exit 0. Such a dropped exception reaches sys.unraisablehook, which
delivers its signal again once the callback has returned.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

_waiting: set = set()  # signals held until the imports under way end; a thread redelivers each
_lock = threading.Lock()


def importing() -> bool:
    """Whether some module is executing its import right now (importlib marks its spec meanwhile)."""
    for m in list(sys.modules.values()):
        try:
            if getattr(getattr(m, "__spec__", None), "_initializing", False):
                return True
        except Exception:  # a lazy module object may run code on attribute access
            continue
    return False


def _redeliver(signum: int) -> None:
    time.sleep(0.02)  # let a finaliser that dropped the signal's exception return first
    while importing():
        time.sleep(0.02)
    with _lock:
        _waiting.discard(signum)
    os.kill(os.getpid(), signum)


def _hold(signum: int) -> None:
    """Deliver signum again later (one redelivery thread per signal, however often it is held meanwhile)."""
    with _lock:
        start = signum not in _waiting
        _waiting.add(signum)
    if start:
        threading.Thread(target=_redeliver, args=(signum,), name="edgekit-signal", daemon=True).start()


def _holding(act):
    def handle(signum, frame):
        if importing():
            _hold(signum)
            return
        act(signum, frame)
    return handle


def _exit(signum, _frame):
    # SIGTERM (kill, a CI timeout, systemd) unwinds like Ctrl-C, so staging folders are removed and a
    # previous OUTDIR is left as it was; by default Python would die on the spot and leave them
    e = SystemExit(128 + signum)
    e.edgekit_signal = signum
    raise e


def _interrupt(signum, _frame):
    e = KeyboardInterrupt()
    e.edgekit_signal = signum
    raise e


def _unraisable(previous):
    def hook(u):
        signum = getattr(u.exc_value, "edgekit_signal", None)
        if signum is None:
            return previous(u)
        # a finaliser or weakref callback dropped the signal's exception: deliver the signal again once
        # the callback has returned (a redelivery that lands in one again comes back here)
        _hold(signum)
    hook.edgekit = True
    return hook


def install() -> None:
    """SIGTERM raises SystemExit(143) and SIGINT KeyboardInterrupt, each held while an import runs and
    delivered again if a finaliser drops it. A SIGINT the caller ignores (a background job, nohup) stays
    ignored. Only the main thread can install."""
    if threading.current_thread() is not threading.main_thread():
        return  # edgekit called from a library's worker thread: the host program owns its signals
    signal.signal(signal.SIGTERM, _holding(_exit))
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _holding(_interrupt))
    if not getattr(sys.unraisablehook, "edgekit", False):
        sys.unraisablehook = _unraisable(sys.unraisablehook)
