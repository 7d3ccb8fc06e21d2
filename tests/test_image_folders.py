"""Image folders as --calib/--eval: spec validation, 16-bit images, and the implied pre-processing
recorded for the device."""
import json
import textwrap

import numpy as np
import pytest
from PIL import Image

from edgekit.artifact import TensorSpec
from edgekit.calibration import implied_prepost, read_dataset
from edgekit.errors import CalibrationError, InputError
from tests.test_quant_cli import _cli


def _spec(c=3, h=8, w=8):
    return [TensorSpec("input", ["batch", c, h, w], "float32")]


def test_mean_with_the_wrong_number_of_values_is_refused(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    pre = {"pre": [{"op": "resize_normalize", "size": [8, 8], "mean": [1, 2, 3], "std": [255], "layout": "NCHW"}]}
    with pytest.raises(CalibrationError, match="mean has 3 values; the model's images have 1 channel"):
        read_dataset(tmp_path, _spec(c=1), preprocess=pre)
    pre["pre"][0].update(mean=[1, 2], std=[255])
    with pytest.raises(CalibrationError, match="mean has 2 values"):
        read_dataset(tmp_path, _spec(c=3), preprocess=pre)


def test_sixteen_bit_grey_images_are_scaled_not_clipped(tmp_path):
    px = np.array([[0, 257 * 100], [65535, 257 * 200]], dtype=np.uint16)
    Image.fromarray(px).save(tmp_path / "depth.png")
    assert Image.open(tmp_path / "depth.png").mode.startswith("I;16")
    ds = read_dataset(tmp_path, _spec(c=1, h=2, w=2))
    got = np.asarray(ds.inputs["input"][:])[0, 0]
    np.testing.assert_allclose(got, px / 65535.0, atol=1e-6)  # default: 0..1 over the full 16-bit range


def test_float_images_are_refused_in_one_line(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.float32)).save(tmp_path / "f.tiff")
    (tmp_path / "f.png").write_bytes((tmp_path / "f.tiff").read_bytes())  # a TIFF under a .png name
    with pytest.raises(InputError, match="float pixels"):
        np.asarray(read_dataset(tmp_path, _spec(c=1, h=4, w=4)).inputs["input"][:])


def test_implied_prepost_for_a_folder_without_a_spec(tmp_path):
    (tmp_path / "imgs").mkdir()
    assert implied_prepost(tmp_path / "imgs", _spec(), None)["pre"][0] == {
        "op": "resize_normalize", "size": [8, 8], "mean": [0.0] * 3, "std": [255.0] * 3, "layout": "NCHW"}
    declared = {"pre": [{"op": "resize_normalize", "size": [8, 8], "mean": [1], "std": [2]}]}
    assert implied_prepost(tmp_path / "imgs", _spec(), declared) is None
    assert implied_prepost(tmp_path / "x.npy", _spec(), None) is None


def test_compress_records_the_pre_processing_calibration_used(tmp_path):
    (tmp_path / "cnn.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        def build():
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    """))
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (12, 14, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    r = _cli("compress", "cnn.py:build", "--calib", "imgs", "--input-shape", "1,3,10,10", "--no-profile", "--no-tune",
             "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    pre = json.loads((tmp_path / "out" / "manifest.json").read_text())["prepost"]["pre"][0]
    assert pre["size"] == [10, 10] and pre["std"] == [255.0] * 3, pre
    # a guess shipped with the model: said where the user reads it
    assert "edgekit: note: images read as pixels scaled to 0..1 (mean 0, std 255)" in r.stderr


CNNS = textwrap.dedent("""
    import torch.nn as nn

    def grey():
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def rgb_fixed():  # takes 3 x 8 x 8 only
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
""")


@pytest.mark.parametrize("factory,pre,shape", [
    ("grey", None, [1, 12, 14]),  # the images' own size, 1 channel found by running the model
    ("grey", {"size": [8, 8], "mean": [0.5], "std": [0.25]}, [1, 8, 8]),
    ("rgb_fixed", {"size": [8, 8], "mean": [0.0], "std": [255.0]}, [3, 8, 8]),
])
def test_image_folder_gives_a_pytorch_model_its_input_without_input_shape(tmp_path, factory, pre, shape):
    (tmp_path / "cnn.py").write_text(CNNS)
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (12, 14), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    args = ["--preprocess", json.dumps({"pre": [{"op": "resize_normalize", **pre}]})] if pre else []
    r = _cli("compress", f"cnn.py:{factory}", "--calib", "imgs", *args, "--no-profile", "--no-tune", "-o", "out",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["artifacts"][0]["inputs"][0]["shape"] == ["batch", *shape]
    assert man["prepost"]["pre"][0]["size"] == shape[1:]


def test_image_folder_that_fits_no_channel_count_is_one_line(tmp_path):
    (tmp_path / "cnn.py").write_text(CNNS)
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((12, 14), np.uint8)).save(tmp_path / "imgs" / "a.png")
    r = _cli("compress", "cnn.py:rgb_fixed", "--calib", "imgs", "--no-profile", "-o", "out", cwd=tmp_path)
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1, err
    assert "imgs: cnn.py:rgb_fixed runs on none of the images" in err and "--input-shape" in err
    assert not (tmp_path / "out").exists()
