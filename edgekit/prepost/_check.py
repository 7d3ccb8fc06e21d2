"""Argument checks shared by the ops: one-line PrepostError messages naming the argument."""
from __future__ import annotations

import math

import numpy as np

from .errors import PrepostError

_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
_F32_MAX = float(np.finfo(np.float32).max)
_KIND_WORDS = {"u": "unsigned integer", "i": "signed integer", "f": "floating", "b": "boolean"}


def array(x, name: str, *, ndim=None, dtypes=None, kinds=None) -> np.ndarray:
    """np.asarray(x) after checking its dtype (exact `dtypes` or dtype `kinds`) and ndim (int or tuple)."""
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as e:
        raise PrepostError(f"{name}: not convertible to an array ({e})") from None
    if a.dtype == object:
        raise PrepostError(f"{name}: ragged or non-numeric data (dtype object)")
    if dtypes is not None and a.dtype not in [np.dtype(d) for d in dtypes]:
        want = " or ".join(np.dtype(d).name for d in dtypes)
        raise PrepostError(f"{name}: dtype {a.dtype} is not supported; expected {want}")
    if kinds is not None and a.dtype.kind not in kinds:
        want = " or ".join(_KIND_WORDS[k] for k in kinds)
        raise PrepostError(f"{name}: dtype {a.dtype} is not supported; expected a {want} dtype")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if a.ndim not in allowed:
            want = " or ".join(f"{n}-D" for n in allowed)
            raise PrepostError(f"{name}: expected a {want} array, got shape {a.shape}")
    return a


def number(x, name: str, *, lo=None, hi=None, lo_open=False, integer=False):
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise PrepostError(f"{name}: expected a number, got {x!r}")
    if x != x:
        raise PrepostError(f"{name}: NaN is not allowed")
    if integer:
        if (isinstance(x, (float, np.floating)) and not math.isfinite(x)) or int(x) != x:
            raise PrepostError(f"{name}: expected an integer, got {x!r}")
        if not _INT64_MIN <= int(x) <= _INT64_MAX:  # kernels take int64; anything wider overflows on the device
            raise PrepostError(f"{name}: {x!r} is out of int64 range")
    try:
        v = int(x) if integer else float(x)
    except OverflowError:  # an integer beyond float range (valid JSON: 1e400 written out)
        raise PrepostError(f"{name}: {x!r} is out of range") from None
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise PrepostError(f"{name}: {x!r} must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and v > hi:
        raise PrepostError(f"{name}: {x!r} must be <= {hi}")
    return v


def choice(x, name: str, choices):
    if x not in choices:
        raise PrepostError(f"{name}: {x!r} is not one of {', '.join(map(str, choices))}")
    return x


def vector(x, name: str, n_allowed=None) -> np.ndarray:
    """A float32 1-D parameter vector (a scalar becomes length 1), finite."""
    try:
        v = np.atleast_1d(np.asarray(x, dtype=np.float64))
    except OverflowError:
        raise PrepostError(f"{name}: values must be within float32 range, got an integer beyond it") from None
    except (TypeError, ValueError):
        raise PrepostError(f"{name}: expected a number or a list of numbers, got {x!r}") from None
    if v.ndim != 1 or v.size == 0:
        raise PrepostError(f"{name}: expected a number or a flat list of numbers, got {x!r}")
    if not np.isfinite(v).all():
        raise PrepostError(f"{name}: values must be finite, got {x!r}")
    if (np.abs(v) > _F32_MAX).any():  # finite here, but inf once cast to float32
        raise PrepostError(f"{name}: values must be within float32 range (|value| <= {_F32_MAX:.4g}), got {x!r}")
    if n_allowed is not None and v.size not in n_allowed:
        raise PrepostError(f"{name}: has {v.size} values; expected {' or '.join(map(str, sorted(set(n_allowed))))}")
    return v.astype(np.float32)
