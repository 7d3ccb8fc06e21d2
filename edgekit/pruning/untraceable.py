"""Layers whose channel dependencies Torch-Pruning cannot trace in bounded time, found before pruning.

Torch-Pruning follows a layer's output channels through every op that maps their indices (slices, cats,
reshapes) until no new (layer, indices) pair appears. Some index maps permute instead of converging:
rotary position embeddings' rotate_half (cat(-x2, x1)) on a HuggingFace Llama's q_proj / k_proj output
sent that walk around for good, and `edgekit compress --prune` on a 2-layer Llama sat at 100% CPU for
8 minutes with nothing on screen. Each candidate root is traced once under a time limit; one that does
not finish is kept whole (with a reason in the report) and the rest of the model is still pruned.
"""
from __future__ import annotations

import contextlib
import signal
import threading

# a normal group (a residual stream through every layer of a large transformer) resolves in well under a
# second; the walk that does not converge never ends
GROUP_SECONDS = 5.0
RETRY_SECONDS = 0.1  # after the limit, how often the timeout is raised again until it is seen


class _Timeout(BaseException):
    """A BaseException, as KeyboardInterrupt is, so that no `except Exception` in the library swallows it."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise _Timeout in this (main) thread after `seconds`. A timer signal is the one way to stop a
    pure-Python loop inside a library; off the main thread, or without setitimer, nothing is limited."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        # a handler that runs inside a __del__ or a weakref callback (the garbage collector's) has its exception
        # printed and dropped: the one-shot timer was then spent and the walk went on for good (a test hung in
        # CI). Each expiry arms the next, until the block's exit stops the timer.
        signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)
        raise _Timeout()

    import time

    old = signal.signal(signal.SIGALRM, expire)
    start = time.monotonic()
    delay, interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if delay > 0:  # a timer of the embedding program's own, re-armed for what was left of it
            signal.setitimer(signal.ITIMER_REAL, max(delay - (time.monotonic() - start), 1e-3), interval)


def untraceable_roots(dg, ignored, root_types, *, seconds: float = GROUP_SECONDS) -> list:
    """The layers of DependencyGraph `dg` whose output-channel group does not resolve within `seconds`
    each, among those Torch-Pruning's get_all_groups would take as roots."""
    ignored = set(map(id, ignored))
    bad = []
    for m in list(dg.module2node):
        if id(m) in ignored or not isinstance(m, tuple(root_types)):
            continue
        pruner = dg.get_pruner_of_module(m)
        channels = pruner.get_out_channels(m) if pruner is not None else None
        if channels is None:
            continue
        try:
            with _time_limit(seconds):
                dg.get_pruning_group(m, pruner.prune_out_channels, list(range(channels)))
        except _Timeout:
            bad.append(m)
    return bad
