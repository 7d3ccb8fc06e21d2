"""Every edgekit.prepost kernel against its NumPy twin (and OpenCV for resize), on random and edge cases."""
import numpy as np
import pytest

from edgekit import prepost as pp
from edgekit.prepost import PrepostError

pytestmark = pytest.mark.skipif(not pp.HAVE_NUMBA, reason="numba is a required dependency of edgekit")


def both(fn, *args, **kw):
    return fn(*args, backend="numba", **kw), fn(*args, backend="numpy", **kw)


# ----------------------------------------------------------------------------------------- resize

IMAGES = {
    "1x1": (1, 1, 3), "tiny": (3, 2, 3), "odd": (37, 53, 3), "grey2d": (9, 11), "grey1": (6, 7, 1),
    "rgba": (5, 8, 4), "batch": (2, 19, 23, 3),
}


@pytest.mark.parametrize("shape", IMAGES.values(), ids=IMAGES.keys())
@pytest.mark.parametrize("mode", ["stretch", "crop", "letterbox"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_resize_matches_numpy_twin(shape, mode, layout):
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    c = 1 if len(shape) == 2 else shape[-1]
    mean, std = rng.uniform(0, 255, c).tolist(), rng.uniform(20, 80, c).tolist()
    swap = c in (3, 4)
    views = [img, img[::-1], img[..., ::-1] if len(shape) >= 3 else img[:, ::-1]]
    for v in views:  # contiguous, negative row stride, reversed channels (or columns)
        a, b = both(pp.resize_normalize, v, (13, 17), mean, std, layout, mode=mode, crop_fraction=0.8,
                    pad_value=7, swap_rb=swap)
        n = shape[0] if len(shape) == 4 else 1
        assert a.shape == ((n, c, 13, 17) if layout == "NCHW" else (n, 13, 17, c))
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_resize_non_contiguous_crop_view_equals_copy():
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    view = frame[10:100:2, 20:150:3]  # strided in both spatial axes
    a = pp.resize_normalize(view, (32, 32))
    np.testing.assert_array_equal(a, pp.resize_normalize(np.ascontiguousarray(view), (32, 32)))


@pytest.mark.parametrize("src,dst", [((1080, 1920), (224, 224)), ((480, 640), (640, 480)), ((7, 5), (31, 29)),
                                     ((100, 100), (50, 50)), ((1, 1), (4, 4)), ((64, 48), (64, 48))])
def test_resize_matches_opencv_inter_linear(src, dst):
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, src + (3,), dtype=np.uint8)
    ours = pp.resize_normalize(img, dst, mean=0.0, std=1.0, layout="NHWC")[0]
    ref = cv2.resize(img, (dst[1], dst[0]), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    assert np.abs(ours - ref).max() <= 1.0  # OpenCV rounds to uint8; the issue allows 1/255 of full scale


def test_resize_matches_blob_from_image_with_normalisation_and_swap():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    mean = [123.675, 116.28, 103.53]
    ours = pp.resize_normalize(bgr, (224, 224), mean=mean, std=58.0, swap_rb=True)
    blob = cv2.dnn.blobFromImage(bgr, 1 / 58.0, (224, 224), mean, swapRB=True)
    assert ours.shape == blob.shape == (1, 3, 224, 224)
    assert np.abs(ours - blob).max() <= 1.0 / 58.0 + 1e-5


def test_crop_and_letterbox_against_opencv_on_integer_geometry():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (100, 200, 3), dtype=np.uint8)
    # centre crop of a 100x200 image to a square is columns 50..150, then a 2x downscale
    crop = pp.resize_normalize(img, (50, 50), std=1.0, layout="NHWC", mode="crop")[0]
    ref = cv2.resize(img[:, 50:150], (50, 50), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    assert np.abs(crop - ref).max() <= 1.0
    # letterbox 100x200 into 100x100: 50x100 content in rows 25..75, padding elsewhere
    lb = pp.resize_normalize(img, (100, 100), std=1.0, layout="NHWC", mode="letterbox", pad_value=114)[0]
    g = pp.geometry((100, 200), (100, 100), "letterbox")
    assert g.dst == (25, 0, 50, 100)
    ref = cv2.resize(img, (100, 50), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    assert np.abs(lb[25:75] - ref).max() <= 1.0
    assert (lb[:25] == 114).all() and (lb[75:] == 114).all()
    # and boxes found in the letterboxed input map back to the source image
    back = g.to_source(np.array([[0, 25, 100, 75]], np.float32))
    np.testing.assert_allclose(back, [[0, 0, 200, 100]], atol=1e-4)


@pytest.mark.parametrize("bad,msg", [
    (dict(image=np.zeros((4, 4, 3), np.float32)), "image: dtype float32"),
    (dict(image=np.zeros((2, 2, 2, 2, 3), np.uint8)), "image: expected a 2-D or 3-D or 4-D"),
    (dict(image=np.zeros((0, 4, 3), np.uint8)), "image: empty"),
    (dict(size=(0, 4)), "size[0]"),
    (dict(size=(4,)), "size: expected (height, width)"),
    (dict(mean=[1, 2]), "mean: has 2 values"),
    (dict(std=0), "std: must be non-zero"),
    (dict(layout="CHW"), "layout: 'CHW' is not one of NCHW, NHWC"),
    (dict(mode="fit"), "mode: 'fit'"),
    (dict(crop_fraction=0), "crop_fraction"),
    (dict(image=np.zeros((4, 4, 2), np.uint8), swap_rb=True), "swap_rb: needs 3 or 4 channels"),
    (dict(backend="cuda"), "backend: 'cuda'"),
])
def test_resize_bad_inputs_give_one_line_errors(bad, msg):
    kw = dict(image=np.zeros((4, 4, 3), np.uint8), size=(2, 2))
    kw.update(bad)
    with pytest.raises(PrepostError) as e:
        pp.resize_normalize(kw.pop("image"), kw.pop("size"), **kw)
    assert msg in str(e.value) and "\n" not in str(e.value)


# -------------------------------------------------------------------------------------------- NMS

def random_boxes(n, seed=0, extent=1000.0, lo=10.0, hi=100.0):
    rng = np.random.default_rng(seed)
    c = rng.uniform(0, extent, (n, 2))
    wh = rng.uniform(lo, hi, (n, 2))
    return np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32), rng.random(n).astype(np.float32)


@pytest.mark.parametrize("n,thr,seed", [(1, 0.5, 0), (50, 0.5, 1), (2000, 0.5, 2), (2000, 0.3, 3), (2000, 0.7, 4),
                                        (500, 0.0, 5), (500, 1.0, 6), (3000, 0.45, 7)])
def test_nms_identical_to_numpy(n, thr, seed):
    boxes, scores = random_boxes(n, seed)
    a, b = both(pp.nms, boxes, scores, thr)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int64 and len(set(a.tolist())) == len(a)
    if len(a) > 1:  # best first
        assert (np.diff(scores[a]) <= 0).all()


def test_nms_dense_clusters_mixed_sizes_and_class_aware():
    rng = np.random.default_rng(8)
    boxes, scores = random_boxes(3000, 8, extent=200.0, lo=1.0, hi=400.0)  # heavy overlap, huge size spread
    boxes[::97] = [0, 0, 1000, 1000]  # a few boxes covering everything
    boxes[5] = [3, 3, 3, 9]  # zero area
    classes = rng.integers(0, 7, len(boxes))
    for thr in (0.2, 0.5, 0.9):
        np.testing.assert_array_equal(*both(pp.nms, boxes, scores, thr, classes=classes))
        np.testing.assert_array_equal(*both(pp.nms, boxes, scores, thr))
    keep = pp.nms(boxes, scores, 0.5, classes=classes)
    agnostic = pp.nms(boxes, scores, 0.5)
    assert len(keep) > len(agnostic)  # classes do not suppress each other


def test_nms_edge_cases():
    empty = np.zeros((0, 4), np.float32)
    for be in ("numba", "numpy"):
        assert pp.nms(empty, np.zeros(0, np.float32), 0.5, backend=be).shape == (0,)
    boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (6, 1))
    equal = np.ones(6, np.float32)
    a, b = both(pp.nms, boxes, equal, 0.5)  # identical boxes, all-equal scores: the lowest index wins
    assert a.tolist() == b.tolist() == [0]
    spread = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(6)], np.float32)
    a, b = both(pp.nms, spread, equal, 0.5)
    assert a.tolist() == b.tolist() == list(range(6))
    a, b = both(pp.nms, spread, np.arange(6, dtype=np.float32), 0.5, 3)  # max_detections
    assert a.tolist() == b.tolist() == [5, 4, 3]
    a, b = both(pp.nms, spread, np.arange(6, dtype=np.float32), 0.5, score_threshold=2.5)
    assert a.tolist() == b.tolist() == [5, 4, 3]
    assert pp.nms(spread, equal, 0.5, 0).shape == (0,)
    # integer boxes, float64 scores, non-contiguous inputs
    big = np.asfortranarray(np.repeat(random_boxes(300, 9)[0].astype(np.int32), 2, axis=0))
    s = np.repeat(random_boxes(300, 9)[1].astype(np.float64), 2)[::-1][::-1]
    np.testing.assert_array_equal(*both(pp.nms, big, s, 0.5))


@pytest.mark.parametrize("kw,msg", [
    (dict(boxes=np.zeros((3, 5), np.float32)), "boxes: expected shape (N, 4)"),
    (dict(boxes=np.zeros((3, 4), np.complex64)), "boxes: dtype complex64"),
    (dict(scores=np.zeros(2, np.float32)), "scores: 2 scores for 3 boxes"),
    (dict(scores=np.array([0, np.nan, 1], np.float32)), "scores: contains NaN"),
    (dict(boxes=np.array([[0, 0, np.inf, 1]] * 3, np.float32)), "boxes: contains NaN or infinite"),
    (dict(iou_threshold=1.5), "iou_threshold: 1.5 must be <= 1.0"),
    (dict(max_detections=-1), "max_detections: -1 must be >= 0"),
    (dict(classes=np.zeros(3, np.float32)), "classes: dtype float32"),
])
def test_nms_bad_inputs(kw, msg):
    args = dict(boxes=np.zeros((3, 4), np.float32), scores=np.zeros(3, np.float32), iou_threshold=0.5)
    args.update(kw)
    with pytest.raises(PrepostError, match=None) as e:
        pp.nms(args.pop("boxes"), args.pop("scores"), **args)
    assert msg in str(e.value)


def test_decode_boxes():
    rng = np.random.default_rng(0)
    cxcywh = rng.uniform(0, 100, (2, 50, 4)).astype(np.float32)
    a, b = both(pp.decode_boxes, cxcywh)
    np.testing.assert_array_equal(a, b)
    assert a.shape == cxcywh.shape
    np.testing.assert_allclose(a[..., 2] - a[..., 0], cxcywh[..., 2], atol=1e-4)
    np.testing.assert_allclose((a[..., 1] + a[..., 3]) / 2, cxcywh[..., 1], atol=1e-4)
    xywh = np.array([[1, 2, 3, 4]], np.int64)
    assert pp.decode_boxes(xywh, "xywh").tolist() == [[1, 2, 4, 6]]
    assert pp.decode_boxes(np.zeros((0, 4), np.float32)).shape == (0, 4)
    with pytest.raises(PrepostError, match="boxes: last axis must have 4"):
        pp.decode_boxes(np.zeros((3, 5)))


@pytest.mark.parametrize("fmt", ["cxcywh", "xywh"])
@pytest.mark.parametrize("bad,msg", [
    (np.nan, "boxes: contains NaN or infinite values"), (np.inf, "boxes: contains NaN or infinite values"),
    (-np.inf, "boxes: contains NaN or infinite values"), (1e39, "boxes: decoded corners do not fit float32"),
    (3e38, "boxes: decoded corners do not fit float32"),  # finite, but x2 = x + w overflows
])
def test_decode_boxes_refuses_non_finite_on_both_backends(fmt, bad, msg, recwarn):
    # as nms and mean_pool_l2 do: a NaN box used to come out as a NaN box, silently
    x = np.full((2, 30, 4), 10.0)
    x[1, 17, 0] = x[1, 17, 2] = bad  # x (or centre x) and width
    for be in ("numba", "numpy"):
        with pytest.raises(PrepostError) as e:
            pp.decode_boxes(x, fmt, backend=be)
        assert str(e.value).startswith(msg)
    assert not recwarn.list  # no RuntimeWarning on the way to the error


# ------------------------------------------------------------------------------------ softmax/top-k

@pytest.mark.parametrize("shape,k", [((64, 1000), 5), ((3, 17), 17), ((1, 1), 1), ((10,), 3), ((5, 33), 1)])
def test_softmax_topk_matches_numpy(shape, k):
    rng = np.random.default_rng(k)
    x = (rng.normal(0, 4, shape)).astype(np.float32)
    (pa, ia), (pb, ib) = both(pp.softmax_topk, x, k)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(pa, pb, rtol=2e-6, atol=1e-7)
    assert pa.shape == ia.shape == shape[:-1] + (k,)
    full = np.exp(x - x.max(-1, keepdims=True))
    full /= full.sum(-1, keepdims=True)
    np.testing.assert_allclose(pa, np.take_along_axis(full, ia, -1), rtol=2e-6, atol=1e-7)


def test_softmax_topk_ties_extremes_and_non_contiguous():
    x = np.zeros((4, 10), np.float32)  # all equal: lowest indices, uniform probabilities
    (pa, ia), (pb, ib) = both(pp.softmax_topk, x, 3)
    assert ia.tolist() == ib.tolist() == [[0, 1, 2]] * 4
    np.testing.assert_allclose(pa, 0.1, rtol=1e-6)
    y = np.array([[1e4, -1e4, 0, -np.inf, 3.0]], np.float32)  # huge spread and a masked class
    (pa, ia), (pb, ib) = both(pp.softmax_topk, y, 5)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(pa, pb, atol=1e-7)
    big = np.random.default_rng(0).normal(size=(40, 300)).astype(np.float64)[::2, ::3]  # float64, strided
    (pa, ia), (pb, ib) = both(pp.softmax_topk, big, 4)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(pa, pb, rtol=2e-6)


def test_softmax_topk_keeps_float64_precision():
    # 50 and 50 + 1e-12 are one float32 value (a tie, so index 2 first); float64 tells them apart
    x = np.array([[0.0, -30.0, 50.0, 50.0 + 1e-12, 1e-9, 2e-9]], np.float64)
    ref = np.exp(x - x.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    (pa, ia), (pb, ib) = both(pp.softmax_topk, x, 5)
    assert pa.dtype == pb.dtype == np.float64
    assert ia.tolist() == ib.tolist() == [[3, 2, 5, 4, 0]]
    np.testing.assert_allclose(pa, np.take_along_axis(ref, ia, -1), rtol=1e-14)
    np.testing.assert_allclose(pa, pb, rtol=1e-14)
    assert pp.softmax_topk(x[0], 2)[0].dtype == np.float64
    assert pp.softmax_topk(x.astype(np.float32), 2)[0].dtype == np.float32
    rng = np.random.default_rng(3)
    big = rng.normal(0, 4, (64, 1000))  # above the parallel threshold
    big[5, 7] = -np.inf  # a masked class
    (pa, ia), (pb, ib) = both(pp.softmax_topk, big, 5)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(pa, pb, rtol=1e-13)
    for bad, msg in ((np.nan, "NaN"), (np.inf, r"\+inf")):
        y = x.copy()
        y[0, 4] = bad
        for be in ("numba", "numpy"):
            with pytest.raises(PrepostError, match=msg):
                pp.softmax_topk(y, 2, backend=be)
    for be in ("numba", "numpy"):
        with pytest.raises(PrepostError, match="no finite value"), np.errstate(invalid="ignore"):
            pp.softmax_topk(np.full((2, 3), -np.inf), 2, backend=be)


@pytest.mark.parametrize("x,k,msg", [
    (np.zeros((2, 3), np.int32), 1, "logits: dtype int32"),
    (np.zeros((2, 3, 4), np.float32), 1, "logits: expected a 1-D or 2-D"),
    (np.zeros((2, 3), np.float32), 4, "k: 4 is larger than the number of classes (3)"),
    (np.zeros((2, 3), np.float32), 0, "k: 0 must be >= 1"),
    (np.array([[0, np.nan, 1]], np.float32), 1, "logits: contains NaN"),
    (np.array([[0, np.inf, 1]], np.float32), 1, "logits: contains NaN or +inf"),
])
def test_softmax_topk_bad_inputs(x, k, msg):
    for be in ("numba", "numpy"):
        with pytest.raises(PrepostError) as e:
            pp.softmax_topk(x, k, backend=be)
        assert msg in str(e.value)


# ------------------------------------------------------------------------- segmentation / dequantize

def test_argmax_segmentation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 21, 33, 47)).astype(np.float32)
    a, b = both(pp.argmax_segmentation, x)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, x.argmax(1))
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(pp.argmax_segmentation(nhwc, "NHWC"), a)
    np.testing.assert_array_equal(pp.argmax_segmentation(x[0]), a[0])  # (C, H, W)
    ties = np.zeros((1, 4, 1, 1), np.float32)
    assert pp.argmax_segmentation(ties).item() == 0
    ints = rng.integers(0, 9, (3, 5, 5)).astype(np.int16)
    np.testing.assert_array_equal(pp.argmax_segmentation(ints), ints.argmax(0))
    assert pp.argmax_segmentation(np.ones((1, 1, 1))).item() == 0  # 1x1 map, one class
    bad = x.copy()
    bad[1, 3, 2, 2] = np.nan
    for be in ("numba", "numpy"):
        with pytest.raises(PrepostError, match="logits: contains NaN"):
            pp.argmax_segmentation(bad, backend=be)
    with pytest.raises(PrepostError, match="expected a 3-D or 4-D"):
        pp.argmax_segmentation(np.zeros((3, 3)))


def test_dequantize():
    rng = np.random.default_rng(0)
    q = rng.integers(-128, 128, (2, 8, 5, 3), dtype=np.int8)
    for axis, s, z in [(None, 0.05, 3), (1, rng.uniform(0.01, 0.1, 8), rng.integers(-5, 5, 8)), (-1, [0.1, 0.2, 0.3], 0)]:
        a, b = both(pp.dequantize, q, s, z, axis)
        np.testing.assert_array_equal(a, b)
        ref = (q.astype(np.float64) - np.reshape(z, (-1,) + (1,) * (0 if axis in (None, -1) else 2))) * \
            np.reshape(s, (-1,) + (1,) * (0 if axis in (None, -1) else 2))
        np.testing.assert_allclose(a, ref, rtol=1e-6, atol=1e-6)
    u = rng.integers(0, 256, (4, 4), dtype=np.uint8)[:, ::2]
    np.testing.assert_array_equal(*both(pp.dequantize, u, 0.5, 128))
    with pytest.raises(PrepostError, match="q: dtype float32"):
        pp.dequantize(np.zeros(3, np.float32), 0.1)
    with pytest.raises(PrepostError, match="needs axis"):
        pp.dequantize(q, [0.1, 0.2])
    with pytest.raises(PrepostError, match="scale: has 2 values; axis 1 has 8"):
        pp.dequantize(q, [0.1, 0.2], axis=1)


# ------------------------------------------------------------------------------------------- text

def test_pad_truncate():
    ids = [[101, 7, 8, 102], [101, 102], np.array([101, 1, 2, 3, 4, 5, 102], np.int32), []]
    for kw in [{}, {"max_length": 5}, {"max_length": 5, "truncation": "left"},
               {"max_length": 9, "padding": "max_length", "pad_id": -1}]:
        (ia, ma), (ib, mb) = both(pp.pad_truncate, ids, **kw)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)
    ia, ma = pp.pad_truncate(ids, 5)
    assert ia.tolist()[2] == [101, 1, 2, 3, 4] and ma.tolist()[1] == [1, 1, 0, 0, 0] and ma[3].sum() == 0
    ia, _ = pp.pad_truncate(ids, 5, truncation="left")
    assert ia.tolist()[2] == [2, 3, 4, 5, 102]
    ia, ma = pp.pad_truncate([], 4, padding="max_length")
    assert ia.shape == ma.shape == (0, 4)
    with pytest.raises(PrepostError, match=r"token_ids\[1\]: dtype float64"):
        pp.pad_truncate([[1, 2], [1.5]])
    with pytest.raises(PrepostError, match="max_length: required"):
        pp.pad_truncate([[1]], padding="max_length")


def test_mean_pool_l2_matches_numpy_and_sentence_transformers_maths():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(5, 16, 384)).astype(np.float32)
    m = (rng.random((5, 16)) > 0.4).astype(np.int64)
    m[0] = 1
    m[4] = 0  # an empty mask gives zeros, not NaN
    a, b = both(pp.mean_pool_l2, h, m)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.isfinite(a).all() and not a[4].any()
    np.testing.assert_allclose(np.linalg.norm(a[:4], axis=1), 1.0, rtol=1e-5)
    ref = (h[1] * m[1][:, None]).sum(0) / m[1].sum()
    np.testing.assert_allclose(a[1], ref / np.linalg.norm(ref), rtol=1e-4, atol=1e-6)
    raw, rawb = both(pp.mean_pool_l2, h[:, ::2], m[:, ::2].astype(bool), normalize=False)
    np.testing.assert_allclose(raw, rawb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pp.mean_pool_l2(h[0]), h[0].mean(0) / np.linalg.norm(h[0].mean(0)), rtol=1e-5)
    with pytest.raises(PrepostError, match=r"mask: shape \(5, 15\) does not match"):
        pp.mean_pool_l2(h, m[:, :15])
    with pytest.raises(PrepostError, match="hidden: dtype int64"):
        pp.mean_pool_l2(m[:, :, None], m)


def test_serial_and_parallel_builds_agree_on_large_inputs():
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    logits = rng.normal(size=(128, 600)).astype(np.float32)  # above the parallel threshold
    prev = pp.set_threads(2)
    try:
        par = pp.resize_normalize(img, (200, 200)), pp.softmax_topk(logits, 5)
        pp.set_threads(1)
        ser = pp.resize_normalize(img, (200, 200)), pp.softmax_topk(logits, 5)
    finally:
        pp.set_threads(prev)
    np.testing.assert_array_equal(par[0], ser[0])
    np.testing.assert_array_equal(par[1][1], ser[1][1])
    np.testing.assert_allclose(par[1][0], ser[1][0], rtol=1e-6)
    info = pp._jit.compile_info("resize_normalize")
    import numba

    if numba.config.NUMBA_NUM_THREADS >= 2:
        assert info["compiled"] and set(info["builds"]) == {"parallel", "serial"}


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_mean_pool_refuses_nan_on_both_backends(backend):
    from edgekit.prepost.errors import PrepostError
    from edgekit.prepost.text import mean_pool_l2

    h = np.ones((2, 4, 3), np.float32)
    h[1, 3, 0] = np.nan  # at a padding position: the two backends used to disagree on it
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], np.float32)
    with pytest.raises(PrepostError, match="NaN"):
        mean_pool_l2(h, mask, backend=backend)
