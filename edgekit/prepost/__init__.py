"""Pre- and post-processing kernels that ship with an artifact (edgekit issue 8).

Self-contained on purpose: this package is copied into deployment bundles and imported by the
device runner, where only numpy (and maybe numba) exists. No imports from the rest of edgekit.

Every op has a Numba kernel and a NumPy twin (the reference in tests, and the fallback when Numba
is missing); `backend="auto"|"numba"|"numpy"` picks one, `resolve_backend()` says which runs.
"""
from ._jit import BACKENDS, HAVE_NUMBA, NUMBA_VERSION, backend_info, kernel_names, resolve_backend, set_threads
from .boxes import decode_boxes, nms
from .errors import PrepostError, PrepostFallbackWarning
from .image import Geometry, ResizeNormalize, geometry, resize_normalize
from .ops import OPS
from .pipeline import Pipeline, validate_spec
from .scores import argmax_segmentation, dequantize, sigmoid_threshold, softmax_topk
from .text import mean_pool_l2, pad_truncate
from .warmup import cold_and_warm, warmup_all

__all__ = [
    "BACKENDS", "HAVE_NUMBA", "NUMBA_VERSION", "OPS", "Geometry", "Pipeline", "PrepostError",
    "PrepostFallbackWarning", "ResizeNormalize", "argmax_segmentation", "backend_info", "cold_and_warm",
    "decode_boxes", "dequantize", "geometry", "kernel_names", "mean_pool_l2", "nms", "pad_truncate",
    "resize_normalize", "resolve_backend", "set_threads", "sigmoid_threshold", "softmax_topk", "validate_spec", "warmup_all",
]
