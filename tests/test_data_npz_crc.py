"""A damaged .npz is refused whether its members are compressed or stored: stored members are
memory-mapped, which bypasses zipfile's CRC check, so their CRC is verified by a streamed read."""
import zipfile

import numpy as np
import pytest

from edgekit.artifact import TensorSpec
from edgekit.calibration import read_dataset
from edgekit.errors import InputError

SPEC = [TensorSpec("input", ["batch", 4, 8], "float32")]


def _flipped(tmp_path, compressed):
    x = np.random.default_rng(0).normal(size=(200, 4, 8)).astype(np.float32)
    f = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(f, input=x, y=np.zeros(200, np.int64))
    with zipfile.ZipFile(f) as z:
        info = z.getinfo("input.npy")
        assert info.compress_type == (zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED)
    b = bytearray(f.read_bytes())
    b[info.header_offset + 30 + len("input.npy") + 128 + 1000] ^= 0xFF  # inside the array's data
    f.write_bytes(bytes(b))
    return f


@pytest.mark.parametrize("compressed", [False, True])
def test_a_flipped_byte_in_an_npz_member_is_one_line_naming_it(tmp_path, compressed):
    f = _flipped(tmp_path, compressed)
    with pytest.raises(InputError) as e:
        read_dataset(f, SPEC, labels=True)
    msg = str(e.value)
    assert "\n" not in msg and str(f) in msg and "member 'input'" in msg and "CRC" in msg, msg


def test_an_intact_stored_npz_is_still_memory_mapped(tmp_path):
    x = np.random.default_rng(1).normal(size=(10, 4, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", input=x)
    ds = read_dataset(tmp_path / "d.npz", SPEC)
    assert isinstance(ds.inputs["input"], np.memmap)
    np.testing.assert_array_equal(np.asarray(ds.inputs["input"]), x)
