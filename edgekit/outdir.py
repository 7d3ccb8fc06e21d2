"""Output directory handling: build a run in a staging folder, then swap it in.

A failed run leaves the previous OUTDIR untouched. An existing non-empty OUTDIR is only replaced
with overwrite=True, only when it is an earlier edgekit run (manifest.json with the edgekit schema),
only when it holds nothing but the files edgekit writes there (anything else is named and refused,
never deleted), and even then only after the new run succeeded.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UsageError


MANIFEST = "manifest.json"
# What edgekit writes into an OUTDIR besides the artifacts its manifest lists (and their '<artifact>.data'
# external-data files, loader.copy_model): pipeline.stage_report (manifest, reports, recipe, sample inputs;
# `edgekit report OUTDIR` rewrites report.html), pruning/sensitivity.write, pruning/outputs.run_in_dir
# ('<section>.json' for prune and distill, pruned.pt from save_weights).
FIXED_FILES = frozenset({
    MANIFEST, "report.md", "report.html", "report.json", "compress.toml", "sample_inputs.npz",
    "sensitivity.json", "sensitivity.csv", "sensitivity.png", "pruning.json", "distill.json", "pruned.pt",
})
SHOWN = 3  # foreign entries named in an error


def check_output(outdir, overwrite: bool) -> Path:
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory")
    check_parents(out)
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
    known = set(FIXED_FILES)
    arts = d.get("artifacts")
    for a in arts if isinstance(arts, list) else []:
        p = a.get("path") if isinstance(a, dict) else None
        if isinstance(p, str) and p:
            known |= {p, p + ".data"}
    sens = (d.get("pruning") or {}).get("sensitivity_files") if isinstance(d.get("pruning"), dict) else None
    if isinstance(sens, dict):
        known |= {v for v in sens.values() if isinstance(v, str)}
    return {Path(k).as_posix() for k in known} | _report_images(out)


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


def _remove_dead_staging(out: Path) -> None:
    """Remove staging folders for `out` left by runs of this host that were killed (SIGKILL, power loss):
    only ones whose process is gone. Runs on other hosts (a shared disk) are never touched."""
    prefix = f".{out.name}.staging-{_host()}-"
    for p in out.parent.glob(f"{glob.escape(prefix)}*"):
        pid = p.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or not p.is_dir() or p.is_symlink():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass  # alive, owned by someone else


def publish(staging: Path, outdir) -> Path:
    """Move staging into place; an old OUTDIR is renamed aside first and removed only after the swap.

    The old OUTDIR is checked again first (files may have appeared while the run was being built):
    only an earlier edgekit run holding nothing else is ever removed; otherwise UsageError, nothing moved.
    """
    check_output(outdir, overwrite=True)
    out = Path(outdir).resolve()
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rmdir(old)
        os.rename(out, old)
    try:
        os.rename(staging, out)
    except OSError:
        if old is not None:
            os.rename(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def discard(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)
