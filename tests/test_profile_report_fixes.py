"""`edgekit profile` reports state what was measured: precision from the graph, the baseline a real FP32,
the shapes and batch timed, the caveats of the JSON in the Markdown, and refusals for what cannot be honoured."""
import json

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgekit.cli import main
from edgekit.profiling import run_profile

from profile_models import _save, matmul_chain

QUICK = {"warmup": 1, "min_runs": 3, "min_seconds": 0.0, "max_seconds": 5.0}
FAST = ["--warmup", "1", "--min-runs", "3", "--min-seconds", "0"]


def _exit(argv):
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def half_mlp(path, k=16):
    """A float16 Linear with float16 input and weights, as onnxconverter-common's float16 conversion makes."""
    w = (np.random.default_rng(0).standard_normal((k, k)) / 4).astype(np.float16)
    return _save([helper.make_node("MatMul", ["x", "w"], ["y"], "mm")], {"w": w},
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", k])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", k])], path)


def dynamic_int8(src, path):
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(src), str(path))
    return str(path)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    fp32 = matmul_chain(d / "chain.onnx", 2, k=32)
    return {"half": half_mlp(d / "half.onnx"), "q": dynamic_int8(fp32, d / "q.onnx"), "chain": fp32}


@pytest.mark.parametrize("op_profile", [True, False])
def test_fp16_and_int8_models_are_never_the_fp32_baseline(mixed, op_profile):
    """F9/F16: an FP16 model given first was labelled fp32 (onnxruntime's CPU runs it as Cast + FP32 ops) and
    every ratio was taken against it; with --no-op-profile the precision was unknown and the first model,
    an INT8 one, became the baseline. The precision now comes from the graph, the same either way."""
    rep = run_profile([mixed["half"], mixed["q"], mixed["chain"]], ["x86-laptop"], op_profile=op_profile, **QUICK)
    run = rep["runs"][0]
    assert {k: r["precision"] for k, r in run["results"].items()} == {"half": "fp16", "q": "int8", "chain": "fp32"}
    assert run["baseline"] == "chain" and run["ratios"]["chain"] == 1.0


def test_without_an_fp32_model_no_ratio_is_taken(mixed):
    rep = run_profile([mixed["half"], mixed["q"]], ["x86-laptop"], op_profile=False, **QUICK)
    run = rep["runs"][0]
    assert run["baseline"] is None and run["ratios"] == {"half": None, "q": None}
