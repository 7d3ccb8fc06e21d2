"""Profiler: statistics, the ONNX Runtime profile parser, interleaved ratios, honest unavailability."""
import json

import numpy as np
import onnxruntime as ort
import pytest

from edgekit.opprofile import load_profile, parse_ort_profile
from edgekit.profile import profile_models, ratio
from edgekit.runner import edgekit_runner as runner

from profile_models import embedding_bag, matmul_chain, small_cnn

FAST = {"warmup": 2, "min_runs": 15, "min_seconds": 0.2, "max_seconds": 10.0}
NUMBER_KEYS = {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "throughput", "runs", "samples_ms",
               "cold_start_ms", "peak_rss_mb"}


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    d = tmp_path_factory.mktemp("chains")
    return {"x1": matmul_chain(d / "x1.onnx", 3), "x2": matmul_chain(d / "x2.onnx", 6)}


def test_summarize_matches_numpy():
    s = np.random.default_rng(0).gamma(2.0, 1.5, size=501)
    st = runner.summarize(s, batch=4)
    assert st["p50_ms"] == pytest.approx(np.median(s))
    assert st["p99_ms"] == pytest.approx(np.percentile(s, 99))
    assert st["std_ms"] == pytest.approx(np.std(s, ddof=1))
    assert st["throughput"] == pytest.approx(4 * 1000 / s.mean())
    assert st["runs"] == 501 and st["min_ms"] == s.min()
    with pytest.raises(ValueError):
        runner.summarize([])


def test_statistics_on_real_runs_agree_with_an_independent_clock(chains):
    """The reported p50 is what a plain timing loop around session.run measures (within a loose band)."""
    import time

    res = profile_models({"x2": chains["x2"]}, "x86-laptop", batch=32, threads=1, **FAST)["x2"]
    assert res["status"] == "ok" and res["provider"] == "CPUExecutionProvider"
    s = np.asarray(res["samples_ms"])
    assert res["runs"] == len(s) >= FAST["min_runs"]
    assert res["p50_ms"] == pytest.approx(np.percentile(s, 50), rel=1e-3)
    assert res["p90_ms"] == pytest.approx(np.percentile(s, 90), rel=1e-3)
    assert res["min_ms"] <= res["p50_ms"] <= res["p90_ms"] <= res["p99_ms"]
    assert res["throughput"] == pytest.approx(32 * 1000 / res["mean_ms"], rel=1e-6)
    assert res["cold_start_ms"] > res["min_ms"] and res["peak_rss_mb"] > 10
    assert (res["threads"], res["batch"], res["emulated"], res["target"]) == (1, 32, False, "x86-laptop")
    assert res["precision"] == "fp32" and res["host_cpu"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(chains["x2"], so, providers=["CPUExecutionProvider"])
    x = {"x": np.random.default_rng(0).standard_normal((32, 256)).astype(np.float32)}
    for _ in range(3):
        sess.run(None, x)
    own = []
    for _ in range(30):
        t0 = time.perf_counter()
        sess.run(None, x)
        own.append((time.perf_counter() - t0) * 1e3)
    assert 0.33 < res["p50_ms"] / np.median(own) < 3.0, (res["p50_ms"], np.median(own))


def test_interleaved_ratio_tracks_the_work(chains):
    """x2 does twice the multiply-adds of x1: the interleaved p50 ratio must say so on a busy machine."""
    res = profile_models(chains, "x86-laptop", batch=64, threads=1, warmup=3, min_runs=40, min_seconds=0.5)
    assert {r["status"] for r in res.values()} == {"ok"}
    assert res["x1"]["runs"] == res["x2"]["runs"]  # round-robin: same number of turns
    r = ratio(res["x2"], res["x1"])
    assert 1.4 < r < 3.0, r
    # the op breakdown sees the same thing: MatMul time grows (per-kernel times of a few microseconds are
    # noisier than the whole-run p50 on a shared host: 4.5x was measured once, so only a loose upper bound)
    mm = res["x2"]["op_breakdown"]["MatMul"] / res["x1"]["op_breakdown"]["MatMul"]
    assert 1.2 < mm < 8.0, mm
    assert res["x1"]["providers_by_node"] == {"CPUExecutionProvider": 4} and res["x1"]["fallback_nodes"] == 0
    assert ratio(res["x2"], {"status": "unavailable", "reason": "x"}) is None


def test_real_inputs_and_batch(tmp_path):
    from profile_models import digits_batches

    cnn = small_cnn(tmp_path / "cnn.onnx")
    x = digits_batches(8)
    res = profile_models({"cnn": cnn}, "x86-laptop", inputs=[{"x": x[i:i + 1]} for i in range(8)], batch=4,
                         **FAST)["cnn"]
    assert res["status"] == "ok" and res["batch"] == 4
    assert set(res["op_breakdown"]) >= {"Conv", "GlobalAveragePool"}  # Relu fuses into Conv
    bad = profile_models({"cnn": cnn}, "x86-laptop", inputs=[{"x": x[0, 0]}], **FAST)["cnn"]
    assert bad["status"] == "failed" and "rank" in bad["reason"] and not NUMBER_KEYS & set(bad)


def test_generated_inputs_for_sequence_models(tmp_path):
    from onnx import TensorProto, helper

    from profile_models import _save

    emb = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
             helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["mf", "ax"], ["m3"]),
             helper.make_node("Mul", ["e", "m3"], ["y"])]
    p = _save(nodes, {"emb": emb, "ax": np.array([2], np.int64)},
              [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
               helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])],
              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 8])], tmp_path / "t.onnx")
    feeds = runner.make_feeds(ort.InferenceSession(p, providers=["CPUExecutionProvider"]), batch=2)
    assert feeds["input_ids"].shape == (2, 128) and feeds["input_ids"].max() < 100
    assert (feeds["attention_mask"] == 1).all()
    assert profile_models({"t": p}, "x86-laptop", **FAST)["t"]["status"] == "ok"


def test_parser_on_a_real_onnxruntime_profile(tmp_path, chains):
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "prof")
    sess = ort.InferenceSession(chains["x1"], so, providers=["CPUExecutionProvider"])
    x = {"x": np.ones((8, 256), np.float32)}
    for _ in range(6):
        sess.run(None, x)
    path = sess.end_profiling()
    p = load_profile(path)
    assert p["runs"] == 5  # the first run is left out
    assert {n["name"] for n in p["nodes"]} == {"mm0", "mm1", "mm2", "relu"}
    assert set(p["op_breakdown"]) == {"MatMul", "Relu"} and p["op_breakdown"]["MatMul"] > 0
    assert p["providers_by_node"] == {"CPUExecutionProvider": 4}
    events = json.loads(open(path).read())
    assert sum(1 for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")) == 24
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    from edgekit.errors import InputError

    with pytest.raises(InputError, match="bad.json"):
        load_profile(bad)


def test_parser_takes_the_median_per_node_and_skips_the_first_run():
    ev = []
    for r, durs in enumerate([(900, 50), (10, 50), (12, 50), (5000, 50), (11, 50)]):  # run 3 preempted
        ts = r * 10000
        ev.append({"cat": "Session", "name": "model_run", "ts": ts, "dur": 6000})
        for name, op, d in (("a", "Conv", durs[0]), ("b", "Relu", durs[1])):
            ev.append({"cat": "Node", "name": f"{name}_kernel_time", "ts": ts + 1, "dur": d,
                       "args": {"op_name": op, "provider": "CUDAExecutionProvider" if name == "a" else
                                "CPUExecutionProvider"}})
    p = parse_ort_profile(ev)
    assert p["runs"] == 4
    assert p["op_breakdown"]["Conv"] == pytest.approx(0.0115)  # median of 10, 12, 5000, 11 us
    assert p["providers_by_node"] == {"CUDAExecutionProvider": 1, "CPUExecutionProvider": 1}


def test_gpu_target_without_a_gpu_is_unavailable_not_a_number(chains):
    res = profile_models({"x1": chains["x1"]}, "nvidia-gpu", **FAST)["x1"]
    if "CUDAExecutionProvider" in ort.get_available_providers() and res["status"] == "ok":
        assert res["provider"] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")  # a GPU machine
        return
    assert res["status"] == "unavailable" and not NUMBER_KEYS & set(res)
    assert "onnxruntime-gpu" in res["reason"] or "CUDA" in res["reason"]


def test_wrong_architecture_and_ssh_targets_are_unavailable(chains, tmp_path):
    res = profile_models({"x1": chains["x1"]}, "raspberry-pi-4", **FAST)["x1"]
    assert res["status"] == "unavailable" and "ssh" in res["reason"].lower()
    import platform

    from edgekit.errors import ConfigError

    other = "x86_64" if platform.machine().lower() in ("aarch64", "arm64") else "aarch64"
    p = tmp_path / "other-local.toml"
    p.write_text(f'arch = "{other}"\naddress = "local"\nproviders = ["CPUExecutionProvider"]\n')
    # refused as the file is read: a local target is this machine (it was profiled as 'unavailable')
    with pytest.raises(ConfigError, match=rf"other-local\.toml: arch: {other}, but a local target runs on this machine"):
        profile_models({"x1": chains["x1"]}, str(p), **FAST)


def test_a_broken_model_fails_alone(chains, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    res = profile_models({"good": chains["x1"], "bad": str(bad)}, "x86-laptop", **FAST)
    assert res["good"]["status"] == "ok"
    assert res["bad"]["status"] == "failed" and not NUMBER_KEYS & set(res["bad"])


def test_prepost_end_to_end_timing(chains):
    class Pipe:  # stands in for an edgekit.prepost pipeline: real work on both sides
        def preprocess(self, raw):
            return {"x": (raw.astype(np.float32) / 255.0).reshape(1, 256)}

        def postprocess(self, outs):
            return np.argsort(outs[0], axis=1)[:, -5:]

    raw = np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8)
    res = profile_models({"x1": chains["x1"]}, "x86-laptop", prepost={"pipeline": Pipe(), "raw": [raw]}, **FAST)
    pp = res["x1"]["prepost"]
    assert pp["status"] == "ok"
    assert pp["e2e"]["runs"] == pp["pre"]["runs"] == pp["model"]["runs"]
    assert pp["e2e"]["p50_ms"] >= pp["model"]["p50_ms"] > 0 and pp["pre"]["p50_ms"] > 0


def test_post_only_prepost_is_timed_on_model_inputs(chains):
    # no pre steps: the "raw" input is the model's own; it used to be None, fed as {'x': None}
    from edgekit.prepost import Pipeline
    from edgekit.profile import profile_prepost

    pipe = Pipeline.from_spec({"post": [{"op": "softmax_topk", "k": 2}]}, backend="numpy")  # no JIT wait
    assert pipe.example_input() is None
    feeds = [{"x": np.random.default_rng(i).standard_normal((1, 256)).astype(np.float32)} for i in range(3)]
    res = profile_models({"x1": chains["x1"]}, "x86-laptop", inputs=feeds, prepost=pipe, **FAST)
    pp = res["x1"]["prepost"]
    assert pp["status"] == "ok" and pp["raw_input"] == "model inputs", pp
    assert pp["post"]["p50_ms"] > 0 and pp["e2e"]["p50_ms"] >= pp["model"]["p50_ms"] > 0
    pp = profile_prepost(chains["x1"], pipe, **FAST)  # no sample at all: a generated model input
    assert pp["status"] == "ok" and pp["raw_input"] == "generated model input", pp


def test_a_none_input_is_named_as_none_not_as_missing(chains):
    sess = ort.InferenceSession(chains["x1"], providers=["CPUExecutionProvider"])
    with pytest.raises(ValueError) as e:
        runner.fit_feeds(sess, {"x": None})
    assert str(e.value) == "input 'x' is None, not an array"
    with pytest.raises(ValueError) as e:
        runner.fit_feeds(sess, {"a": np.ones((1, 256)), "b": np.ones((1, 256))})
    assert str(e.value) == "inputs lack 'x' (have a, b)"


def test_optional_provider_missing_is_reported_required_one_is_not_replaced(chains, tmp_path):
    p = tmp_path / "opt.toml"
    p.write_text('arch = "x86_64"\naddress = "local"\n[[providers]]\nname = "XnnpackExecutionProvider"\n'
                 'required = false\n[[providers]]\nname = "CPUExecutionProvider"\n')
    if "XnnpackExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has XNNPACK")
    r = profile_models({"x1": chains["x1"]}, str(p), **FAST)["x1"]
    assert r["status"] == "ok" and r["provider"] == "CPUExecutionProvider"
    assert r["providers_missing"] == ["XnnpackExecutionProvider"]
    p.write_text(p.read_text().replace("required = false\n", ""))
    r = profile_models({"x1": chains["x1"]}, str(p), **FAST)["x1"]
    assert r["status"] == "unavailable" and "XnnpackExecutionProvider" in r["reason"]


def test_fixed_batch_models_report_the_batch_that_ran(tmp_path):
    """A model exported at batch 4 runs batch 4: batch and throughput must say 4, and a batch it cannot
    run is unavailable, never timed at one batch and reported (and divided into inf/s) as another."""
    fixed4 = matmul_chain(tmp_path / "f4.onnx", 2, k=64, batch=4)
    fixed1 = matmul_chain(tmp_path / "f1.onnx", 2, k=64, batch=1)
    r = profile_models({"f4": fixed4}, "x86-laptop", **FAST)["f4"]
    assert r["status"] == "ok" and r["batch"] == 4
    assert r["throughput"] == pytest.approx(4 * 1000 / r["mean_ms"], rel=1e-6)
    for path, b in ((fixed4, 2), (fixed1, 3)):
        r = profile_models({"m": path}, "x86-laptop", batch=b, **FAST)["m"]
        assert r["status"] == "unavailable" and not NUMBER_KEYS & set(r)
        assert "fixed batch" in r["reason"] and f"cannot run batch {b}" in r["reason"]
    sess = ort.InferenceSession(fixed4, providers=["CPUExecutionProvider"])
    assert runner.make_feeds(sess)["x"].shape == (4, 64)
    assert runner.fit_feeds(sess, {"x": np.ones((1, 64), np.float32)})["x"].shape == (4, 64)
    with pytest.raises(runner.BatchConflict, match="fixed batch of 4"):
        runner.make_feeds(sess, batch=2)


def test_generated_inputs_never_guess_a_spatial_size(tmp_path):
    sess = ort.InferenceSession(small_cnn(tmp_path / "hw.onnx", hw=("height", "width")),
                                providers=["CPUExecutionProvider"])
    with pytest.raises(runner.InputsNeeded, match=r"input 'x' \[batch, 1, height, width\].* height, width .*--inputs"):
        runner.make_feeds(sess)


def test_generated_ids_fit_a_small_embedding_table(tmp_path):
    feeds = runner.make_feeds(ort.InferenceSession(embedding_bag(tmp_path / "e.onnx", rows=50),
                                                   providers=["CPUExecutionProvider"]))
    assert feeds["ids"].shape == (1, 128) and feeds["ids"].max() < 50
    r = profile_models({"e": str(tmp_path / "e.onnx")}, "x86-laptop", **FAST)["e"]
    assert r["status"] == "ok", r


def test_real_inputs_refuse_a_lossy_cast(tmp_path):
    from edgekit.calibration import _castable

    sess = ort.InferenceSession(embedding_bag(tmp_path / "e.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="'ids' has dtype float64.*lose information"):
        runner.fit_feeds(sess, {"ids": np.full((1, 7), 3.7), "mask": np.ones((1, 7))})
    ok = runner.fit_feeds(sess, {"ids": np.full((1, 7), 3, np.int32), "mask": np.ones((1, 7))})
    assert ok["ids"].dtype == np.int64 and ok["mask"].dtype == np.float32
    with pytest.raises(ValueError, match=r"axis 1: 9 != 256"):
        runner.fit_feeds(ort.InferenceSession(matmul_chain(tmp_path / "m.onnx", 1), providers=["CPUExecutionProvider"]),
                         {"x": np.ones((1, 9), np.float32)})
    # the runner cannot import edgekit: its copy of the rule must stay the calibration reader's
    kinds = [np.bool_, np.uint8, np.int8, np.int32, np.int64, np.float16, np.float32, np.float64, np.complex64]
    for a in kinds:
        for b in kinds:
            assert runner.castable(a, b) == _castable(np.dtype(a), np.dtype(b)), (a, b)


def test_cold_start_does_not_charge_the_first_artifact_for_onnxruntimes_set_up(tmp_path):
    """Two copies of one model, each order in a fresh process (this one has long paid onnxruntime's
    one-time set-up): the first profiled used to take it, about 7x the second's cold start."""
    import math
    import shutil
    import subprocess
    import sys

    a = small_cnn(tmp_path / "a.onnx")
    b = shutil.copy(a, tmp_path / "b.onnx")
    ratios = []
    for first, second in ((str(a), str(b)), (str(b), str(a))):
        out = subprocess.run([sys.executable, "-m", "edgekit.profile", first, second, "--min-runs", "3",
                              "--min-seconds", "0"], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        res = json.loads(out.stdout)
        ratios.append(res[first]["cold_start_ms"] / res[second]["cold_start_ms"])
    # both orders together: noise in one process is tolerated, a systematic first-artifact penalty is not
    assert math.sqrt(ratios[0] * ratios[1]) < 3.0, ratios


def test_runner_feeds_zero_one_integer_masks_to_a_bool_input(tmp_path):
    # as the calibration reader does: tokenizers hand out int64 0/1 masks
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Cast", ["m"], ["y"], to=TensorProto.FLOAT)], "g",
                          [helper.make_tensor_value_info("m", TensorProto.BOOL, ["n", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    p = tmp_path / "b.onnx"
    p.write_bytes(model.SerializeToString())
    sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    got = runner.fit_feeds(sess, {"m": np.array([[1, 0, 1, 1]], np.int64)})["m"]
    assert got.dtype == np.bool_ and got.tolist() == [[True, False, True, True]]
    with pytest.raises(ValueError, match="'m' is bool in the model; integer data for it must be 0 or 1"):
        runner.fit_feeds(sess, {"m": np.array([[1, 0, 2, 1]], np.int64)})


def _token_model(path, vocab: int, pooled: bool):
    """A tiny embedding model on (input_ids, attention_mask), dynamic batch and length, exported to path:
    pooled -> [N, 8] sums, else the masked [N, T, 8] hidden states (for a mean_pool_l2 post step)."""
    import torch

    class Emb(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.e = torch.nn.Embedding(vocab, 8)

        def forward(self, input_ids, attention_mask):
            h = self.e(input_ids) * attention_mask.unsqueeze(-1)
            return h.sum(1) if pooled else h

    axes = {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}}
    if not pooled:
        axes["out"] = {0: "b", 1: "s"}
    ids = torch.ones(2, 6, dtype=torch.long)
    torch.onnx.export(Emb().eval(), (ids, torch.ones_like(ids)), str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["out"], dynamic_axes=axes, dynamo=False)
    return str(path)


def test_text_pre_processing_is_timed_on_the_runs_token_rows(tmp_path):
    # pad_truncate's generic example holds BERT ids (101, 2023): a 50-token model failed the end-to-end
    # timing ("idx=101 must be within [-50,49]"); the run's real samples are the raw input to time
    from edgekit.prepost.pipeline import Pipeline
    from edgekit.profile import profile_prepost

    path = _token_model(tmp_path / "emb.onnx", vocab=50, pooled=True)
    pipe = Pipeline.from_spec({"pre": [{"op": "pad_truncate", "max_length": 12}]})
    rng = np.random.default_rng(0)
    samples = [{"input_ids": rng.integers(1, 50, (1, 12)), "attention_mask": np.ones((1, 12), np.int64)}
               for _ in range(3)]
    r = profile_prepost(path, pipe, inputs=samples, **FAST)
    assert r["status"] == "ok", r
    assert r["raw_input"] == "model inputs, as raw input"


def test_post_steps_reading_model_inputs_are_timed(tmp_path):
    # mean_pool_l2 reads the attention mask the pre step made, as on the device; the timing path called
    # postprocess(outputs) alone and failed ("input 'attention_mask' not found")
    from edgekit.prepost.pipeline import Pipeline
    from edgekit.profile import profile_prepost

    path = _token_model(tmp_path / "enc.onnx", vocab=30, pooled=False)
    pipe = Pipeline.from_spec({"pre": [{"op": "pad_truncate"}], "post": [{"op": "mean_pool_l2"}]})
    r = profile_prepost(path, pipe, **FAST)
    assert r["status"] == "ok", r
