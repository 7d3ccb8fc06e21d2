from types import SimpleNamespace

from edgekit.artifact import Artifact, Manifest
from edgekit.config import Tolerance
from edgekit.recommend import recommend

T = SimpleNamespace(name="cpu", emulated=False)
ARM = SimpleNamespace(name="arm", emulated=True)


def _art(kind, path, value, p50, parent=None, stage="export"):
    a = Artifact(kind=kind, path=path, parent=parent, stage=stage, metrics={"name": "accuracy", "value": value})
    a.latency = {"cpu": {"status": "ok", "p50_ms": p50}, "arm": {"status": "ok", "p50_ms": p50 * 50, "emulated": True}}
    return a


def test_fastest_within_tolerance_wins():
    m = Manifest(artifacts=[_art("fp32", "f.onnx", 0.99, 1.0), _art("int8", "q.onnx", 0.985, 0.5, "f.onnx", "quantize"),
                            _art("pruned", "p.onnx", 0.90, 0.3, "f.onnx")])
    r = recommend(m, Tolerance.parse("1%"), [T])["cpu"]
    assert r["path"] == "q.onnx" and r["speedup_vs_fp32"] == 2.0
    assert any("p.onnx" in x for x in r["rejected"])


def test_int8_slower_than_fp32_is_not_recommended():
    m = Manifest(artifacts=[_art("fp32", "f.onnx", 0.99, 1.0), _art("int8", "q.onnx", 0.99, 1.2, "f.onnx", "quantize")])
    r = recommend(m, Tolerance.parse("1%"), [T])["cpu"]
    assert r["path"] == "f.onnx" and "no compressed variant" in r["reason"]


def test_quantization_veto_is_respected():
    m = Manifest(artifacts=[_art("fp32", "f.onnx", 0.99, 1.0), _art("int8", "q.onnx", 0.99, 0.4, "f.onnx", "quantize")],
                 quantization={"f.onnx": {"recommend": False, "reason": "tolerance missed on the tuning set"}})
    r = recommend(m, Tolerance.parse("1%"), [T])["cpu"]
    assert r["path"] == "f.onnx" and "tolerance missed" in r["rejected"][0]


def test_unavailable_and_emulated_targets_are_labelled():
    m = Manifest(artifacts=[_art("fp32", "f.onnx", 0.99, 1.0)])
    m.artifacts[0].latency["gpu"] = {"status": "unavailable", "reason": "onnxruntime-gpu not installed"}
    r = recommend(m, Tolerance.parse("1%"), [ARM, T, SimpleNamespace(name="gpu", emulated=False)])
    assert r["gpu"] == {"status": "unavailable", "reason": "onnxruntime-gpu not installed"}
    assert r["arm"]["status"] == "emulated" and "not device latency" in r["arm"]["reason"]
    assert r["arm"]["path"] == r["cpu"]["path"] == "f.onnx"


def test_veto_reason_is_part_of_the_fp32_recommendation():
    """The latency table can show INT8 ahead while the gate (its own interleaved runs) vetoed it: the
    recommendation must say why, not only 'no compressed variant was faster'."""
    m = Manifest(artifacts=[_art("fp32", "f.onnx", 0.99, 1.0), _art("int8", "q.onnx", 0.99, 0.95, "f.onnx", "quantize")],
                 quantization={"f.onnx": {"recommend": False, "reason": "INT8 is not faster than FP32 on cpu in the "
                                                                        "speed gate: 1.02x FP32 latency"}})
    r = recommend(m, Tolerance.parse("1%"), [T])["cpu"]
    assert r["path"] == "f.onnx" and "speed gate: 1.02x" in r["reason"]


def test_unprofiled_target_is_skipped_not_unavailable():
    a = Artifact(kind="fp32", path="f.onnx", metrics={"name": "accuracy", "value": 0.9})
    r = recommend(Manifest(artifacts=[a]), Tolerance.parse("1%"), [T])["cpu"]
    assert r["status"] == "skipped" and "profiling was off" in r["reason"]


def test_a_target_s_precisions_bound_the_recommendation():
    m = Manifest(artifacts=[_art("fp32", "f.onnx", 0.99, 1.0), _art("int8", "q.onnx", 0.99, 0.5, "f.onnx", "quantize"),
                            _art("int8-dynamic", "d.onnx", 0.99, 0.6, "f.onnx", "quantize")])
    fp32_only = SimpleNamespace(name="cpu", emulated=False, precisions=("fp32",))
    r = recommend(m, Tolerance.parse("1%"), [fp32_only])["cpu"]  # it used to say q.onnx
    assert r["path"] == "f.onnx" and "q.onnx: int8 is not among cpu's precisions (fp32)" in r["rejected"]
    npu = SimpleNamespace(name="cpu", emulated=False, precisions=("int8",))  # runs INT8 only
    assert recommend(m, Tolerance.parse("1%"), [npu])["cpu"]["path"] == "q.onnx"
    m.artifacts[1].metrics["value"] = 0.5  # INT8 beyond tolerance; dynamic INT8 runs where INT8 does
    assert recommend(m, Tolerance.parse("1%"), [npu])["cpu"]["path"] == "d.onnx"
    m.artifacts[2].metrics["value"] = 0.5
    r = recommend(m, Tolerance.parse("1%"), [npu])["cpu"]
    # measured, every artifact rejected: 'none' ('unavailable' is for a runtime or device that is not there)
    assert r["status"] == "none" and "f.onnx: fp32 is not among cpu's precisions (int8)" in r["reason"]


def test_a_pruned_variant_as_fast_as_fp32_is_not_recommended():
    """A distilled tabular MLP at p50 0.016 ms beside FP32's 0.016 ms was recommended as "1.00x faster than
    FP32": a pruned or distilled variant has no speed gate, so the gate's margin applies to its p50."""
    m = Manifest(artifacts=[_art("fp32", "f.onnx", 0.99, 0.0160), _art("distilled", "d.onnx", 0.99, 0.0159, "f.onnx")])
    r = recommend(m, Tolerance.parse("1%"), [T])["cpu"]
    assert r["path"] == "f.onnx" and "d.onnx: p50 0.016 ms against FP32's 0.016 ms is not measurably faster" in r["reason"]
    m = Manifest(artifacts=[_art("fp32", "f.onnx", 0.99, 0.0160), _art("distilled", "d.onnx", 0.99, 0.0120, "f.onnx")])
    assert recommend(m, Tolerance.parse("1%"), [T])["cpu"]["path"] == "d.onnx"


def _two_targets(q_cpu_p50, gate_passed, tolerance_met=True):
    """INT8 built and gated for 'gpu', also profiled on 'cpu' (FP32 1.0 ms there)."""
    f, q = _art("fp32", "f.onnx", 0.99, 1.0), _art("int8", "q.onnx", 0.99, q_cpu_p50, "f.onnx", "quantize")
    f.latency["gpu"] = {"status": "ok", "p50_ms": 0.2}
    q.latency["gpu"] = {"status": "ok", "p50_ms": 0.1 if gate_passed else 0.4}
    rec = {"recommend": gate_passed and tolerance_met, "tolerance_met": tolerance_met,
           "speed_gate": {"gpu": {"status": "ok", "passed": gate_passed}},
           "reason": "INT8 is not faster than FP32 on gpu in the speed gate" if not gate_passed else
           "within tolerance, 2.0x faster than FP32" if tolerance_met else "no INT8 candidate within tolerance"}
    return Manifest(artifacts=[f, q], quantization={"f.onnx": rec})


GPU = SimpleNamespace(name="gpu", emulated=False)


def test_the_speed_gate_speaks_only_for_the_target_it_timed():
    """x86-laptop refused a GPU target's INT8 citing "not faster than FP32 on nvidia-gpu", and a gate passed on
    one target recommended the file on another where nothing had measured it faster."""
    tol = Tolerance.parse("1%")
    r = recommend(_two_targets(0.5, gate_passed=False), tol, [GPU, T])
    assert r["gpu"]["path"] == "f.onnx" and "on gpu in the speed gate" in r["gpu"]["reason"]
    assert r["cpu"]["path"] == "q.onnx" and r["cpu"]["speedup_vs_fp32"] == 2.0  # measured faster there

    r = recommend(_two_targets(1.1, gate_passed=True), tol, [GPU, T])
    assert r["gpu"]["path"] == "q.onnx"
    assert r["cpu"]["path"] == "f.onnx"
    assert ("q.onnx: the speed gate timed it on gpu, not cpu; in cpu's latency table p50 1.100 ms against FP32's "
            "1.000 ms is not measurably faster") in r["cpu"]["reason"]

    # a missed tolerance holds everywhere, however fast the file is
    r = recommend(_two_targets(0.5, gate_passed=True, tolerance_met=False), tol, [GPU, T])
    assert r["gpu"]["path"] == r["cpu"]["path"] == "f.onnx"
    assert "no INT8 candidate within tolerance" in r["cpu"]["reason"]


def test_a_file_scored_as_another_target_computes_is_not_recommended_for_this_one():
    """A GPU target's INT8 is scored in exact QDQ arithmetic (graph optimisations off); the x86 kernels of a
    host without VNNI round otherwise, so that score is not the x86 target's, however fast the file ran."""
    m = _two_targets(0.5, gate_passed=True)
    m.artifacts[1].metrics["simulated"] = "cpu, graph optimisations off (QDQ arithmetic)"
    r = recommend(m, Tolerance.parse("1%"), [GPU, T])
    assert r["gpu"]["path"] == "q.onnx"
    assert r["cpu"]["path"] == "f.onnx" and "q.onnx: built and scored for gpu" in r["cpu"]["reason"]
