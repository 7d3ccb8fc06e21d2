"""An image folder read for --calib/--eval is pre-processed exactly as the device's resize_normalize
does it (the op shipped in bundles), shrinking or enlarging, at odd sizes, grey, RGB and RGBA, so the
accuracy measured on the folder is the accuracy the device gets."""
import numpy as np
import pytest
from PIL import Image

from edgekit.artifact import TensorSpec
from edgekit.calibration import read_dataset
from edgekit.prepost import resize_normalize

ATOL = 1e-5  # float rounding of (pixel - mean) / std, on values of order 1


def _folder(tmp_path, px, ext="png"):
    d = tmp_path / "imgs"
    d.mkdir(exist_ok=True)
    Image.fromarray(px).save(d / f"a.{ext}")
    return d


@pytest.mark.parametrize("src,size", [((64, 64), (32, 32)), ((97, 61), (32, 32)), ((300, 200), (32, 32)),
                                      ((33, 31), (32, 32)), ((8, 8), (32, 32)), ((21, 45), (50, 17))])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_rgb_folder_equals_the_device_op(tmp_path, src, size, layout):
    img = np.random.default_rng(sum(src)).integers(0, 256, (*src, 3), dtype=np.uint8)
    d = _folder(tmp_path, img)
    mean, std = [123.7, 116.3, 103.5], [58.4, 57.1, 57.4]
    pre = {"pre": [{"op": "resize_normalize", "size": list(size), "mean": mean, "std": std, "layout": layout}]}
    shape = ["batch", 3, *size] if layout == "NCHW" else ["batch", *size, 3]
    got = np.asarray(read_dataset(d, [TensorSpec("input", shape, "float32")], preprocess=pre).inputs["input"])
    for backend in ("numpy", "numba"):
        want = resize_normalize(img, size, mean, std, layout, backend=backend)
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA"])
def test_grey_and_alpha_images_equal_the_device_op_on_their_decoded_pixels(tmp_path, mode):
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 256, (45, 37, 4), dtype=np.uint8), "RGBA").convert(mode)
    d = tmp_path / "imgs"
    d.mkdir()
    im.save(d / "a.png")
    for c in (1, 3):
        pre = {"pre": [{"op": "resize_normalize", "size": [16, 24], "mean": [10.0] * c, "std": [50.0] * c}]}
        got = np.asarray(read_dataset(d, [TensorSpec("input", ["batch", c, 16, 24], "float32")],
                                      preprocess=pre).inputs["input"])
        with Image.open(d / "a.png") as f:
            px = np.asarray(f.convert("L" if c == 1 else "RGB"))
        np.testing.assert_allclose(got, resize_normalize(px, (16, 24), [10.0] * c, [50.0] * c, backend="numpy"),
                                   rtol=0, atol=ATOL)


def test_crop_and_letterbox_modes_are_honoured(tmp_path):
    img = np.random.default_rng(2).integers(0, 256, (40, 90, 3), dtype=np.uint8)
    d = _folder(tmp_path, img)
    for step in ({"mode": "crop", "crop_fraction": 0.875}, {"mode": "letterbox", "pad_value": 0.0},
                 {"swap_rb": True}):
        pre = {"pre": [{"op": "resize_normalize", "size": [24, 24], **step}]}
        got = np.asarray(read_dataset(d, [TensorSpec("input", ["batch", 3, 24, 24], "float32")],
                                      preprocess=pre).inputs["input"])
        np.testing.assert_allclose(got, resize_normalize(img, (24, 24), **step, backend="numpy"), rtol=0, atol=ATOL)


def test_a_shipped_photo_shrunk_equals_the_device_op():
    from edgekit.resources import calibration_dir

    src = sorted((calibration_dir() / "efficientnet-lite0" / "images").glob("*.png"))[0]
    with Image.open(src) as im:
        img = np.asarray(im.convert("RGB"))
    import shutil
    import tempfile
    with tempfile.TemporaryDirectory() as t:
        shutil.copy(src, t)
        pre = {"pre": [{"op": "resize_normalize", "size": [64, 64]}]}
        got = np.asarray(read_dataset(t, [TensorSpec("input", ["batch", 3, 64, 64], "float32")],
                                      preprocess=pre).inputs["input"])
    np.testing.assert_allclose(got, resize_normalize(img, (64, 64), backend="numpy"), rtol=0, atol=ATOL)


@pytest.mark.parametrize("size", [(7, 5), (16, 16), (30, 9)])
def test_sixteen_bit_images_resize_with_the_device_maths(tmp_path, size):
    # the device op takes uint8: a 16-bit image that happens to hold only multiples of 257 is a uint8
    # image in disguise and must come out exactly as the device op computes on that uint8 image
    u8 = np.random.default_rng(3).integers(0, 256, (16, 16), dtype=np.uint8)
    d = _folder(tmp_path, u8.astype(np.uint16) * 257)
    with Image.open(d / "a.png") as im:
        assert im.mode.startswith("I;16")
    pre = {"pre": [{"op": "resize_normalize", "size": list(size), "mean": [20.0], "std": [60.0]}]}
    got = np.asarray(read_dataset(d, [TensorSpec("input", ["batch", 1, *size], "float32")],
                                  preprocess=pre).inputs["input"])
    np.testing.assert_allclose(got, resize_normalize(u8, size, 20.0, 60.0, backend="numpy"), rtol=0, atol=ATOL)
