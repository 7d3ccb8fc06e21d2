"""Output directory handling: build a run in a staging folder, then swap it in.

A failed run leaves the previous OUTDIR untouched; an existing non-empty OUTDIR is
only replaced with overwrite=True, and even then only after the new run succeeded.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .errors import UsageError


MANIFEST = "manifest.json"


def check_output(outdir, overwrite: bool) -> Path:
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: exists and is not a directory")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{out}: {parent} is a file, not a directory")
            break
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"{out}: already holds a previous run; pass --overwrite to replace it (it is kept if the new run fails)")
        if not (out / MANIFEST).is_file():
            # --overwrite replaces the whole directory: only ever do that to an earlier edgekit run
            raise UsageError(f"{out}: not empty and not an edgekit output directory (no {MANIFEST}); "
                             "--overwrite only replaces an earlier run, so choose another -o")
    return out


def staging_dir(outdir) -> Path:
    out = Path(outdir).resolve()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    except OSError as e:
        raise UsageError(f"{outdir}: cannot create the output directory there: {e.strerror or e}") from None


def publish(staging: Path, outdir) -> Path:
    """Move staging into place; an old OUTDIR is renamed aside first and removed only after the swap."""
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
