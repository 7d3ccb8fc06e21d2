"""Output directory handling: build a run in a staging folder, then swap it in.

A failed run leaves the previous OUTDIR untouched. An existing non-empty OUTDIR is only replaced
with overwrite=True, only when it is an earlier edgekit run (manifest.json with the edgekit schema),
only when it holds nothing but the files edgekit writes there (anything else is named and refused,
never deleted), and even then only after the new run succeeded.
"""
from __future__ import annotations

import errno
import glob
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from .errors import UsageError
from .fsutil import signals_deferred


MANIFEST = "manifest.json"
# What edgekit writes into an OUTDIR besides the artifacts its manifest lists (and their '<artifact>.data'
# external-data files, loader.copy_model): pipeline.stage_report (manifest, reports, recipe, sample inputs;
# `edgekit report OUTDIR` rewrites report.html), pruning/sensitivity.write, pruning/outputs.run_in_dir
# ('<section>.json' for prune and distill, pruned.pt from save_weights).
FIXED_FILES = frozenset({
    MANIFEST, "report.md", "report.html", "report.json", "compress.toml", "sample_inputs.npz",
    "sensitivity.json", "sensitivity.csv", "sensitivity.png", "pruning.json", "distill.json", "pruned.pt",
})
# ... of those, what any run may hold (`edgekit report OUTDIR` writes reports into any of them), and what
# each kind of run writes, told by the stages its manifest records: compress records 'export' and
# 'report'; `edgekit prune`/`distill` only their section ('pruning'/'distill'). Sensitivity files are
# those pruning.sensitivity_files names.
ANY_RUN_FILES = frozenset({MANIFEST, "report.md", "report.html", "report.json"})
COMPRESS_FILES = frozenset({"compress.toml", "sample_inputs.npz"})
SHOWN = 3  # foreign entries named in an error
# Each OUTDIR check_output() was given, by resolved path, as the user wrote it: an error on a staging or
# temp file is reported against that (output_named).
_CHECKED: dict = {}


def check_output(outdir, overwrite: bool) -> Path:
    out = _check_output(outdir, overwrite)
    key = str(out.resolve())
    _CHECKED.pop(key, None)  # the latest last: output_named() falls back on it
    _CHECKED[key] = str(outdir)
    return out


def _check_output(outdir, overwrite: bool) -> Path:
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory")
    check_parents(out)
    _recover_swap(out)
    if out.is_dir() and any(out.iterdir()):
        _check_replaceable(out, overwrite)
    return out


def check_parents(out, label=None) -> None:
    """UsageError when the nearest existing ancestor of OUT is a file: nothing can be created below it.
    label names OUT in the message (e.g. '-o/--output FILE'); default: the path."""
    for parent in Path(out).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{label or out}: {parent} is a file, not a directory")
            break


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """Raise UsageError unless the non-empty OUTDIR may be replaced (with overwrite) by a new run."""
    why = _not_a_run(out)
    if why:
        # --overwrite replaces the whole directory: only ever do that to an earlier edgekit run
        raise UsageError(f"{out}: not empty and not an edgekit output directory ({why}); "
                         "--overwrite only replaces an earlier run, so choose another -o")
    foreign = foreign_entries(out)
    if foreign:
        names = ", ".join(n if n.isprintable() else repr(n) for n in foreign[:SHOWN]) + (f" and {len(foreign) - SHOWN} more" if len(foreign) > SHOWN else "")
        raise UsageError(f"{out}: holds an earlier run plus files edgekit did not write ({names}); "
                         "--overwrite would delete them, so move them out of the folder or choose another -o")
    if not overwrite:
        raise UsageError(f"{out}: already holds a previous run; pass --overwrite to replace it "
                         "(it is kept if the new run fails)")


def _read_manifest(out: Path):
    try:
        d = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _not_a_run(out: Path) -> str:
    """'' for an earlier edgekit run, else why the folder is not one."""
    p = out / MANIFEST
    if p.is_symlink():
        return f"its {MANIFEST} is a link"
    if not p.is_file():
        return f"no {MANIFEST}"
    d = _read_manifest(out)
    if d is None:
        return f"its {MANIFEST} is not a JSON object"
    if not str(d.get("schema", "")).startswith("edgekit.manifest/"):
        return f"its {MANIFEST} is not an edgekit manifest: schema {d.get('schema')!r}"
    return ""


def _known(out: Path) -> set:
    """Relative paths (posix) of the files an edgekit run in OUTDIR wrote there."""
    d = _read_manifest(out) or {}
    known = _files_of_kind(d)
    arts = d.get("artifacts")
    for a in arts if isinstance(arts, list) else []:
        p = a.get("path") if isinstance(a, dict) else None
        if isinstance(p, str) and p:
            known |= {p, p + ".data"}
    sens = (d.get("pruning") or {}).get("sensitivity_files") if isinstance(d.get("pruning"), dict) else None
    if isinstance(sens, dict):
        known |= {v for v in sens.values() if isinstance(v, str)}
    return {Path(k).as_posix() for k in known} | _report_images(out)


def _files_of_kind(d: dict) -> set:
    """The fixed-name files the kind of run manifest d records writes. A name on FIXED_FILES is not
    edgekit's in every OUTDIR: --overwrite deleted a user's pruned.pt from a compress run's folder."""
    stages = d.get("stages")
    names = {s.get("name") for s in stages if isinstance(s, dict)} if isinstance(stages, list) else set()
    if not names:  # a manifest that records no stages (an older or hand-made one): any edgekit file
        return set(FIXED_FILES)
    known = set(ANY_RUN_FILES)
    if names & {"export", "report"}:
        known |= COMPRESS_FILES
    else:
        known |= {f"{sec}.json" for sec in ("pruning", "distill") if sec in names}
        if names & {"pruning", "distill"}:
            known.add("pruned.pt")  # pruning/outputs.save_weights
    return known


def _report_images(out: Path) -> set:
    """The plots report.md links (report_files/NAME.png): those edgekit wrote there. Any .png in the folder
    used to count as edgekit's, and --overwrite deleted a user's own picture put beside them."""
    import re

    try:
        text = (out / "report.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    return {m for m in re.findall(r"\]\((report_files/[^)\s/]+)\)", text)}


def _is_leftover_temp(name: str, known: set) -> bool:
    # fsutil.atomic_path's '.<name>.XXXXXXXX.tmp', left behind only by a killed write
    return name.startswith(".") and name.endswith(".tmp") and any(name.startswith(f".{k}.") for k in known)


def foreign_entries(out) -> list:
    """Sorted relative paths in OUTDIR that edgekit did not write there (folders end in '/')."""
    out = Path(out)
    known = _known(out)
    known_dirs = {p.rsplit("/", 1)[0] for p in known if "/" in p}
    known_dirs |= {"/".join(d.split("/")[:i]) for d in list(known_dirs) for i in range(1, d.count("/") + 1)}
    foreign = []

    def walk(d: Path, rel: str):
        for e in sorted(d.iterdir(), key=lambda e: e.name):
            r = f"{rel}{e.name}"
            if e.is_symlink():  # edgekit never writes links
                foreign.append(r)
            elif e.is_dir():
                if r in known_dirs:
                    walk(e, r + "/")
                else:
                    foreign.append(r + "/")
            elif r not in known and not _is_leftover_temp(e.name, {k for k in known if "/" not in k}):
                foreign.append(r)

    walk(out, "")
    return foreign


def staging_dir(outdir) -> Path:
    out = Path(outdir).resolve()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_staging(out)
        # host and pid in the name: a later run can tell a killed run's leftovers from a live run's folder
        st = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-{_host()}-{os.getpid()}-", dir=out.parent))
        # mkdtemp makes 0700, and the folder becomes OUTDIR: honour the umask like any mkdir
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(st, 0o777 & ~umask)
        return st
    except OSError as e:
        raise UsageError(f"{outdir}: cannot create the output directory there: {e.strerror or e}") from None


def _host() -> str:
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass  # alive, owned by someone else
    return False


def _remove_dead_staging(out: Path) -> None:
    """Remove staging folders for `out` left by runs of this host that were killed (SIGKILL, power loss):
    only ones whose process is gone. Runs on other hosts (a shared disk) are never touched."""
    prefix = f".{out.name}.staging-{_host()}-"
    for p in out.parent.glob(f"{glob.escape(prefix)}*"):
        pid = p.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or not p.is_dir() or p.is_symlink():
            continue
        if _gone(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _note(msg: str) -> None:
    print(f"edgekit: note: {msg}", file=sys.stderr)


def _dead_swaps(out: Path) -> list:
    """'.NAME.old-*' folders of publish() whose run is gone: '-HOST-PID-XXXXXXXX' of this host with the
    process ended, or the bare '-XXXXXXXX' that edgekit wrote before it named the run (a live run's
    folder and another host's are not touched). Only a folder that holds an edgekit run and nothing else
    counts: publish() renames aside only such a run, and '.mymodel.old-original' may be the user's own."""
    prefix = f".{out.name}.old-"
    found = []
    for p in out.parent.glob(f"{glob.escape(prefix)}*"):
        m = re.fullmatch(r"(?:([A-Za-z0-9_]+)-(\d+)-)?[a-z0-9_]{8}", p.name[len(prefix):])
        if not m or not p.is_dir() or p.is_symlink():
            continue
        if m.group(1) is None or (m.group(1) == _host() and _gone(int(m.group(2)))):
            why = _not_a_run(p) or ("it also holds files edgekit did not write" if foreign_entries(p) else "")
            if not why or _empty(p):  # an empty one: what remove_run() cut short at its very end leaves
                found.append(p)
            elif m.group(1) is not None:  # edgekit's own name, yet not a run of its own: say so, keep it
                _note(f"left {p.name} beside {out} in place: named like a run a killed --overwrite set aside, "
                      f"but {why}")
    return found


def _empty(d: Path) -> bool:
    try:
        return not any(d.iterdir())
    except OSError:
        return False


def _complete_run(d: Path) -> bool:
    arts = (_read_manifest(d) or {}).get("artifacts") if not _not_a_run(d) else None
    return isinstance(arts, list) and all(isinstance(a, dict) and isinstance(a.get("path"), str)
                                          and (d / a["path"]).is_file() for a in arts)


def _recover_swap(out: Path) -> None:
    """Undo what a run killed inside publish() left (SIGKILL, power loss; SIGINT/SIGTERM wait for the
    swap): with OUTDIR gone, the previous run renamed aside as '.NAME.old-*' goes back; with OUTDIR in
    place, the replaced run was meant to be deleted and is. Either way with a note: nothing silent."""
    out = out.resolve()
    left = _dead_swaps(out)
    if not left:
        return
    if not os.path.lexists(out):
        runs = sorted((p for p in left if _complete_run(p)), key=lambda p: p.stat().st_ctime)
        if runs:
            try:
                os.rename(runs[-1], out)
            except OSError:
                return  # another run is recovering it at this moment
            left.remove(runs[-1])
            _note(f"{out}: put back the previous run from {runs[-1].name}, where a run killed while "
                  "replacing it had left it")
    for p in left:
        remove_run(p)
    if left:
        _note(f"removed {', '.join(p.name for p in left)} beside {out}: a run replaced by --overwrite, "
              "left by a run killed before it had deleted it")


def remove_run(d: Path) -> None:
    """Delete a run's folder with manifest.json last and report.md (which names the plots) just before it:
    one cut short (Ctrl-C, SIGKILL) still reads as an edgekit run holding nothing else, which is all the
    next run removes."""
    last = [d / "report.md", d / MANIFEST]
    try:
        for e in sorted(d.iterdir(), key=lambda e: (not e.is_dir() or e.is_symlink(), e.name)):
            if e in last:
                continue
            if e.is_dir() and not e.is_symlink():
                shutil.rmtree(e, ignore_errors=True)
            else:
                e.unlink(missing_ok=True)
        for f in last:
            f.unlink(missing_ok=True)
    except OSError:
        pass  # what is left goes with the rmtree below, or stays for the next run, as rmtree's errors did
    shutil.rmtree(d, ignore_errors=True)


def publish(staging: Path, outdir, *, overwrite: bool) -> Path:
    """Move staging into place; an old OUTDIR is renamed aside first and removed only after the swap.

    The old OUTDIR is checked again first (files may have appeared while the run was being built):
    only an earlier edgekit run holding nothing else is ever removed; otherwise UsageError, nothing moved.
    overwrite is the user's --overwrite, as given to check_output(): without it, an OUTDIR that another run
    filled while this one was busy is kept, and this run refused (it was replaced: publish re-checked with
    overwrite=True). SIGINT/SIGTERM wait for the two renames; once the new run is in place they only cut the
    removal of the old one short (the next run finishes it), and the run still succeeds.
    """
    _check_output(outdir, overwrite=True)
    out = Path(outdir).resolve()
    taken = UsageError(f"{outdir}: another run wrote its results there while this one ran; they are kept and "
                       "this run's are discarded" + ("" if overwrite else " (pass --overwrite to replace them)"))
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise taken
    old = None
    with signals_deferred() as held:
        if overwrite and out.exists():
            # host and pid in the name: a later run can tell a killed run's leftover from a live swap
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{_host()}-{os.getpid()}-", dir=out.parent))
            os.rmdir(old)
            os.rename(out, old)
        try:
            # without --overwrite nothing is renamed aside: rename(2) replaces only an empty folder, so an
            # OUTDIR filled since the check above is refused here, atomically
            os.rename(staging, out)
        except OSError as e:
            if old is not None:
                os.rename(old, out)
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise taken from None
            raise
        if held:
            _note(f"{outdir}: the interrupt came while the new run was being put in place; that was "
                  "completed, and the run succeeded")
            held.clear()
    if old is not None:
        try:
            remove_run(old)
        except (KeyboardInterrupt, SystemExit):  # SystemExit: edgekit's SIGTERM handler
            _note(f"{outdir}: interrupted while deleting the run it replaced; the new run is in place, and "
                  f"the next run there removes the rest ({old.name})")
    return out


_STAGING_RE = re.compile(r"\.(.+)\.staging-[A-Za-z0-9_]+-\d+-[a-z0-9_]{8}")
_TEMP_RE = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")  # fsutil.atomic_path's temp file


def output_named(path) -> tuple | None:
    """(OUTPUT, NAME) when path is part of an output being written: a file in OUTDIR's staging folder
    gives OUTDIR as the user wrote it and the file's name in it ('' for edgekit's own temp files),
    an atomic write's temp file its destination; None for any other path, and with no path the OUTDIR
    checked last (a failed write does not always name its file)."""
    if not path:
        return (next(reversed(_CHECKED.values())), "") if _CHECKED else None
    p = Path(os.fsdecode(path))
    temp = _TEMP_RE.fullmatch(p.name)
    if temp:
        p = p.with_name(temp.group(1))
    for i, part in enumerate(p.parts):
        st = _STAGING_RE.fullmatch(part)
        if st:
            out = Path(*p.parts[:i], st.group(1))
            rel = p.parts[i + 1:]
            spelled = _CHECKED.get(str(out.resolve()), str(out))
            return spelled, "" if any(x.startswith(".") for x in rel) else "/".join(rel)
    return (str(p), "") if temp else None


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
