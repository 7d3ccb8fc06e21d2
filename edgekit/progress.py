"""Progress display for long work: rich on a terminal (stderr), silent when EDGEKIT_QUIET=1."""
from __future__ import annotations

import contextlib
import os
import sys
import time

from .stdio import printable


class _Task:
    def __init__(self, progress, tid):
        self._p, self._tid = progress, tid

    def update(self, completed=None, note: str = "", advance=None):
        if self._p is None:
            return
        kw = {}
        if completed is not None:
            kw["completed"] = completed
        if advance is not None:
            kw["advance"] = advance
        if note:
            kw["note"] = printable(note)
        self._p.update(self._tid, **kw)


@contextlib.contextmanager
def task(description: str, total: float | None = None):
    """A progress bar (or spinner when total is None) on stderr for the duration of the block."""
    if os.environ.get("EDGEKIT_QUIET") == "1":
        yield _Task(None, None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, force_terminal=None if sys.stderr.isatty() else False)
    # descriptions and notes carry paths and target names: plain text, never markup ('[/x]' raised MarkupError)
    description = printable(description)
    cols = [SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
            TextColumn("{task.fields[note]}", markup=False), TimeElapsedColumn()]
    t0 = time.perf_counter()
    with Progress(*cols, console=console, transient=False, disable=not console.is_terminal) as p:
        tid = p.add_task(description, total=total, note="")
        yield _Task(p, tid)
        if total is not None:
            p.update(tid, completed=total)
    if not console.is_terminal:
        console.print(f"{description}: done in {time.perf_counter() - t0:.1f}s", markup=False, highlight=False)
