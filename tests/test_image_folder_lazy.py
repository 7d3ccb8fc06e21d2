"""An image folder is decoded only where a run uses it: reading it decodes nothing, and check_images decodes
the samples a stage will use once each, so 5000 photos cost no more than the 16 calibrated on."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import edgekit.calibration as calibration
from edgekit.artifact import TensorSpec
from edgekit.calibration import read_dataset
from edgekit.errors import InputError
from tests.cliutil import run_cli
from tests.test_calibration_sweep33 import _image_model
from tests.test_quant_foreign_onnx import digits

IMG = [TensorSpec("img", ["n", 1, 8, 8], "float32")]


def _folder(path, n, broken=(), prefix="d"):
    x, _ = digits(n)
    path.mkdir()
    for i, v in enumerate(x):
        Image.fromarray(np.rint(v.reshape(8, 8) * 255).astype(np.uint8)).save(path / f"{prefix}{i:03d}.png")
    for i in broken:
        (path / f"{prefix}{i:03d}.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return path


@pytest.fixture
def decoded(monkeypatch):
    """The names of the files the reader really decoded (Pillow's decode, counted)."""
    names, real = [], calibration._decode

    def counting(path, channels):
        names.append(path.name)
        return real(path, channels)

    monkeypatch.setattr(calibration, "_decode", counting)
    return names


def test_reading_a_folder_decodes_nothing_and_a_check_only_the_samples_used(tmp_path, decoded):
    folder = _folder(tmp_path / "im", 300, broken=[250])
    ds = read_dataset(folder, IMG)
    assert len(ds) == 300 and decoded == []  # 300 decodes (and the broken file's error) before the fix
    calibration.check_images(ds, 32)
    assert decoded == [f"d{i:03d}.png" for i in range(32)]
    calibration.check_images(ds, 16)  # checked already: free
    assert len(decoded) == 32
    first = np.asarray(ds.inputs["img"][:32])
    assert first.shape == (32, 1, 8, 8) and "d250.png" not in decoded
    # the same samples, in the same order, as every file decoded up front gave
    x, _ = digits(32)
    np.testing.assert_allclose(first.reshape(32, 64), np.rint(x * 255) / 255, atol=1e-6)
    with pytest.raises(InputError) as e:
        calibration.check_images(ds, None)
    assert str(e.value).startswith(f"{folder / 'd250.png'}: not a readable image") and "\n" not in str(e.value)


def test_a_limited_read_checks_within_its_limit(tmp_path, decoded):
    folder = _folder(tmp_path / "im", 40, broken=[20])
    ds = read_dataset(folder, IMG, limit=10)
    calibration.check_images(ds, None)  # all of the 10 read, none beyond
    assert decoded == [f"d{i:03d}.png" for i in range(10)]


def test_a_broken_image_beyond_the_samples_used_does_not_stop_quantize(tmp_path, decoded):
    model = _image_model(tmp_path / "img.onnx")
    calib = _folder(tmp_path / "calib", 300, broken=[64, 250])  # d064: the first file past the samples used
    evalset = _folder(tmp_path / "eval", 40, prefix="e")
    rc = run_cli(["quantize", str(model), "--calib", str(calib), "--calib-size", "64", "--eval", str(evalset),
                  "--no-tune", "-o", str(tmp_path / "out")])
    assert rc == 0
    calibrated = {n for n in decoded if n.startswith("d")}  # before: all 300, and exit 2 on d064.png
    # the 64 calibrated on and none past them (the calibration cache's data hash read one batch past)
    assert calibrated == {f"d{i:03d}.png" for i in range(64)}


def test_compress_refuses_a_broken_calibrated_image_before_any_stage(tmp_path, capsys, decoded):
    model = _image_model(tmp_path / "img.onnx")
    calib = _folder(tmp_path / "calib", 300, broken=[5])  # calibrated on: the first 256
    rc = run_cli(["compress", str(model), "--calib", str(calib), "--no-profile",
                  "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"edgekit: error: {calib / 'd005.png'}: not a readable image" in err and "candidate" not in err, err
    # read in order up to the broken file, before the held-out slice is scored or the model exported
    assert decoded == [f"d{i:03d}.png" for i in range(6)] and not (tmp_path / "out").exists()
