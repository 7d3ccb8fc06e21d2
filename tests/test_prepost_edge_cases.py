"""edgekit.prepost on inputs at the edges of their types: integer scores, float64 maps, out-of-range spec
values, empty batches, and the device runner's cache and environment."""
import numpy as np
import pytest

from edgekit import prepost as pp
from edgekit.prepost import PrepostError

BACKENDS = ["numba", "numpy"] if pp.HAVE_NUMBA else ["numpy"]


def _greedy_nms(boxes, scores, thr):
    """The textbook loop in plain Python: best score first (ties: lower index), drop IoU > thr."""
    order = sorted(range(len(scores)), key=lambda i: (-int(scores[i]), i))
    keep = []
    for i in order:
        ok = True
        for j in keep:
            (a1, b1, a2, b2), (c1, d1, c2, d2) = boxes[i], boxes[j]
            inter = max(min(a2, c2) - max(a1, c1), 0) * max(min(b2, d2) - max(b1, d1), 0)
            union = (a2 - a1) * (b2 - b1) + (c2 - c1) * (d2 - d1) - inter
            if union > 0 and inter / union > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


# ------------------------------------------------------------------------------------------- nms


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "uint64", "int8", "int16"])
def test_nms_integer_scores_rank_by_value(dtype, backend):
    # a quantized head's minimum score must not outrank the real detection it overlaps
    lo = np.iinfo(dtype).min
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([lo, 100, 50], dtype)
    assert pp.nms(boxes, scores, 0.5, backend=backend).tolist() == [1, 2]
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 60, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (300, 2))], 1)
    info = np.iinfo(dtype)
    scores = rng.integers(max(info.min, -50), min(info.max, 50), 300, endpoint=True).astype(dtype)
    scores[::7] = info.min
    scores[::11] = info.max
    keep = pp.nms(boxes, scores, 0.45, backend=backend)
    assert keep.tolist() == _greedy_nms(boxes.tolist(), scores.tolist(), 0.45)
    kept = pp.nms(boxes, scores, 0.45, score_threshold=0, backend=backend)
    assert kept.tolist() == [i for i in keep.tolist() if scores[i] >= 0]
