"""Empirical bias correction of static QDQ models (edgekit/quant/bias_correction.py)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.config import QuantizeConfig
from edgekit.dataset import Dataset
from edgekit.quant import bias_correction, static
from edgekit.quant.spec import QuantSpec
from edgekit.quant.tuning import Tuner
from edgekit.stages import quantize as stage

from test_quant import _ctx


def drifting_cnn(path, batch="n"):
    """Conv -> Relu -> Conv -> Relu -> GAP -> Gemm where conv2's output channel 0 has weights 1000x smaller
    than the rest, all positive: per-tensor INT8 rounds them to zero, so that channel's mean (and every
    logit it feeds) drifts by a constant that rounding alone cannot undo but a bias can."""
    r = np.random.default_rng(5)
    w2 = (r.normal(size=(16, 8, 3, 3)) * 0.2).astype(np.float32)
    w2[0] = np.abs(w2[0]) * 0.001 + 0.002
    inits = {"w1": (r.normal(size=(8, 1, 3, 3)) * 0.5).astype(np.float32), "b1": np.abs(r.normal(size=8)).astype(np.float32),
             "w2": w2, "b2": (r.normal(size=16) * 0.1).astype(np.float32),
             "wf": (r.normal(size=(10, 16)) * 0.3).astype(np.float32), "bf": np.zeros(10, np.float32)}
    inits["wf"][:, 0] = 40.0 * np.linspace(-1, 1, 10)  # the drifting channel matters to the logits
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], "conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], "relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], "gap"),
             helper.make_node("Flatten", ["p"], ["f"], "flat"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], "fc", transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _data(n, seed):
    return Dataset({"x": np.abs(np.random.default_rng(seed).normal(size=(n, 1, 12, 12))).astype(np.float32)})


def _logits(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _quantize(tmp_path, src, calib):
    prep = tmp_path / "prep.onnx"
    static.preprocess(src, prep)
    q = tmp_path / "q.onnx"
    spec = QuantSpec(per_channel=False, method="minmax")
    static.quantize(prep, q, calib, spec, calib_size=len(calib), input_names=["x"], use_cache=False)
    return prep, q


def test_corrected_int8_output_means_match_fp32_on_held_out_data(tmp_path):
    calib, held = _data(64, 0), _data(64, 1)
    prep, q = _quantize(tmp_path, drifting_cnn(tmp_path / "m.onnx"), calib)
    x = np.asarray(held.inputs["x"][:])
    ref = _logits(prep, x).mean(0)
    before = np.abs(_logits(q, x).mean(0) - ref).mean()
    info = bias_correction.apply(q, prep, calib, ["x"])
    after = np.abs(_logits(q, x).mean(0) - ref).mean()  # onnxruntime's integer kernels, not the float simulation
    assert info["layers"] == 3 and info["samples"] == 64, info
    assert before > 0.5, before  # the model really drifts
    assert after < before / 5, (before, after)
    onnx.checker.check_model(onnx.load(str(q)))


def test_fixed_batch_graph_uses_whole_batches_only(tmp_path):
    calib = _data(30, 0)  # 7 batches of 4 and a remainder the graph could not take
    prep, q = _quantize(tmp_path, drifting_cnn(tmp_path / "m.onnx", batch=4), calib)
    info = bias_correction.apply(q, prep, calib, ["x"])
    assert info["samples"] == 28 and info["layers"] == 3, info


def test_model_without_biases_is_left_alone(tmp_path):
    w = np.random.default_rng(0).normal(size=(8, 8)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], "mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    src = tmp_path / "mm.onnx"
    onnx.save(m, str(src))
    assert not bias_correction.has_candidates(src)
    calib = Dataset({"x": np.random.default_rng(1).normal(size=(32, 8)).astype(np.float32)})
    prep = tmp_path / "prep.onnx"
    static.preprocess(src, prep)
    q = tmp_path / "q.onnx"
    static.quantize(prep, q, calib, QuantSpec(), calib_size=32, input_names=["x"], use_cache=False)
    before = q.read_bytes()
    assert bias_correction.apply(q, prep, calib, ["x"])["layers"] == 0
    assert q.read_bytes() == before


def test_qoperator_candidate_with_bias_correction_is_refused(tmp_path):
    calib = _data(32, 0)
    src = drifting_cnn(tmp_path / "m.onnx")
    prep = tmp_path / "prep.onnx"
    static.preprocess(src, prep)
    tuner = Tuner(prep_path=prep, fp32_path=src, workdir=tmp_path, calib=calib, input_names=["x"], evaluate=None,
                  reference=1.0, tolerance=None, target=None, feeds={}, calib_size=32, max_trials=1)
    with pytest.raises(ValueError, match="QDQ"):
        tuner.build(QuantSpec(format="qoperator", bias_correction=True), tmp_path / "t.onnx")


@pytest.mark.parametrize("setting", ["auto", "off"])
def test_tuning_tries_bias_correction_when_the_default_misses(tmp_path, monkeypatch, setting):
    # the ISA-aware default must be the same on every host: an AVX2-only CPU gets 7-bit weights
    # (reduce_range), whose default per-tensor trial already passed here, and the test had no miss to fix
    monkeypatch.setattr("edgekit.hostinfo.cpu_info", lambda: {"model": "test", "isa": ["avx512-vnni"], "cores": 2})
    data = _data(200, 3)
    src = drifting_cnn(tmp_path / "m.fp32.onnx")
    parent, ctx = _ctx(tmp_path, src, data, tol="0.5%")
    cfg = QuantizeConfig(calibrate_method="minmax", per_channel=False, weight_rounding="nearest", max_trials=3,
                         bias_correction=setting, speed_gate=False)
    stage.run(parent, ctx, cfg)
    trials = ctx.manifest.quantization[parent.path]["trials"]
    assert not trials[0]["passed"] and not trials[0]["config"]["bias_correction"], trials[0]
    corrected = [t for t in trials if t["config"]["bias_correction"]]
    if setting == "off":
        assert not corrected
        return
    assert corrected and corrected[0]["bias_correction"]["layers"] == 3, trials
    assert corrected[0]["metric"] > trials[0]["metric"], trials


def test_unmeasurable_target_is_reported_unavailable_not_slower(tmp_path):
    """A target whose runtime is missing here (CUDA without onnxruntime-gpu, or without a GPU) times
    nothing: the INT8 artifact is not recommended, and the reason says the speed is unavailable."""
    from edgekit.targets import load_target

    data = _data(64, 3)
    src = drifting_cnn(tmp_path / "m.fp32.onnx")
    parent, ctx = _ctx(tmp_path, src, data, tol="100%")
    ctx.targets = [load_target("nvidia-gpu")]
    stage.run(parent, ctx, QuantizeConfig(tune=False))
    rec = ctx.manifest.quantization[parent.path]
    gate = next(iter(rec["speed_gate"].values()))
    if gate["status"] == "ok":  # a machine with a working CUDA onnxruntime really measured it
        return
    assert gate["status"] == "unavailable" and rec["recommend"] is False
    assert "unavailable" in rec["reason"] and "not faster" not in rec["reason"], rec["reason"]


def test_a_model_that_scores_zero_is_still_tuned(tmp_path):
    data = _data(64, 3)
    src = drifting_cnn(tmp_path / "m.fp32.onnx")
    parent, ctx = _ctx(tmp_path, src, data)
    parent.metrics = {**parent.metrics, "value": 0.0}  # e.g. a classifier whose labels it never predicts
    stage.run(parent, ctx, QuantizeConfig(max_trials=2, speed_gate=False, weight_rounding="nearest"))
    assert len(ctx.manifest.quantization[parent.path]["trials"]) == 2
