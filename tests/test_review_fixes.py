"""Defects a review of the session's changes found: each case failed before its fix."""
from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

from profile_models import matmul_chain


def test_a_nonfinite_reference_does_not_set_the_device_tolerance():
    # an inf made the tolerance inf, so every finite difference passed; a NaN left a unit-scale tolerance
    from edgekit.profile import output_tolerance
    from edgekit.runner.edgekit_runner import compare

    ref = {"y": np.array([np.inf, 1.0], np.float32)}
    atol = output_tolerance("none.onnx", "fp32", ref)
    assert atol == pytest.approx(1e-4)
    assert compare({"y": np.array([np.inf, 5000.0], np.float32)}, ref, atol)[0] is False
    big = {"y": np.array([np.nan, 1e6])}
    assert output_tolerance("none.onnx", "fp32", big) == pytest.approx(100.0)


def test_an_empty_inputs_file_lets_each_model_generate_its_own(tmp_path):
    # a host that could open none of the models sent an empty .npz: the device then failed every model with
    # "inputs lack 'x' (have none)" instead of generating inputs as it does without --inputs
    from edgekit.runner.edgekit_runner import _load_npz, bench_models

    np.savez(tmp_path / "empty.npz")
    assert _load_npz(tmp_path / "empty.npz") is None
    res = bench_models({"m": matmul_chain(tmp_path / "m.onnx", 2)}, _load_npz(tmp_path / "empty.npz"),
                       min_runs=2, min_seconds=0.0, warmup=0, op_runs=0)
    assert res["m"]["status"] == "ok", res["m"]


@pytest.mark.parametrize("spec", [("number", 10 ** 400, "iou_threshold"), ("vector", [10 ** 400], "mean")])
def test_an_integer_beyond_float_range_in_a_float_field_is_a_spec_error(spec):
    from edgekit.prepost import _check
    from edgekit.prepost.errors import PrepostError

    fn, value, field = spec
    with pytest.raises(PrepostError, match=f"^{field}: "):
        getattr(_check, fn)(value, field)


def _main_thread_frame(name: str, module: str):
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None:
        if frame.f_code.co_name == name and module in frame.f_code.co_filename:
            return frame
        frame = frame.f_back
    return None


def _until(cond, what: str, seconds: float = 20.0):
    end = time.monotonic() + seconds
    while not (found := cond()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)
    return found


def test_a_second_ctrl_c_keeps_the_results_of_devices_that_finished_after_it():
    # the second Ctrl-C cut the pool's shutdown short: both workers still flashed, and none was reported.
    # Then, on Python 3.11, the device whose thread the shutdown was joining when that Ctrl-C came was still
    # left out: an interrupted Thread.join marks the running thread as stopped, so the pool's exit did not
    # wait for it. Each step waits for the one before it: Ctrl-C until the main thread is joining a worker
    # (about 1 in 100 is lost before it gets there: sent again), one more Ctrl-C there, that worker
    # finishing last.
    from edgekit.flash import deploy, fleet

    handled, joined, go = [], [], threading.Event()

    def on_sigint(signum, frame):
        handled.append(signum)
        raise KeyboardInterrupt

    def ctrl_c():
        # at the main thread: a process-directed signal may land on another thread, and then the main
        # thread's blocking wait is not interrupted until something wakes it
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    def ctrl_c_twice():
        try:
            _until(lambda: _main_thread_frame("wait", "concurrent"), "the pool wait")
            for _ in range(5):
                ctrl_c()
                try:
                    join = _until(lambda: _main_thread_frame("join", "threading"), "the pool shutdown", 2.0)
                    break
                except AssertionError:
                    continue
            joined.append(join.f_locals["self"])
            n = len(handled)
            ctrl_c()
            _until(lambda: len(handled) > n, "the second Ctrl-C")
        finally:
            go.set()

    started = threading.Barrier(2, action=lambda: threading.Thread(target=ctrl_c_twice, daemon=True).start())

    def fn(d):
        started.wait()  # both under way before the first Ctrl-C (a queued one is rightly not started)
        assert go.wait(60)
        time.sleep(0.6 if threading.current_thread() in joined else 0.1)
        return deploy.DeviceResult(device=d, status="flashed")

    before = signal.signal(signal.SIGINT, on_sigint)
    try:
        with pytest.raises(deploy.FlashInterrupted) as e:
            fleet._reported(["a", "b"], 2, fn)
    finally:
        signal.signal(signal.SIGINT, before)
    assert joined and len(handled) >= 2
    assert sorted(r.device for r in e.value.results) == ["a", "b"]


def test_an_ignored_sigint_stays_ignored_in_a_deferred_block():
    # under nohup a SIGINT was recorded as an interrupt to report, and a later SIGTERM acted at once as a
    # "second" signal, inside the swap the block protects
    from edgekit.fsutil import signals_deferred

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with signals_deferred() as held:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            assert held == []
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_nameless_permission_error_is_not_blamed_on_the_output(tmp_path):
    # a PermissionError without a file (multiprocessing's SemLock on a read-only /dev/shm) read
    # "OUTDIR: Permission denied"; a nameless full disk is still the output's
    from edgekit.cli.common import _output_problem
    from edgekit.outdir import check_output

    check_output(tmp_path / "out", False)
    assert _output_problem(PermissionError(errno.EACCES, "Permission denied")) == ""
    assert _output_problem(OSError(errno.EIO, "Input/output error")) == ""
    assert _output_problem(OSError(errno.ENOSPC, "No space left on device")).endswith(
        "out: No space left on device")


def test_the_graph_is_parsed_once_per_file_version(tmp_path, monkeypatch):
    import onnx

    from edgekit import evaluate

    path = matmul_chain(tmp_path / "m.onnx", 2)
    calls = []
    real = onnx.load
    monkeypatch.setattr(onnx, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    for _ in range(4):
        assert not evaluate.batch_dependent(path) and not evaluate.quantized_graph(path)
    assert len(calls) == 1
    time.sleep(0.01)
    matmul_chain(path, 3)  # rewritten: read again
    evaluate.batch_dependent(path)
    assert len(calls) == 2
