"""An ONNX model with a non-tensor input or output (skl2onnx's ZipMap: a sequence of {class: probability} maps)
is refused in one line naming the file, the output and the way out: it was an internal error (KeyError: 0)
after the export stage had started writing."""
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.errors import InputError
from edgekit.loader import load_source


def _classifier(path, *, zipmap: bool):
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["p"]),
             helper.make_node("ArgMax", ["p"], ["label"], axis=1, keepdims=0)]
    outs = [helper.make_tensor_value_info("label", TensorProto.INT64, ["n"])]
    opsets = [helper.make_opsetid("", 17)]
    if zipmap:
        nodes.append(helper.make_node("ZipMap", ["p"], ["probabilities"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]))
        outs.append(helper.make_value_info("probabilities", helper.make_sequence_type_proto(
            helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))))
        opsets.append(helper.make_opsetid("ai.onnx.ml", 3))
    else:
        outs.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 3]))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])], outs, [w])
    m = helper.make_model(g, opset_imports=opsets)
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def test_a_zipmap_output_is_refused_with_the_way_out(tmp_path):
    p = _classifier(tmp_path / "skl.onnx", zipmap=True)
    with pytest.raises(InputError, match=r"skl.onnx: output 'probabilities' is a sequence of maps, not a tensor; .*"
                                         r"'zipmap': False"):
        load_source(str(p))
    np.savez(tmp_path / "calib.npz", x=np.zeros((8, 4), np.float32))
    r = subprocess.run([sys.executable, "-m", "edgekit", "compress", str(p), "--calib", str(tmp_path / "calib.npz"),
                        "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "output 'probabilities' is a sequence of maps" in r.stderr
    assert not (tmp_path / "out").exists()


def test_the_same_classifier_with_tensor_outputs_loads(tmp_path):
    src = load_source(str(_classifier(tmp_path / "skl.onnx", zipmap=False)))
    assert src.outputs == ["label", "p"]
