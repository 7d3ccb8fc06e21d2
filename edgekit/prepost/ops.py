"""The op registry: every pre/post-processing step a manifest's `prepost` section may name.

Each entry says where the op may run (pre/post), its parameters (checked without data, so a bad
spec fails at `edgekit compress` time rather than on the device), which values it reads by default,
the kernels it uses, and a small example input for warm-up.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import _check
from .boxes import BOX_FORMATS, decode_boxes, nms
from .errors import PrepostError
from .image import LAYOUTS, MODES, ResizeNormalize, affine, check_crop_fraction, check_size
from .scores import SEG_LAYOUTS, argmax_segmentation, check_threshold, dequantize, sigmoid_threshold, softmax_topk
from .text import PADDING, TRUNCATION, check_padding, mean_pool_l2, pad_truncate, token_rows

REQUIRED = object()


@dataclass(frozen=True)
class OpDef:
    stages: tuple  # "pre" and/or "post"
    params: dict  # name -> (default or REQUIRED, checker(value, name))
    build: Callable  # (params: dict, backend: str) -> callable(*inputs) -> array or dict of arrays
    # values read by default; "prev" is the previous step's result, and the first one is "prev" for any step
    # after the first of its stage (pipeline._default_inputs)
    inputs: tuple = ("prev",)
    kernels: tuple = ()
    example: Callable = None  # params -> tuple of inputs for warm-up
    # (params, model feed dict) -> the raw input that step turns into those feeds, or None: lets timing
    # run a pre step on the run's real samples instead of its generic example
    raw_from_inputs: Callable = None
    check: Callable = None  # params -> None, raising PrepostError: rules across parameters
    n_inputs: tuple = (1, 1)  # how many inputs a step may name (min, max)
    doc: str = ""
    extra: dict = field(default_factory=dict)


def _size(v, name):
    if not isinstance(v, (list, tuple)) or len(v) != 2:  # JSON's words; the ranges are the op's own
        raise PrepostError(f"{name}: expected [height, width], got {v!r}")
    check_size(v, name)


def _crop_fraction(v, name):
    check_crop_fraction(v, name)


def _vec(v, name):
    _check.vector(v, name)


def _std(v, name):
    if (_check.vector(v, name) == 0).any():
        raise PrepostError(f"{name}: must be non-zero, got {v!r}")


def _one_of(choices):
    return lambda v, name: _check.choice(v, name, choices)


def _int(lo=None, optional=False):
    def chk(v, name):
        if v is None and optional:
            return
        _check.number(v, name, lo=lo, integer=True)
    return chk


def _num(lo=None, hi=None, optional=False):
    def chk(v, name):
        if v is None and optional:
            return
        _check.number(v, name, lo=lo, hi=hi)
    return chk


def _bool(v, name):
    if not isinstance(v, bool):
        raise PrepostError(f"{name}: expected true or false, got {v!r}")


def _opt_axis(v, name):
    if v is not None:
        _check.number(v, name, integer=True)


def _channels_agree(p):
    """mean, std and pad_value give one value for all channels or one per channel, the same count: mean of
    2 values beside std of 3 fits no image, and was only found on the device."""
    counts = {k: np.size(p[k]) for k in ("mean", "std", "pad_value")}
    per_channel = {n for n in counts.values() if n != 1}
    if len(per_channel) > 1:
        raise PrepostError("mean, std and pad_value must each have 1 value or one per channel, the same "
                           "number: got " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    affine(*(_check.vector(p[k], k) for k in ("mean", "std", "pad_value")), max(counts.values()))


def resize_channels(p):
    """The channel counts a resize_normalize step with params p accepts, or None when any does: several
    mean/std/pad_value values fix one count, swap_rb needs 3 or 4. The first is the count to sample with,
    so the compile-time fit check and every warm-up feed an image the step can take."""
    n = max(np.size(p[k]) for k in ("mean", "std", "pad_value"))
    if n > 1:
        return (n,)
    return (3, 4) if p["swap_rb"] else None


def _example_resize(p):
    counts = resize_channels(p)
    return (np.full((480, 640, counts[0] if counts else 1), 127, np.uint8),)


def _build_resize(p, backend):
    return ResizeNormalize(p["size"], p["mean"], p["std"], p["layout"], mode=p["mode"],
                           crop_fraction=p["crop_fraction"], pad_value=p["pad_value"], swap_rb=p["swap_rb"],
                           backend=backend)


def _build_pad(p, backend):
    def run(token_ids):
        ids, mask = pad_truncate(token_ids, p["max_length"], p["pad_id"], padding=p["padding"],
                                 truncation=p["truncation"], backend=backend)
        return {"input_ids": ids, "attention_mask": mask}
    return run


def _build_softmax(p, backend):
    def run(logits):
        probs, idx = softmax_topk(logits, p["k"], backend=backend)
        return {"probs": probs, "indices": idx}
    return run


def _build_sigmoid(p, backend):
    def run(scores):
        probs, on = sigmoid_threshold(scores, p["threshold"], probabilities=p["probabilities"], backend=backend)
        return {"probs": probs, "labels": on}
    return run


def _build_nms(p, backend):
    def run(boxes, scores, classes=None):
        boxes, scores = np.asarray(boxes), np.asarray(scores)
        if boxes.ndim == 3 and boxes.shape[0] == 1:  # a batch of one, as most detectors emit
            boxes, scores = boxes[0], scores[0]
            classes = None if classes is None else np.asarray(classes)[0]
        keep = nms(boxes, scores, p["iou_threshold"], p["max_detections"], classes,
                   score_threshold=p["score_threshold"], backend=backend)
        out = {"indices": keep, "boxes": boxes[keep], "scores": scores[keep]}
        if classes is not None:
            out["classes"] = np.asarray(classes)[keep]
        return out
    return run


def _example_nms(p):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 600, (500, 2))
    wh = rng.uniform(10, 80, (500, 2))
    return (np.concatenate([xy, xy + wh], 1).astype(np.float32), rng.random(500).astype(np.float32))


def _scale_agree(p):
    """scale and zero_point give one value or one per channel, the same count, and per channel needs axis:
    no tensor fits scale of 2 beside zero_point of 3, yet that was only found on the device."""
    counts = {k: np.size(p[k]) for k in ("scale", "zero_point")}
    per_channel = {n for n in counts.values() if n != 1}
    if len(per_channel) > 1:
        raise PrepostError("scale and zero_point must each have 1 value or one per channel, the same number: got "
                           + ", ".join(f"{k} {n}" for k, n in counts.items()))
    if per_channel and p["axis"] is None:
        raise PrepostError(f"axis: per-channel scale/zero_point ({counts['scale']}/{counts['zero_point']} values) "
                           "needs axis")


def _example_dequantize(p):
    if p["axis"] is None:
        return (np.zeros((1, 1000), np.int8),)
    ch = max(np.size(p["scale"]), np.size(p["zero_point"]))
    ax = int(p["axis"])
    shape = [1] * max(4, ax + 1, -ax)  # enough axes for any axis the spec names, not just 4-D's
    shape[ax] = ch
    return (np.zeros(shape, np.int8),)


OPS: dict = {
    "resize_normalize": OpDef(
        ("pre",), {"size": (REQUIRED, _size), "mean": (0.0, _vec), "std": (255.0, _std),
                   "layout": ("NCHW", _one_of(LAYOUTS)), "mode": ("stretch", _one_of(MODES)),
                   "crop_fraction": (1.0, _crop_fraction), "pad_value": (114.0, _vec), "swap_rb": (False, _bool)},
        _build_resize, kernels=("resize_normalize",), check=_channels_agree,
        example=_example_resize,
        doc="uint8 image(s) -> float32 NCHW/NHWC: bilinear resize, crop/letterbox, (x - mean) / std"),
    "pad_truncate": OpDef(
        ("pre",), {"max_length": (None, _int(1, optional=True)), "pad_id": (0, _int()),
                   "padding": ("longest", _one_of(PADDING)), "truncation": ("right", _one_of(TRUNCATION))},
        _build_pad, kernels=("pad_truncate",), check=lambda p: check_padding(p["padding"], p["max_length"]),
        # ids 1-4 are rows of every embedding table (BERT's [CLS]=101 is not, in a 100-token vocabulary)
        example=lambda p: ([[1, 2, 3, 4], [1, 2]],), raw_from_inputs=lambda p, feeds: token_rows(feeds),
        doc="token id lists -> {input_ids, attention_mask}"),
    "softmax_topk": OpDef(
        ("post",), {"k": (5, _int(1))}, _build_softmax, kernels=("softmax_topk", "softmax_topk_f64"),
        example=lambda p: (np.zeros((8, max(1000, p["k"])), np.float32),),
        doc="logits -> {probs, indices} of the k best classes"),
    "sigmoid_threshold": OpDef(
        ("post",), {"threshold": (0.5, check_threshold), "probabilities": (False, _bool)}, _build_sigmoid,
        kernels=("sigmoid_threshold",), example=lambda p: (np.zeros((8, 80), np.float32),),
        doc="a yes/no per class (multi-label logits, or probabilities) -> {probs, labels}: labels true where the "
            "probability is above threshold"),
    "argmax_segmentation": OpDef(
        ("post",), {"layout": ("NCHW", _one_of(SEG_LAYOUTS))},
        lambda p, backend: (lambda x: argmax_segmentation(x, p["layout"], backend=backend)),
        kernels=("argmax_nchw", "argmax_nchw_f64"),
        example=lambda p: (np.zeros((1, 21, 64, 64) if p["layout"] == "NCHW" else (1, 64, 64, 21), np.float32),),
        doc="per-pixel class scores -> class map"),
    "decode_boxes": OpDef(
        ("post",), {"fmt": ("cxcywh", _one_of(BOX_FORMATS))},
        lambda p, backend: (lambda x: decode_boxes(x, p["fmt"], backend=backend)), kernels=("decode_boxes",),
        example=lambda p: (np.ones((100, 4), np.float32),), doc="centre/size boxes -> x1, y1, x2, y2"),
    "nms": OpDef(
        ("post",), {"iou_threshold": (0.5, _num(0.0, 1.0)), "max_detections": (None, _int(0, optional=True)),
                    "score_threshold": (None, _num(optional=True))},
        _build_nms, inputs=("boxes", "scores"), n_inputs=(2, 3), kernels=("nms",), example=_example_nms,
        doc="(boxes, scores[, classes]) -> {indices, boxes, scores[, classes]} kept by greedy NMS; as the first "
            "post step it reads the outputs 'boxes' and 'scores', after another step that step's result and 'scores'"),
    "dequantize": OpDef(
        ("post", "pre"), {"scale": (REQUIRED, _vec), "zero_point": (0, _vec), "axis": (None, _opt_axis)},
        lambda p, backend: (lambda q: dequantize(q, p["scale"], p["zero_point"], p["axis"], backend=backend)),
        kernels=("dequantize",), example=_example_dequantize, check=_scale_agree,
        doc="int8/uint8 -> float32 (q - zero_point) * scale"),
    "mean_pool_l2": OpDef(
        ("post",), {"normalize": (True, _bool)},
        lambda p, backend: (lambda h, m=None: mean_pool_l2(h, m, normalize=p["normalize"], backend=backend)),
        inputs=("prev", "attention_mask"), n_inputs=(1, 2), kernels=("mean_pool_l2",),
        example=lambda p: (np.ones((2, 16, 384), np.float32), np.ones((2, 16), np.int64)),
        doc="token embeddings + mask -> L2-normalised sentence embeddings"),
}
