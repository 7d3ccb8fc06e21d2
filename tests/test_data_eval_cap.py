"""Without --eval, fidelity is scored on at most MAX_EVAL held-out calibration samples: the README and
the run's note say so, so nobody believes 20,000 samples were scored."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.dataset import Dataset
from edgekit.quant.fidelity import MAX_EVAL, fidelity_evaluator
from edgekit.resources import calibration_dir


def _model(path):
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
                          [numpy_helper.from_array(np.ones((4, 3), np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def test_the_note_says_how_many_held_out_samples_are_scored_of_how_many(tmp_path):
    data = Dataset({"x": np.zeros((2000, 4), np.float32)}, None, "big.npy")
    _, note = fidelity_evaluator(_model(tmp_path / "m.onnx"), data, calib_size=256)
    assert f"on {MAX_EVAL} calibration samples not used for calibrating" in note
    assert f"at most {MAX_EVAL} are scored, {2000 - 256 - MAX_EVAL} more unused" in note and "--eval" in note, note
    _, note = fidelity_evaluator(tmp_path / "m.onnx", data.take(300), calib_size=256)
    assert "at most" not in note  # all 44 held-out samples were scored


def test_the_readme_documents_the_cap():
    text = " ".join((calibration_dir() / "README.md").read_text().split())
    assert f"at most {MAX_EVAL} of them" in text and "give `--eval` to score a larger set" in text
