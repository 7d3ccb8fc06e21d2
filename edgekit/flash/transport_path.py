"""A device reached through the local file system (a mounted SD card, an NFS export, a dir).

The self-test runs here, with this host's Python: it proves the bytes on the medium load
and compute correctly, though not on the device's CPU.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import sys

from ..errors import FlashError


def root_problem(path: str, *, create_last: bool = True) -> str | None:
    """Why PATH cannot be a device folder, or None.

    Only the folder itself may be created (create_last), never its parents: on an unmounted card
    the parents are missing, and making them would write the bundle onto this host's disk."""
    path = path.rstrip("/") or "/"
    if os.path.isdir(path):  # follows links: ~/sd -> /media/... is fine
        return None
    if os.path.lexists(path):
        return f"{path}: is not a directory"
    blocker = _non_dir_ancestor(path)
    if blocker is not None:
        # a file where a folder should be is not an unmounted card: "is the device mounted?" misleads
        return f"{path}: {blocker} is {'a file, not a folder' if os.path.isfile(blocker) else 'not a folder'}"
    parent = os.path.dirname(path) or "."
    if not create_last:
        return f"{path}: does not exist (is the device mounted?)"
    if not os.path.isdir(parent):
        return (f"{path}: {parent} does not exist (is the device mounted?); "
                "edgekit creates only the last folder of a device path")
    return None


def _non_dir_ancestor(path: str) -> str | None:
    """The nearest existing ancestor of PATH when it is not a directory (a file, a dangling link), else None."""
    cur = os.path.dirname(path)
    while cur and cur != os.path.dirname(cur):
        if os.path.lexists(cur):
            return None if os.path.isdir(cur) else cur
        cur = os.path.dirname(cur)
    return None


class UnreadableFile(FlashError, ValueError):
    """A device file edgekit reads (history.json, a version's bundle.json) that is no regular file or too
    large: a tampered device's link to /dev/zero filled memory, a FIFO hung the read. A ValueError too,
    so a reader that takes a damaged file as unreadable does so for this one."""

    def __init__(self, path, why: str):
        super().__init__(f"{path} {why}")
        self.why = why  # the message without the path: "is not a regular file (a FIFO)"


def _kind_of(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a device or special file"


def _read_capped(f, path, limit: int | None) -> bytes:
    """f's bytes, reading at most limit + 1 of them: the size on record may change while it is read."""
    data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise UnreadableFile(path, _too_large(limit))
    return data


def _too_large(limit: int) -> str:
    size = f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit} bytes"
    return f"is larger than {size}; edgekit reads no more of it"


# a device file is read without following a link or waiting on a FIFO (its type is checked once open)
READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def _hash_regular(root: str, rel: str) -> str | None:
    """sha256 of root/rel if every component below root is a real folder and rel a regular file, else None."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    cur = root
    try:
        for p in parts[:-1]:
            cur = os.path.join(cur, p)
            if not stat.S_ISDIR(os.lstat(cur).st_mode):
                return None
        fd = os.open(os.path.join(cur, parts[-1]), READ_FLAGS)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        h = hashlib.sha256()
        try:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        except OSError:
            return None
    return h.hexdigest()


class PathTransport:
    python = sys.executable

    def __init__(self, label: str):
        self.label = label

    def absolute(self, path) -> str:
        """path as an argument for a command: a relative device path such as '-c...' would be read as an option."""
        return os.path.abspath(path)

    def check_root(self, path, create_last: bool = True) -> None:
        why = root_problem(path, create_last=create_last)
        if why:
            raise FlashError(why)

    def exists(self, path) -> bool:
        return os.path.lexists(path)

    def isdir(self, path) -> bool:
        return os.path.isdir(path) and not os.path.islink(path)

    def readlink(self, path):
        """The link's target, None if missing; raises NotADirectoryError-like OSError if not a link."""
        if not os.path.lexists(path):
            return None
        return os.readlink(path)  # OSError(EINVAL) when path is not a symlink

    def mtime(self, path) -> float:
        return os.lstat(path).st_mtime

    def listdir(self, path) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    def makedirs(self, path) -> None:
        os.makedirs(path, exist_ok=True)

    def mkdir_exclusive(self, path) -> None:
        os.mkdir(path)  # FileExistsError if it is there: the atomic test-and-set of the device lock

    def put(self, local, remote, callback=None) -> None:
        size = os.path.getsize(local)
        # a fresh file, never through what is there: a link left on the card would point the write at this host
        with contextlib.suppress(FileNotFoundError):
            os.unlink(remote)
        fd = os.open(remote, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with open(local, "rb") as src, os.fdopen(fd, "wb") as dst:
            done = 0
            while True:
                b = src.read(1 << 20)
                if not b:
                    break
                dst.write(b)
                done += len(b)
                if callback:
                    callback(done, size)
            dst.flush()
            os.fsync(dst.fileno())  # a removable medium may be pulled right after

    def hashes(self, root, rels) -> dict:
        """sha256 of each regular file under root, None for anything else: a link (to a host file), a device
        or a FIFO named by a device's bundle.json is not read (/dev/zero never ended)."""
        return {rel: _hash_regular(root, rel) for rel in rels}

    def read_bytes(self, path, limit: int | None = None):
        """path's bytes, None if it is missing; UnreadableFile if it is no regular file (a link is not
        followed, a FIFO not waited on) or holds more than limit bytes."""
        try:
            fd = os.open(path, READ_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:  # O_NOFOLLOW met a link
                raise UnreadableFile(path, "is not a regular file (a symlink)") from None
            raise
        with os.fdopen(fd, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise UnreadableFile(path, f"is not a regular file ({_kind_of(mode)})")
            return _read_capped(f, path, limit)

    def write_bytes_atomic(self, path, data: bytes) -> None:
        tmp = f"{path}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:  # a full disk left history.json.tmp-* behind on the card
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def symlink(self, target, path) -> None:
        os.symlink(target, path)

    def replace(self, src, dst) -> None:
        os.replace(src, dst)

    def rename(self, src, dst) -> None:
        if os.path.lexists(dst):
            raise FileExistsError(dst)
        os.rename(src, dst)

    def rmtree(self, path) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)  # does not follow links inside
        else:
            os.unlink(path)  # a file, a link (never its target), a FIFO or a device node

    def run(self, argv, timeout=None, stdin: bytes | None = None):
        try:
            p = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=timeout)
        except FileNotFoundError as e:
            return 127, b"", str(e).encode()
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"command did not finish within {timeout:.0f} s") from None
        return p.returncode, p.stdout, p.stderr

    def close(self) -> None:
        with contextlib.suppress(Exception):
            os.sync()
