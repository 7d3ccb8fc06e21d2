"""What the quantize stage reports: FP16 values beyond float16's range, a numeric record of each final
artifact against FP32, like-for-like batches for outputs reduced over the batch, tolerance wording."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.artifact import Artifact, Manifest
from edgekit.config import QuantizeConfig, Tolerance
from edgekit.context import RunContext
from edgekit.dataset import Dataset
from edgekit.evaluate import Evaluator
from edgekit.onnxutil import run_batches
from edgekit.source import SourceModel
from edgekit.stages import quantize as stage


def _save(nodes, inits, out_shape, path):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def boxes_model(path):
    """Four box values 1e6 * sigmoid(.) beside a score, as a detection head in pixels of a huge canvas."""
    r = np.random.default_rng(0)
    inits = {"wa": r.normal(size=(16, 4)).astype(np.float32), "ws": r.normal(size=(16, 1)).astype(np.float32),
             "scale": np.array(1e6, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "wa"], ["a"], "fa"), helper.make_node("Sigmoid", ["a"], ["sa"], "sa"),
             helper.make_node("Mul", ["sa", "scale"], ["boxes"], "mul"),
             helper.make_node("MatMul", ["x", "ws"], ["s"], "fs"), helper.make_node("Sigmoid", ["s"], ["ss"], "ss"),
             helper.make_node("Concat", ["boxes", "ss"], ["y"], "cat", axis=1)]
    return _save(nodes, inits, ["n", 5], path)


def linear_model(path, *, reduce=False, cols=8, weight_scale=1.0):
    r = np.random.default_rng(1)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h" if reduce else "y"], "fc")]
    if reduce:  # a statistic over the whole batch: a 0-d output with no sample axis
        nodes.append(helper.make_node("ReduceMean", ["h"], ["y"], "mean", keepdims=0))
    return _save(nodes, {"w": (r.normal(size=(16, cols)) * weight_scale).astype(np.float32)}, [] if reduce else ["n", cols], path)


def _x(n, seed=0, scale=1.0):
    return (np.random.default_rng(seed).normal(size=(n, 16)) * scale).astype(np.float32)


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(stage, "GATE_RUNS", 5)
    monkeypatch.setattr(stage, "GATE_SECONDS", 0.05)
    monkeypatch.setenv("EDGEKIT_QUIET", "1")


def _run(tmp_path, model, calib, ev, *, mode, task="generic", tol="1%"):
    src = SourceModel(spec=str(model), kind="onnx", inputs=[], outputs=["y"], onnx_path=str(model))
    evaluate = Evaluator(Dataset({"x": ev}, None, "eval"), task, model)
    parent = Artifact(kind="fp32", path=model.name)
    parent.metrics = evaluate(model)
    ctx = RunContext(outdir=tmp_path, source=src, manifest=Manifest(), calib=Dataset({"x": calib}, None, "calib"),
                     eval=Dataset({"x": ev}, None, "eval"), evaluate=evaluate, tolerance=Tolerance.parse(tol))
    art = stage.run(parent, ctx, QuantizeConfig(mode=mode, max_trials=1))
    return art, ctx.manifest.quantization[parent.path]


def test_fp16_keeps_values_beyond_float16_range_in_fp32_and_records_fidelity(tmp_path, fast):
    # the converter clamped 1e6 to 65504: boxes 15x too small, median relative error 0.93, "within tolerance"
    model = boxes_model(tmp_path / "boxes.fp32.onnx")
    x = _x(40)
    art, rec = _run(tmp_path, model, x, x, mode="fp16", task="classification")
    ref = run_batches(model, Dataset({"x": x}, None, "x"))[0]
    got = run_batches(tmp_path / art.path, Dataset({"x": x}, None, "x"))[0]
    assert np.max(np.abs(got - ref)) < 1e-3 * np.max(np.abs(ref))
    assert any("exceed float16's range" in n for n in rec["notes"])
    assert "mul" in rec["trials"][0]["fp32_nodes"]
    num = art.verify["per_output"]["y"]
    assert num["median_rel_err"] < 1e-3 and art.verify["batch"] == art.metrics["batch"]


def test_fp16_damage_the_range_check_cannot_see_is_caught_by_the_numeric_record(tmp_path, fast):
    # weights of ~1e-10 are raised to float16's smallest value 5.96e-8 by the converter: the outputs grow
    # ~600x while top-1 agreement of [N, 8] logits can hold; the numeric record against FP32 cannot miss it
    model = linear_model(tmp_path / "lin.fp32.onnx", weight_scale=1e-10)
    x = _x(40)
    art, rec = _run(tmp_path, model, x, x, mode="fp16", task="classification")
    assert not art.verify["per_output"]["y"]["median_rel_err"] <= 0.25
    assert rec["recommend"] is False and "far from FP32's values" in rec["reason"]
    assert art.notes[0] == rec["reason"]


def test_numeric_veto_withdraws_a_recommendation():
    art = Artifact(kind="fp16", path="m.fp16.onnx", notes=["FP16 within tolerance 1%"],
                   verify={"per_output": {"boxes": {"median_rel_err": 0.934, "max_rel_err": 0.95}}})
    rec = {"recommend": True, "reason": "FP16 within tolerance 1%"}
    stage._numeric_veto(art, rec)
    assert rec["recommend"] is False and "'boxes' median relative error 93.4%" in rec["reason"]


def test_non_finite_error_is_recorded_as_json_and_blocks():
    from edgekit.evaluate import numeric_fidelity, numeric_problem
    from edgekit.report.fmt import json_safe

    ref = np.ones((4, 3), np.float32)
    got = ref.copy()
    got[:, 0] = np.inf  # float16 overflow where FP32 is finite
    num = json_safe(numeric_fidelity([got], [ref], ["y"]))
    assert num["y"]["median_rel_err"] == "Infinity"
    assert "'y' median relative error Infinity" in numeric_problem(num)
    masked = ref.copy()
    masked[:, 0] = -np.inf  # a mask FP32 has too is no error
    assert numeric_fidelity([masked], [masked])["0"]["max_rel_err"] == 0.0


def test_batch_reduced_output_is_compared_at_the_candidates_batch(tmp_path):
    # FP32 at batch 64 gave one mean for 44 samples, dynamic INT8 at batch 1 gave 44: scored as a 100% drop
    from onnxruntime.quantization import quantize_dynamic

    model = linear_model(tmp_path / "mean.fp32.onnx", reduce=True)
    q = tmp_path / "mean.int8-dynamic.onnx"
    quantize_dynamic(str(model), str(q))
    ev = Evaluator(Dataset({"x": _x(44)}, None, "eval"), "generic", model)
    assert ev(model)["value"] == 1.0
    m = ev(q)
    assert m["batch"] == 1 and m["value"] > 0.9
    assert ev(q, numeric=True)["numeric"]["y"]["median_rel_err"] < 0.25


@pytest.mark.parametrize("tol,ref,val,want", [
    ("0.18%", 0.9280, 0.926325, "0.1805%"),   # rounded to 0.18% it read as equal to the tolerance
    ("0.16pt", 0.9280, 0.926325, "0.17pt"),   # the drop in points beside a tolerance in points
    ("1%", 0.9280, 0.9280, "0.00%"),
])
def test_drop_is_printed_in_the_tolerance_unit_with_the_digits_that_decide(tol, ref, val, want):
    assert Tolerance.parse(tol).format_drop(ref, val) == want


def test_rejection_message_uses_the_tolerance_unit(tmp_path, fast):
    model = linear_model(tmp_path / "lin.fp32.onnx")
    x = _x(40)
    art, rec = _run(tmp_path, model, x, x, mode="int8-dynamic", tol="0pt")
    assert rec["tolerance_met"] is False
    assert "pt (" in rec["reason"] and "%" not in rec["reason"].split("drops ")[1].split(" (")[0]
