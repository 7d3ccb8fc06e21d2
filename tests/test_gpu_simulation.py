"""GPU targets: per-node sensitivity ranks the error the GPU's QDQ arithmetic makes, not this CPU's fused
integer kernels (the last tuning step that still ran on them)."""
import numpy as np
import onnxruntime as ort
import pytest

from edgekit.dataset import Dataset
from edgekit.quant import sensitivity, static
from edgekit.quant.spec import QuantSpec
from test_quant_foreign_onnx import digits, digits_mlp


def _unoptimised(path):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("simulate", [True, False])
def test_sensitivity_scores_each_node_the_way_the_target_runs_it(tmp_path, simulate):
    x, _ = digits(256)
    model = digits_mlp(tmp_path / "mlp.onnx")
    calib, data = Dataset({"x": x[:128]}), Dataset({"x": x[128:]})
    # S8S8 without reduce_range: the case where AVX2's u8s8 / s8s8 kernels and exact QDQ part ways
    spec = QuantSpec(activation_type="s8", weight_type="s8", symmetric_activation=True, per_channel=True)
    base = tmp_path / "base.onnx"
    static.quantize(model, base, calib, spec, calib_size=128, input_names=["x"], use_cache=False)
    got = sensitivity.measure(model, base, spec, calib, data, workdir=tmp_path, calib_size=128, input_names=["x"],
                              cache_root=tmp_path / "cache", simulate=simulate)
    assert {g["node"] for g in got} >= {"fc1", "fc2"}
    ref = ort.InferenceSession(str(model)).run(None, {"x": x[128:128 + sensitivity.SAMPLES]})[0]
    for g in got:
        one = tmp_path / f"one_{g['node']}.onnx"
        static.quantize(model, one, calib, spec, calib_size=128, input_names=["x"], cache_root=tmp_path / "cache",
                        only_nodes=sensitivity.with_activations([g["node"]], sensitivity.fused_activations(model)))
        sess = _unoptimised(one) if simulate else ort.InferenceSession(str(one))
        out = sess.run(None, {"x": x[128:128 + sensitivity.SAMPLES]})[0]
        assert g["sqnr_db"] == pytest.approx(sensitivity.sqnr_db(ref, out), abs=0.006), g


def test_tuner_fallback_ranks_nodes_as_the_evaluator_scores_them(tmp_path):
    from edgekit.evaluate import Evaluator
    from edgekit.config import Tolerance
    from edgekit.quant.tuning import Tuner

    x, y = digits(400)
    model = digits_mlp(tmp_path / "mlp.onnx")
    calib, data = Dataset({"x": x[:128]}), Dataset({"x": x[128:]}, y[128:], "eval.npz")
    spec = QuantSpec(activation_type="s8", weight_type="s8", symmetric_activation=True, per_channel=True)
    evaluate = Evaluator(data, "classification", model)
    evaluate.simulate_qdq = True  # what a CUDA/TensorRT target sets (stages.quantize._simulate_on_cpu)
    tuner = Tuner(prep_path=model, fp32_path=model, workdir=tmp_path, calib=calib, input_names=["x"],
                  evaluate=evaluate, reference=1.0, tolerance=Tolerance(0.0), target=None, feeds={"x": x[:1]},
                  calib_size=128, max_trials=4, cache_root=tmp_path / "cache")
    tuner.fallback(spec, data)
    want = sensitivity.measure(model, tmp_path / "sens_base.onnx", spec, calib, data, workdir=tmp_path,
                               calib_size=128, input_names=["x"], cache_root=tmp_path / "cache", simulate=True)
    assert tuner.sensitivity and tuner.sensitivity == want


# ------------------------------------------------------------------ CPU targets whose INT8 sums exactly

PI5 = """
arch = "aarch64"
address = "ssh://pi@127.0.0.1:9/opt/edgekit"
isa = ["neon", "dotprod"]
[[providers]]
name = "CPUExecutionProvider"
"""


def _exact(path, x):
    s = ort.InferenceSession(str(path), _unoptimised(path).get_session_options(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def test_an_arm_target_is_scored_by_the_arithmetic_it_runs_not_this_hosts_kernels(tmp_path):
    """An MLP for a Raspberry Pi 5 (S8S8, full 8-bit weights) read 0.8828 on AVX2's saturating kernels where
    exact QDQ gives 0.9922; tuning then kept every Gemm in FP32 to win back a drop the device never has."""
    from edgekit.cli.quantize import quantize_file
    from edgekit.quant import isa

    x, y = digits()
    model = digits_mlp(tmp_path / "mlp.onnx")
    np.save(tmp_path / "calib.npy", x[:256])
    np.savez(tmp_path / "eval.npz", x=x[1200:], y=y[1200:])
    (tmp_path / "pi5.toml").write_text(PI5)
    man = quantize_file(str(model), output=str(tmp_path / "out"), calib=str(tmp_path / "calib.npy"),
                        eval_path=str(tmp_path / "eval.npz"), target=str(tmp_path / "pi5.toml"), tune=False)
    q = man.quantization["mlp.onnx"]
    assert q["isa"]["choice"].startswith("S8S8 QDQ")
    art = man.artifacts[1]
    path = tmp_path / "out" / art.path
    exact = float(np.mean(_exact(path, x[1200:]).argmax(1) == y[1200:]))
    host = isa.target_facts(None)
    if isa.exact_int8(host["arch"], host["isa"]):  # this CPU sums exactly too: its kernels stand in
        assert "accuracy_scoring" not in q or not q["accuracy_scoring"].get("simulated")
    else:
        assert q["accuracy_scoring"]["simulated"] and "sums INT8 products exactly" in q["accuracy_scoring"]["why"]
        assert art.metrics["value"] == pytest.approx(exact) and art.metrics["simulated"], (art.metrics, exact)
        assert any("simulated as exact QDQ arithmetic" in n for n in q["notes"])


def test_which_targets_sum_int8_exactly():
    from edgekit.quant import isa

    assert isa.exact_int8("aarch64", ["neon"]) and isa.exact_int8("x86_64", ["avx2", "avx512-vnni"])
    assert isa.exact_int8("x86_64", ["avx2"], ["CUDAExecutionProvider"])
    assert not isa.exact_int8("x86_64", ["avx2", "avx512f"]) and not isa.exact_int8("x86_64", [])


def test_the_reason_for_the_conservative_default_says_what_the_target_declared():
    # read "no AVX2/VNNI/dot-product detected" for a target that simply has no `isa` key: nothing was detected
    from edgekit.quant import isa

    assert "declares none of" in isa.choose([], arch="x86_64").reason
    assert "sse4.2" in isa.choose(["sse4.2"], arch="x86_64").reason
