""".csv / .tsv rows as a Dataset that streams, like every other --calib / --eval format.

The file is read once up front, a chunk of rows at a time, to check it (a ragged row or a cell that is not a
number is one line naming the row and the column) and to learn what the rows are: the header, the labels, and
whether every input cell is a whole number. What stays in memory is the labels (one value a row) and the text
position of every STRIDE-th row; a batch parses its own rows, going on from the last batch or from the nearest
remembered position. Read whole, as it was, the rows were held as Python strings: 66 bytes a cell, measured
for rows of 100 floats written with 5 decimals, so 1.3 GB for 200,000 such rows.
"""
from __future__ import annotations

import csv
import math
import os
import threading
from pathlib import Path

import numpy as np

from .errors import CalibrationError, InputError

LABEL_KEYS = ("y", "label", "target")  # a header naming the label column
CHUNK = 4096  # rows checked at once
STRIDE = 256  # rows between remembered positions: at most what a batch parses beyond its own rows


def _number(c: str):
    try:
        return float(c)
    except ValueError:
        return None


class _Rows:
    """The file's non-blank rows, parsed by csv, with the text position where a row starts when asked."""

    def __init__(self, p: Path, start=None):
        self.p = p
        self.f = open(p, newline="", encoding="utf-8-sig")
        if start is not None:
            self.f.seek(start)
        self.reader = csv.reader(iter(self.f.readline, ""), delimiter="\t" if p.suffix.lower() == ".tsv" else ",")

    def close(self):
        self.f.close()

    def position(self):
        # readline (not iteration) keeps tell() working on a text file; csv pulls a record's lines only as it
        # parses them, so between rows this is where the next one starts
        return self.f.tell()

    def next(self):
        """The next non-blank row, or None at the end."""
        for r in self.reader:
            if any(c.strip() for c in r):
                return r
        return None


def read_csv(p: Path, specs, *, labels: bool, limit):
    """(arrays, labels, extra) for calibration._finish: the input as a LazyArray over the file's rows."""
    from .calibration import LazyArray

    if len(specs) > 1:
        raise CalibrationError(f"{p}: a {p.suffix} holds one input; the model has {len(specs)} "
                               f"({', '.join(s.name for s in specs)}): use an .npz with one array per input name")
    stamp = _stamp(p)  # before the scan: a file that changes during it is refused too
    try:
        scan = _scan(p, limit)
    except (UnicodeDecodeError, OSError, csv.Error) as e:
        raise InputError(f"{p}: not a readable {p.suffix} file ({e})") from None
    n, width, label_col, names = scan["n"], scan["width"], scan["label_col"], scan["names"]
    line0 = scan["line0"]
    y = _labels(p, scan["labels"], names[label_col] if names else label_col + 1, line0) \
        if label_col is not None else None
    spec = specs[0] if specs else None
    item: tuple = (width - (label_col is not None),)
    if spec is not None:
        want = list(spec.shape[1:])
        if len(want) > 1 and all(isinstance(d, int) and d > 0 for d in want) and math.prod(want) == item[0]:
            item = tuple(want)  # flattened per-sample arrays, one per row
    # integer columns (category ids) for an integer input
    dtype = np.int64 if spec is not None and np.dtype(spec.dtype).kind in "iu" and scan["whole"] else np.float32

    def convert(got: list, a: int) -> np.ndarray:
        x = _checked(p, got, width, label_col, names, a + line0)
        return x.reshape(len(x), *item).astype(dtype)

    fetch = _Fetch(p, stamp, scan["starts"], n, convert)
    arr = LazyArray(n, item, dtype, fetch)
    extra = {"columns": [h for i, h in enumerate(names) if i != label_col] if scan["header"] else None}
    return {spec.name if spec else "input": arr}, (y if labels else None), extra


class _Fetch:
    """Rows a..b-1, converted: batches run in order, so a batch goes on from where the last one stopped;
    any other seeks to the nearest remembered position. The file must not change meanwhile."""

    def __init__(self, p: Path, stamp: tuple, starts: list, n: int, convert):
        self.p, self.stamp, self.starts, self.n, self.convert = p, stamp, starts, n, convert
        self.lock = threading.Lock()  # a prefetching thread and the caller share the open file
        self.rows, self.at = None, 0

    def __call__(self, a: int, b: int) -> np.ndarray:
        with self.lock:
            if _stamp(self.p) != self.stamp:
                raise InputError(f"{self.p}: the file changed or was removed while edgekit was reading it")
            if self.rows is None or not a - a % STRIDE <= self.at <= a:
                self.close()
                self.rows, self.at = _Rows(self.p, self.starts[a // STRIDE]), a - a % STRIDE
            try:
                for _ in range(a - self.at):
                    self.rows.next()
                got = [self.rows.next() for _ in range(b - a)]
            except BaseException:  # an interrupted read leaves the position unknown: the next batch seeks
                self.close()
                raise
            self.at = b
            if b >= self.n:
                self.close()
        return self.convert(got, a)

    def close(self):
        if self.rows is not None:
            self.rows.close()
            self.rows = None

    __del__ = close


def _stamp(p: Path):
    try:
        st = os.stat(p)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _values(rows: list, label_col) -> np.ndarray:
    if label_col is not None:
        rows = [r[:label_col] + r[label_col + 1:] for r in rows]
    return np.array(rows, dtype=np.float64)


def _scan(p: Path, limit) -> dict:
    """One pass over the rows (the first `limit`): their count, width, header, labels, whether every input
    cell is whole, and the position of every STRIDE-th row; any bad cell is refused naming its row."""
    rows = _Rows(p)
    try:
        first = rows.next()
        if first is None:
            raise CalibrationError(f"{p}: contains no rows")
        header = any(_number(c) is None for c in first)
        line0 = 2 if header else 1  # the first data row's number, counting the header, not blank lines
        names = [h.strip() for h in first] if header else []
        label_col = next((i for i, h in enumerate(names) if h.lower() in LABEL_KEYS), None)
        width = len(first)
        starts, ys, whole, n = [], [], True, 0
        pending = None if header else first  # a first row of numbers is already read
        while limit is None or n < limit:
            want = CHUNK if limit is None else min(CHUNK, limit - n)
            block = [pending] if pending is not None else []
            if pending is not None:
                starts.append(None)  # the file's first row: its start, past a byte-order mark
            pending = None
            while len(block) < want:
                at = rows.position() if (n + len(block)) % STRIDE == 0 else None
                r = rows.next()
                if r is None:
                    break
                if at is not None:
                    starts.append(at)
                block.append(r)
            if not block:
                break
            # numpy parses a chunk's cells at once; only a chunk that fails is walked cell by cell, to name one
            x = _checked(p, block, width, label_col, names, n + line0)
            if label_col is not None:
                ys.extend(r[label_col].strip() for r in block)
            whole = whole and bool(np.all(_finite_whole(x)))
            n += len(block)
            if len(block) < want:
                break
        if n == 0:
            raise CalibrationError(f"{p}: a header and no rows")
    finally:
        rows.close()
    return {"n": n, "width": width, "header": header, "line0": line0, "names": names, "label_col": label_col,
            "labels": ys, "whole": whole, "starts": starts}


def _finite_whole(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return x == np.round(x)


def _checked(p: Path, block: list, width: int, label_col, names: list, line0: int) -> np.ndarray:
    """block's input cells as numbers; a ragged row or a cell that is not a number is refused, naming it."""
    try:
        if all(len(r) == width for r in block):
            return _values(block, label_col)
    except ValueError:
        pass
    for i, r in enumerate(block):
        line = line0 + i
        if len(r) != width:
            raise CalibrationError(f"{p}: row {line} has {len(r)} columns, the first row {width}")
        for j, c in enumerate(r):
            if j != label_col and _number(c) is None:
                col = names[j] if names else j + 1
                raise CalibrationError(f"{p}: row {line}, column {col!r}: {c.strip()!r} is not a number")
    # numpy refused what float() reads ('1_000'): parse as the check did
    return np.array([[_number(c) for j, c in enumerate(r) if j != label_col] for r in block], dtype=np.float64)


def _labels(p: Path, raw: list, col, line0: int):
    """The label column: numbers (class indices when whole, else regression targets), or class names
    ('spam'), which the model's own names may map to indices (loader.check_label_kind)."""
    values = [_number(c) for c in raw]
    if all(v is not None for v in values):
        y = np.array(values, dtype=np.float64)
        if np.all(_finite_whole(y)) and np.all(np.abs(y) < 2.0 ** 53):
            return y.astype(np.int64)  # class indices, written as numbers
        return y
    if all(raw):
        return np.array(raw)
    i = raw.index("")
    raise CalibrationError(f"{p}: row {i + line0}, column {col!r}: '' is not a number")
