"""Images: uint8 HWC/NHWC -> float32 NCHW/NHWC in one pass (bilinear resize with OpenCV's
half-pixel centres, centre crop, letterbox padding, channel swap, per-channel mean/std).

mean/std/pad_value are in pixel units of the uint8 input (out = (pixel - mean) / std), like
cv2.dnn.blobFromImage and the manifest's prepost specs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _check
from ._jit import call, freeze as _freeze, kernel, prange, resolve_backend
from .errors import PrepostError

MODES = ("stretch", "crop", "letterbox")
LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class Geometry:
    """Where the source region `roi` (y0, x0, h, w; float source pixels) lands in the output:
    rows/cols `dst` (top, left, h, w) of an output of `size` (H, W); the rest is padding."""

    src: tuple
    size: tuple
    roi: tuple
    dst: tuple

    def to_source(self, boxes_xyxy) -> np.ndarray:
        """Map boxes in model-input pixels back to source-image pixels (undo crop/letterbox/scale)."""
        b = _check.array(boxes_xyxy, "boxes_xyxy", kinds="fi").astype(np.float32)
        if b.shape[-1:] != (4,):
            raise PrepostError(f"boxes_xyxy: last axis must have 4 values, got shape {b.shape}")
        y0, x0, rh, rw = self.roi
        top, left, dh, dw = self.dst
        sx, sy = rw / dw, rh / dh
        out = np.empty_like(b)
        out[..., 0::2] = (b[..., 0::2] - left) * sx + x0
        out[..., 1::2] = (b[..., 1::2] - top) * sy + y0
        return out


def geometry(src_hw, size, mode: str = "stretch", crop_fraction: float = 1.0) -> Geometry:
    """The source region and output placement for one resize (shared by both backends)."""
    sh, sw = (int(v) for v in src_hw)
    H, W = _size(size)
    _check.choice(mode, "mode", MODES)
    frac = check_crop_fraction(crop_fraction)
    if sh < 1 or sw < 1:
        raise PrepostError(f"image: empty image of size {sh}x{sw}")
    rh, rw = float(sh), float(sw)
    if mode == "crop":  # the largest centred region with the output's aspect ratio
        aspect = W / H
        if sw / sh > aspect:
            rw = sh * aspect
        else:
            rh = sw / aspect
    rh, rw = rh * frac, rw * frac
    roi = ((sh - rh) / 2.0, (sw - rw) / 2.0, rh, rw)
    if mode == "letterbox":
        s = min(H / rh, W / rw)
        dh, dw = max(1, min(H, int(round(rh * s)))), max(1, min(W, int(round(rw * s))))
        dst = ((H - dh) // 2, (W - dw) // 2, dh, dw)
    else:
        dst = (0, 0, H, W)
    return Geometry((sh, sw), (H, W), roi, dst)


# the largest output side a spec may ask for: far above any model's input, and a float32 output of it stays
# under a gigabyte, where a mistyped [100000, 100000] asked for 559 GiB and died of MemoryError on the device
MAX_SIDE = 8192


def check_size(size, name: str = "size"):
    """(h, w) of a resize output: the one rule for the spec checker and the op."""
    try:
        h, w = size
    except (TypeError, ValueError):
        raise PrepostError(f"{name}: expected (height, width), got {size!r}") from None
    return tuple(_check.number(x, f"{name}[{i}]", lo=1, hi=MAX_SIDE, integer=True) for i, x in enumerate((h, w)))


def check_crop_fraction(v, name: str = "crop_fraction") -> float:
    """0 keeps no pixels: refused by the spec checker and the op alike (it once passed one and failed the other)."""
    return _check.number(v, name, lo=0.0, hi=1.0, lo_open=True)


_size = check_size


_COEF = 2048  # 11-bit fixed-point tap weights, as OpenCV's INTER_LINEAR uses for uint8
_COEF2 = np.float32(1.0 / (_COEF * _COEF))


@kernel("resize_normalize", lambda nt: nt.void(
    nt.Array(nt.uint8, 1, "C", readonly=True), nt.Array(nt.int64, 1, "C", readonly=True),
    nt.Array(nt.float32, 4, "C"), nt.Array(nt.float64, 1, "C", readonly=True),
    nt.Array(nt.int64, 1, "C", readonly=True), nt.Array(nt.float32, 1, "C", readonly=True),
    nt.Array(nt.float32, 1, "C", readonly=True), nt.Array(nt.float32, 1, "C", readonly=True),
    nt.Array(nt.int64, 1, "C", readonly=True), nt.boolean), parallel=True)
def _resize_kernel(flat, geom, out, roi, dst, a, b, pad, cmap, nchw):  # pragma: no cover - compiled
    # flat: the image's bytes; geom: (n, h, w, c, stride_n, stride_h, stride_w, stride_c) in bytes.
    # Integer taps (exact, so the NumPy twin gets bit-identical sums) and unsigned offsets (no
    # negative-index wraparound checks) roughly halve the time of a float version.
    # a is 1 / (std * 2**22): it also undoes the fixed-point scale.
    n_img, sh, sw = geom[0], geom[1], geom[2]
    s_n, s_h, s_w, s_c = geom[4], geom[5], geom[6], geom[7]
    C = cmap.shape[0]
    H = out.shape[2] if nchw else out.shape[1]
    W = out.shape[3] if nchw else out.shape[2]
    top, left, dh, dw = dst[0], dst[1], dst[2], dst[3]
    sy, sx = roi[2] / dh, roi[3] / dw
    x0s = np.empty(dw, np.uint64)
    x1s = np.empty(dw, np.uint64)
    wxs = np.empty(dw, np.int32)
    for x in range(dw):  # column taps once, shared by every row (OpenCV's clamping rules)
        fx = roi[1] + (x + 0.5) * sx - 0.5
        ix = int(math.floor(fx))
        f = fx - ix
        if ix < 0:
            ix, f = 0, 0.0
        if ix >= sw - 1:
            ix, f = sw - 1, 0.0
        x0s[x] = ix * s_w
        x1s[x] = min(ix + 1, sw - 1) * s_w
        wxs[x] = np.int32(math.floor(f * _COEF + 0.5))
    coff = np.empty(C, np.uint64)
    for c in range(C):
        coff[c] = cmap[c] * s_c
    fast3 = nchw and C == 3
    for r in prange(n_img * H):
        n = r // H
        y = r - n * H
        yy = y - top
        if yy < 0 or yy >= dh:
            for c in range(C):
                for x in range(W):
                    if nchw:
                        out[n, c, y, x] = pad[c]
                    else:
                        out[n, y, x, c] = pad[c]
            continue
        fy = roi[0] + (yy + 0.5) * sy - 0.5
        iy = int(math.floor(fy))
        g = fy - iy
        if iy < 0:
            iy, g = 0, 0.0
        if iy >= sh - 1:
            iy, g = sh - 1, 0.0
        iy1 = min(iy + 1, sh - 1)
        wy = np.int32(math.floor(g * _COEF + 0.5))
        wy0 = np.int32(_COEF) - wy
        o0 = np.uint64(n * s_n + iy * s_h)
        o1 = np.uint64(n * s_n + iy1 * s_h)
        for c in range(C):
            for x in range(left):
                if nchw:
                    out[n, c, y, x] = pad[c]
                else:
                    out[n, y, x, c] = pad[c]
            for x in range(left + dw, W):
                if nchw:
                    out[n, c, y, x] = pad[c]
                else:
                    out[n, y, x, c] = pad[c]
        if fast3:  # the common case: all three planes from one set of tap addresses
            q0, q1, q2 = out[n, 0, y, left:left + dw], out[n, 1, y, left:left + dw], out[n, 2, y, left:left + dw]
            a0, a1, a2, b0, b1, b2 = a[0], a[1], a[2], b[0], b[1], b[2]
            c0, c1, c2 = coff[0], coff[1], coff[2]
            for xx in range(dw):
                wx = wxs[xx]
                wx0 = np.int32(_COEF) - wx
                w00, w01, w10, w11 = wx0 * wy0, wx * wy0, wx0 * wy, wx * wy
                p00, p01, p10, p11 = o0 + x0s[xx], o0 + x1s[xx], o1 + x0s[xx], o1 + x1s[xx]
                q0[xx] = np.float32(np.int32(flat[p00 + c0]) * w00 + np.int32(flat[p01 + c0]) * w01
                                    + np.int32(flat[p10 + c0]) * w10 + np.int32(flat[p11 + c0]) * w11) * a0 + b0
                q1[xx] = np.float32(np.int32(flat[p00 + c1]) * w00 + np.int32(flat[p01 + c1]) * w01
                                    + np.int32(flat[p10 + c1]) * w10 + np.int32(flat[p11 + c1]) * w11) * a1 + b1
                q2[xx] = np.float32(np.int32(flat[p00 + c2]) * w00 + np.int32(flat[p01 + c2]) * w01
                                    + np.int32(flat[p10 + c2]) * w10 + np.int32(flat[p11 + c2]) * w11) * a2 + b2
            continue
        for c in range(C):
            ac, bc, cc = a[c], b[c], coff[c]
            for xx in range(dw):
                wx = wxs[xx]
                wx0 = np.int32(_COEF) - wx
                p00, p01, p10, p11 = o0 + x0s[xx], o0 + x1s[xx], o1 + x0s[xx], o1 + x1s[xx]
                v = np.float32(np.int32(flat[p00 + cc]) * (wx0 * wy0) + np.int32(flat[p01 + cc]) * (wx * wy0)
                               + np.int32(flat[p10 + cc]) * (wx0 * wy) + np.int32(flat[p11 + cc]) * (wx * wy)) * ac + bc
                if nchw:
                    out[n, c, y, left + xx] = v
                else:
                    out[n, y, left + xx, c] = v


def affine(mean, std, pad_value, C):
    """The kernels' out = acc * a + b and the padding value, per channel (float32 vectors in, C channels).

    Refuses parameters whose output overflows float32 (mean 3e38, std 1e-37): the model would get inf.
    """
    with np.errstate(over="ignore"):
        a = np.broadcast_to(np.float32(1.0) / std * _COEF2, (C,)).astype(np.float32)
        b = np.broadcast_to(-mean / std, (C,)).astype(np.float32)
        pad = np.broadcast_to((pad_value - mean) / std, (C,)).astype(np.float32)
        top = np.float32(255 * _COEF * _COEF) * a + b  # the largest tap sum: a pixel of 255
    if not (np.isfinite(a).all() and np.isfinite(b).all() and np.isfinite(pad).all() and np.isfinite(top).all()):
        show = lambda v: "[" + ", ".join(f"{x:.4g}" for x in v) + "]"  # noqa: E731
        raise PrepostError(f"mean/std: (value - mean) / std overflows float32 for pixels 0..255 or pad_value "
                           f"(mean {show(mean)}, std {show(std)}, pad_value {show(pad_value)})")
    return a, b, pad


def _flat_bytes(img):
    """A 1-D byte view spanning a 4-D uint8 array's memory plus its strides: any layout, no copy
    (a negative spatial stride costs one copy; a reversed channel axis is undone for free)."""
    flipped_c = img.strides[3] < 0
    if flipped_c:
        img = img[..., ::-1]
    if min(img.strides) < 0:
        img = np.ascontiguousarray(img)
    if img.flags.c_contiguous:
        flat = img.reshape(-1)
    else:
        span = sum((n - 1) * s for n, s in zip(img.shape, img.strides)) + 1
        flat = np.lib.stride_tricks.as_strided(img, shape=(span,), strides=(1,), writeable=False)
    return flat, np.array(img.shape + img.strides, np.int64), flipped_c


def _taps(start, scale, n, limit):
    f = start + (np.arange(n) + 0.5) * scale - 0.5
    i = np.floor(f).astype(np.int64)
    w = f - i
    lo = i < 0
    i[lo], w[lo] = 0, 0.0
    hi = i >= limit - 1
    i[hi], w[hi] = limit - 1, 0.0
    return i, np.minimum(i + 1, limit - 1), np.floor(w * _COEF + 0.5).astype(np.int32)


def _resize_numpy(src, H, W, geo, a, b, pad, cmap, nchw):
    y0, x0, rh, rw = geo.roi
    top, left, dh, dw = geo.dst
    iy0, iy1, wy = _taps(y0, rh / dh, dh, src.shape[1])
    ix0, ix1, wx = _taps(x0, rw / dw, dw, src.shape[2])
    s = src[..., cmap]
    r0, r1 = s[:, iy0].astype(np.int32), s[:, iy1].astype(np.int32)
    wx1 = wx[None, None, :, None]
    wx0 = _COEF - wx1
    wy1 = wy[None, :, None, None]
    wy0 = _COEF - wy1
    acc = (r0[:, :, ix0] * (wx0 * wy0) + r0[:, :, ix1] * (wx1 * wy0)
           + r1[:, :, ix0] * (wx0 * wy1) + r1[:, :, ix1] * (wx1 * wy1))  # exact int32, as in the kernel
    v = acc.astype(np.float32) * a + b
    out = np.empty((src.shape[0], H, W, len(cmap)), np.float32)
    out[...] = pad
    out[:, top:top + dh, left:left + dw] = v
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2)) if nchw else out


class ResizeNormalize:
    """A validated resize_normalize step: parameters are checked once, calls only check the image."""

    def __init__(self, size, mean=0.0, std=255.0, layout: str = "NCHW", *, mode: str = "stretch",
                 crop_fraction: float = 1.0, pad_value: float = 114.0, swap_rb: bool = False,
                 backend: str = "auto"):
        self.size = _size(size)
        self.layout = _check.choice(layout, "layout", LAYOUTS)
        self.mode = _check.choice(mode, "mode", MODES)
        self.crop_fraction = check_crop_fraction(crop_fraction)
        self.mean = _check.vector(mean, "mean")
        self.std = _check.vector(std, "std")
        if (self.std == 0).any():
            raise PrepostError(f"std: must be non-zero, got {self.std.tolist()}")
        self.pad_value = _check.vector(pad_value, "pad_value")
        self.swap_rb = bool(swap_rb)
        self.backend = resolve_backend(backend)
        self._per_c = {}
        self._geo = {}

    def _params(self, C):
        got = self._per_c.get(C)
        if got is None:
            for name in ("mean", "std", "pad_value"):
                if getattr(self, name).size not in (1, C):
                    raise PrepostError(f"{name}: has {getattr(self, name).size} values; the image has {C} channels")
            cmap = np.arange(C, dtype=np.int64)
            if self.swap_rb:
                if C not in (3, 4):
                    raise PrepostError(f"swap_rb: needs 3 or 4 channels, the image has {C}")
                cmap[[0, 2]] = cmap[[2, 0]]
            a, b, pad = affine(self.mean, self.std, self.pad_value, C)
            got = self._per_c[C] = (a, b, pad, cmap)
        return got

    def geometry(self, src_hw) -> Geometry:
        key = tuple(src_hw)
        g = self._geo.get(key)
        if g is None:
            if len(self._geo) > 64:
                self._geo.clear()
            g = self._geo[key] = geometry(key, self.size, self.mode, self.crop_fraction)
        return g

    def __call__(self, image) -> np.ndarray:
        img = _check.array(image, "image", ndim=(2, 3, 4), dtypes=("uint8",))
        if img.ndim == 2:
            img = img[None, :, :, None]
        elif img.ndim == 3:
            img = img[None]
        if 0 in img.shape:
            raise PrepostError(f"image: empty image of shape {np.shape(image)}")
        C = img.shape[3]
        a, b, pad, cmap = self._params(C)
        geo = self.geometry(img.shape[1:3])
        H, W = self.size
        nchw = self.layout == "NCHW"
        if self.backend == "numpy":
            return _resize_numpy(img, H, W, geo, a, b, pad, cmap, nchw)
        out = np.empty((img.shape[0], C, H, W) if nchw else (img.shape[0], H, W, C), np.float32)
        flat, geom, flipped_c = _flat_bytes(img)
        if flipped_c:
            cmap = (C - 1) - cmap
        call("resize_normalize", out.size, flat, geom, out, np.asarray(geo.roi, np.float64),
             np.asarray(geo.dst, np.int64), a, b, pad, cmap, nchw)
        return out


_CACHE: dict = {}


def resize_normalize(image, size, mean=0.0, std=255.0, layout: str = "NCHW", *, mode: str = "stretch",
                     crop_fraction: float = 1.0, pad_value: float = 114.0, swap_rb: bool = False,
                     backend: str = "auto") -> np.ndarray:
    """uint8 image(s) -> float32 model input, always 4-D: (N, C, h, w) for NCHW or (N, h, w, C).

    image: HW (grey), HWC or NHWC uint8 (any strides). size: (h, w) of the output.
    mean/std/pad_value: one value or one per channel, in pixel units: out = (pixel - mean) / std.
    mode: "stretch" (plain resize), "crop" (centre crop to the output's aspect ratio, then resize),
    "letterbox" (keep aspect ratio, pad with `pad_value`). crop_fraction < 1 keeps only that central
    fraction of the region (e.g. 0.875 = resize-256-crop-224). swap_rb swaps channels 0 and 2 (BGR<->RGB).
    """
    key = _freeze((size, mean, std, layout, mode, crop_fraction, pad_value, swap_rb, backend))
    op = _CACHE.get(key) if key is not None else None
    if op is None:
        op = ResizeNormalize(size, mean, std, layout, mode=mode, crop_fraction=crop_fraction,
                             pad_value=pad_value, swap_rb=swap_rb, backend=backend)
        if key is not None:
            if len(_CACHE) > 32:
                _CACHE.clear()
            _CACHE[key] = op
    return op(image)
