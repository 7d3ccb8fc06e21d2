"""Readers for --calib / --eval data: .npy, .npz, .csv / .tsv rows, a folder of images or clips, sentences.

Every reader returns a Dataset whose arrays stream: .npy and uncompressed .npz members
are memory-mapped, compressed .npz members are decompressed a batch at a time, .csv rows
are parsed a batch at a time (csv_rows.py), image folders decode only the files a batch
asks for, dtype casts happen per batch; sentences are tokenized up front. Everything
is checked against the model's declared inputs first, so a mismatch is one clear line
naming the file, before any work starts.
"""
from __future__ import annotations

import threading
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifact import TensorSpec
from .dataset import Dataset
from .errors import CalibrationError, InputError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
LABEL_KEY = "y"
LABEL_NAMES = ("labels", "label", "targets", "target")  # other names an .npz's labels go by


def other_label_name(arrays, input_names) -> str | None:
    """Labels saved under another name than 'y' (np.savez(..., labels=y)): the one array named like labels that
    no model input takes, else None. The .npz reader and the loader (learning a factory's inputs) both ask."""
    other = [k for k in LABEL_NAMES if k in arrays and k not in input_names]
    return other[0] if len(other) == 1 else None


class LazyArray:
    """The slice of the ndarray protocol Dataset uses (len, shape, dtype, [a:b], [row indices]), computed on
    demand: fetch(a, b) gives rows a..b-1; take(rows), if given, any rows (else consecutive runs are fetched)."""

    def __init__(self, n: int, item_shape: tuple, dtype, fetch, take=None):
        self._n, self._item, self.dtype, self._fetch, self._take = n, tuple(item_shape), np.dtype(dtype), fetch, take

    @property
    def shape(self) -> tuple:
        return (self._n, *self._item)

    @property
    def ndim(self) -> int:
        return 1 + len(self._item)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            i = range(self._n)[idx]
            return self._fetch(i, i + 1)[0]
        if isinstance(idx, slice) and idx.step in (None, 1):
            a, b, _ = idx.indices(self._n)
            if b <= a:
                return np.empty((0, *self._item), self.dtype)
            return self._fetch(a, b)
        rows = _row_index(idx, self._n)
        if rows is None:  # indexes more than the sample axis: rare enough to read everything
            return np.asarray(self)[idx]
        return self.take(rows)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (valid, non-negative ints), each read once however often it is asked for: a batch
        must not read (decode, cast) the whole set."""
        if not len(rows):
            return np.empty((0, *self._item), self.dtype)
        if self._take is not None:
            return self._take(rows)
        uniq, back = np.unique(rows, return_inverse=True)
        cuts = np.flatnonzero(np.diff(uniq) != 1) + 1
        runs = [self._fetch(int(r[0]), int(r[-1]) + 1) for r in np.split(uniq, cuts)]
        out = runs[0] if len(runs) == 1 else np.concatenate(runs)
        return out if len(uniq) == len(rows) and (back == np.arange(len(rows))).all() else out[back]

    def __array__(self, dtype=None, copy=None):
        out = self._fetch(0, self._n) if self._n else np.empty(self.shape, self.dtype)
        return out if dtype is None else out.astype(dtype)

    def head(self, n: int) -> "LazyArray":
        return LazyArray(min(n, self._n), self._item, self.dtype, self._fetch, self._take)


def _row_index(idx, n: int):
    """idx (a slice, int sequence or boolean mask over the sample axis) as row numbers in 0..n-1; None for
    anything else (a tuple reaching into other axes)."""
    if isinstance(idx, slice):
        return np.arange(n)[idx]
    if isinstance(idx, tuple):
        return None
    rows = np.asarray(idx)
    if rows.ndim != 1:
        return None
    if rows.dtype == np.bool_:
        if len(rows) != n:
            raise IndexError(f"boolean index of length {len(rows)} for {n} rows")
        return np.flatnonzero(rows)
    if not len(rows):
        return rows.astype(np.intp)
    if rows.dtype.kind not in "iu":
        return None
    if rows.min() < -n or rows.max() >= n:
        raise IndexError(f"row index out of range for {n} rows")
    return np.where(rows < 0, rows + n, rows).astype(np.intp)


def row_view(arr, rows: np.ndarray) -> LazyArray:
    """arr's rows `rows`, read only when asked for: a subset of memory-mapped or lazily read data that
    copies nothing up front (a held-out split of a training set larger than RAM)."""
    rows = np.asarray(rows, np.intp)

    def pick(r):
        got = arr.take(r) if isinstance(arr, LazyArray) else arr[r]
        return np.asarray(got)

    return LazyArray(len(rows), arr.shape[1:], arr.dtype, lambda a, b: pick(rows[a:b]), lambda r: pick(rows[r]))


def _cast_view(arr, dtype) -> LazyArray:
    return LazyArray(len(arr), arr.shape[1:], dtype, lambda a, b: np.asarray(arr[a:b]).astype(dtype))


# ---------------------------------------------------------------------------------------------- checks

def _castable(src: np.dtype, dst: np.dtype) -> bool:
    """Safe casts plus the ones users expect to work: float64 -> float32 and int64 <-> int32 ids."""
    if np.can_cast(src, dst, casting="safe"):
        return True
    if src.kind == "f" and dst.kind == "f":
        return True
    if src.kind in "iub" and dst.kind in "iuf":
        return True
    return False


def _check_array(where: str, name: str, arr, spec: TensorSpec | None):
    if arr.dtype.hasobject or arr.dtype.kind not in "biuf":
        raise CalibrationError(f"{where}: input {name!r} has dtype {arr.dtype}, not a numeric array")
    if spec is not None and not list(spec.shape):
        # every stage runs the model on batches of samples; a rank-0 input has no axis to batch (the message
        # was "has shape (300,) (rank 1); the model expects rank 0 [] with samples on axis 0", which no data fits)
        raise CalibrationError(f"{where}: input {name!r}: the model takes it as a scalar (rank 0), with no sample "
                               "axis, and edgekit runs models on batches of samples; give the model a per-sample "
                               "input ([N] or [N, 1]) or fold the value into it as a constant")
    if len(arr.shape) == 0:
        raise CalibrationError(f"{where}: input {name!r} is a scalar; expected a leading sample axis")
    if spec is None:
        return arr
    want = list(spec.shape)
    if len(arr.shape) == len(want) + 1 and want and isinstance(want[0], int) and want[0] > 0:
        # a stack of fixed-batch inputs, (N, B, ...) for a model declared (B, ...): merge N and B
        if isinstance(arr, np.ndarray):
            arr = arr.reshape((arr.shape[0] * arr.shape[1], *arr.shape[2:]))
        elif isinstance(arr, _MemberArray):
            arr = arr.merge_leading()
    if len(arr.shape) != len(want):
        raise CalibrationError(f"{where}: input {name!r} has shape {tuple(arr.shape)} (rank {len(arr.shape)}); "
                               f"the model expects rank {len(want)} {_fmt_shape(want)} with samples on axis 0")
    for ax, (got, exp) in enumerate(zip(arr.shape[1:], want[1:]), start=1):
        if isinstance(exp, int) and exp > 0 and got != exp:
            raise CalibrationError(f"{where}: input {name!r} has shape {tuple(arr.shape)}; the model expects "
                                   f"{_fmt_shape(want)} (axis {ax}: {got} != {exp})")
    dst = np.dtype(spec.dtype)
    if dst.kind not in "biuf":
        # np.can_cast calls any number -> object/str 'safe': float data was stringified to feed a
        # tensor(string) input, and the model was 'quantized' (no op changed) and shipped as int8
        raise CalibrationError(f"{where}: input {name!r} has dtype {arr.dtype}; the model expects non-numeric "
                               f"data ({_onnx_kind(dst)}) and that cast would lose information")
    if arr.dtype != dst:
        if dst.kind == "b" and arr.dtype.kind in "iu":
            # 0/1 integer masks (how HuggingFace tokenizers hand out attention masks) for a bool input
            _check_zero_one(where, name, arr)
            return _cast_view(arr, dst)
        if not _castable(arr.dtype, dst):
            raise CalibrationError(f"{where}: input {name!r} has dtype {arr.dtype}; the model expects {dst} "
                                   "and that cast would lose information")
        # the values are checked here, on the file's own dtype: after the cast a wrapped integer or
        # an overflowed float looks like any other value, and the cast view hides the source
        _check_cast_values(where, name, arr, dst)
        arr = _cast_view(arr, dst)
    return arr


def _onnx_kind(dst: np.dtype) -> str:
    return "a string tensor" if dst.kind in "OUS" else f"dtype {dst}"


def _chunks(arr, budget: int = 64 << 20):
    """(start, chunk) over axis 0, about `budget` bytes at a time, so a memory-mapped file is never read whole."""
    row = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * np.dtype(arr.dtype).itemsize)
    step = max(1, budget // row)
    for a in range(0, len(arr), step):
        yield a, np.asarray(arr[a:a + step])


def _first_sample(bad: np.ndarray) -> int:
    return int(np.argwhere(bad.reshape(len(bad), -1).any(1))[0][0])


def _check_cast_values(where: str, name: str, arr, dst: np.dtype):
    """Refuse what the cast to the model's dtype would not carry over: NaN/inf, integers outside the
    target's range (they wrap), finite floats beyond its range (they become inf)."""
    src = np.dtype(arr.dtype)
    lo = hi = None
    if dst.kind in "iu" and src.kind in "iu":
        info = np.iinfo(dst)
        lo, hi = info.min, info.max
    for a, part in _chunks(arr):
        if src.kind == "f":
            bad = ~np.isfinite(part)
            if bad.any():
                raise CalibrationError(f"{where}: input {name!r} has NaN or infinite values "
                                       f"(first in sample {a + _first_sample(bad)})")
        if lo is not None:
            bad = (part < lo) | (part > hi)
            what = f"outside the range of {dst} ({lo}..{hi}), the model's input dtype; it would wrap"
        elif dst.kind == "f":
            with np.errstate(over="ignore"):
                bad = ~np.isfinite(part.astype(dst))
            what = f"beyond the range of {dst} (largest {np.finfo(dst).max:g}), the model's input dtype; it would become inf"
        else:
            continue
        if bad.any():
            i = _first_sample(bad)
            v = part[i][bad[i]].flat[0]
            raise CalibrationError(f"{where}: input {name!r} holds {v}, {what} (first in sample {a + i})")


def _check_zero_one(where: str, name: str, arr):
    for _, part in _chunks(arr):
        bad = (part != 0) & (part != 1)
        if bad.any():
            v = part[bad].flat[0]
            raise CalibrationError(f"{where}: input {name!r} is a bool input in the model, but holds {v} "
                                   "(integer data for it must be 0 or 1)")


def _check_finite(where: str, name: str, arr):
    """NaN or inf in the data would surface far from here (a failed export check, a silently wrong score)."""
    if (isinstance(arr, LazyArray) and not isinstance(arr, _MemberArray)) or np.dtype(arr.dtype).kind != "f":
        # cast views were checked on their source by _check_cast_values; decoded images and
        # integer ids cannot hold either
        return
    for a, part in _chunks(arr):
        bad = ~np.isfinite(part)
        if bad.any():
            raise CalibrationError(f"{where}: input {name!r} has NaN or infinite values "
                                   f"(first in sample {a + _first_sample(bad)})")


def _fmt_shape(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _check_labels(where: str, y, n: int):
    """(class indices as int64, None, None) or, for a 'y' that holds no class indices (float targets, several
    columns), (None, the one-line reason, None): whether that is an error depends on the task, applied after
    the data is read (loader.check_label_kind), since a regression's labels are unused. Integer labels of
    shape [N, d1, ...] come back third, as int64: one class per position, which only --task segmentation
    uses (loader.check_label_kind hands them over)."""
    y = np.asarray(y)
    if y.dtype == bool:  # a binary classifier's labels as saved from a comparison (y == 1): False=0, True=1
        y = y.astype(np.int64)
    if y.ndim == 0:  # len() of it was 'internal error: TypeError: len() of unsized object'
        raise CalibrationError(f"{where}: labels '{LABEL_KEY}' hold one value ({y.item()!r}), not one per sample "
                               f"({n})")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if len(y) != n:
        raise CalibrationError(f"{where}: {len(y)} labels in '{LABEL_KEY}' for {n} samples")
    if y.ndim != 1:
        problem = f"{where}: labels '{LABEL_KEY}' must be 1-D class indices, got shape {y.shape}"
        integral = y.dtype.kind in "iu" or (y.dtype.kind == "f" and bool(np.all(np.isfinite(y)))
                                            and bool(np.all(y == np.round(y))))
        if not integral:
            return None, problem, None
        _check_int64(where, y.reshape(-1))
        if y.ndim == 2 and bool(np.isin(y, (0, 1)).all()):
            # a multi-label classifier's targets (one sigmoid per class): no metric here takes them, and
            # refused, the user should not have to guess why
            problem += "; if they are 0/1 per class (multi-label targets), pass --task multi-label"
        return None, problem, y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            return None, f"{where}: labels '{LABEL_KEY}' must be integer class indices", None
    elif y.dtype.kind not in "iu":
        return None, f"{where}: labels '{LABEL_KEY}' have dtype {y.dtype}, expected integers", None
    _check_int64(where, y)
    return y.astype(np.int64), None, None


def _check_int64(where: str, y: np.ndarray):
    """Checked on the file's own values: cast first, 2**64 - 16 as uint64 would be reported as label -16."""
    info = np.iinfo(np.int64)
    if y.dtype.kind == "u":
        big = y > np.uint64(info.max)
    elif y.dtype.kind == "f":
        y = y.astype(np.float64)  # float16 cannot hold 2**63: the bound became inf with a RuntimeWarning
        big = (y < -2.0 ** 63) | (y >= 2.0 ** 63)
    else:
        return
    if big.any():
        i = int(np.argmax(big))
        v = int(y[i]) if y.dtype.kind == "u" else y[i].item()
        raise CalibrationError(f"{where}: label {v} (sample {i}) is not a class index; {int(big.sum())} of {len(y)} "
                               f"labels in '{LABEL_KEY}' are beyond the int64 range")


def _finish(where: str, arrays: dict, specs: list, *, labels, limit, source: str, extra=None) -> Dataset:
    by_name = {s.name: s for s in specs}
    if specs:
        missing = [n for n in by_name if n not in arrays]
        unexpected = [n for n in arrays if n not in by_name]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if unexpected:
                parts.append(f"unexpected {', '.join(unexpected)}")
            raise CalibrationError(f"{where}: input names do not match the model ({'; '.join(parts)}); "
                                   f"the model's inputs are {', '.join(by_name)}")
    checked = {n: _check_array(where, n, a, by_name.get(n)) for n, a in arrays.items()}
    for n, a in checked.items():
        _check_finite(where, n, a)
    if not checked:
        raise CalibrationError(f"{where}: no input arrays found")
    lens = {n: len(a) for n, a in checked.items()}
    if len(set(lens.values())) > 1:
        raise CalibrationError(f"{where}: inputs have different sample counts {lens}")
    n = next(iter(lens.values()))
    if n == 0:
        raise CalibrationError(f"{where}: contains no samples")
    names = _label_strings(where, labels, n)
    if names is not None:  # class names: mapped to indices once the model is known (loader.check_label_kind)
        distinct = [v for v in dict.fromkeys(names.ravel().tolist()) if v != UNSCORED_TAG]
        shown = ", ".join(repr(v) for v in distinct[:3]) + (", ..." if len(distinct) > 3 else "")
        y, dense, targets = None, None, None
        problem = (f"{where}: labels are class names ({shown}), not class indices, and the model names no "
                   "classes (a HuggingFace model's config.id2label) to map them by; write the class indices instead")
    else:
        y, problem, dense = _check_labels(where, labels, n) if labels is not None else (None, None, None)
        targets = regression_targets(labels) if labels is not None else None
    if limit is not None and limit < n:
        checked = {k: (a.head(limit) if isinstance(a, LazyArray) else a[:limit]) for k, a in checked.items()}
        y = None if y is None else y[:limit]
        dense = None if dense is None else dense[:limit]
        targets = None if targets is None else targets[:limit]
        names = None if names is None else names[:limit]
    # keep the model's input order, so positional feeds line up
    order = [s.name for s in specs] if specs else list(checked)
    extra = dict(extra or {})
    batch = _model_batch(specs)
    if batch:  # what the data will run in: data_size counts the samples calibration really uses
        extra["model_batch"] = batch
    return Dataset({k: checked[k] for k in order}, y, source, extra, label_problem=problem, dense_labels=dense,
                   targets=targets, label_strings=names)


def _label_strings(where: str, labels, n: int):
    """Labels written as class names ('positive', 'spam'), one per sample ([N]) or per token ([N, L], a tagger's
    'B-PER', 'O', with '' where a position is not scored): the str array, else None."""
    if labels is None:
        return None
    y = np.asarray(labels)
    if y.dtype.kind not in "US" or y.ndim not in (1, 2):
        return None
    if len(y) != n:
        raise CalibrationError(f"{where}: {len(y)} labels for {n} samples")
    return y.astype(str)


UNSCORED_TAG = ""  # in [N, L] tag labels: a position not scored (padding, a word's later sub-tokens), as -100


def regression_targets(y) -> np.ndarray | None:
    """Labels 'y' as the values a regression is scored against: finite numbers, one or C per sample ([N],
    [N, 1], [N, C]), as float32; None for anything else (names, NaN, per-position maps), which stays unused."""
    y = np.asarray(y)
    if y.dtype.kind not in "biuf" or y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] == 0):
        return None
    t = y.astype(np.float64)
    if not np.all(np.isfinite(t)) or np.any(np.abs(t) > np.finfo(np.float32).max):
        return None
    return t.astype(np.float32)


def _model_batch(specs) -> int | None:
    """The batch the model's declared inputs fix (onnxutil.fixed_batch's rule), or None when dynamic."""
    return next((int(s.shape[0]) for s in specs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0),
                None)


# --------------------------------------------------------------------------------------------- readers

def require_data(path) -> None:
    """The one check that a --calib/--eval/--train path exists, and its message: read_dataset makes it, and
    compress, prune and distill make it before loading the model (a zoo model trains on first use)."""
    if not Path(path).exists():
        raise InputError(f"{Path(path)}: calibration/eval data not found")


def read_dataset(path, inputs: list, *, labels: bool = False, tokenizer=None, preprocess: dict | None = None,
                 limit: int | None = None) -> Dataset:
    """Read --calib/--eval data for a model with the given input specs (TensorSpec or dicts).

    labels=True reads class labels from an .npz's 'y' (None when absent). An empty `inputs`
    list skips the name/shape checks (used when the input specs are inferred from the data).
    """
    p = Path(path)
    specs = [s if isinstance(s, TensorSpec) else TensorSpec(**s) for s in (inputs or [])]
    if limit is not None and limit < 1:
        raise CalibrationError(f"{p}: limit must be >= 1, got {limit}")
    require_data(p)
    if p.is_dir():
        from . import audio

        if audio.is_audio_folder(p):
            return audio.read_audio(p, specs, limit, labels=labels)
        return _read_images(p, specs, preprocess, limit, labels=labels)
    ext = p.suffix.lower()
    reader = READERS.get(ext)
    if reader is None:
        raise InputError(f"{p}: unknown data format {ext or '(no extension)'!r}; use .npy, .npz, .csv, .txt, .jsonl "
                         "or a folder of images or .wav clips")
    return reader(p, specs, labels=labels, tokenizer=tokenizer, limit=limit)


def _read_npy(p: Path, specs, *, labels, tokenizer, limit) -> Dataset:
    if len(specs) > 1:
        raise CalibrationError(f"{p}: the model has {len(specs)} inputs ({', '.join(s.name for s in specs)}); "
                               "a .npy holds one, use an .npz with one array per input name")
    try:
        with open(p, "rb") as f:
            magic = f.read(len(np.lib.format.MAGIC_PREFIX))
    except OSError as e:
        raise InputError(f"{p}: not a valid .npy file ({e})") from None
    if magic and magic != np.lib.format.MAGIC_PREFIX:
        # np.load takes any other bytes for a pickle and says so, which misleads about a text or CSV file
        raise InputError(f"{p}: not a valid .npy file (no NPY header; it starts with {magic!r}); "
                         "save arrays with numpy.save")
    try:
        arr = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"{p}: not a valid .npy file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    name = specs[0].name if specs else "input"
    return _finish(str(p), {name: arr}, specs, labels=None, limit=limit, source=str(p))


def _npz_members(p: Path) -> dict:
    """name -> array; uncompressed members are memory-mapped, compressed ones decompressed as read."""
    out = {}
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{p}: not a valid .npz file ({e})") from None
    with zf, open(p, "rb") as fh:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[:-4]
            try:
                arr = None
                if info.compress_type == zipfile.ZIP_STORED:
                    _verify_crc(zf, info)
                    arr = _memmap_member(p, fh, info)
                if arr is None:
                    arr = _stream_member(p, zf, info)
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise InputError(f"{p}: member {name!r} is not a valid array ({str(e).splitlines()[0]})") from None
            out[name] = arr
    if not out:
        raise InputError(f"{p}: not a valid .npz file (no arrays inside)")
    return out


def _verify_crc(zf: zipfile.ZipFile, info, chunk: int = 1 << 20):
    """A memory map bypasses zipfile's CRC check, so a damaged stored member would be read as data:
    read it through zipfile once, in chunks, which raises BadZipFile ('Bad CRC-32') at its end."""
    with zf.open(info) as f:
        while f.read(chunk):
            pass


def _memmap_member(p: Path, fh, info):
    import struct

    fh.seek(info.header_offset)
    local = fh.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        return None
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    fh.seek(info.header_offset + 30 + name_len + extra_len)
    shape, fortran, dtype = _read_header(fh)
    if dtype.hasobject:
        raise ValueError("object arrays (pickles) are not accepted")
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype)
    return np.memmap(p, dtype=dtype, mode="r", offset=fh.tell(), shape=shape, order="F" if fortran else "C")


def _read_header(f):
    """(shape, fortran_order, dtype) of the .npy header at f's position."""
    if np.lib.format.read_magic(f) == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def _stream_member(p: Path, zf: zipfile.ZipFile, info):
    """A compressed member as a _MemberArray: inflating it whole needs its full size in memory (a 1 GiB
    member took 1.27 GB for 256 calibration samples), so rows are decompressed as a batch asks for them."""
    with zf.open(info) as f:
        shape, fortran, dtype = _read_header(f)
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError("Object arrays cannot be loaded when allow_pickle=False")
    if not shape or (fortran and len(shape) > 1):
        # a scalar (refused later, by name), or column-major rows that are not contiguous in the stream
        with zf.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if info.file_size != offset + nbytes:
        raise EOFError(f"its data holds {info.file_size - offset} bytes, its header describes {nbytes} "
                       f"({dtype} {tuple(shape)})")
    _verify_crc(zf, info)  # read_array checked it by reading to the end; a batch read never gets there
    if nbytes == 0:
        return np.empty(shape, dtype)
    return _MemberArray(_MemberStream(p, info.filename, offset), shape, dtype)


class _MemberStream:
    """Bytes of one compressed .npz member, from its array data's start. Reads go forward through one open
    stream (calibration and scoring read batch after batch); a read before its position starts the member
    again, so memory holds the asked rows, never the member."""

    # one read's size: zipfile's read(n) joins its pieces (a second copy of a whole batch), its seek() skips
    # forward in reads of 16 MiB
    PIECE = 1 << 20

    def __init__(self, path: Path, member: str, offset: int):
        self.path, self.member, self.offset = path, member, offset
        self._f = None
        self._lock = threading.Lock()  # one stream position, whoever reads

    def read_into(self, start: int, out: memoryview):
        """Fill out (a byte view) with the member's bytes from start."""
        with self._lock:
            try:
                if self._f is None:
                    self._f = zipfile.ZipFile(self.path).open(self.member)
                self._skip_to(self.offset + start)
                at = 0
                while at < len(out):
                    got = self._piece(len(out) - at)
                    out[at:at + len(got)] = got
                    at += len(got)
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise InputError(f"{self.path}: member {self.member[:-4]!r} could not be read ({e})") from None

    def _skip_to(self, pos: int):
        if self._f.tell() > pos:
            self._f.seek(0)  # zipfile starts the member again
        while self._f.tell() < pos:
            self._piece(pos - self._f.tell())

    def _piece(self, left: int) -> bytes:
        got = self._f.read(min(self.PIECE, left))
        if not got:
            raise EOFError("it ended early; was the file changed while in use?")
        return got


class _MemberArray(LazyArray):
    """The rows of a compressed .npz member, read through a _MemberStream: they hold the file's own values,
    so unlike other lazy arrays they get the NaN/inf check."""

    def __init__(self, stream: _MemberStream, shape: tuple, dtype):
        self._stream, dtype = stream, np.dtype(dtype)
        item = tuple(shape[1:])
        row = int(np.prod(item, dtype=np.int64)) * dtype.itemsize

        def fetch(a, b):
            out = np.empty((b - a, *item), dtype)
            stream.read_into(a * row, memoryview(out.reshape(-1).view(np.uint8)))
            return out

        super().__init__(shape[0], item, dtype, fetch)

    def merge_leading(self) -> "_MemberArray":
        """(N, B, ...) as (N * B, ...): in C order they are the same bytes."""
        n, b, *rest = self.shape
        return _MemberArray(self._stream, (n * b, *rest), self.dtype)


def _read_npz(p: Path, specs, *, labels, tokenizer, limit) -> Dataset:
    arrays = _npz_members(p)
    names = {s.name for s in specs}
    y = None
    key = LABEL_KEY
    if LABEL_KEY not in arrays and specs:
        # with the model's inputs known, such an array can only be the labels (it was 'unexpected labels')
        key = other_label_name(arrays, names) or key
    if key in arrays and key not in names:
        y = arrays.pop(key)
        if not labels:
            y = None  # calibration ignores labels
    if not specs and len(arrays) == 1 and "arr_0" in arrays:
        arrays = {"input": arrays.pop("arr_0")}
    if len(specs) == 1 and len(arrays) == 1:
        # one array for a one-input model is that input, whatever it is called (x for nn.Sequential's input)
        arrays = {specs[0].name: next(iter(arrays.values()))}
    return _finish(str(p), arrays, specs, labels=y, limit=limit, source=str(p),
                   extra={"label_key": key} if y is not None and key != LABEL_KEY else None)


def _read_txt(p: Path, specs, *, labels, tokenizer, limit) -> Dataset:
    if tokenizer is None:
        raise CalibrationError(f"{p}: a .txt of sentences needs a tokenizer; pass --tokenizer (file.py:function or "
                               "a tokenizer.json), or give .npy/.npz arrays")
    try:
        # utf-8-sig: Notepad and PowerShell 5 start UTF-8 files with a BOM, which stayed in sentence 1
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8-sig").splitlines()]
    except (UnicodeDecodeError, OSError) as e:
        raise InputError(f"{p}: not a UTF-8 text file ({e})") from None
    sentences = [ln for ln in lines if ln]
    if not sentences:
        raise CalibrationError(f"{p}: contains no sentences (one per line expected)")
    return _tokenized(p, sentences, specs, tokenizer, labels=None, limit=limit)


TEXT_KEYS = ("text", "sentence")  # what the text of a record is called (HuggingFace datasets: IMDB, SST-2)
# a record of two texts, which a cross-encoder reads as one input (HuggingFace's text_pair; GLUE's MRPC / RTE
# sentence1 / sentence2; MNLI's premise / hypothesis): tokenized as a pair, the second segment's token types 1
PAIR_KEYS = (("text", "text_pair"), ("sentence1", "sentence2"), ("premise", "hypothesis"))
JSONL_LABEL_KEYS = ("label", LABEL_KEY)


def _record_text(p: Path, i: int, rec):
    """A .jsonl record's text: a string, or a (first, second) pair of strings."""
    if isinstance(rec, dict):
        pair = next(((a, b) for a, b in PAIR_KEYS if a in rec and b in rec), None)
        if pair is not None:
            if not all(isinstance(rec[k], str) for k in pair):
                raise CalibrationError(f"{p}: line {i}: {pair[0]!r} and {pair[1]!r} must both be strings")
            return rec[pair[0]].strip(), rec[pair[1]].strip()
        key = next((k for k in TEXT_KEYS if k in rec), None)
        if key is not None and isinstance(rec[key], str):
            return rec[key].strip()
    pairs = ", ".join(f"{a!r} + {b!r}" for a, b in PAIR_KEYS)
    raise CalibrationError(f"{p}: line {i} has no text: each line must be an object with a string "
                           f"{' or '.join(repr(k) for k in TEXT_KEYS)}, or a pair of strings ({pairs})")


def _read_jsonl(p: Path, specs, *, labels, tokenizer, limit) -> Dataset:
    """One JSON object per line, {"text": ..., "label": ...} (or "sentence", "y"): sentences with their
    labels, which a .txt cannot carry (a text classifier's accuracy needed a hand-tokenized .npz)."""
    import json

    if tokenizer is None:
        raise CalibrationError(f"{p}: a .jsonl of sentences needs a tokenizer; pass --tokenizer (file.py:function or "
                               "a tokenizer.json), or give .npy/.npz arrays")
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except (UnicodeDecodeError, OSError) as e:
        raise InputError(f"{p}: not a UTF-8 text file ({e})") from None
    sentences, ys, with_label = [], [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            raise InputError(f"{p}: line {i} is not JSON ({e})") from None
        sentences.append(_record_text(p, i, rec))
        if isinstance(sentences[-1], tuple) != isinstance(sentences[0], tuple):
            raise CalibrationError(f"{p}: line {i}: the records mix single texts and pairs of texts; a model "
                                   "reads one or the other")
        lab = next((k for k in JSONL_LABEL_KEYS if k in rec), None)
        with_label.append(lab is not None)
        ys.append(rec[lab] if lab is not None else None)
    if not sentences:
        raise CalibrationError(f"{p}: contains no records (one JSON object per line expected)")
    if any(with_label) and not all(with_label):
        i = with_label.index(False)
        raise CalibrationError(f"{p}: record {i + 1} has no 'label' while {sum(with_label)} others have one; "
                               "label every record or none")
    y = None
    if labels and all(with_label):
        try:
            y = np.asarray(ys)
        except ValueError:
            y = np.asarray(ys, dtype=object)
        if y.dtype == object:
            raise CalibrationError(f"{p}: labels must be numbers (class indices, or targets for a regression), "
                                   f"one per record or a list of equal length; got {ys[0]!r}")
    return _tokenized(p, sentences, specs, tokenizer, labels=y, limit=limit)


def _tokenized(p: Path, sentences: list, specs, tokenizer, *, labels, limit) -> Dataset:
    """Sentences (with their labels, if any) through the model's tokenizer, as its inputs."""
    if limit is not None:
        sentences = sentences[:limit]
        labels = None if labels is None else labels[:limit]
    try:
        enc = tokenizer(sentences)
    except InputError:  # a --tokenizer's own failure, which names it
        raise
    except Exception as e:
        raise CalibrationError(f"{p}: tokenizing failed: {type(e).__name__}: {e}") from None
    enc = {k: np.asarray(v) for k, v in dict(enc).items()}
    if specs:  # tokenizers emit extras (e.g. token_type_ids) some exports drop
        from .text_tokenizer import taken_by

        enc = taken_by(enc, [s.name for s in specs])
    return _finish(str(p), enc, specs, labels=labels, limit=None, source=str(p),
                   extra={"sentences": sentences})


def _read_csv(p: Path, specs, *, labels, tokenizer, limit) -> Dataset:
    """Rows of numbers (tabular models, sensor windows), one sample per row, read as they stream
    (csv_rows.py)."""
    from .csv_rows import read_csv

    arrays, y, extra = read_csv(p, specs, labels=labels, limit=limit)
    return _finish(str(p), arrays, specs, labels=y, limit=limit, source=str(p), extra=extra)


READERS = {".npy": _read_npy, ".npz": _read_npz, ".txt": _read_txt, ".jsonl": _read_jsonl, ".csv": _read_csv,
           ".tsv": _read_csv}
TEXT_FORMATS = (".txt", ".jsonl")  # sentences, which a tokenizer turns into the model's inputs


# ------------------------------------------------------------------------------------------------ images

def _images_in(folder: Path, *, deep: bool, exts=IMAGE_EXTS) -> tuple:
    """(the image files below folder, sorted by path; how many image-named entries were skipped as hidden).
    Hidden files are skipped, as most data loaders do: macOS writes an AppleDouble '._name.png' beside each
    image on non-Apple disks, and those are metadata, not images (nor are .ipynb_checkpoints' copies).
    exts: the suffixes taken (audio.AUDIO_EXTS for a folder of clips)."""
    files, hidden = [], 0
    for f in (folder.rglob("*") if deep else folder.iterdir()):
        if f.suffix.lower() not in exts:
            continue
        if any(part.startswith(".") for part in f.relative_to(folder).parts):
            hidden += 1
        elif f.is_file():
            files.append(f)
    return sorted(files, key=lambda f: f.relative_to(folder).as_posix()), hidden


@dataclass
class ImageLayout:
    """What a folder of images holds: its files in reading order and, when the images sit in one subfolder
    per class (torchvision's ImageFolder layout: root/cat/1.jpg, root/dog/2.jpg), each one's class index
    and the class names. Classes are numbered as ImageFolder numbers them, the subfolders' names sorted, so
    a model trained from that folder is scored against its own label numbering. hidden: image-named files
    skipped as hidden, or in a hidden folder below a folder of class folders."""
    files: list
    labels: list | None = None
    classes: list | None = None
    hidden: int = 0

    def names(self, folder: Path) -> list:
        return [f.relative_to(folder).as_posix() for f in self.files]


def image_layout(folder, exts=IMAGE_EXTS) -> ImageLayout:
    """Images directly in the folder are one unlabelled set, as before class folders were read; else each
    non-hidden subfolder is a class (its images at any depth below it). The files are interleaved, class by
    class (the first image of each class, then the second, ...), so any first part of the set (the first
    calib_size samples INT8 calibrates on, the held-out slice after them) covers the classes rather than
    being the first class alone. The folder is walked once. exts: as for _images_in (a folder of clips is
    laid out the same way)."""
    folder = Path(folder)
    flat, hidden = _images_in(folder, deep=False, exts=exts)
    if flat:
        return ImageLayout(flat, hidden=hidden)
    dirs = sorted(d for d in folder.iterdir() if d.is_dir())
    classes = [d.name for d in dirs if not d.name.startswith(".")]
    walked = [_images_in(folder / c, deep=True, exts=exts) for c in classes]
    # a hidden folder is no class: everything image-named in it counts as skipped
    hidden += sum(h for _, h in walked) + sum(1 for d in dirs if d.name.startswith(".") for f in d.rglob("*")
                                              if f.suffix.lower() in exts)
    per_class = [fs for fs, _ in walked]
    if not any(per_class):
        return ImageLayout([], hidden=hidden)
    files, labels = [], []
    for i in range(max(len(f) for f in per_class)):
        for k, fs in enumerate(per_class):
            if i < len(fs):
                files.append(fs[i])
                labels.append(k)
    return ImageLayout(files, labels, classes, hidden)


def labels_hint(ds) -> str:
    """What to check when a model scores at chance on ds's labels, said of where they came from."""
    if ds is not None and (ds.extra or {}).get("classes"):
        return "that its class folders, in sorted order, follow the model's class order"
    key = (ds.extra or {}).get("label_key", LABEL_KEY) if ds is not None else LABEL_KEY
    return f"that '{key}' holds this model's class indices"


def image_files(folder: Path) -> list:
    """The images a folder holds, in reading order (image_layout)."""
    return image_layout(folder).files


def required_images(folder) -> list:
    """image_files, refusing a folder without any in one line."""
    files = image_files(Path(folder))
    if not files:
        raise CalibrationError(f"{folder}: no images ({', '.join(IMAGE_EXTS)}) in this folder, nor in class "
                               "subfolders (one per class: root/cat/*.jpg, root/dog/*.jpg)")
    return files


def resize_op(preprocess: dict | None) -> dict:
    """The spec's resize_normalize step (the last, when several), or {}."""
    return next((dict(o) for o in reversed((preprocess or {}).get("pre", [])) if o.get("op") == "resize_normalize"),
                {})


def _resize_spec(preprocess: dict | None, spec: TensorSpec | None, where: str) -> dict:
    op = resize_op(preprocess) or None
    layout = (op or {}).get("layout", "NCHW").upper()
    if layout not in ("NCHW", "NHWC"):
        raise CalibrationError(f"{where}: preprocess layout {layout!r} must be NCHW or NHWC")
    shape = list(spec.shape) if spec else []
    if len(shape) != 4:
        raise CalibrationError(f"{where}: a folder of images needs a model with one 4-D image input, "
                               f"got {_fmt_shape(shape) if spec else 'no input spec'}")
    c_ax, h_ax, w_ax = (1, 2, 3) if layout == "NCHW" else (3, 1, 2)
    channels = shape[c_ax] if isinstance(shape[c_ax], int) and shape[c_ax] > 0 else 3
    if channels not in (1, 3):
        if "layout" not in (op or {}) and isinstance(shape[3], int) and shape[3] in (1, 3):
            # axis 1 of an NHWC input is its height: "the model's input has 8 (channels)" named the wrong fault
            import json

            hw = [d if isinstance(d, int) and d > 0 else 224 for d in shape[1:3]]
            spec = {"pre": [{"op": "resize_normalize", "size": hw, "mean": [0] * shape[3],
                             "std": [255] * shape[3], "layout": "NHWC"}]}
            raise CalibrationError(
                f"{where}: the model's input {_fmt_shape(shape)} looks NHWC (channels last), but images are read "
                f"NCHW unless told; pass --preprocess '{json.dumps(spec)}' (with the mean/std the model was "
                "trained with)")
        raise CalibrationError(f"{where}: images give 1 or 3 channels; the model's input has {channels}")
    if op and op.get("size"):
        size = [int(v) for v in op["size"]]
    elif all(isinstance(shape[a], int) and shape[a] > 0 for a in (h_ax, w_ax)):
        size = [shape[h_ax], shape[w_ax]]
    else:
        raise CalibrationError(f"{where}: the model's image size is dynamic and no preprocess spec gives "
                               "'size'; declare a resize_normalize step")
    # without a declared spec, pixels are scaled to 0..1 (mean 0, std 255 in pixel units)
    mean = np.asarray(op.get("mean", [0.0]) if op else [0.0], np.float32).reshape(-1)
    std = np.asarray(op.get("std", [255.0]) if op else [255.0], np.float32).reshape(-1)
    for name, v in (("mean", mean), ("std", std)):
        # numpy would broadcast 3 values over a 1-channel image into 3 channels, or fail on 2
        if len(v) not in (1, channels):
            raise CalibrationError(f"{where}: preprocess {name} has {len(v)} values; the model's images have "
                                   f"{channels} channel{'s' if channels > 1 else ''} (give {'1' if channels == 1 else f'1 or {channels}'})")
    # the device op's other parameters, so calibration frames the image as the device will
    extra = {k: (op or {}).get(k, d) for k, d in
             (("mode", "stretch"), ("crop_fraction", 1.0), ("pad_value", 114.0), ("swap_rb", False))}
    return {"op": "resize_normalize", "size": size, "mean": mean.tolist(), "std": std.tolist(),
            "layout": layout, "channels": channels, **extra}


IMPLIED_NOTE = ("images read as pixels scaled to 0..1 (mean 0, std 255) at the model's input size: no "
                "--preprocess was given, and this guess is recorded and shipped with the model; pass --preprocess "
                "with the mean/std the model was trained with if it differs (ImageNet models usually do)")


def with_implied_prepost(preprocess: dict | None, inputs: list, *paths) -> dict | None:
    """preprocess, completed by the first image folder among paths with what implied_prepost gives."""
    for path in paths:
        implied = implied_prepost(path, inputs, preprocess)
        if implied:
            return {**(preprocess or {}), **implied}
    return preprocess


def implied_prepost(path, inputs: list, preprocess: dict | None) -> dict | None:
    """For an image folder read without a declared spec: the resize_normalize edgekit applied (pixels
    scaled to 0..1), as a prepost spec, so the device pre-processes exactly as calibration did."""
    if not path or not Path(path).is_dir() or (preprocess or {}).get("pre") or len(inputs) != 1:
        return None
    from .audio import is_audio_folder

    if is_audio_folder(path):  # clips are fed as decoded, with no step for the device to repeat
        return None
    spec = inputs[0] if isinstance(inputs[0], TensorSpec) else TensorSpec(**inputs[0])
    rs = _resize_spec(None, spec, str(path))
    return {"pre": [{"op": "resize_normalize", "size": rs["size"], "mean": rs["mean"] * rs["channels"],
                     "std": rs["std"] * rs["channels"], "layout": rs["layout"]}]}


def _device_op(rs: dict, mean, std):
    from .prepost.image import ResizeNormalize

    # the numpy backend: bit-identical to the compiled kernel, and no compile on the first batch
    return ResizeNormalize(rs["size"], mean, std, rs["layout"], mode=rs.get("mode", "stretch"),
                           crop_fraction=rs.get("crop_fraction", 1.0), pad_value=rs.get("pad_value", 114.0),
                           swap_rb=rs.get("swap_rb", False), backend="numpy")


def _decode(path: Path, channels: int):
    """(8-bit pixels, None) or (None, 16-bit pixels) of one file, with `channels` channels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode.startswith("I;16"):
                px16 = np.asarray(im, dtype=np.uint16)
                return None, (np.repeat(px16[:, :, None], 3, axis=2) if channels == 3 else px16)
            if im.mode in ("I", "F"):
                raise InputError(f"{path}: {'32-bit integer' if im.mode == 'I' else 'float'} pixels; images must be "
                                 "8- or 16-bit (give such data as .npy instead)")
            return np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8), None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path}: not a readable image ({e})") from None


class _ImageArray(LazyArray):
    """An image folder's samples, decoded as a batch asks for them, that can also check a prefix up front:
    decoding the whole folder when it is read cost about 1 ms per 224x224 JPEG whatever --calib-size used
    (5000 files before a 16-sample calibration), so callers check the part they will use (check_images)."""

    def __init__(self, files: list, item: tuple, dtype, channels: int, fetch, checked: list | None = None):
        super().__init__(len(files), item, dtype, fetch)
        self._files, self._channels = files, channels
        self._checked = checked if checked is not None else [0]  # shared with head(): a prefix checked once

    def head(self, n: int) -> "_ImageArray":
        files = self._files[:n]
        return _ImageArray(files, self._item, self.dtype, self._channels, self._fetch, self._checked)

    def check_decodable(self, n: int | None = None):
        """Decode the first n files (all for None) once each, in order: the first broken one is a data error
        naming it before any work, not a failure of every quantization candidate calibrating on it (exit 1)."""
        stop = len(self._files) if n is None else min(n, len(self._files))
        while self._checked[0] < stop:
            _decode(self._files[self._checked[0]], self._channels)
            self._checked[0] += 1


def check_images(ds, n: int | None = None) -> None:
    """Decode the first n samples (all for None) of ds's image-folder inputs once, so a broken image among
    the samples a stage will use is one line naming it, exit 2, before the stage works; other data, and
    samples checked before, cost nothing."""
    for arr in (ds.inputs.values() if ds is not None else ()):
        if isinstance(arr, _ImageArray):
            arr.check_decodable(n)


def _load_image(path: Path, rs: dict) -> np.ndarray:
    """One file -> normalised float32 CHW/HWC through the device's own resize_normalize, so accuracy
    measured on an image folder is the accuracy the device gets (a resize of its own, e.g. Pillow's
    antialiasing bilinear, differs by tens of pixel units whenever an image is shrunk)."""
    from .prepost.errors import PrepostError

    px, px16 = _decode(path, rs["channels"])
    try:
        if px is not None:
            return _device_op(rs, rs["mean"], rs["std"])(px)[0]
        return _sixteen_bit(px16, rs)
    except PrepostError as e:
        raise CalibrationError(f"{path}: {e}") from None


def _sixteen_bit(px16: np.ndarray, rs: dict) -> np.ndarray:
    # 16-bit grey (depth, medical) scaled 0..65535 onto 0..255. The device op takes uint8 only, but its
    # resize is linear in the pixels, so resizing the high and low bytes separately and recombining
    # (256 * hi + lo) / 257 is the same maths; padding (pad_value for both) recombines to pad_value too.
    unit = _device_op(rs, 0.0, 1.0)
    hi = unit((px16 >> 8).astype(np.uint8))[0]
    lo = unit((px16 & 0xFF).astype(np.uint8))[0]
    out = (hi * np.float32(256.0) + lo) / np.float32(257.0)
    shape = (-1, 1, 1) if rs["layout"] == "NCHW" else (1, 1, -1)
    mean = np.asarray(rs["mean"], np.float32).reshape(shape)
    std = np.asarray(rs["std"], np.float32).reshape(shape)
    return np.ascontiguousarray((out - mean) / std, dtype=np.float32)


def image_samples(folder, preprocess: dict | None, channels: int, n: int = 2) -> np.ndarray:
    """The first n images of a folder as a model with `channels` channels would get them: at the declared
    resize_normalize size, else at the first image's own size. For learning a PyTorch model's input."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    files = required_images(folder)[:n]
    op = resize_op(preprocess)
    if op.get("size"):
        size = [int(v) for v in op["size"]]
    else:
        try:
            with Image.open(files[0]) as im:
                size = [im.size[1], im.size[0]]
        except (UnidentifiedImageError, OSError) as e:
            raise InputError(f"{files[0]}: not a readable image ({e})") from None
    nchw = str(op.get("layout", "NCHW")).upper() == "NCHW"
    spec = TensorSpec("input", [1, channels, *size] if nchw else [1, *size, channels], "float32")
    rs = _resize_spec(preprocess, spec, str(folder))
    return np.stack([_load_image(f, rs) for f in files])


def _read_images(folder: Path, specs, preprocess, limit, labels: bool = False) -> Dataset:
    if len(specs) > 1:
        raise CalibrationError(f"{folder}: a folder of images feeds one input; the model has {len(specs)}")
    layout = image_layout(folder)
    files = layout.files or required_images(folder)  # none: refused there, in one line
    names = layout.names(folder)
    y = np.asarray(layout.labels, np.int64) if labels and layout.labels is not None else None
    if limit is not None:
        files, names, y = files[:limit], names[:limit], (None if y is None else y[:limit])
    spec = specs[0] if specs else None
    rs = _resize_spec(preprocess, spec, str(folder))
    h, w = rs["size"]
    item = (rs["channels"], h, w) if rs["layout"] == "NCHW" else (h, w, rs["channels"])
    dtype = np.dtype(spec.dtype) if spec else np.float32
    if dtype.kind != "f":
        raise CalibrationError(f"{folder}: images give float pixels; the model's input is {dtype}")

    def fetch(a, b):
        return np.stack([_load_image(f, rs) for f in files[a:b]]).astype(dtype, copy=False)

    # nothing is decoded here: the part of the folder a run uses is checked by check_images once it is known
    arr = _ImageArray(files, item, dtype, rs["channels"], fetch)
    name = spec.name if spec else "input"
    extra = {"files": names, "preprocess": rs, "hidden_skipped": layout.hidden}
    if layout.classes:
        extra["classes"] = layout.classes
        present = set(layout.labels)
        extra["empty_classes"] = [c for k, c in enumerate(layout.classes) if k not in present]
    return _finish(str(folder), {name: arr}, specs, labels=y, limit=None, source=str(folder), extra=extra)
