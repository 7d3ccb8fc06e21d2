"""Two misleading one-liners: a text file named .npy (numpy calls it pickled data), and macOS
AppleDouble '._x.png' files that aborted an image-folder run as unreadable images."""
import numpy as np
import pytest
from PIL import Image

from edgekit.artifact import TensorSpec
from edgekit.calibration import read_dataset
from edgekit.data_size import small_data_notes
from edgekit.errors import InputError
from edgekit.config import Tolerance

SPEC = [TensorSpec("input", ["batch", 3, 8, 8], "float32")]


@pytest.mark.parametrize("content", [b"hello\n", b"1.0,2.0,3.0\n4.0,5.0,6.0\n", b"\x80\x04K\x01."])
def test_a_file_without_an_npy_header_says_so(tmp_path, content):
    (tmp_path / "x.npy").write_bytes(content)
    with pytest.raises(InputError) as e:
        read_dataset(tmp_path / "x.npy", SPEC)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "x.npy") in msg and "not a valid .npy file (no NPY header" in msg, msg
    assert "pickle" not in msg


def test_hidden_files_in_an_image_folder_are_skipped_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / f"digit{i}.png")
    (tmp_path / "._digit0.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")  # AppleDouble
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / ".thumb.png")
    ds = read_dataset(tmp_path, SPEC)
    assert ds.extra["files"] == ["digit0.png", "digit1.png", "digit2.png"]
    assert np.asarray(ds.inputs["input"]).shape == (3, 3, 8, 8)
    assert ds.extra["hidden_skipped"] == 2
    notes = small_data_notes("classification", ds, None, tolerance=Tolerance.parse("1%"), static_int8=False)
    assert any("skipped 2 hidden file(s)" in n for n in notes), notes
