"""The self-test a bundle carries: one input and the output onnxruntime gave for it here.

The input is real when one can be found (--inputs, OUTDIR/sample_inputs.npz, or the
.npz/.npy the compress run calibrated or evaluated on), else generated (seeded) with
the model's input shapes. The device later reruns the model on it and compares.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError

ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(bool)": "bool"}
# kinds whose outputs may move by a quantization step between CPUs (VNNI vs plain, x86 vs ARM)
COARSE_KINDS = ("int8", "int8-dynamic", "fp16")


def candidate_inputs(outdir: Path, manifest, explicit=None) -> list[Path]:
    if explicit:
        return [Path(explicit)]
    cands = [outdir / "sample_inputs.npz"]
    for key in ("eval", "calib"):
        v = (manifest.settings or {}).get(key)
        if isinstance(v, str) and v.endswith((".npz", ".npy")):
            p = Path(v)
            cands.append(p if p.is_absolute() else Path.cwd() / p)
    return [c for c in cands if c.is_file()]


def _fit(arr: np.ndarray, shape, dtype) -> np.ndarray | None:
    """One sample of arr shaped for this input, or None if it cannot fit."""
    if arr.ndim != len(shape):
        return None
    if isinstance(shape[0], int) and shape[0] > 0:
        arr = arr[: shape[0]]
    else:
        arr = arr[:1]
    for have, want in zip(arr.shape, shape):
        if isinstance(want, int) and want > 0 and have != want:
            return None
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow to inf is refused by the caller, by name
        return np.ascontiguousarray(arr.astype(dtype, copy=False))


def _nonfinite(feeds: dict) -> str | None:
    """The first float input holding NaN or inf, or None."""
    for name, arr in feeds.items():
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            return name
    return None


def _load_real(path: Path, specs) -> dict | None:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    arrays = {"": data} if isinstance(data, np.ndarray) else {k: data[k] for k in data.files}
    inputs_only = {k: v for k, v in arrays.items() if k not in ("y", "labels")}
    feeds = {}
    for s in specs:
        arr = arrays.get(s.name)
        if arr is None and len(specs) == 1 and len(inputs_only) == 1:
            arr = next(iter(inputs_only.values()))
        if arr is None:
            return None
        fitted = _fit(arr, s.shape, ORT_DTYPES.get(s.type, "float32"))
        if fitted is None:
            return None
        feeds[s.name] = fitted
    return feeds


def _generated(specs, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for s in specs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in s.shape]
        dtype = ORT_DTYPES.get(s.type)
        if dtype is None:
            raise InputError(f"model input {s.name!r} has type {s.type}, which the self-test cannot generate; "
                             "pass --inputs FILE.npz")
        if dtype.startswith("float"):
            feeds[s.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == "bool":
            feeds[s.name] = np.ones(shape, dtype=bool)
        else:  # token ids, masks, indices: 1 is valid for all of them
            feeds[s.name] = np.ones(shape, dtype=dtype)
    return feeds


def make_selftest(model_path: Path, outdir: Path, manifest, kind: str, *, inputs=None, atol=None,
                  seed: int = 0) -> tuple[dict, dict, dict]:
    """(inputs, expected outputs, facts) for the bundle's self-test."""
    from ..onnxutil import session

    try:
        sess = session(model_path, threads=1)
    except Exception as e:  # onnxruntime raises its own exception types
        raise InputError(f"{model_path}: onnxruntime cannot load the model: {str(e).splitlines()[0]}") from None
    specs = sess.get_inputs()
    feeds, origin = None, "generated"
    for cand in candidate_inputs(outdir, manifest, inputs):
        feeds = _load_real(cand, specs)
        bad = _nonfinite(feeds) if feeds is not None else None
        if bad is not None:
            # NaN never compares equal: an fp32 self-test could never pass on the device, and an int8
            # one quantizes NaN to a constant and "passes" while checking nothing
            if inputs:
                raise InputError(f"{inputs}: input {bad!r} holds NaN or infinite values (as {feeds[bad].dtype}, in "
                                 "the sample the self-test uses); the self-test needs finite numbers")
            feeds = None  # a run's own eval/calib file: try the next source
            continue
        if feeds is not None:
            origin = str(cand)
            break
    if feeds is None:
        if inputs:
            raise InputError(f"{inputs}: does not hold arrays matching the model's inputs "
                             f"({', '.join(f'{s.name}{s.shape}' for s in specs)})")
        feeds = _generated(specs, seed)
    try:
        outs = sess.run(None, feeds)
    except Exception as e:
        raise InputError(f"{model_path}: the model fails on its self-test input ({origin}): "
                         f"{str(e).splitlines()[0]}") from None
    expected = {o.name: np.asarray(v) for o, v in zip(sess.get_outputs(), outs)}
    if atol is None:
        scale = max((float(np.max(np.abs(v))) for v in expected.values()
                     if v.size and np.issubdtype(v.dtype, np.floating)), default=1.0)
        atol = max(1e-5, (2e-2 if kind in COARSE_KINDS else 1e-3) * max(scale, 1.0))
    return feeds, expected, {"input_origin": origin if origin == "generated" else Path(origin).name,
                             "atol": float(atol)}
