"""Number and status formatting shared by the HTML and Markdown renderers (one wording, two outputs)."""
from __future__ import annotations


def size(n) -> str:
    if not n:
        return "—"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):  # powers of 1024, named as such (the console says KiB too)
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}" if n < 100 else f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def count(n) -> str:
    if n is None:
        return "—"
    n = float(n)
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def ms(v) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def ratio(v) -> str:
    return "—" if v is None else f"{v:.2f}×"


def pct(v, signed=False) -> str:
    if v is None:
        return "—"
    if signed and round(v * 100, 2) == 0:
        return "±0.00%"  # '-0.00%' reads as a loss that did not happen
    return f"{v:+.2%}" if signed else f"{v:.2%}"


def metric_value(m) -> str:
    return "—" if not m else f"{m['value']:.4f}"


def metric_units(m) -> str:
    """What a metric records in the data's own units beside its [0, 1] value: a regression's RMSE against its
    targets (r2_labels), which is how users judge a regressor; '' otherwise."""
    return f", RMSE {m['rmse']:.4g}" if m and m.get("rmse") is not None else ""


def metric_drop(m) -> str:
    """The cost vs FP32, as a relative drop (positive = worse); FP32 itself shows the reference."""
    if not m or m.get("drop_rel") is None:
        return ""
    d = m["drop_rel"]
    if abs(d) < 5e-5:
        return "no drop"
    return f"−{d:.2%}" if d > 0 else f"+{-d:.2%}"


STATUS_WORDS = {"emulated": "emulated", "unavailable": "unavailable", "failed": "failed", "missing": "not measured"}


def status_text(lat) -> str:
    """A non-'ok' measurement as words (never a number): e.g. 'unavailable: no CUDA device'."""
    word = STATUS_WORDS.get(lat.get("status"), lat.get("status", "?"))
    reason = lat.get("reason") or ""
    return f"{word}: {reason}" if reason else word


def short_status(lat) -> str:
    return STATUS_WORDS.get(lat.get("status"), lat.get("status", "?"))


# what makes text in a Markdown file markup: inline HTML (many previewers render <img onerror=...>), an
# entity, a link or image, a table cell's end, an escape; each becomes an entity or is escaped. Backticks
# stay: edgekit's own reasons quote commands in them, and a code span neither ends a cell nor runs HTML.
# `*` is escaped: a run folder "int8*fast*" showed as "int8" and an italic "fast". `_` is not: GitHub's
# Markdown does not emphasise inside a word (r2_labels, my_model), where a \_ would show as typed
_MD_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\\": "\\\\", "|": "\\|", "[": "\\[", "]": "\\]",
               "*": "\\*"}


def md_text(s) -> str:
    """s (a folder, label, reason: text the user chose) as Markdown that shows it as written, on one line."""
    return "".join(_MD_ESCAPES.get(ch, ch) for ch in " ".join(str(s).splitlines()))


def bool_text(v) -> str:
    return "yes" if v else "no"


def seconds(v) -> str:
    if v is None:
        return "—"
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min"


def json_safe(obj):
    """obj with every non-finite float as a string ("NaN", "Infinity", "-Infinity") and numpy values as
    Python ones, so that json.dumps(..., allow_nan=False) succeeds: a bare NaN is not JSON, and strict
    readers (JSON.parse, jq) reject the whole report over one output difference."""
    import math

    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if type(obj).__module__ == "numpy":  # np.float32 (not a float subclass), np.int64, arrays
        obj = obj.tolist() if hasattr(obj, "tolist") else obj
        if isinstance(obj, list):
            return json_safe(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else "Infinity" if obj > 0 else "-Infinity"
    return obj
