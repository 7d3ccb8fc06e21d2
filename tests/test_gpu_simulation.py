"""GPU targets: per-node sensitivity ranks the error the GPU's QDQ arithmetic makes, not this CPU's fused
integer kernels (the last tuning step that still ran on them)."""
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
