"""Readers for every --calib/--eval format, and the one-line errors for bad data."""
import zipfile

import numpy as np
import pytest
from PIL import Image

from edgekit.artifact import TensorSpec
from edgekit.calibration import LazyArray, read_dataset
from edgekit.errors import CalibrationError, InputError
from edgekit.resources import calibration_dir

IMG = [TensorSpec("input", ["batch", 1, 32, 32], "float32")]
TWO = [TensorSpec("ids", ["batch", 8], "int64"), TensorSpec("mask", ["batch", 8], "int64")]


def _one_line(e):
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_npy_streams_with_mmap(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 1, 32, 32)).astype(np.float32)
    np.save(tmp_path / "c.npy", x)
    ds = read_dataset(tmp_path / "c.npy", IMG)
    assert isinstance(ds.inputs["input"], np.memmap)
    assert len(ds) == 20 and ds.labels is None
    got = np.concatenate([b["input"] for b in ds.batches(6)])
    np.testing.assert_array_equal(got, x)
    assert len(read_dataset(tmp_path / "c.npy", IMG, limit=5)) == 5


def test_npy_float64_is_cast_per_batch(tmp_path):
    x = np.random.default_rng(0).normal(size=(4, 1, 32, 32))
    np.save(tmp_path / "c.npy", x)
    ds = read_dataset(tmp_path / "c.npy", IMG)
    b = next(ds.batches(2))["input"]
    assert b.dtype == np.float32 and b.shape == (2, 1, 32, 32)
    np.testing.assert_allclose(b, x[:2], rtol=1e-6)


def test_npz_multi_input_and_labels(tmp_path):
    ids = np.arange(80).reshape(10, 8)
    np.savez(tmp_path / "e.npz", ids=ids, mask=np.ones_like(ids), y=np.arange(10) % 3)
    ds = read_dataset(tmp_path / "e.npz", TWO, labels=True)
    assert ds.names == ["ids", "mask"] and isinstance(ds.inputs["ids"], np.memmap)
    np.testing.assert_array_equal(ds.labels, np.arange(10) % 3)
    # calibration ignores labels; compressed members load too
    np.savez_compressed(tmp_path / "c.npz", mask=np.ones_like(ids), ids=ids, y=np.arange(10))
    ds = read_dataset(tmp_path / "c.npz", TWO)
    assert ds.labels is None and ds.names == ["ids", "mask"]
    np.testing.assert_array_equal(next(ds.batches(4))["ids"], ids[:4])


def test_npz_without_labels_gives_none(tmp_path):
    np.savez(tmp_path / "e.npz", input=np.zeros((3, 1, 32, 32), np.float32))
    assert read_dataset(tmp_path / "e.npz", IMG, labels=True).labels is None


def test_image_folder_matches_the_model_preprocessing():
    from sklearn.datasets import load_digits

    from edgekit.zoo.digits_cnn import PREPOST, preprocess

    folder = calibration_dir() / "digits-cnn" / "images"
    ds = read_dataset(folder, IMG, preprocess=PREPOST)
    assert isinstance(ds.inputs["input"], LazyArray) and len(ds) >= 20
    batch = next(ds.batches(7))["input"]
    assert batch.shape == (7, 1, 32, 32) and batch.dtype == np.float32
    idx = [int(f.split("_")[1].split(".")[0]) for f in ds.extra["files"][:7]]
    np.testing.assert_allclose(batch, preprocess(load_digits().images[idx]), atol=1e-4)


def test_image_folder_rgb_nhwc_resize(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
    (tmp_path / "notes.txt").write_text("ignored")
    spec = [TensorSpec("img", [1, 24, 24, 3], "float32")]
    pre = {"pre": [{"op": "resize_normalize", "size": [24, 24], "mean": [127.5] * 3, "std": [127.5] * 3,
                    "layout": "NHWC"}]}
    ds = read_dataset(tmp_path, spec, preprocess=pre)
    x = np.asarray(ds.inputs["img"])
    assert x.shape == (3, 24, 24, 3) and -1.01 <= x.min() and x.max() <= 1.01


def test_text_file_is_tokenized(tmp_path):
    (tmp_path / "s.txt").write_text("a cat sat\n\n  the dog ran far  \nhi\n")

    def tok(sentences):
        ids = np.zeros((len(sentences), 8), np.int64)
        for i, s in enumerate(sentences):
            w = [len(t) for t in s.split()][:8]
            ids[i, :len(w)] = w
        return {"ids": ids, "mask": (ids > 0).astype(np.int64), "token_type_ids": np.zeros_like(ids)}

    ds = read_dataset(tmp_path / "s.txt", TWO, tokenizer=tok)
    assert len(ds) == 3 and ds.extra["sentences"][1] == "the dog ran far"
    assert ds.names == ["ids", "mask"]
    np.testing.assert_array_equal(ds.inputs["ids"][1, :4], [3, 3, 3, 3])


def test_shipped_digits_sets():
    root = calibration_dir() / "digits-cnn"
    calib = read_dataset(root / "calib.npy", IMG)
    ev = read_dataset(root / "eval.npz", IMG, labels=True)
    assert len(calib) == 256 and len(ev) == len(ev.labels) > 400
    assert set(np.unique(ev.labels)) == set(range(10))


# ------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("case", [
    "missing", "unknown_ext", "bad_npy", "bad_npz", "pickled", "wrong_names", "rank", "shape",
    "dtype", "empty", "bad_labels", "scalar_labels", "npy_multi", "no_tokenizer", "empty_txt", "empty_folder", "bad_image",
])
def test_bad_data_gets_one_clear_line(tmp_path, case):
    f = tmp_path / "data.npy"
    specs, kw = IMG, {}
    good = np.zeros((4, 1, 32, 32), np.float32)
    if case == "missing":
        f, err, frag = tmp_path / "nope.npy", InputError, "not found"
    elif case == "unknown_ext":
        f = tmp_path / "data.xlsx"
        f.write_text("1,2")
        err, frag = InputError, "unknown data format"
    elif case == "bad_npy":
        f.write_bytes(b"not numpy")
        err, frag = InputError, "not a valid .npy"
    elif case == "bad_npz":
        f = tmp_path / "data.npz"
        f.write_bytes(b"PK garbage")
        err, frag = InputError, "not a valid .npz"
    elif case == "pickled":
        np.save(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        err, frag = InputError, "not a valid .npy"
    elif case == "wrong_names":
        f = tmp_path / "data.npz"
        np.savez(f, image=good, extra=good)
        err, frag = CalibrationError, "missing input; unexpected image, extra"
    elif case == "rank":
        np.save(f, np.zeros((4, 32, 32), np.float32))
        err, frag = CalibrationError, "rank 3"
    elif case == "shape":
        np.save(f, np.zeros((4, 3, 32, 32), np.float32))
        err, frag = CalibrationError, "axis 1: 3 != 1"
    elif case == "dtype":
        np.save(f, np.zeros((4, 1, 32, 32), np.complex64))
        err, frag = CalibrationError, "complex64"
    elif case == "empty":
        np.save(f, np.zeros((0, 1, 32, 32), np.float32))
        err, frag = CalibrationError, "no samples"
    elif case == "bad_labels":
        f = tmp_path / "data.npz"
        np.savez(f, input=good, y=np.arange(3))
        err, frag, kw = CalibrationError, "3 labels", {"labels": True}
    elif case == "scalar_labels":  # was 'internal error: TypeError: len() of unsized object'
        f = tmp_path / "data.npz"
        np.savez(f, input=good, y=np.int64(3))
        err, frag, kw = CalibrationError, "labels 'y' hold one value (3), not one per sample (4)", {"labels": True}
    elif case == "npy_multi":
        np.save(f, np.zeros((4, 8), np.int64))
        specs, err, frag = TWO, CalibrationError, "use an .npz"
    elif case == "no_tokenizer":
        f = tmp_path / "s.txt"
        f.write_text("hello\n")
        err, frag = CalibrationError, "tokenizer"
    elif case == "empty_txt":
        f = tmp_path / "s.txt"
        f.write_text("\n \n")
        err, frag, kw = CalibrationError, "no sentences", {"tokenizer": lambda s: {}}
    elif case == "empty_folder":
        f = tmp_path / "imgs"
        f.mkdir()
        err, frag = CalibrationError, "no images"
    elif case == "bad_image":
        f = tmp_path / "imgs"
        f.mkdir()
        (f / "x.png").write_bytes(b"not a png")
        err, frag = InputError, "not a readable image"
    with pytest.raises(err) as e:
        ds = read_dataset(f, specs, **kw)
        next(ds.batches(2))  # image folders decode lazily
    msg = _one_line(e)
    assert frag in msg, msg
    assert f.name in msg, msg


def test_bool_and_float16_labels_are_class_indices(tmp_path):
    # bool labels (saved from y == 1) were 'dtype bool, expected integers'; float16 ones warned of an overflow
    # checking them against the int64 range (RuntimeWarning: overflow encountered in cast)
    import warnings

    good = np.zeros((4, 1, 32, 32), np.float32)
    np.savez(tmp_path / "b.npz", input=good, y=np.array([True, False, False, True]))
    np.savez(tmp_path / "h.npz", input=good, y=np.array([0, 3, 9, 1], np.float16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_dataset(tmp_path / "b.npz", IMG, labels=True).labels.tolist() == [1, 0, 0, 1]
        assert read_dataset(tmp_path / "h.npz", IMG, labels=True).labels.tolist() == [0, 3, 9, 1]


def test_int_to_float_allowed_but_float_to_int_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((2, 1, 32, 32), np.uint8))
    assert next(read_dataset(tmp_path / "a.npy", IMG).batches(2))["input"].dtype == np.float32
    np.savez(tmp_path / "b.npz", ids=np.ones((2, 8), np.float32), mask=np.ones((2, 8), np.int64))
    with pytest.raises(CalibrationError, match="lose information"):
        read_dataset(tmp_path / "b.npz", TWO)


def test_npz_member_memmap_offsets_survive_many_members(tmp_path):
    arrays = {f"a{i}": np.full((3, 2), i, np.int32) for i in range(5)}
    np.savez(tmp_path / "m.npz", **arrays)
    with zipfile.ZipFile(tmp_path / "m.npz") as z:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
    ds = read_dataset(tmp_path / "m.npz", [])
    for i in range(5):
        np.testing.assert_array_equal(ds.inputs[f"a{i}"], arrays[f"a{i}"])


def test_one_array_for_a_one_input_model_whatever_its_name(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 1, 32, 32), np.float32), y=np.arange(4))
    ds = read_dataset(tmp_path / "d.npz", IMG, labels=True)
    assert list(ds.inputs) == ["input"] and len(ds) == 4 and list(ds.labels) == [0, 1, 2, 3]


def test_zero_one_integer_masks_feed_a_bool_input(tmp_path):
    # tokenizers hand out int64 0/1 attention masks; a model taking a bool mask refused them
    spec = [TensorSpec("ids", ["batch", 6], "int64"), TensorSpec("mask", ["batch", 6], "bool")]
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 2, (10, 6))
    np.savez(tmp_path / "d.npz", ids=rng.integers(0, 50, (10, 6)), mask=mask)
    ds = read_dataset(str(tmp_path / "d.npz"), spec)
    got = np.asarray(ds.inputs["mask"][:])
    assert got.dtype == np.bool_ and np.array_equal(got, mask.astype(bool))
    mask[3, 2] = 2
    np.savez(tmp_path / "bad.npz", ids=rng.integers(0, 50, (10, 6)), mask=mask)
    with pytest.raises(CalibrationError, match=r"bad\.npz: input 'mask' is a bool input in the model, but holds 2"):
        read_dataset(str(tmp_path / "bad.npz"), spec)


@pytest.mark.parametrize("t", [np.full(6, 2.0, np.float32), np.float32(2.0)])
def test_a_scalar_model_input_is_named_as_what_cannot_be_batched(tmp_path, t):
    # per-sample values [N] read "has shape (6,) (rank 1); the model expects rank 0 [] with samples on axis
    # 0", and one value "is a scalar; expected a leading sample axis": no data could satisfy both
    np.savez(tmp_path / "d.npz", x=np.zeros((6, 16), np.float32), t=t)
    specs = [TensorSpec("x", ["n", 16], "float32"), TensorSpec("t", [], "float32")]
    with pytest.raises(CalibrationError) as e:
        read_dataset(tmp_path / "d.npz", specs)
    msg = _one_line(e)
    assert msg.startswith(f"{tmp_path / 'd.npz'}: input 't': the model takes it as a scalar (rank 0)"), msg
    assert "per-sample input ([N] or [N, 1])" in msg
