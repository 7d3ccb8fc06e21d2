"""The .ekb container: a reproducible tar.gz written in one go, read back with every entry checked.

Reading refuses anything a bundle never contains: absolute paths, '..' components,
symlinks, hard links, devices, duplicate names. That is stricter than tarfile's
'data' filter (which is applied as well), because a bundle has no reason for links.
"""
from __future__ import annotations

import gzip
import io
import os
import posixpath
import tarfile
import zipfile
from pathlib import Path

from ..errors import InputError
from ..fsutil import atomic_path


def write_archive(dest, root: Path, relpaths) -> None:
    """Pack root/relpath for each relpath into dest (tar.gz); same content -> same bytes."""
    root = Path(root)
    with atomic_path(dest) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for rel in sorted(relpaths):
                    src = root / rel
                    info = tarfile.TarInfo(rel)
                    info.size = src.stat().st_size
                    info.mode = 0o755 if rel.endswith(".py") and rel.count("/") == 0 else 0o644
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                    with open(src, "rb") as f:
                        tar.addfile(info, f)


def check_member_name(name: str) -> str:
    """The normalised relative path of an archive entry, or a one-line reason it is unsafe."""
    if not name or "\x00" in name or "\\" in name:
        raise ValueError("empty name or a NUL/backslash in it")
    # control characters would reach terminals and one-line error messages verbatim via the name
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ValueError("a control character in the name")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ValueError("absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        raise ValueError("empty path")
    if ".." in parts:
        raise ValueError("'..' component escapes the bundle")
    return posixpath.join(*parts)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _check_gzip_stream(archive: Path) -> None:
    """Decompress the whole .ekb once, for its CRC: tarfile stops quietly at the first header that a
    damaged stream garbles, so one flipped bit read as 'files missing from bundle.json'."""
    import zlib

    try:
        with open(archive, "rb") as raw:
            if raw.read(2) != b"\x1f\x8b":
                return  # not gzip: tarfile says what it is below
            raw.seek(0)
            with gzip.GzipFile(fileobj=raw) as gz:
                while gz.read(1 << 20):
                    pass
    except FileNotFoundError:
        return  # named by tarfile.open below
    except (gzip.BadGzipFile, zlib.error, EOFError) as e:
        why = "truncated" if isinstance(e, EOFError) else _first_line(e)
        raise InputError(f"{archive}: damaged bundle archive (corrupt compressed data: {why}); "
                         "copy or rebuild the bundle again") from None


def safe_extract(archive, dest) -> list[str]:
    """Extract a bundle archive into dest (created); return the regular files' relative paths."""
    archive, dest = Path(archive), Path(dest)
    _check_gzip_stream(archive)
    try:
        tar = tarfile.open(archive, mode="r:*")
    except FileNotFoundError:
        raise InputError(f"{archive}: no such bundle") from None
    except tarfile.ReadError:
        # tarfile's own message lists every decompressor it tried, one per line
        raise InputError(f"{archive}: not an edgekit bundle (not a tar.gz archive)") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InputError(f"{archive}: not an edgekit bundle (unreadable archive: {_first_line(e)})") from None
    files, seen = [], set()
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise InputError(f"{archive}: damaged bundle archive: {_first_line(e)}") from None
        for m in members:
            try:
                rel = check_member_name(m.name)
            except ValueError as e:
                raise InputError(f"{archive}: unsafe entry {m.name!r}: {e}; refusing to extract") from None
            if m.issym() or m.islnk():
                raise InputError(f"{archive}: unsafe entry {m.name!r}: a link (to {m.linkname!r}); "
                                 "bundles contain only regular files; refusing to extract")
            if not (m.isfile() or m.isdir()):
                raise InputError(f"{archive}: unsafe entry {m.name!r}: not a regular file; refusing to extract")
            if rel in seen:
                raise InputError(f"{archive}: duplicate entry {m.name!r}; refusing to extract")
            seen.add(rel)
            if m.isfile():
                files.append(rel)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            tar.extractall(dest, members=members, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise InputError(f"{archive}: cannot extract the bundle: {_first_line(e)}") from None
    # defence in depth: nothing may have landed outside dest
    root = dest.resolve()
    for rel in files:
        if not (dest / rel).resolve().is_relative_to(root):
            raise InputError(f"{archive}: entry {rel!r} resolves outside the bundle; refusing it")
    return sorted(files)


def save_npz(path, arrays: dict) -> None:
    """np.savez with fixed zip timestamps, so the same arrays give the same bytes (and bundle version)."""
    import numpy as np

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            zi = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(zi, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[name]), allow_pickle=False)
    Path(path).write_bytes(buf.getvalue())
    os.chmod(path, 0o644)
