"""Profiling on ssh:// and arm64-emulated targets: every model on its own inputs, odd file names,
NaN and non-tensor outputs, external data, an interrupted run; and the runner's cold start and batch."""
import json
import shutil
import sys
import threading
import time
import _thread

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.flash import SshOptions
from edgekit.profile import profile_models
from edgekit.runner import edgekit_runner as runner

from sshd import start_sshd

FAST = {"warmup": 1, "min_runs": 5, "min_seconds": 0.0, "max_seconds": 10.0}


def _save(path, nodes, inputs, outputs, inits=(), ml=False, external=False):
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("ai.onnx.ml", 1)] if ml else [])
    g = helper.make_graph(nodes, path.stem, inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=opsets)
    m.ir_version = 8
    if external:
        onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.stem + ".data", size_threshold=0)
    else:
        onnx.save(m, str(path))
    return path


def mlp(path, n=4, external=False):
    w = numpy_helper.from_array(np.linspace(-1, 1, n * 3, dtype=np.float32).reshape(n, 3), "w")
    return _save(path, [helper.make_node("MatMul", ["x", "w"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w], external=external)


def token_model(path):
    """int64 ids [N, 3]: float inputs cannot be cast to them without loss."""
    return _save(path, [helper.make_node("Cast", ["input_ids"], ["y"], to=TensorProto.FLOAT)],
                 [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", 3])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])


def sqrt_model(path):
    """sqrt of standard-normal inputs: NaN in about half the places, the same on both sides."""
    return _save(path, [helper.make_node("Sqrt", ["x"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])])


def zipmap_model(path):
    """A classifier as skl2onnx writes it: an int64 label and a ZipMap (a sequence of maps, not a tensor)."""
    nodes = [helper.make_node("LinearClassifier", ["x"], ["label", "probs"], domain="ai.onnx.ml",
                              coefficients=[0.5, -0.5, 1.0, -1.0, 0.25, 0.75], intercepts=[0.1, -0.1],
                              classlabels_ints=[0, 1], post_transform="LOGISTIC"),
             helper.make_node("ZipMap", ["probs"], ["output_probability"], domain="ai.onnx.ml",
                              classlabels_int64s=[0, 1])]
    seq = helper.make_sequence_type_proto(helper.make_map_type_proto(
        TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    return _save(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                 [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
                  helper.make_value_info("output_probability", seq)], ml=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_sshd(tmp_path_factory.mktemp("sshd-profile"))
    yield srv
    srv.stop()


@pytest.fixture
def device(server, tmp_path):
    dev = tmp_path / "device"
    dev.mkdir()
    target = tmp_path / "ssh-x86.toml"
    target.write_text("\n".join([
        'description = "this host over sshd"', 'arch = "x86_64"', f'address = "{server.address(str(dev))}"',
        "threads = 1", 'precisions = ["int8", "fp32"]', 'providers = ["CPUExecutionProvider"]']) + "\n")
    opts = SshOptions(identity=str(server.user_key), known_hosts=str(server.known_hosts),
                      remote_python=sys.executable)
    return target, opts, dev


def _ssh(models, device, **kw):
    target, opts, _ = device
    return profile_models({k: str(v) for k, v in models.items()}, str(target), ssh=opts, op_profile=False,
                          **{**FAST, **kw})


def _assert_checked(r):
    assert r["status"] == "ok", r
    assert r["arm_vs_host"]["ok"] is True, r["arm_vs_host"]


@pytest.mark.slow
def test_ssh_models_with_different_inputs_each_get_their_own(device, tmp_path):
    # every model used to be sent the first one's inputs: tok failed on mlp's float32 x
    res = _ssh({"mlp": mlp(tmp_path / "mlp.onnx"), "tok": token_model(tmp_path / "tok.onnx"),
                "wide": mlp(tmp_path / "wide.onnx", n=6)}, device)
    for r in res.values():
        _assert_checked(r)


@pytest.mark.slow
def test_ssh_given_inputs_are_fitted_per_model_and_a_misfit_fails_alone(device, tmp_path):
    x = {"x": np.ones((1, 4), np.float32)}
    res = _ssh({"tok": token_model(tmp_path / "tok.onnx"), "mlp": mlp(tmp_path / "mlp.onnx")}, device, inputs=[x])
    _assert_checked(res["mlp"])
    assert res["tok"]["status"] == "failed" and "input_ids" in res["tok"]["reason"], res["tok"]


def test_runner_reads_per_model_and_shared_inputs(tmp_path):
    np.savez(tmp_path / "shared.npz", x=np.ones((1, 4), np.float32))
    np.savez(tmp_path / "per.npz", **{"a::x": np.ones((1, 4), np.float32), "b::input_ids": np.ones((1, 3), np.int64)})
    assert runner._load_npz(tmp_path / "shared.npz")[0]["x"].shape == (1, 4)
    per = runner._load_npz(tmp_path / "per.npz")
    assert set(per) == {"a", "b"} and per["b"][0]["input_ids"].dtype == np.int64


@pytest.mark.slow
def test_ssh_file_name_with_equals_sign(device, tmp_path):
    # "v1=best" went to the runner as --model v1=best=PATH and came back as KeyError 'v1=best'
    a = mlp(tmp_path / "mlp.onnx")
    b = shutil.copy(a, tmp_path / "v1=best.onnx")
    res = _ssh({"v1=best": b, "a::b": a}, device)
    assert set(res) == {"v1=best", "a::b"}
    for r in res.values():
        _assert_checked(r)


def test_compare_counts_nan_in_the_same_places_as_equal_and_stays_json():
    nan, inf = np.float32("nan"), np.float32("inf")
    ok, info = runner.compare({"y": np.array([nan, 1, inf], np.float32)},
                              {"y": np.array([nan, 1, inf], np.float32)}, 1e-4)
    assert ok and info["max_abs_diff"] == {"y": 0.0}
    ok, info = runner.compare({"y": np.array([nan, 1], np.float32)}, {"y": np.array([2, 1], np.float32)}, 1e-4)
    assert not ok and info["nonfinite_mismatch"] == {"y": 1} and "NaN" in info["reason"]
    json.dumps(info, allow_nan=False)


@pytest.mark.slow
def test_ssh_nan_outputs_match_and_the_result_is_strict_json(device, tmp_path):
    r = _ssh({"sqrt": sqrt_model(tmp_path / "sqrt.onnx")}, device)["sqrt"]
    _assert_checked(r)
    json.dumps(r["arm_vs_host"], allow_nan=False)


@pytest.mark.slow
def test_ssh_non_tensor_output_is_skipped_with_a_reason_and_the_tensors_compared(device, tmp_path):
    # the ZipMap output was pickled into outputs.npz, which the host could not load: no output compared at all
    res = _ssh({"zip": zipmap_model(tmp_path / "zip.onnx"), "mlp": mlp(tmp_path / "mlp.onnx")}, device)
    _assert_checked(res["mlp"])
    av = res["zip"]["arm_vs_host"]
    assert av["ok"] is True and "label" in av["max_abs_diff"], av
    assert "output_probability" in av["not_compared"], av


@pytest.mark.slow
def test_ssh_model_with_external_data(device, tmp_path):
    (tmp_path / "ext").mkdir()
    m = mlp(tmp_path / "ext" / "big.onnx", external=True)
    assert (tmp_path / "ext" / "big.data").is_file()
    res = _ssh({"big": m, "other": mlp(tmp_path / "other.onnx")}, device)
    for r in res.values():
        _assert_checked(r)


def _runner_pids(dev):
    """Runner processes timing in this test's device folder (sshd's children or, once sshd let go, init's)."""
    import os

    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"edgekit_runner.py" in cmd and str(dev).encode() in cmd:
            out.append(int(pid))
    return out


@pytest.mark.slow
def test_interrupted_ssh_profile_stops_the_runner_on_the_device(device, tmp_path):
    m, dev = mlp(tmp_path / "m.onnx"), device[2]
    seen = []

    def interrupt():  # Ctrl-C once the runner is timing on the device
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not seen:
            seen.extend(_runner_pids(dev))
            time.sleep(0.1)
        time.sleep(3.0)  # past its start-up: a runner still importing dies anyway when its stage is removed
        _thread.interrupt_main()

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        _ssh({"m": m}, device, min_seconds=60.0, max_seconds=60.0)
    assert seen, "the runner never started"
    deadline = time.monotonic() + 10
    while _runner_pids(dev) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _runner_pids(dev), "the runner kept timing on the device after Ctrl-C"


@pytest.mark.slow
def test_emulated_arm_each_model_its_inputs_odd_names_and_non_tensor_outputs(tmp_path):
    """arm64-emulated sent the first model's inputs to all, split 'v1=best' at '=', and crashed the whole
    command on ZipMap's pickled output ('Object arrays cannot be loaded when allow_pickle=False')."""
    from edgekit import emulation

    built_here = not emulation.status()["ready"]
    emulation.setup()
    try:
        a = mlp(tmp_path / "mlp.onnx")
        models = {"mlp": a, "v1=best": shutil.copy(a, tmp_path / "v1=best.onnx"),
                  "tok": token_model(tmp_path / "tok.onnx"), "zip": zipmap_model(tmp_path / "zip.onnx"),
                  "sqrt": sqrt_model(tmp_path / "sqrt.onnx")}
        res = profile_models({k: str(v) for k, v in models.items()}, "arm64-emulated", op_profile=False, **FAST)
        assert set(res) == set(models)
        for r in res.values():
            _assert_checked(r)
            json.dumps(r["arm_vs_host"], allow_nan=False)
        assert "output_probability" in res["zip"]["arm_vs_host"]["not_compared"]
    finally:
        import os

        if built_here and not os.environ.get("EDGEKIT_CACHE"):
            shutil.rmtree(emulation.rootfs_path(), ignore_errors=True)


def big_mlp(path):
    """16 -> 512 -> 512 -> 4 with ReLUs (1 MB): big enough for onnxruntime to use its thread pool."""
    rng = np.random.default_rng(0)
    dims = [16, 512, 512, 4]
    inits, nodes, x = [], [], "x"
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        inits.append(numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"]))
        x = f"h{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes[-1].output[0] = "y"
    return _save(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)


def test_cold_start_is_taken_with_no_other_session_alive(tmp_path, monkeypatch):
    """The sessions kept for timing spin-wait after each run: a model opened after them was charged
    for their spinning (three copies of one model: 2.6, 31.8, 53.3 ms)."""
    import weakref

    m = big_mlp(tmp_path / "m.onnx")
    live, calls = weakref.WeakSet(), []
    real_open, real_cold = runner.open_session, runner.cold_start

    def tracked_open(*a, **k):
        s = real_open(*a, **k)
        live.add(s)
        return s

    def tracked_cold(*a, **k):
        calls.append(len(live))
        ms = real_cold(*a, **k)
        calls[-1] = (calls[-1], ms)
        return ms

    monkeypatch.setattr(runner, "open_session", tracked_open)
    monkeypatch.setattr(runner, "cold_start", tracked_cold)
    res = runner.bench_models({"a": m, "b": m, "c": m}, warmup=1, min_runs=3, min_seconds=0.0, op_runs=0)
    assert [n for n, _ in calls] == [0] * 15, calls
    # rounds alternate the order (a b c, c b a, a b c, ...); each figure is its model's median
    ms = [t for _, t in calls]
    mine = {"a": (0, 5, 6, 11, 12), "b": (1, 4, 7, 10, 13), "c": (2, 3, 8, 9, 14)}
    for label, idx in mine.items():
        assert res[label]["cold_start_ms"] == float(np.median([ms[i] for i in idx]))
        assert res[label]["cold_start_runs"] == 5


def test_a_stall_in_one_cold_start_does_not_become_the_figure(tmp_path, monkeypatch):
    """One session per model left a single stall of a busy host in whichever model it hit (three copies
    of one model: 12-28 ms for the first, about 2 ms for the others). A stall in one of the three
    sessions is now outvoted (two of five); a cold start too long to repeat is timed once and says so."""
    m = big_mlp(tmp_path / "m.onnx")
    real_cold, n = runner.cold_start, []

    def stalled_first(*a, **k):
        n.append(1)
        return real_cold(*a, **k) + (300.0 if len(n) in (1, 2) else 0.0)  # two sessions hit a stall

    monkeypatch.setattr(runner, "cold_start", stalled_first)
    res = runner.bench_models({"a": m, "b": m}, warmup=1, min_runs=3, min_seconds=0.0, op_runs=0)
    assert res["a"]["cold_start_ms"] < 100.0 and res["a"]["cold_start_runs"] == 5, res["a"]
    assert res["b"]["cold_start_ms"] < 100.0, res["b"]
    n.clear()
    monkeypatch.setattr(runner, "COLD_BUDGET_MS", 0.0)
    res = runner.bench_models({"a": m, "b": m}, warmup=1, min_runs=3, min_seconds=0.0, op_runs=0)
    assert [r["cold_start_runs"] for r in res.values()] == [1, 1]


def test_three_copies_of_one_model_read_alike_cold(tmp_path):
    # each position's median over repeats (a loaded host adds 10-20 ms to any one cold start at random);
    # the bug was by position: the first 2.6 ms, the later ones 5-20x that, every time
    m = big_mlp(tmp_path / "m.onnx")
    runs = []
    for _ in range(7):
        res = runner.bench_models({"a": m, "b": m, "c": m}, warmup=1, min_runs=3, min_seconds=0.0, op_runs=0)
        runs.append([r["cold_start_ms"] for r in res.values()])
    med = np.median(np.asarray(runs), axis=0)
    assert med.max() / med.min() < 3.0, runs


def vector_model(path):
    """x [16] -> y [3]: a module called on one unbatched feature vector."""
    w = numpy_helper.from_array(np.ones((16, 3), np.float32), "w")
    return _save(path, [helper.make_node("MatMul", ["x", "w"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [w])


def chw_model(path):
    """x [3, 8, 8] -> y [8, 8, 3]: an unbatched image; no output keeps the leading 3."""
    return _save(path, [helper.make_node("Transpose", ["x"], ["y"], perm=[1, 2, 0])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 8, 3])])


def test_a_model_without_a_batch_axis_is_one_sample_per_run(tmp_path):
    # vec16 read as batch 16 (inf/s 16x too high) and --batch 1 was refused; chw as batch 3
    from edgekit.profiling import run_profile

    vec, chw = vector_model(tmp_path / "vec.onnx"), chw_model(tmp_path / "chw.onnx")
    res = profile_models({"vec": str(vec), "chw": str(chw)}, "x86-laptop", op_profile=False, **FAST)
    for label in ("vec", "chw"):
        r = res[label]
        assert r["status"] == "ok" and r["batch"] == 1, r
        assert r["throughput"] == pytest.approx(1000.0 / r["mean_ms"]), r
    assert "one sample per run" in res["chw"]["batch_note"]
    ins = runner.open_session(str(vec)).get_inputs()
    assert runner.run_batch(ins, 1) == 1
    with pytest.raises(runner.BatchConflict, match="no batch axis"):
        runner.run_batch(ins, 4)
    rep = run_profile([str(vec)], ["x86-laptop"], batches=[1], op_profile=False, **FAST)  # was a usage error
    assert rep["runs"][0]["results"]["vec"]["batch"] == 1


def test_timed_runs_never_follow_another_models_run():
    """A run right after another model's pays for the caches that model evicted: simulated here as 20 ms
    on 'small' whenever 'big' ran just before. Run by run, about half of small's samples paid it."""
    last = []

    def small(i):
        if last and last[-1] == "big":
            time.sleep(0.02)
        last.append("small")

    def big(i):
        last.append("big")

    times = runner.timed_loop({"big": big, "small": small}, warmup=1, min_runs=40, min_seconds=0.0)
    assert len(times["small"]) >= 40 and len(times["big"]) >= 40
    slow = sum(t >= 15.0 for t in times["small"])
    assert slow <= len(times["small"]) // 10, times["small"]


def test_timed_loop_runs_exactly_min_runs_when_time_is_no_object():
    calls = []
    times = runner.timed_loop({"a": calls.append, "b": calls.append}, warmup=0, min_runs=7, min_seconds=0.0)
    assert [len(t) for t in times.values()] == [7, 7]


def test_a_time_limit_inside_a_block_still_gives_every_model_a_timed_run():
    # the block loop returned on max_seconds at once: with a limit shorter than one block the models after
    # the first had no timed run, and summarize raised "no timed runs" for them
    import time

    slow = lambda i: time.sleep(0.01)  # noqa: E731
    times = runner.timed_loop({"a": slow, "b": slow, "c": slow}, warmup=0, min_runs=30, min_seconds=0.0,
                              max_seconds=0.005)
    assert all(len(t) >= 1 for t in times.values()), {k: len(t) for k, t in times.items()}
    assert all(runner.summarize(t, 1)["runs"] == len(t) for t in times.values())


def wide_model(path, n_in=2000, n_out=5000):
    """One 2000 x 5000 MatMul: 40 MB of weights, more than a laptop's last-level cache."""
    w = numpy_helper.from_array(np.full((n_in, n_out), 0.001, np.float32), "w")
    return _save(path, [helper.make_node("MatMul", ["x", "w"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])], [w])


@pytest.mark.slow
def test_small_model_next_to_a_big_one_reads_about_its_own_latency(tmp_path):
    # mlp next to a 40 MB model read 4-10x its latency alone (sweep15: 0.095 vs 0.021 ms)
    small, wide = mlp(tmp_path / "small.onnx", n=16), wide_model(tmp_path / "wide.onnx")
    kw = dict(warmup=2, min_runs=20, min_seconds=0.3, threads=1, op_runs=0)
    ratios = []
    for _ in range(3):
        alone = runner.bench_models({"small": small}, **kw)["small"]["p50_ms"]
        mixed = runner.bench_models({"wide": wide, "small": small}, **kw)["small"]["p50_ms"]
        ratios.append(mixed / alone)
    assert min(ratios) < 2.0, ratios


def test_a_stop_before_the_runner_wrote_its_pid_file_still_stops_it(tmp_path):
    """Ctrl-C in the runner's first moment (still importing): the kill found no pid file, and the runner then
    timed on for --max-seconds. The kill now leaves a stop mark the runner reads after writing its pid file."""
    import subprocess

    from edgekit.profile_remote import _KILL
    from edgekit.runner import RUNNER_PATH

    pid_file = tmp_path / "runner.pid"
    subprocess.run([sys.executable, "-c", _KILL, str(pid_file)], check=True, timeout=30)  # no runner yet
    assert (tmp_path / "runner.pid.stop").exists()
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, str(RUNNER_PATH), "bench", "--model", str(mlp(tmp_path / "m.onnx")),
                        "--min-seconds", "30", "--max-seconds", "30", "--pid-file", str(pid_file)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 130 and json.loads(p.stdout.splitlines()[-1])["status"] == "stopped", p
    assert time.monotonic() - t0 < 25  # it did not time for its 30 s



def test_a_selftest_stopped_before_it_started_does_not_run(tmp_path):
    """The self-test takes the same pid file and stop mark: a flash whose self-test timed out over SSH left the
    runner going on the device (sweep22 F19)."""
    import subprocess

    from edgekit.profile_remote import _KILL
    from edgekit.runner import RUNNER_PATH

    pid_file = tmp_path / "selftest.pid"
    subprocess.run([sys.executable, "-c", _KILL, str(pid_file)], check=True, timeout=30)
    p = subprocess.run([sys.executable, str(RUNNER_PATH), "selftest", "--bundle", str(tmp_path / "no-bundle"),
                        "--pid-file", str(pid_file)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 130 and json.loads(p.stdout.splitlines()[-1])["status"] == "stopped", p
    assert pid_file.read_text().strip().isdigit()
