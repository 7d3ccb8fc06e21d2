"""Tiny seeded ONNX models for the profiling tests: MatMul chains (work proportional to depth)
and a small CNN with an INT8 QDQ twin made by onnxruntime's quantizer."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(nodes, inits, inputs, outputs, path, opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return str(path)


def matmul_chain(path, depth, k=256, seed=0, batch="batch"):
    """depth MatMuls of k x k then a Relu: run time is dominated by depth * batch * k^2 multiply-adds.
    batch: an int exports a fixed-batch model, as torch.onnx.export does without dynamic_axes."""
    r = np.random.default_rng(seed)
    inits, nodes, prev = {}, [], "x"
    for i in range(depth):
        inits[f"w{i}"] = (r.standard_normal((k, k)) / np.sqrt(k)).astype(np.float32)
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"], f"mm{i}"))
        prev = f"h{i}"
    nodes.append(helper.make_node("Relu", [prev], ["y"], "relu"))
    return _save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, k])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, k])], path)


def small_cnn(path, seed=1, hw=(16, 16)):
    """hw: ("height", "width") declares the spatial dims symbolic, as a fully convolutional export does."""
    r = np.random.default_rng(seed)
    inits = {"w1": (r.normal(size=(8, 1, 3, 3)) * 0.5).astype(np.float32), "b1": r.normal(size=8).astype(np.float32),
             "w2": (r.normal(size=(16, 8, 3, 3)) * 0.2).astype(np.float32), "b2": r.normal(size=16).astype(np.float32),
             "wf": (r.normal(size=(16, 10)) * 0.3).astype(np.float32), "bf": np.zeros(10, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], "conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"], "relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], "gap"),
             helper.make_node("Flatten", ["p"], ["f"], "flat"),
             helper.make_node("MatMul", ["f", "wf"], ["m"], "fc"),
             helper.make_node("Add", ["m", "bf"], ["logits"], "bias")]
    return _save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, *hw])],
                 [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], path)


def embedding_bag(path, rows=50, dim=8, seed=2):
    """ids [batch, seq] (int64) and mask [batch, seq] (float) -> mean of the embedded tokens: a Gather
    into a table of `rows` rows, which rejects any id >= rows."""
    r = np.random.default_rng(seed)
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], "embed"),
             helper.make_node("Unsqueeze", ["mask", "ax"], ["m3"], "unsq"),
             helper.make_node("Mul", ["e", "m3"], ["em"], "apply_mask"),
             helper.make_node("ReduceMean", ["em", "one"], ["y"], "pool", keepdims=0)]
    return _save(nodes, {"emb": r.standard_normal((rows, dim)).astype(np.float32), "ax": np.array([2], np.int64),
                         "one": np.array([1], np.int64)},
                 [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
                  helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", "seq"])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", dim])], path, opset=18)


def digits_batches(n=32):
    """Real data: scikit-learn's 8x8 digits, upsampled to 16x16, as (n, 1, 16, 16) float32."""
    from sklearn.datasets import load_digits

    x = load_digits().images[:n].astype(np.float32) / 16.0
    return np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)[:, None]


def quantize_qdq(fp32_path, out_path, calib):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False)
    return str(out_path)


def channel_mean(path, channels=4, length="L"):
    """x [batch, channels, length] -> its mean over the last axis. A length named L (not seq/len/token)
    is a symbolic size no generator can guess: only real inputs run it."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["y"], "mean", axes=[2], keepdims=0)]
    return _save(nodes, {}, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", channels, length])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", channels])], path)


def cli_exit(argv):
    """edgekit's CLI in this process: its exit code (0 when main returns)."""
    from edgekit.cli import main

    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def fp32_run(d, k: int):
    """A minimal compress output folder d: one fp32 artifact (a 1-MatMul chain of width k) and its Manifest,
    returned unwritten for the caller to add to."""
    from edgekit.artifact import Artifact, Manifest

    d.mkdir()
    matmul_chain(d / "model.fp32.onnx", 1, k=k)
    m = Manifest(artifacts=[Artifact("fp32", "model.fp32.onnx")])
    m.artifacts[0].refresh_file_facts(d)
    return m
