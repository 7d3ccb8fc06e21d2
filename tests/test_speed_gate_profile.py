"""The speed gate's operator profile runs where its timings ran, and counts fallback against the provider that
really ran the model. It used to profile on the CPU and count every node against the target's first provider:
on an H200 the nvidia-gpu gate reported "67 nodes fell back to another provider" (all of them, against a
TensorRT that was not installed)."""
import numpy as np

from profile_models import matmul_chain

TARGET = """
description = "a local target that prefers an optional provider it may not have"
arch = "{arch}"
address = "local"
isa = ["host"]

[[providers]]
name = "TensorrtExecutionProvider"
required = false

[[providers]]
name = "CPUExecutionProvider"
"""


def test_fallback_is_counted_against_the_provider_that_ran(tmp_path):
    import platform

    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgekit.quant import speed_gate
    from edgekit.runner.edgekit_runner import provider_problem
    from edgekit.targets import load_target

    fp32 = matmul_chain(tmp_path / "f.onnx", 3, k=64)
    q = str(tmp_path / "q.onnx")
    quantize_dynamic(fp32, q, weight_type=QuantType.QInt8)
    (tmp_path / "t.toml").write_text(TARGET.format(arch=platform.machine()))
    feeds = {"x": np.ones((1, 64), np.float32)}
    rec = speed_gate.gate(fp32, q, load_target(str(tmp_path / "t.toml")), feeds, min_runs=6, min_seconds=0.0)["t"]
    assert rec["status"] == "ok", rec
    trt = "TensorrtExecutionProvider"
    if trt in ort.get_available_providers() and not provider_problem(trt):  # a machine with TensorRT
        assert rec["op_profile_on"] == trt
    else:  # no TensorRT here (or listed but unloadable, as on the H200 checked): the CPU ran every node
        assert rec["fallback_nodes"] == 0 and rec["fallback"] == [], rec["fallback"]
        assert rec["op_profile_on"] == "CPUExecutionProvider"
    assert rec["int8_ops"] or rec["qdq_share"] > 0  # the profile is of the INT8 model


def test_a_remote_targets_profile_is_read_on_this_hosts_cpu():
    from edgekit.quant.speed_gate import _profile_providers
    from edgekit.targets import load_target

    provs, on = _profile_providers(load_target("raspberry-pi-5"))
    assert provs == [("CPUExecutionProvider", {})] and on == "this host's CPU"
    provs, on = _profile_providers(None)
    assert provs[0][0] == "CPUExecutionProvider"


def test_a_cuda_gate_with_no_int8_kernels_says_why_int8_is_slower_there():
    from edgekit.quant.speed_gate import explain

    rec = {"int8_ms": 0.58, "fp32_ms": 0.29, "ratio": 2.0, "ratio_interval": [1.97, 2.02], "confidence": 0.97,
           "threshold": 0.98, "verdict": "not faster", "qdq_share": 0.36, "int8_ops": [], "session_pairs": 6, "runs": 1242,
           "fp32_ops": [{"op_type": "Conv", "share": 0.17}], "op_profile_on": "CUDAExecutionProvider"}
    assert "no INT8 kernels" in explain(rec) and "TensorRT" in explain(rec)
    assert "no INT8 kernels" not in explain({**rec, "op_profile_on": "CPUExecutionProvider"})
