"""Every onnxruntime session edgekit opens (runner, evaluation, quantization timing) uses one config."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit import onnxutil
from edgekit.quant.timing import _session
from edgekit.runner.edgekit_runner import SESSION_CONFIG, open_session

# These watch onnxruntime's worker threads: how a run's chunks split between the caller and a worker, and the
# CPU a worker spins for after a run. Another xdist worker on the same 2 cores starves one of them (a CI run
# here gave the caller every chunk 20 runs in a row; a full run gave a spinning worker 3.6 ms against > 10), so
# the file runs with the serial tests, on an otherwise idle host
pytestmark = pytest.mark.serial

N = 1 << 20


def scale_model(path, factor):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [N])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [N])
    c = numpy_helper.from_array(np.array([factor], np.float32), "c")
    g = helper.make_graph([helper.make_node("Mul", ["x", "c"], ["y"])], "g", [x], [y], [c])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_all_session_constructors_share_the_config(tmp_path):
    p = scale_model(tmp_path / "m.onnx", 2.0)
    assert SESSION_CONFIG["session.set_denormal_as_zero"] == "1"
    for s in (open_session(p, threads=2), onnxutil.session(p, threads=2), _session(p, 2, spinning=False)):
        opts = s.get_session_options()
        for k, v in SESSION_CONFIG.items():
            assert opts.get_session_config_entry(k) == v


def test_denormals_are_flushed_in_the_worker_threads(tmp_path):
    import onnxruntime as ort

    # 1e-10 * 1e-30 = 1e-40 is a denormal float32
    p = scale_model(tmp_path / "den.onnx", 1e-30)
    x = np.full(N, 1e-10, np.float32)
    plain = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert (plain != 0).all()
    sess = open_session(p, threads=2)
    # onnxruntime sets the flag in its pool threads, not in the calling thread: the worker's share of the
    # output is 0, the caller's is not. How the chunks split between them is the scheduler's (one run on
    # a fresh clone gave the worker 1/8 against a 0.2 floor), so runs repeat until one shows both kinds
    shares = []
    for _ in range(20):
        flushed = sess.run(None, {"x": x})[0]
        assert np.all((flushed == 0) | (flushed == plain))
        shares.append(float((flushed == 0).mean()))
        if 0.0 < shares[-1] < 1.0:
            break
    assert 0.0 < shares[-1] < 1.0, shares


def test_opening_a_session_leaves_the_callers_arithmetic_alone(tmp_path):
    p = scale_model(tmp_path / "m.onnx", 2.0)
    x = np.ones(N, np.float32)
    for s in (open_session(p, threads=2), onnxutil.session(p, threads=2), _session(p, 2, spinning=False)):
        assert s.run(None, {"x": x})[0][0] == 2.0
    # a denormal result in the calling thread is still a denormal, not flushed to zero
    assert float(np.float32(1e-10) * np.float32(1e-30)) > 0.0


def _idle_cpu_ms(sess, feeds) -> float:
    """CPU time of this process (all threads) in the 100 ms after a run: what an idle session's pool burns."""
    import time

    sess.run(None, feeds)
    out = []
    for _ in range(3):
        sess.run(None, feeds)
        c = time.process_time()
        time.sleep(0.1)
        out.append((time.process_time() - c) * 1e3)
    return min(out)


def test_an_idle_session_stops_spinning_so_models_timed_side_by_side_do_not_slow_each_other(tmp_path):
    import onnxruntime as ort

    p = scale_model(tmp_path / "m.onnx", 2.0)
    feeds = {"x": np.ones(N, np.float32)}
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    # onnxruntime's own default: the worker spins on after Run() returns (tens of ms of CPU), which is
    # what slowed an interleaved model 1.4-2.2x (benchmarks/profile/spinning.py)
    plain = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
    assert _idle_cpu_ms(plain, feeds) > 10.0
    for s in (open_session(p, threads=2), onnxutil.session(p, threads=2)):
        assert _idle_cpu_ms(s, feeds) < 5.0


def test_models_timed_alone_or_settled_keep_spinning_as_a_deployed_loop_does_and_the_gate_s_stop(tmp_path):
    from edgekit.runner.edgekit_runner import ALONE_CONFIG, bench_models

    a, b = scale_model(tmp_path / "a.onnx", 2.0), scale_model(tmp_path / "b.onnx", 3.0)
    kw = dict(threads=2, warmup=1, min_runs=3, min_seconds=0.0, op_runs=0)
    alone = bench_models({"a": str(a)}, **kw)["a"]
    both = bench_models({"a": str(a), "b": str(b)}, **kw)
    stopped = bench_models({"a": str(a), "b": str(b)}, settle=False, **kw)
    assert alone["status"] == "ok" and alone["session_config"]["session.force_spinning_stop"] == "0"
    assert alone["session_config"]["session.set_denormal_as_zero"] == "1"
    assert all(r["status"] == "ok" and r["runs"] >= 3 for r in both.values())
    assert all(r["session_config"]["session.force_spinning_stop"] == "0" and r["settle"] for r in both.values())
    assert all(r["session_config"]["session.set_denormal_as_zero"] == "1" for r in both.values())
    assert all(r["session_config"]["session.force_spinning_stop"] == "1" and r["settle"] is False
               for r in stopped.values())
    # the entry alone has its effect: the idle worker spins on after a run, as onnxruntime's default does
    feeds = {"x": np.ones(N, np.float32)}
    assert _idle_cpu_ms(open_session(a, threads=2, config=ALONE_CONFIG), feeds) > 10.0


def test_a_settled_switch_waits_until_the_last_model_s_threads_stop_spinning(tmp_path):
    import time

    from edgekit.runner.edgekit_runner import ALONE_CONFIG, SETTLE_MAX_S, wait_idle

    s = open_session(scale_model(tmp_path / "a.onnx", 2.0), threads=2, config=ALONE_CONFIG)
    feeds = {"x": np.ones(N, np.float32)}
    # on a host busy with other processes the spinning worker may get no CPU in the first window, which
    # then reads as quiet (5 ms once in a CI run with a second job on its 2 cores): a few tries, not one
    for _ in range(5):
        for _ in range(3):
            s.run(None, feeds)
        waited = wait_idle()
        if waited > 0.01:
            break
    c = time.process_time()
    time.sleep(0.05)
    after = (time.process_time() - c) * 1e3
    # the worker spun on after the run (tens of ms of CPU, test above): the wait saw it, and ended once it stopped
    assert 0.01 < waited < SETTLE_MAX_S, waited
    assert after < 5.0, after
    # on a quiet process it returns after one window
    assert wait_idle() < 0.01 + SETTLE_MAX_S / 10
