"""Data that reaches the model through a dtype cast is checked on its own values: NaN/inf, integers
outside the target's range (they would wrap) and finite floats beyond it (they would become inf)
are one line naming the file, the input and the first bad sample, exit 2 from the CLI."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.artifact import TensorSpec
from edgekit.calibration import read_dataset
from edgekit.errors import CalibrationError
from tests.test_quant_cli import _cli

F32 = [TensorSpec("x", ["batch", 4], "float32")]
F16 = [TensorSpec("x", ["batch", 4], "float16")]
I32 = [TensorSpec("ids", ["batch", 4], "int32")]


def _refused(path, specs, **kw):
    with pytest.raises(CalibrationError) as e:
        read_dataset(path, specs, **kw)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


@pytest.mark.parametrize("dtype,specs,bad", [(np.float64, F32, np.nan), (np.float64, F32, -np.inf),
                                             (np.float16, F32, np.inf), (np.float32, F16, np.nan),
                                             (np.float64, F16, np.inf)])
def test_non_finite_values_are_refused_after_a_cast(tmp_path, dtype, specs, bad):
    x = np.ones((50, 4), dtype)
    x[37, 2] = bad
    np.save(tmp_path / "c.npy", x)
    msg = _refused(tmp_path / "c.npy", specs)
    assert "input 'x' has NaN or infinite values (first in sample 37)" in msg


def test_an_eval_set_with_a_nan_sample_is_refused_not_scored(tmp_path):
    x = np.ones((20, 4))
    x[3] = np.nan
    np.savez(tmp_path / "e.npz", x=x, y=np.zeros(20, np.int64))
    assert "(first in sample 3)" in _refused(tmp_path / "e.npz", F32, labels=True)


@pytest.mark.parametrize("dtype,value", [(np.int64, 2**33 + 7), (np.int64, -2**31 - 1), (np.uint32, 2**31)])
def test_integers_that_would_wrap_are_refused(tmp_path, dtype, value):
    ids = np.arange(400, dtype=dtype).reshape(100, 4)
    ids[61, 1] = value
    np.save(tmp_path / "ids.npy", ids)
    msg = _refused(tmp_path / "ids.npy", I32)
    assert f"input 'ids' holds {value}, outside the range of int32" in msg and "(first in sample 61)" in msg


def test_integers_within_range_still_cast(tmp_path):
    ids = np.array([[0, 1, 2**31 - 1, -2**31]] * 3, np.int64)
    np.save(tmp_path / "ids.npy", ids)
    got = next(read_dataset(tmp_path / "ids.npy", I32).batches(3))["ids"]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, ids)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int64])
def test_finite_values_that_overflow_float16_are_refused(tmp_path, dtype):
    x = np.ones((10, 4), dtype)
    x[4, 0] = 1e6 if dtype != np.int64 else 70000
    np.save(tmp_path / "c.npy", x)
    msg = _refused(tmp_path / "c.npy", F16)
    assert "beyond the range of float16" in msg and "(first in sample 4)" in msg


def test_the_check_streams_in_chunks(tmp_path):
    # a value in the last sample of a file larger than one chunk is still found, by its global index
    from edgekit import calibration

    x = np.ones((3000, 4), np.float64)
    x[2999, 3] = np.nan
    np.save(tmp_path / "c.npy", x)
    starts = [a for a, _ in calibration._chunks(np.load(tmp_path / "c.npy", mmap_mode="r"), budget=4096)]
    assert len(starts) > 1
    assert "(first in sample 2999)" in _refused(tmp_path / "c.npy", F32)


def test_cli_refuses_int64_ids_beyond_int32_with_exit_2(tmp_path):
    g = helper.make_graph([helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT),
                           helper.make_node("MatMul", ["f", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("ids", TensorProto.INT32, ["batch", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
                          [numpy_helper.from_array(np.ones((4, 3), np.float32), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "m.onnx")
    ids = np.zeros((40, 4), np.int64)
    ids[9, 0] = 2**33 + 7
    np.save(tmp_path / "ids.npy", ids)
    r = _cli("quantize", "m.onnx", "--calib", "ids.npy", "--mode", "int8-dynamic", "--no-tune", "-o", "out",
             cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and "ids.npy" in lines[0] and "8589934599" in lines[0] and "sample 9" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()
