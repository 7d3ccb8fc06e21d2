"""Boxes: greedy non-maximum suppression (class-aware, IoU threshold, max detections) and
centre/size -> corner decoding.

NMS keeps exactly what the textbook greedy loop keeps (the NumPy twin below *is* that loop):
boxes in descending score order (ties: lower index first), a box is dropped when its IoU with an
already kept box of the same class exceeds the threshold. The Numba kernel finds the kept boxes
that can overlap a candidate through a uniform grid of kept boxes (spanning the bulk of the centres, so
a far-away box does not coarsen it), so it touches a few neighbours instead of every kept box; the IoU arithmetic is the same float64 expression in both backends, so
the kept indices are identical, not just close.
"""
from __future__ import annotations

import numpy as np

from . import _check
from ._jit import call, kernel, resolve_backend
from .errors import PrepostError

_EMPTY = np.zeros(0, np.int64)
# |corners| <= L keeps every IoU term finite (area <= 4 L^2, union <= 8 L^2 < float64's 1.8e308). Beyond it
# an identical box's IoU was inf / inf = NaN, which never exceeds the threshold, so duplicates were kept
MAX_COORD = 1e150
BOX_FORMATS = ("cxcywh", "xywh")


def _best_first(s):
    """Indices of s in descending order, ties lower index first. Not argsort(-s): negating unsigned
    scores wraps (-0 stays 0 and outranks 200 in uint8), as does int8's -128."""
    return s.size - 1 - np.argsort(s[::-1], kind="stable")[::-1]


def _prepare(boxes, scores, iou_threshold, max_detections, classes, score_threshold):
    b = _check.array(boxes, "boxes", ndim=2, kinds="fiu")
    if b.shape[1] != 4:
        raise PrepostError(f"boxes: expected shape (N, 4) as x1, y1, x2, y2, got {b.shape}")
    s = _check.array(scores, "scores", ndim=1, kinds="fiu")
    if s.shape[0] != b.shape[0]:
        raise PrepostError(f"scores: {s.shape[0]} scores for {b.shape[0]} boxes")
    thr = _check.number(iou_threshold, "iou_threshold", lo=0.0, hi=1.0)
    n = b.shape[0]
    max_det = n if max_detections is None else _check.number(max_detections, "max_detections", lo=0,
                                                             integer=True)
    cls = None
    if classes is not None:
        cls = _check.array(classes, "classes", ndim=1, kinds="iu")
        if cls.shape[0] != n:
            raise PrepostError(f"classes: {cls.shape[0]} class ids for {n} boxes")
        cls = np.ascontiguousarray(cls, np.int64)
    b = np.ascontiguousarray(b, np.float64)
    if not np.isfinite(b).all():
        raise PrepostError("boxes: contains NaN or infinite coordinates")
    if b.size and np.abs(b).max() > MAX_COORD:
        raise PrepostError(f"boxes: coordinates beyond +-{MAX_COORD:g} (largest |value| {np.abs(b).max():.3g}); "
                           "their areas would overflow float64")
    if s.dtype.kind == "f" and np.isnan(s).any():
        raise PrepostError("scores: contains NaN")
    if score_threshold is not None:
        cand = np.flatnonzero(s >= _check.number(score_threshold, "score_threshold"))
        order = cand[_best_first(s[cand])]
    else:
        order = _best_first(s)
    areas = np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0.0)
    return b, areas, np.ascontiguousarray(order, np.int64), cls, thr, min(max_det, n)


def _nms_numpy(b, areas, order, cls, thr, max_det):
    """The vectorised greedy loop: the reference for the kernel and the benchmark's NumPy baseline."""
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    keep = []
    while order.size and len(keep) < max_det:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0.0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0.0)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        pos = union > 0
        iou = np.where(pos, inter / np.where(pos, union, 1.0), 0.0)
        sup = iou > thr
        if cls is not None:
            sup &= cls[rest] == cls[i]
        order = rest[~sup]
    return np.asarray(keep, np.int64)


@kernel("nms", lambda nt: nt.int64(
    nt.Array(nt.float64, 2, "C", readonly=True), nt.Array(nt.float64, 1, "C", readonly=True),
    nt.Array(nt.int64, 1, "C", readonly=True), nt.Array(nt.int64, 1, "C", readonly=True), nt.boolean,
    nt.float64, nt.int64, nt.Array(nt.int64, 1, "C")))
def _nms_kernel(b, areas, order, cls, use_cls, thr, max_det, keep):  # pragma: no cover - compiled
    # Kept boxes go into the grid cell of their centre. If IoU(i, j) > t, then the overlap width
    # exceeds t * max(w_i, w_j) (inter > t * area and inter_h <= h), so the centres are closer than
    # (w_i + w_j) / 2 - t * max(w_i, w_j) <= w_i * r(t) with r = 1 - t for t >= 1/2, else 1 / (2t)
    # (using w_j < w_i / t). A candidate therefore searches only the cells within that radius.
    m = order.shape[0]
    if m == 0 or max_det <= 0:
        return 0
    xs, ys, sides = np.empty(m), np.empty(m), np.empty(m)
    wmax, hmax = 0.0, 0.0
    for o in range(m):
        i = order[o]
        w, h = b[i, 2] - b[i, 0], b[i, 3] - b[i, 1]
        xs[o], ys[o] = b[i, 0] + 0.5 * w, b[i, 1] + 0.5 * h
        sides[o] = max(w, 0.0) + max(h, 0.0)
        wmax, hmax = max(wmax, w), max(hmax, h)
    # The grid spans the bulk of the centres (1st to 99th percentile) and its cells follow the median box:
    # one stray box far away (or huge) stretched a min/max grid until every box shared one cell, and 20,000
    # boxes took 4 s instead of 25 ms. Centres outside the span go to the clamped edge cells, which the
    # search clamps alike, so results do not depend on where the grid lies.
    xs.sort()
    ys.sort()
    sides.sort()
    lo, hi = int(0.01 * (m - 1)), int(0.99 * (m - 1) + 0.5)
    minx, maxx, miny, maxy = xs[lo], xs[hi], ys[lo], ys[hi]
    r = (1.0 - thr) if thr >= 0.5 else (0.5 / thr if thr > 0.0 else np.inf)
    slack = 1.0 + 1e-6  # the bound is exact maths; keep a margin for rounding in the IoU
    ext = max(maxx - minx, maxy - miny, 1e-12)
    cell = max(sides[m // 2] / 4.0, ext / 256.0, 1e-12)
    inv = 1.0 / cell
    gx = min(int((maxx - minx) * inv) + 1, 257)
    gy = min(int((maxy - miny) * inv) + 1, 257)
    head = np.full(gx * gy, -1, np.int64)
    nxt = np.empty(m, np.int64)
    kept = 0
    for o in range(m):
        i = order[o]
        bx1, by1, bx2, by2, ai = b[i, 0], b[i, 1], b[i, 2], b[i, 3], areas[i]
        if not ai > 0.0:  # no area: IoU is 0 with everything, so never suppressed and never suppresses
            keep[kept] = i
            kept += 1
            if kept >= max_det:
                break
            continue
        w, h = bx2 - bx1, by2 - by1
        cx, cy = bx1 + 0.5 * w, by1 + 0.5 * h
        rx = min(w * r, 0.5 * (w + wmax)) * slack + 1e-12
        ry = min(h * r, 0.5 * (h + hmax)) * slack + 1e-12
        # clamped as floats, then cast: a far centre's cell number does not fit an int64
        cx0 = int(min(max((cx - rx - minx) * inv, 0.0), gx - 1.0))
        cx1 = int(min(max((cx + rx - minx) * inv, 0.0), gx - 1.0))
        cy0 = int(min(max((cy - ry - miny) * inv, 0.0), gy - 1.0))
        cy1 = int(min(max((cy + ry - miny) * inv, 0.0), gy - 1.0))
        suppressed = False
        if (cx1 - cx0 + 1) * (cy1 - cy0 + 1) > kept:  # cheaper to scan every kept box
            q = 0
            while q < kept and not suppressed:
                j = keep[q]
                q += 1
                if use_cls and cls[j] != cls[i]:
                    continue
                iw = max(min(bx2, b[j, 2]) - max(bx1, b[j, 0]), 0.0)
                ih = max(min(by2, b[j, 3]) - max(by1, b[j, 1]), 0.0)
                inter = iw * ih
                union = ai + areas[j] - inter
                if union > 0 and inter / union > thr:
                    suppressed = True
        else:
            for gyi in range(cy0, cy1 + 1):
                if suppressed:
                    break
                for gxi in range(cx0, cx1 + 1):
                    e = head[gyi * gx + gxi]
                    while e >= 0:
                        j = keep[e]
                        e = nxt[e]
                        if use_cls and cls[j] != cls[i]:
                            continue
                        iw = max(min(bx2, b[j, 2]) - max(bx1, b[j, 0]), 0.0)
                        ih = max(min(by2, b[j, 3]) - max(by1, b[j, 1]), 0.0)
                        inter = iw * ih
                        union = ai + areas[j] - inter
                        if union > 0 and inter / union > thr:
                            suppressed = True
                            break
                    if suppressed:
                        break
        if suppressed:
            continue
        c = int(min(max((cy - miny) * inv, 0.0), gy - 1.0)) * gx + int(min(max((cx - minx) * inv, 0.0), gx - 1.0))
        keep[kept] = i
        nxt[kept] = head[c]
        head[c] = kept
        kept += 1
        if kept >= max_det:
            break
    return kept


def nms(boxes_xyxy, scores, iou_threshold: float = 0.5, max_detections: int | None = None, classes=None, *,
        score_threshold: float | None = None, backend: str = "auto") -> np.ndarray:
    """Indices (int64, best first) of the boxes kept by greedy NMS.

    boxes_xyxy: (N, 4) x1, y1, x2, y2; scores: (N,); a box is dropped when IoU > iou_threshold with a
    kept box (of the same class when `classes`, an (N,) integer array, is given). max_detections
    caps the result; score_threshold drops boxes scoring below it first. NaN, infinite or huge coordinates
    (beyond +-MAX_COORD, 1e150, where areas overflow) raise PrepostError.
    """
    b, areas, order, cls, thr, max_det = _prepare(boxes_xyxy, scores, iou_threshold, max_detections, classes,
                                                  score_threshold)
    if order.size == 0 or max_det == 0:
        return _EMPTY.copy()
    if resolve_backend(backend) == "numpy":
        return _nms_numpy(b, areas, order, cls, thr, max_det)
    keep = np.empty(max_det, np.int64)
    n = call("nms", 0, b, areas, order, cls if cls is not None else _EMPTY, cls is not None, thr, max_det, keep)
    return keep[:n].copy()


@kernel("decode_boxes", lambda nt: nt.boolean(
    nt.Array(nt.float32, 2, "C", readonly=True), nt.Array(nt.float32, 2, "C"), nt.boolean))
def _decode_kernel(src, out, centre):  # pragma: no cover - compiled
    half = np.float32(0.5)
    for r in range(src.shape[0]):
        a, b, w, h = src[r, 0], src[r, 1], src[r, 2], src[r, 3]
        if centre:
            a, b = a - w * half, b - h * half
        out[r, 0], out[r, 1], out[r, 2], out[r, 3] = a, b, a + w, b + h
    # a second pass, which vectorises: the same check inside the loop above made decoding ~1.7x slower
    flat = out.ravel()
    bad = False
    for i in range(flat.size):
        v = flat[i] - flat[i]  # NaN unless finite
        bad |= v != v
    return not bad


def _non_finite(a) -> PrepostError:
    # every input value reaches an output corner, so non-finite output means non-finite input or overflow
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return PrepostError("boxes: contains NaN or infinite values")
    return PrepostError(f"boxes: decoded corners do not fit float32 (largest |value| {np.abs(a).max():.3g})")


def decode_boxes(boxes, fmt: str = "cxcywh", *, backend: str = "auto") -> np.ndarray:
    """(..., 4) boxes as centre/size ("cxcywh") or corner/size ("xywh") -> float32 x1, y1, x2, y2.

    NaN or infinite values, or corners beyond float32's range, raise PrepostError (as nms refuses them).
    """
    _check.choice(fmt, "fmt", BOX_FORMATS)
    a = _check.array(boxes, "boxes", kinds="fiu")
    if a.ndim < 1 or a.shape[-1] != 4:
        raise PrepostError(f"boxes: last axis must have 4 values, got shape {a.shape}")
    if a.dtype.itemsize > 4 and a.dtype.kind == "f":
        with np.errstate(over="ignore"):  # a value beyond float32's range is refused below, in one line
            flat = np.ascontiguousarray(a.reshape(-1, 4), np.float32)
    else:  # nothing can overflow; errstate alone costs as much as decoding ~1000 boxes
        flat = np.ascontiguousarray(a.reshape(-1, 4), np.float32)
    if resolve_backend(backend) == "numpy":
        with np.errstate(over="ignore", invalid="ignore"):
            x, y, w, h = flat[:, 0], flat[:, 1], flat[:, 2], flat[:, 3]
            if fmt == "cxcywh":
                x, y = x - w * np.float32(0.5), y - h * np.float32(0.5)
            out = np.stack([x, y, x + w, y + h], axis=1)
        if not np.isfinite(out).all():
            raise _non_finite(a)
    else:
        out = np.empty_like(flat)
        if not call("decode_boxes", 0, flat, out, fmt == "cxcywh"):
            raise _non_finite(a)
    return out.reshape(a.shape)
