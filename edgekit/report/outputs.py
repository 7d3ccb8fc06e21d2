"""Where a report may be written: a new file, or one that holds an earlier report of the same format.

`edgekit report -o/--markdown/--json-out` and `edgekit profile -o` replaced whatever was at the path: a
user's .py became HTML, and `--json-out OUTDIR/model.fp32.onnx` turned the run's own artifact into JSON.
An existing file is replaced only when its content shows it is edgekit's report of that format (each
format's own signature, read from its first and last few KB), never when an OUTDIR's manifest.json lists
it (an artifact, its external data, the manifest itself).
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import UsageError

_PEEK = 4096


def _ends(p: Path) -> tuple[str, str]:
    with open(p, "rb") as f:
        head = f.read(_PEEK)
        f.seek(0, 2)
        f.seek(max(0, f.tell() - _PEEK))
        tail = f.read(_PEEK)
    return head.decode("utf-8", "replace"), tail.decode("utf-8", "replace")


def _json_schema(head: str, schema: str) -> bool:
    # write_json_atomic keeps key order, and both reports put "schema" first
    return re.match(r'\{\s*"schema":\s*"' + re.escape(schema) + "/", head) is not None


# format -> (what it is called, its usual suffix, does (head, tail) hold one)
FORMATS = {
    "report-html": ("HTML report", ".html", lambda h, t: h.startswith("<!DOCTYPE html>")
                    and "schema edgekit.report/" in t),
    "report-md": ("Markdown report", ".md", lambda h, t: h.startswith("# ") and "· schema edgekit.report/" in h),
    "report-json": ("JSON report", ".json", lambda h, t: _json_schema(h, "edgekit.report")),
    "profile-html": ("profile HTML report", ".html", lambda h, t: h.startswith("<!DOCTYPE html>")
                     and "<title>edgekit profile</title>" in h),
    "profile-md": ("profile Markdown report", ".md", lambda h, t: h.startswith("# edgekit profile\n")),
    "profile-json": ("profile JSON report", ".json", lambda h, t: _json_schema(h, "edgekit.profile")),
}


def listed_by_run(p: Path) -> str | None:
    """The OUTDIR whose manifest.json lists p (as an artifact, its .data, or the manifest), else None."""
    from ..artifact import load_manifest
    from ..errors import EdgekitError

    folder = p.absolute().parent
    if not (folder / "manifest.json").is_file():
        return None
    if p.name == "manifest.json":
        return str(folder)
    try:
        arts = load_manifest(folder).artifacts
    except (EdgekitError, TypeError, ValueError, AttributeError):
        return None  # not an edgekit manifest: nothing there is a run's
    names = {n for a in arts for n in (Path(a.path).name, Path(a.path).name + ".data")}
    return str(folder) if p.name in names else None


def _suggest(p: Path, suffix: str) -> Path:
    stem = p.stem if p.suffix else p.name
    for i in range(1, 100):
        c = p.with_name(f"{stem}{'' if i == 1 else f'-{i}'}{suffix}" if p.suffix != suffix
                        else f"{stem}-report{'' if i == 1 else f'-{i}'}{suffix}")
        if not c.exists() and not listed_by_run(c):
            return c
    return p.with_name(f"report{suffix}")


def check_report_path(path, flag: str, fmt: str) -> None:
    """UsageError (one line, naming the flag and path, with another name to use) unless writing a report of
    format fmt (a FORMATS key) to path replaces nothing but an earlier report of that format."""
    if path is None:
        return
    p = Path(path)
    what, suffix, holds = FORMATS[fmt]
    run = listed_by_run(p)
    if run:
        raise UsageError(f"{flag} {p}: is listed in {Path(run) / 'manifest.json'} (a file of that run); not "
                         f"writing the {what} over it; choose another name, e.g. {_suggest(p, suffix)}")
    if not p.is_file():
        return  # nothing there (a folder or a file in the way: the caller's check says so)
    try:
        ours = holds(*_ends(p))
    except OSError as e:
        raise UsageError(f"{flag} {p}: cannot read it to check what it is: {e.strerror or e}") from None
    if not ours:
        raise UsageError(f"{flag} {p}: exists and is not an edgekit {what}; not replacing it; choose another "
                         f"name, e.g. {_suggest(p, suffix)}")


def check_distinct(outputs) -> None:
    """UsageError (one line) when two of the (flag, path) outputs name one file: each writer replaced the
    one before, so the user got one report under the other's name and 'wrote' twice, exit 0."""
    seen = {}
    for flag, p in outputs:
        if p is None:
            continue
        key = Path(p).resolve()
        if key in seen:
            raise UsageError(f"{seen[key]} and {flag} both name {p}: each report needs a file of its own")
        seen[key] = flag


def _our_png(p: Path, md_is_ours: bool) -> bool:
    """A PNG edgekit's report wrote: the tEXt chunk plots.to_png adds, near the start; an untagged PNG
    (older edgekit) only beside an edgekit Markdown report, whose folder it then is."""
    from .plots import PNG_TAG

    with open(p, "rb") as f:
        head = f.read(_PEEK)
    return head.startswith(b"\x89PNG") and (md_is_ours or b"tEXtSoftware\x00" + PNG_TAG.encode() in head)


def check_plot_folder(markdown, names) -> None:
    """UsageError (one line) unless the Markdown's plots (file names `names`) can go into its '<stem>_files/'
    folder replacing nothing but PNGs an edgekit report wrote: the folder is the user's as much as the .md."""
    from .markdown import plot_folder

    md = Path(markdown)
    folder = plot_folder(md)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--markdown {md}: its plots go into {folder}/, and {folder} is a file, not a folder; "
                         "choose another Markdown name or move that file")
    try:
        md_is_ours = md.is_file() and FORMATS["report-md"][2](*_ends(md))
    except OSError:
        md_is_ours = False
    for name in names:
        p = folder / name
        if not p.exists():
            continue
        try:
            ours = p.is_file() and _our_png(p, md_is_ours)
        except OSError as e:
            raise UsageError(f"--markdown {md}: cannot read {p} to check what it is: {e.strerror or e}") from None
        if not ours:
            raise UsageError(f"--markdown {md}: {p} exists and is not a plot an edgekit report wrote; not "
                             "replacing it; choose another Markdown name or move that file")
