"""Activations after an op that has no type inference (skl2onnx's ai.onnx.ml Scaler) are typed from one run
of the model, so static INT8 calibrates and quantizes them: every candidate of an skl2onnx MLP quantized
its weights alone, and most failed outright in onnxruntime's Softmax range step."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.dataset import Dataset
from edgekit.quant import static
from edgekit.quant.spec import QuantSpec


def _sklearn_like_mlp(path):
    r = np.random.default_rng(0)
    inits = {"w1": r.normal(size=(8, 16)).astype(np.float32) * 0.4, "b1": r.normal(size=16).astype(np.float32),
             "w2": r.normal(size=(16, 3)).astype(np.float32) * 0.4, "b2": np.zeros(3, np.float32)}
    nodes = [helper.make_node("Scaler", ["X"], ["variable"], domain="ai.onnx.ml", offset=[0.5] * 8, scale=[2.0] * 8),
             helper.make_node("MatMul", ["variable", "w1"], ["mul_result"]),
             helper.make_node("Add", ["mul_result", "b1"], ["add_result"]),
             helper.make_node("Relu", ["add_result"], ["next_activations"]),
             helper.make_node("MatMul", ["next_activations", "w2"], ["mul_result1"]),
             helper.make_node("Add", ["mul_result1", "b2"], ["add_result1"]),
             helper.make_node("Softmax", ["add_result1"], ["out_activations_result"]),
             helper.make_node("Identity", ["out_activations_result"], ["probabilities"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 8])],
                          [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def test_activations_after_an_untyped_op_are_quantized(tmp_path):
    src = _sklearn_like_mlp(tmp_path / "mlp.onnx")
    prep = tmp_path / "prep.onnx"
    notes = static.preprocess(src, prep)
    assert any("typed from one run of the model" in n for n in notes), notes
    data = Dataset({"X": np.random.default_rng(1).normal(size=(64, 8)).astype(np.float32)})
    dest = tmp_path / "int8.onnx"
    static.quantize(prep, dest, data, QuantSpec(), calib_size=64, input_names=["X"], use_cache=False)
    q = onnx.load(str(dest)).graph
    dq_out = {o for n in q.node if n.op_type == "DequantizeLinear" for o in n.output}
    matmuls = [n for n in q.node if n.op_type == "MatMul"]
    assert len(matmuls) == 2 and all(n.input[0] in dq_out and n.input[1] in dq_out for n in matmuls), \
        [(n.op_type, list(n.input)) for n in q.node]  # activations quantized, not the weights alone
