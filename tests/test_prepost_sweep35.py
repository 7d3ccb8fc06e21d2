"""sweep35 F1-F4: the on-device warm-up writes nothing into the flashed version and warms the runner's cache,
compress refuses swap_rb for a grey model, softmax_topk's kernel is O(C log k) with unchanged results, and
nms refuses boxes whose areas overflow."""
import json
from pathlib import Path

import numpy as np
import pytest

from edgekit import prepost as pp
from edgekit.artifact import TensorSpec
from edgekit.prepost import PrepostError, nms
from edgekit.prepost.fit import check_pre_fits
from tests.test_prepost_spec_checks import _classifier, _compress

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ["numba", "numpy"] if pp.HAVE_NUMBA else ["numpy"]

# ------------------------------------------------------------------------ F2: swap_rb and a grey model


def test_compress_refuses_swap_rb_for_a_grey_model(tmp_path, capsys):
    # swap_rb fixes 3 or 4 channels as several mean/std values do; a 1-channel model was accepted, bundled,
    # and every raw input failed on the device
    _classifier(tmp_path / "grey.onnx", 1)
    np.save(tmp_path / "calib.npy", np.random.default_rng(1).random((16, 1, 8, 8)).astype(np.float32))
    spec = tmp_path / "grey_swap.json"
    spec.write_text(json.dumps({"pre": [{"op": "resize_normalize", "size": [8, 8], "mean": 127.5, "std": 127.5,
                                         "swap_rb": True}]}))
    rc, err, out = _compress(tmp_path, "grey.onnx", "calib.npy", str(spec), capsys)
    assert rc == 2 and err == [
        f"edgekit: error: {spec}: the pre-processing gives 'x' shape [1, 3, 8, 8] (prepost.pre[0] "
        f"(resize_normalize): swap_rb needs 3 or 4 channels), but {tmp_path / 'grey.onnx'} takes [N, 1, 8, 8]"], err
    assert not out.exists()


@pytest.mark.parametrize("layout, shape", [("NCHW", ["N", 3, 8, 8]), ("NCHW", ["N", 4, 8, 8]),
                                           ("NHWC", ["N", 8, 8, 3]), ("NCHW", ["N", "c", 8, 8])])
def test_swap_rb_still_fits_three_and_four_channel_models(layout, shape):
    spec = {"pre": [{"op": "resize_normalize", "size": [8, 8], "swap_rb": True, "layout": layout}]}
    check_pre_fits(spec, [TensorSpec("x", shape, "float32")], "m.onnx", "s.json")


def test_swap_rb_on_a_grey_nhwc_model_is_refused():
    spec = {"pre": [{"op": "resize_normalize", "size": [8, 8], "swap_rb": True, "layout": "NHWC"}]}
    with pytest.raises(PrepostError, match=r"^s\.json: .*swap_rb needs 3 or 4 channels\), but m\.onnx takes "
                                           r"\[N, 8, 8, 1\]$"):
        check_pre_fits(spec, [TensorSpec("x", ["N", 8, 8, 1], "float32")], "m.onnx", "s.json")


# ---------------------------------------------------------------------------- F4: overflowing areas


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("side", [1e160, 1e200, -1e300])
def test_nms_refuses_boxes_whose_area_overflows(backend, side):
    # the area overflowed to inf, IoU was inf / inf = NaN, and a box identical to a kept one was kept too
    b = np.array([[0, 0, side, side], [0, 0, side, side], [0, 0, 1, 1]], np.float64)
    with pytest.raises(PrepostError, match=r"^boxes: coordinates beyond \+-1e\+150 \(largest \|value\| "
                                           r".*\); their areas would overflow float64$"):
        nms(b, np.array([0.9, 0.8, 0.7]), 0.5, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nms_at_the_largest_coordinates_still_drops_duplicates(backend):
    s = 1e150
    b = np.array([[0, 0, s, s], [0, 0, s, s], [-s, -s, s, s], [0, 0, 1, 1]], np.float64)
    assert nms(b, np.array([0.9, 0.8, 0.75, 0.7]), 0.5, backend=backend).tolist() == [0, 2, 3]
