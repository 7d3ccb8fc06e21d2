"""sweep33: a compressed .npz member streams instead of being inflated whole (F1); a broken image anywhere in
a folder is a data error before any quantization work (F2); a fixed-batch model's small-calibration note
counts the samples it calibrates on (F4) and its metrics record the batch it ran at (F5)."""
from __future__ import annotations

import io
import json
import tracemalloc
import zipfile

import numpy as np
import onnx
import pytest

from edgekit.artifact import TensorSpec
from edgekit.calibration import read_dataset
from edgekit.config import Tolerance
from edgekit.data_size import small_data_notes
from edgekit.errors import CalibrationError, InputError
from tests.cliutil import run_cli
from tests.test_quant_foreign_onnx import digits, digits_mlp

IDS = [TensorSpec("ids", ["batch", 64], "int64")]
VEC = [TensorSpec("x", ["batch", 64], "float32")]


# ------------------------------------------------------------------ F1: compressed .npz members stream

def test_a_compressed_npz_member_is_not_inflated_whole(tmp_path):
    # 51 MB of int64 ids, compressed to almost nothing: it was read whole (peak >= 51 MB) to use a few rows
    x = np.zeros((100_000, 64), np.int64)
    x[:, 0] = np.arange(len(x))
    np.savez_compressed(tmp_path / "d.npz", ids=x)
    del x
    tracemalloc.start()
    try:
        ds = read_dataset(tmp_path / "d.npz", IDS)
        first = [b["ids"] for _, b in zip(range(2), ds.batches(32))]
        late = np.asarray(ds.inputs["ids"][90_000:90_500])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak / 2 ** 20:.1f} MiB"
    assert [b[:, 0].tolist() for b in first] == [list(range(32)), list(range(32, 64))]
    assert late[:, 0].tolist() == list(range(90_000, 90_500)) and len(ds) == 100_000


def test_streamed_rows_equal_the_file_in_any_order_of_reading(tmp_path):
    r = np.random.default_rng(0)
    x = r.normal(size=(300, 64)).astype(np.float64)  # cast to float32 per batch, as a memory map is
    np.savez_compressed(tmp_path / "d.npz", x=x, y=r.integers(0, 10, 300))
    ds = read_dataset(tmp_path / "d.npz", VEC, labels=True)
    a = ds.inputs["x"]
    np.testing.assert_array_equal(np.asarray(a[200:260]), x[200:260].astype(np.float32))
    np.testing.assert_array_equal(np.asarray(a[5:9]), x[5:9].astype(np.float32))  # before the stream's position
    rows = r.permutation(300)[:50]
    np.testing.assert_array_equal(np.asarray(ds.subset(rows, "s").inputs["x"][:]), x[rows].astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in ds.batches(64)]), x.astype(np.float32))
    assert ds.labels.shape == (300,)


def test_a_stack_of_fixed_batches_in_a_compressed_member_is_merged(tmp_path):
    x = np.arange(6 * 4 * 64, dtype=np.float32).reshape(6, 4, 64)
    np.savez_compressed(tmp_path / "d.npz", x=x)
    ds = read_dataset(tmp_path / "d.npz", [TensorSpec("x", [4, 64], "float32")])
    assert len(ds) == 24
    np.testing.assert_array_equal(np.asarray(ds.inputs["x"][4:12]), x.reshape(24, 64)[4:12])


def test_checks_still_see_every_value_of_a_compressed_member(tmp_path):
    x = np.zeros((500, 64), np.float32)
    x[437, 3] = np.nan
    np.savez_compressed(tmp_path / "nan.npz", x=x)
    with pytest.raises(CalibrationError, match=r"nan\.npz: input 'x' has NaN or infinite values \(first in sample 437\)"):
        read_dataset(tmp_path / "nan.npz", VEC)
    np.savez_compressed(tmp_path / "f.npz", x=np.asfortranarray(np.arange(640, dtype=np.float32).reshape(10, 64)))
    np.testing.assert_array_equal(np.asarray(read_dataset(tmp_path / "f.npz", VEC).inputs["x"][3:5]),
                                  np.arange(640, dtype=np.float32).reshape(10, 64)[3:5])


def test_a_compressed_member_shorter_than_its_header_is_refused(tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.zeros((50, 64), np.float32))
    with zipfile.ZipFile(tmp_path / "short.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", buf.getvalue()[:-64 * 4 * 3])  # three rows missing
    with pytest.raises(InputError) as e:
        read_dataset(tmp_path / "short.npz", VEC)
    msg = str(e.value)
    assert f"{tmp_path / 'short.npz'}: member 'x' is not a valid array" in msg and "\n" not in msg, msg


# ------------------------------------------------------------------ F2: a broken image is a data error up front

def _image_model(path):
    """img[N, 1, 8, 8] -> Flatten -> the digits MLP."""
    m = onnx.load(str(digits_mlp(path)))
    m.graph.node.insert(0, onnx.helper.make_node("Flatten", ["img"], ["x"], "flat"))
    del m.graph.input[:]
    m.graph.input.append(onnx.helper.make_tensor_value_info("img", onnx.TensorProto.FLOAT, ["n", 1, 8, 8]))
    onnx.save(m, str(path))
    return path


def test_a_broken_image_in_the_calibration_part_of_a_folder_is_exit_2_before_any_candidate(tmp_path, capsys):
    from PIL import Image

    model = _image_model(tmp_path / "img.onnx")
    x, _ = digits(60)
    folder = tmp_path / "im"
    folder.mkdir()
    for i, v in enumerate(x):
        Image.fromarray(np.rint(v.reshape(8, 8) * 255).astype(np.uint8)).save(folder / f"d{i:03d}.png")
    (folder / "d005.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")  # calibrated on, not scored
    (tmp_path / "pre.json").write_text(json.dumps(
        {"pre": [{"op": "resize_normalize", "size": [8, 8], "mean": [0], "std": [255], "layout": "NCHW"}]}))
    rc = run_cli(["quantize", str(model), "--calib", str(folder), "--calib-size", "32", "--preprocess",
                  str(tmp_path / "pre.json"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"edgekit: error: {folder / 'd005.png'}: not a readable image" in err, err
    assert "candidate" not in err and not (tmp_path / "out").exists()


# ------------------------------------------------------------------ F4/F5: a fixed-batch model's numbers

def _fixed_batch_mlp(path, batch=4):
    m = onnx.load(str(digits_mlp(path)))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = batch
    onnx.save(m, str(path))
    return path


def test_the_small_calibration_note_counts_whole_batches_only(tmp_path):
    np.save(tmp_path / "c7.npy", digits(7)[0])
    fixed = read_dataset(tmp_path / "c7.npy", [TensorSpec("x", [4, 64], "float32")])
    tol = Tolerance.parse("1%")
    note = small_data_notes("classification", fixed, None, tolerance=tol, static_int8=True, calib_size=256)
    assert note and note[0].startswith("only 4 calibration sample(s) used (the first 4 of 7: the model's fixed "
                                       "batch of 4 takes whole batches only)"), note
    note = small_data_notes("classification", fixed, None, tolerance=tol, static_int8=True, calib_size=6)
    assert note[0].startswith("only 4 calibration sample(s) used (--calib-size 6 of 7, rounded down to whole "
                              "batches of the model's fixed batch of 4)"), note
    dynamic = read_dataset(tmp_path / "c7.npy", VEC)
    note = small_data_notes("classification", dynamic, None, tolerance=tol, static_int8=True, calib_size=256)
    assert note[0].startswith("only 7 calibration sample(s): "), note


def test_a_fixed_batch_model_is_scored_and_recorded_at_its_own_batch(tmp_path):
    from edgekit.evaluate import Evaluator

    np.savez(tmp_path / "e.npz", x=digits(30)[0], y=digits(30)[1])
    fixed = _fixed_batch_mlp(tmp_path / "b4.onnx")
    dynamic = digits_mlp(tmp_path / "dyn.onnx")
    ev = read_dataset(tmp_path / "e.npz", VEC, labels=True)
    res = Evaluator(ev, "classification", fixed)(fixed)
    assert res["batch"] == 4 and res["n"] == 30  # was 64: run_batches runs such a graph in chunks of 4
    assert Evaluator(ev, "classification", dynamic)(dynamic)["batch"] == 64
    assert res["value"] == Evaluator(ev, "classification", dynamic)(dynamic)["value"]


def test_a_fixed_batch_model_records_the_batch_it_ran_and_the_samples_it_calibrated_on(tmp_path, capsys):
    from edgekit.cli.quantize import quantize_file

    model = _fixed_batch_mlp(tmp_path / "b4.onnx")
    np.save(tmp_path / "c7.npy", digits(7)[0])
    man = quantize_file(str(model), output=str(tmp_path / "out"), calib=str(tmp_path / "c7.npy"), tune=False)
    err = capsys.readouterr().err
    assert "note: only 4 calibration sample(s) used (the first 4 of 7" in err, err
    assert "only 7 calibration" not in err
    assert [a.metrics["batch"] for a in man.artifacts] == [4, 4]
    assert man.artifacts[1].verify["batch"] == 4
    # F3: the INT8 artifact records the samples it was calibrated on (it said the 256 asked for)
    assert man.artifacts[1].settings["calib_size"] == 4


def test_the_int8_artifact_records_the_samples_it_was_calibrated_on(tmp_path):
    from edgekit.cli.quantize import quantize_file

    model = digits_mlp(tmp_path / "m.onnx")
    np.save(tmp_path / "c3.npy", digits(3)[0])
    man = quantize_file(str(model), output=str(tmp_path / "out"), calib=str(tmp_path / "c3.npy"), tune=False)
    int8 = next(a for a in man.artifacts if a.kind == "int8")
    assert int8.settings["calib_size"] == 3
