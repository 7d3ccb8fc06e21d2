"""The numeric check of an INT8 artifact measures the error quantization made, against the file it
quantized (sweep38 F1): the INT8 copy of a pruned, distilled model was measured against the unpruned FP32
model, so the distilled model's own 33% distance from it read as a scale error of an INT8 file 3% from its
parent, and withdrew its recommendation."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.dataset import Dataset
from edgekit.evaluate import Evaluator


def _scale(path, k):
    """y = k * x, [N, 4] -> [N, 4]."""
    g = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "s",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(np.array(k, np.float32), "k")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_numeric_error_is_measured_against_the_file_quantized(tmp_path):
    ds = Dataset({"x": np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)}, None, "d")
    fp32 = _scale(tmp_path / "fp32.onnx", 1.0)
    parent = _scale(tmp_path / "distilled.onnx", 1.5)  # a student whose outputs sit 50% from FP32's
    child = _scale(tmp_path / "child.onnx", 1.53)  # its INT8 copy: 2% from the student
    ev = Evaluator(ds, "embedding", fp32)
    vs_fp32 = ev(child, numeric=True)["numeric"]["y"]["median_rel_err"]
    vs_parent = ev(child, numeric=True, numeric_against=parent)["numeric"]["y"]["median_rel_err"]
    assert abs(vs_fp32 - 0.53) < 1e-3  # still available: the metric stays measured against FP32
    assert abs(vs_parent - 0.02) < 1e-3
    # the metric itself is unchanged by numeric_against
    assert ev(child, numeric=True, numeric_against=parent)["value"] == ev(child, numeric=True)["value"]


def test_a_manifest_keeps_the_time_of_its_first_write(monkeypatch):
    # sweep39 F5: report.json copies 'created' from the manifest written before the report stage, and the
    # final write stamped a new time, 4-13 s later
    import datetime as dt

    from edgekit import artifact

    m = artifact.Manifest()
    first = m.to_dict()["created"]

    class Later(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime(2030, 1, 1, tzinfo=tz)

    monkeypatch.setattr(artifact._dt, "datetime", Later)
    assert m.to_dict()["created"] == first and not first.startswith("2030")
    assert artifact.Manifest().to_dict()["created"].startswith("2030")  # a new manifest takes the time now
