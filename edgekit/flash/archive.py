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


# A bundle is an ONNX model (weights compress little), code and two small npz files: it never expands
# to many times its size. The cap stops a crafted one (2 MiB of gzip -> 2 GiB of zeros) before it
# is written out; the floor leaves room for small bundles, whose text compresses well.
MAX_RATIO = 64
MIN_LIMIT = 256 << 20
INDEX_LIMIT = 16 << 20  # bundle.json: file names and hashes, read into memory


def expansion_limit(archive: Path) -> int:
    """The most bytes a bundle of this size may expand to."""
    return max(MIN_LIMIT, MAX_RATIO * archive.stat().st_size)


def _too_large(archive: Path, limit: int) -> InputError:
    return InputError(f"{archive}: expands to more than {limit >> 20} MiB from "
                      f"{archive.stat().st_size / (1 << 20):.1f} MiB (over {MAX_RATIO}x; a decompression bomb?); "
                      "refusing to extract")


def _check_gzip_stream(archive: Path, limit: int | None = None) -> None:
    """Decompress the whole .ekb once, for its CRC: tarfile stops quietly at the first header that a
    damaged stream garbles, so one flipped bit read as 'files missing from bundle.json'. Nothing is
    written, and the stream is refused once it passes limit bytes."""
    import zlib

    try:
        with open(archive, "rb") as raw:
            if raw.read(2) != b"\x1f\x8b":
                return  # not gzip: tarfile says what it is below
            raw.seek(0)
            total = 0
            with gzip.GzipFile(fileobj=raw) as gz:
                while chunk := gz.read(1 << 20):
                    total += len(chunk)
                    if limit is not None and total > limit:
                        raise _too_large(archive, limit)
    except FileNotFoundError:
        return  # named by tarfile.open below
    except (gzip.BadGzipFile, zlib.error, EOFError) as e:
        why = "truncated" if isinstance(e, EOFError) else _first_line(e)
        raise InputError(f"{archive}: damaged bundle archive (corrupt compressed data: {why}); "
                         "copy or rebuild the bundle again") from None


def _checked_members(archive: Path, tar, limit: int) -> dict:
    """{relpath: member} of the archive's regular files, every entry checked; nothing is extracted."""
    try:
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InputError(f"{archive}: damaged bundle archive: {_first_line(e)}") from None
    files, seen = {}, set()
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
            files[rel] = m
    if sum(m.size for m in files.values()) > limit:
        raise _too_large(archive, limit)
    return files


def _read_member(archive: Path, tar, m, limit: int) -> bytes:
    if m.size > limit:
        raise InputError(f"{archive}: {m.name} is {m.size} bytes, more than an index of file names and "
                         f"hashes needs ({limit >> 20} MiB); refusing to extract")
    try:
        return tar.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InputError(f"{archive}: cannot read {m.name}: {_first_line(e)}") from None


def _write_member(archive: Path, tar, m, rel: str, dest: Path, want: str | None) -> None:
    """Stream one file out of the archive into dest/rel, hashing as it goes; a file whose hash is not
    want is removed and refused as soon as its last byte is read."""
    import hashlib

    out = dest / rel
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # defence in depth: nothing may land outside dest (no links are extracted, so this holds)
        if not out.parent.resolve().is_relative_to(dest.resolve()):
            raise InputError(f"{archive}: entry {rel!r} resolves outside the bundle; refusing it")
        h = hashlib.sha256()
        src = tar.extractfile(m)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o755 if m.mode & 0o100 else 0o644)
        with os.fdopen(fd, "wb") as f:
            while chunk := src.read(1 << 20):
                h.update(chunk)
                f.write(chunk)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InputError(f"{archive}: cannot extract the bundle: {_first_line(e)}") from None
    if want is not None and h.hexdigest() != want:
        out.unlink()
        raise InputError(f"{archive}: {rel} fails its sha256 check (damaged or tampered bundle)")


def safe_extract(archive, dest, index=None) -> list[str]:
    """Extract a bundle archive into dest (created); return the regular files' relative paths.

    index(found, read) -> {relpath: sha256}, when given, sees the sorted relative paths and read(rel)
    (that file's bytes, for a small index like bundle.json) before anything is written; it refuses
    (raises) an archive whose contents it does not list. Each file it returns a hash for is checked
    while it is written, and the first one that differs stops the extraction."""
    archive, dest = Path(archive), Path(dest)
    try:
        limit = expansion_limit(archive)
    except FileNotFoundError:
        raise InputError(f"{archive}: no such bundle") from None
    _check_gzip_stream(archive, limit)
    try:
        tar = tarfile.open(archive, mode="r:*")
    except FileNotFoundError:
        raise InputError(f"{archive}: no such bundle") from None
    except tarfile.ReadError:
        # tarfile's own message lists every decompressor it tried, one per line
        raise InputError(f"{archive}: not an edgekit bundle (not a tar.gz archive)") from None
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InputError(f"{archive}: not an edgekit bundle (unreadable archive: {_first_line(e)})") from None
    with tar:
        files = _checked_members(archive, tar, limit)
        hashes = {}
        if index is not None:
            hashes = index(sorted(files), lambda rel: _read_member(archive, tar, files[rel], INDEX_LIMIT))
        dest.mkdir(parents=True, exist_ok=True)
        for rel, m in files.items():
            _write_member(archive, tar, m, rel, dest, hashes.get(rel))
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
