"""A model big enough for the GPU's arithmetic to matter (digits-cnn is launch-bound there): four 2048x2048
MatMul + Relu layers, batch 64, weights scaled so activations stay O(1), and 256 calibration rows.

    python benchmarks/gpu/wide_mlp.py DIR   ->  DIR/mlp.onnx, DIR/calib.npy
"""
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH, LAYERS, BATCH = 2048, 4, 64


def main(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for i in range(LAYERS):
        w = (rng.standard_normal((WIDTH, WIDTH)) * np.sqrt(2.0 / WIDTH)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]))
        x = f"r{i}" if i < LAYERS - 1 else "y"
        nodes.append(helper.make_node("Relu" if i < LAYERS - 1 else "Identity", [f"m{i}"], [x]))
    g = helper.make_graph(nodes, "wide_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, WIDTH])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, WIDTH])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), d / "mlp.onnx")
    np.save(d / "calib.npy", rng.standard_normal((4 * BATCH, WIDTH)).astype(np.float32))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
