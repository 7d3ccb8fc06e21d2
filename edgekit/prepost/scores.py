"""Model outputs: softmax + top-k, argmax over segmentation maps, INT8 dequantisation."""
from __future__ import annotations

import math

import numpy as np

from . import _check
from ._jit import call, kernel, prange, resolve_backend
from .errors import PrepostError

SEG_LAYOUTS = ("NCHW", "NHWC")
_F = np.float32
# expf by Cody-Waite reduction + Cephes' degree-6 polynomial (rel. error ~1e-7), written so LLVM
# vectorises it: Numba has no vector exp without Intel's SVML, and the softmax denominator needs
# one exp per logit. 2**n is built from its bit pattern through an int32 view.
_LOG2E, _LN2_HI, _LN2_LO = _F(1.44269504088896341), _F(0.693359375), _F(-2.12194440e-4)
_P0, _P1, _P2 = _F(1.9875691500e-4), _F(1.3981999507e-3), _F(8.3334519073e-3)
_P3, _P4, _P5 = _F(4.1665795894e-2), _F(1.6666665459e-1), _F(5.0000001201e-1)
_LO, _HALF, _ONE = _F(-87.0), _F(0.5), _F(1.0)
_BLOCK = 16
# fastmath without 'nnan'/'ninf': reductions may be reordered, but NaN checks must survive
FAST = {"reassoc", "contract", "arcp", "nsz", "afn"}


@kernel("softmax_topk", lambda nt: nt.boolean(
    nt.Array(nt.float32, 2, "C", readonly=True), nt.Array(nt.float32, 2, "C"), nt.Array(nt.int64, 2, "C")),
    parallel=True, fastmath=FAST)
def _softmax_topk_kernel(x, probs, idx):  # pragma: no cover - compiled
    n, c = x.shape
    k = idx.shape[1]
    bad = np.zeros(n, np.bool_)  # per row: a scalar flag written inside prange would be thread-private
    for r in prange(n):
        row = x[r]
        vals = np.empty(k, np.float32)
        ids = np.empty(k, np.int64)

        # The top k as a heap whose root is the worst kept entry (the lowest value; of equal values the
        # higher index): O(C log k) per row. Insertion into a sorted list was O(k * C), 2.5 s for k = C = 50000.
        def sift(i, size):
            while True:
                w = 2 * i + 1
                if w >= size:
                    return
                if w + 1 < size and (vals[w + 1] < vals[w] or (vals[w + 1] == vals[w] and ids[w + 1] > ids[w])):
                    w += 1
                if not (vals[w] < vals[i] or (vals[w] == vals[i] and ids[w] > ids[i])):
                    return
                vals[i], vals[w] = vals[w], vals[i]
                ids[i], ids[w] = ids[w], ids[i]
                i = w

        for j in range(k):
            vals[j] = row[j]
            ids[j] = j
        for i in range(k // 2 - 1, -1, -1):
            sift(i, k)
        kth = vals[0]
        j0 = k
        while j0 < c:  # skip whole blocks whose max cannot enter the top k (vectorised max)
            j1 = min(j0 + _BLOCK, c)
            bm = row[j0]
            for j in range(j0 + 1, j1):
                bm = max(bm, row[j])
            if bm > kth:
                for j in range(j0, j1):
                    v = row[j]
                    if v > kth:  # strict: a later index loses a tie
                        vals[0] = v
                        ids[0] = j
                        sift(0, k)
                        kth = vals[0]
            j0 = j1
        for end in range(k - 1, 0, -1):  # heap sort: the worst goes last, so the list ends best first
            vals[0], vals[end] = vals[end], vals[0]
            ids[0], ids[end] = ids[end], ids[0]
            sift(0, end)
        m = vals[0]
        bits = np.empty(c, np.int32)
        poly = np.empty(c, np.float32)
        for j in range(c):
            t = max(row[j] - m, _LO)
            fn = math.floor(t * _LOG2E + _HALF)
            z = t - fn * _LN2_HI - fn * _LN2_LO
            zz = z * z
            q = (((((_P0 * z + _P1) * z + _P2) * z + _P3) * z + _P4) * z + _P5) * zz + z + _ONE
            bits[j] = (np.int32(fn) + np.int32(127)) << np.int32(23)
            poly[j] = q
        scale = bits.view(np.float32)
        s = _F(0.0)
        for j in range(c):
            s += poly[j] * scale[j]
        if not (s > 0.0 and s < np.inf and m == m):
            bad[r] = True
        inv = _ONE / s
        for j in range(k):
            probs[r, j] = math.exp(vals[j] - m) * inv
            idx[r, j] = ids[j]
    return not bad.any()


@kernel("softmax_topk_f64", lambda nt: nt.boolean(
    nt.Array(nt.float64, 2, "C", readonly=True), nt.Array(nt.float64, 2, "C"), nt.Array(nt.int64, 2, "C")),
    parallel=True, fastmath=FAST)
def _softmax_topk_f64_kernel(x, probs, idx):  # pragma: no cover - compiled
    # A twin rather than a second signature of the kernel above: its expf polynomial is only as exact
    # as float32, so float64 logits take libm's exp and keep float64 to the end.
    n, c = x.shape
    k = idx.shape[1]
    bad = np.zeros(n, np.bool_)
    for r in prange(n):
        row = x[r]
        vals = np.empty(k, np.float64)
        ids = np.empty(k, np.int64)

        def sift(i, size):  # the same heap as in the float32 kernel above
            while True:
                w = 2 * i + 1
                if w >= size:
                    return
                if w + 1 < size and (vals[w + 1] < vals[w] or (vals[w + 1] == vals[w] and ids[w + 1] > ids[w])):
                    w += 1
                if not (vals[w] < vals[i] or (vals[w] == vals[i] and ids[w] > ids[i])):
                    return
                vals[i], vals[w] = vals[w], vals[i]
                ids[i], ids[w] = ids[w], ids[i]
                i = w

        nan = False
        for j in range(k):
            v = row[j]
            nan |= v != v
            vals[j] = v
            ids[j] = j
        for i in range(k // 2 - 1, -1, -1):
            sift(i, k)
        for j in range(k, c):
            v = row[j]
            nan |= v != v
            if v > vals[0]:  # strict: ties keep the lower index first
                vals[0] = v
                ids[0] = j
                sift(0, k)
        for end in range(k - 1, 0, -1):
            vals[0], vals[end] = vals[end], vals[0]
            ids[0], ids[end] = ids[end], ids[0]
            sift(0, end)
        m = vals[0]
        s = 0.0
        for j in range(c):
            s += math.exp(row[j] - m)
        if nan or not (s > 0.0 and s < np.inf and m == m):
            bad[r] = True
        for j in range(k):
            probs[r, j] = math.exp(vals[j] - m) / s
            idx[r, j] = ids[j]
    return not bad.any()


def softmax_topk(logits, k: int = 5, *, backend: str = "auto"):
    """(probabilities, indices) of the k largest classes per row, best first.

    logits: (C,) or (N, C) floating; returns probabilities and int64 indices of shape (k,) or (N, k).
    Probabilities are float64 for float64 logits (computed in float64 throughout), else float32.
    Ties go to the lower class index. NaN or +inf logits raise PrepostError.
    """
    x = _check.array(logits, "logits", ndim=(1, 2), kinds="f")
    squeeze = x.ndim == 1
    f64 = x.dtype.itemsize >= 8
    x2 = np.ascontiguousarray(x.reshape(1, -1) if squeeze else x, np.float64 if f64 else np.float32)
    n, c = x2.shape
    k = _check.number(k, "k", lo=1, integer=True)
    if k > c:
        raise PrepostError(f"k: {k} is larger than the number of classes ({c})")
    if c == 0 or n == 0:
        raise PrepostError(f"logits: empty array of shape {x.shape}")
    if resolve_backend(backend) == "numpy":
        if np.isnan(x2).any() or np.isposinf(x2).any():
            raise PrepostError("logits: contains NaN or +inf")
        idx = np.argsort(-x2, axis=1, kind="stable")[:, :k]
        m = x2.max(axis=1, keepdims=True)
        e = np.exp(x2 - m)
        probs = np.take_along_axis(e, idx, 1) / e.sum(axis=1, keepdims=True)
        if not np.isfinite(probs).all():
            raise PrepostError("logits: a row has no finite value")
    else:
        probs = np.empty((n, k), x2.dtype)
        idx = np.empty((n, k), np.int64)
        if not call("softmax_topk_f64" if f64 else "softmax_topk", n * c, x2, probs, idx):
            raise PrepostError("logits: contains NaN or +inf, or a row has no finite value")
    return (probs[0], idx[0]) if squeeze else (probs, idx)


def _argmax_signature(dtype):
    return lambda nt: nt.boolean(nt.Array(getattr(nt, dtype), 4, "C", readonly=True), nt.Array(nt.int64, 3, "C"))


# float64 logits and 32-bit integer scores need a float64 build: scores that differ by less than float32's
# resolution (1000.0 vs 1000.00003, 2**24 vs 2**24 + 1) are not ties, and np.argmax tells them apart
@kernel("argmax_nchw_f64", _argmax_signature("float64"), parallel=True)
@kernel("argmax_nchw", _argmax_signature("float32"), parallel=True)
def _argmax_nchw_kernel(x, out):  # pragma: no cover - compiled
    n, c, h, w = x.shape
    bad = np.zeros(n * h, np.bool_)
    for r in prange(n * h):
        b = r // h
        y = r - b * h
        best = x[b, 0, y].copy()
        arg = out[b, y]
        nan = False
        for i in range(w):
            arg[i] = 0
            nan |= best[i] != best[i]
        for ch in range(1, c):  # channel-outer keeps the inner loop contiguous and vectorisable
            row = x[b, ch, y]
            for i in range(w):
                v = row[i]
                nan |= v != v
                if v > best[i]:
                    best[i] = v
                    arg[i] = ch
        bad[r] = nan
    return not bad.any()


def argmax_segmentation(logits, layout: str = "NCHW", *, backend: str = "auto") -> np.ndarray:
    """Class map (int64) from per-pixel class scores: (N, C, H, W) -> (N, H, W); (C, H, W) -> (H, W).

    layout "NHWC" takes the classes on the last axis. Ties go to the lower class; NaN raises.
    """
    _check.choice(layout, "layout", SEG_LAYOUTS)
    x = _check.array(logits, "logits", ndim=(3, 4), kinds="fiu")
    squeeze = x.ndim == 3
    x4 = x[None] if squeeze else x
    if layout == "NHWC":
        x4 = x4.transpose(0, 3, 1, 2)
    if x4.shape[1] == 0:
        raise PrepostError(f"logits: no classes in shape {x.shape}")
    if resolve_backend(backend) == "numpy":
        if x4.dtype.kind == "f" and np.isnan(x4).any():
            raise PrepostError("logits: contains NaN")
        out = x4.argmax(axis=1)
    elif x4.dtype.itemsize > 4 and x4.dtype != np.float64:  # 64-bit integers, long double: no build holds them
        out = x4.argmax(axis=1)
    else:
        f32 = x4.dtype.itemsize <= 2 or x4.dtype == np.float32  # exact in float32
        x4 = np.ascontiguousarray(x4, np.float32 if f32 else np.float64)
        n, _, h, w = x4.shape
        out = np.empty((n, h, w), np.int64)
        if not call("argmax_nchw" if f32 else "argmax_nchw_f64", x4.size, x4, out):
            raise PrepostError("logits: contains NaN")
    return out[0] if squeeze else out


@kernel("dequantize", lambda nt: nt.void(
    nt.Array(nt.int32, 3, "C", readonly=True), nt.Array(nt.float32, 1, "C", readonly=True),
    nt.Array(nt.float32, 1, "C", readonly=True), nt.Array(nt.float32, 3, "C")), parallel=True)
def _dequantize_kernel(q, scale, zero, out):  # pragma: no cover - compiled
    outer, ch, inner = q.shape
    for r in prange(outer * ch):
        o = r // ch
        c = r - o * ch
        s, z = scale[c], zero[c]
        src, dst = q[o, c], out[o, c]
        for i in range(inner):
            dst[i] = (np.float32(src[i]) - z) * s


def dequantize(q, scale, zero_point=0, axis: int | None = None, *, backend: str = "auto") -> np.ndarray:
    """float32 (q - zero_point) * scale for int8/uint8 (or int16/int32) outputs.

    scale/zero_point: scalars (per tensor) or 1-D with one value per index of `axis` (per channel).
    """
    a = _check.array(q, "q", dtypes=("int8", "uint8", "int16", "int32"))
    s = _check.vector(scale, "scale")
    z = _check.vector(zero_point, "zero_point")
    if axis is None:
        if s.size != 1 or z.size != 1:
            raise PrepostError(f"scale: per-channel scale/zero_point ({s.size}/{z.size} values) needs axis")
        a3 = a.reshape(1, 1, -1)
    else:
        ax = _check.number(axis, "axis", integer=True)
        if not -a.ndim <= ax < a.ndim:
            raise PrepostError(f"axis: {ax} is out of range for a {a.ndim}-D array")
        ax %= a.ndim
        ch = a.shape[ax]
        for name, v in (("scale", s), ("zero_point", z)):
            if v.size not in (1, ch):
                raise PrepostError(f"{name}: has {v.size} values; axis {ax} has {ch}")
        outer, inner = (int(np.prod(a.shape[sl], dtype=np.int64)) for sl in (slice(ax), slice(ax + 1, None)))
        a3 = a.reshape(outer, ch, inner)  # not -1 for inner: reshape cannot infer it for an empty batch
    ch = a3.shape[1]
    s = np.ascontiguousarray(np.broadcast_to(s, (ch,)), np.float32)
    z = np.ascontiguousarray(np.broadcast_to(z, (ch,)), np.float32)
    if resolve_backend(backend) == "numpy":
        out = (a3.astype(np.float32) - z[None, :, None]) * s[None, :, None]
    else:
        out = np.empty(a3.shape, np.float32)
        call("dequantize", a3.size, np.ascontiguousarray(a3, np.int32), s, z, out)
    return out.reshape(a.shape)


@kernel("sigmoid_threshold", lambda nt: nt.boolean(
    nt.Array(nt.float32, 2, "C", readonly=True), nt.float32, nt.boolean, nt.Array(nt.float32, 2, "C"),
    nt.Array(nt.boolean, 2, "C")), parallel=True, fastmath=FAST)
def _sigmoid_threshold_kernel(x, cut, probabilities, probs, on):  # pragma: no cover - compiled
    n, c = x.shape
    bad = np.zeros(n, np.bool_)
    for r in prange(n):
        row, p, o = x[r], probs[r], on[r]
        nan = False
        for j in range(c):
            v = row[j]
            nan |= v != v
            o[j] = v > cut
            # exp(-v) overflows to inf for v < -88: 1 / (1 + inf) is the 0 it should be
            p[j] = v if probabilities else _ONE / (_ONE + np.float32(math.exp(-v)))
        bad[r] = nan
    return not bad.any()


def check_threshold(v, name: str) -> float:
    """A probability cut strictly inside (0, 1): at 0 or 1 the logit cut is infinite."""
    t = _check.number(v, name, lo=0.0, lo_open=True, hi=1.0)
    if t >= 1.0:
        raise PrepostError(f"{name}: {v!r} must be < 1")
    return t


def sigmoid_threshold(scores, threshold: float = 0.5, *, probabilities: bool = False, backend: str = "auto"):
    """(probabilities, decisions) of a multi-label output: a yes/no per class.

    scores: (C,) or (N, C) logits, or probabilities already through their sigmoid (probabilities=True).
    A class is on where its probability is above `threshold`, decided on the logit (above
    log(t / (1 - t)), 0 for 0.5) so it matches the model's own logit test exactly: a sigmoid rounds a logit of
    1e-9 to 0.5. Returns float32 probabilities and bool decisions of the input's shape. NaN raises PrepostError.
    """
    x = _check.array(scores, "scores", ndim=(1, 2), kinds="fiu")
    t = check_threshold(threshold, "threshold")
    squeeze = x.ndim == 1
    x2 = np.ascontiguousarray(x.reshape(1, -1) if squeeze else x, np.float32)
    cut = np.float32(t if probabilities else math.log(t / (1.0 - t)))
    if probabilities and x2.size and (x2.min() < 0.0 or x2.max() > 1.0):
        raise PrepostError(f"scores: probabilities must lie in [0, 1]; got values in [{x2.min():g}, {x2.max():g}] "
                           "(pass logits with probabilities false)")
    if resolve_backend(backend) == "numpy":
        if np.isnan(x2).any():
            raise PrepostError("scores: contains NaN")
        on = x2 > cut
        with np.errstate(over="ignore"):
            probs = x2.copy() if probabilities else (_ONE / (_ONE + np.exp(-x2))).astype(np.float32)
    else:
        probs = np.empty(x2.shape, np.float32)
        on = np.empty(x2.shape, np.bool_)
        if not call("sigmoid_threshold", x2.size, x2, cut, bool(probabilities), probs, on):
            raise PrepostError("scores: contains NaN")
    return (probs[0], on[0]) if squeeze else (probs, on)
