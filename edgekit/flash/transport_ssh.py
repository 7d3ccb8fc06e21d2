"""A device over SSH (paramiko): SFTP for files, exec for the few commands that must run there.

Host keys are verified against known_hosts, matched as OpenSSH does, unless the user explicitly
trusts a new key on first use (a changed key never). Commands are argument lists joined with
shlex.quote, never shell strings built from user input.
"""
from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import posixpath
import shlex
import socket
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FlashError
from .transport_path import UnreadableFile, _kind_of, _read_capped, _too_large

# Runs on the device with its own Python: hashes files under argv[1] listed as JSON on stdin. Only regular
# files are read, and no link is followed (to a folder on the way either): anything else is reported as None,
# "missing". A FIFO named by a version's bundle.json hung the hash until the 600 s timeout; /dev/zero never ends.
HASH_SCRIPT = r"""
import hashlib, json, os, stat, sys
root, out = sys.argv[1], {}
FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)

def digest(rel):
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        return None
    cur = root
    for p in parts[:-1]:
        cur = os.path.join(cur, p)
        if not stat.S_ISDIR(os.lstat(cur).st_mode):
            return None
    path = os.path.join(cur, parts[-1])
    if not stat.S_ISREG(os.lstat(path).st_mode):
        return None
    with os.fdopen(os.open(path, FLAGS), "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # swapped in since the lstat
            return None
        h = hashlib.sha256()
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()

for rel in json.load(sys.stdin):
    try:
        out[rel] = digest(rel)
    except OSError:
        out[rel] = None
json.dump(out, sys.stdout)
"""

_KNOWN_HOSTS_LOCK = threading.Lock()
# known_hosts files are kilobytes, a big fleet's a few MB: anything larger is not one (/dev/zero was read
# whole until the kernel killed edgekit at 22 GB)
KNOWN_HOSTS_MAX_BYTES = 64 << 20


@dataclass(frozen=True)
class SshOptions:
    identity: str | None = None  # private key file; default: the user's keys and agent
    known_hosts: str | None = None  # default ~/.ssh/known_hosts
    accept_new_host_key: bool = False
    remote_python: str = "python3"
    connect_timeout: float = 15.0
    io_timeout: float = 120.0  # longest wait for any one SFTP reply
    # the known_hosts file as read once for every device of a run: a pipe (--known-hosts <(ssh-keyscan ...))
    # can be read only once, and re-reading it per device refused all but the first as unknown hosts
    _loaded: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def known_hosts_path(self) -> Path:
        return Path(self.known_hosts or "~/.ssh/known_hosts").expanduser()

    def host_keys(self) -> "KnownHosts":
        """The known_hosts file, read on first use; raise FlashError (step 'connect') if it cannot be."""
        with _KNOWN_HOSTS_LOCK:
            if "keys" not in self._loaded:
                try:
                    self._loaded["keys"] = KnownHosts.read(self.known_hosts_path())
                except FlashError as e:
                    self._loaded["keys"] = e
            got = self._loaded["keys"]
        if isinstance(got, FlashError):
            raise FlashError(str(got))
        return got

    def check_local_files(self) -> None:
        """The key and known_hosts files, checked once before any device: per device their problems read
        as N "cannot reach HOST" lines. UsageError for --identity, InputError for known_hosts."""
        from ..errors import InputError, UsageError

        why = identity_problem(self.identity) if self.identity else None
        if why:
            raise UsageError(f"--identity: {why}")
        try:
            self.host_keys()
        except FlashError as e:
            raise InputError(str(e).removeprefix("connect: ")) from None


def fingerprint(key) -> str:
    import hashlib

    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def _host_matches(patterns, name: str) -> bool:
    """OpenSSH host-pattern matching for one known_hosts entry: plain names, hashed (|1|...)
    names, '*'/'?' wildcards and '!' negations (paramiko itself matches only the first two)."""
    import re

    from paramiko.hostkeys import HostKeys

    name = name.lower()  # OpenSSH looks hosts up in lower case, hashed names included
    hit = False
    for p in patterns:
        neg = p.startswith("!")
        p = p[1:] if neg else p
        if p.startswith("|1|"):
            ok = HostKeys.hash_host(name, p) == p
        else:
            # only '*' and '?' are wildcards ('[host]:port' is literal, unlike in fnmatch)
            rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in p.lower())
            ok = re.fullmatch(rx, name) is not None
        if ok and neg:
            return False
        hit = hit or ok
    return hit


def read_known_hosts_text(path: Path) -> str:
    """path's text, read once and at most KNOWN_HOSTS_MAX_BYTES; FlashError naming it otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read(KNOWN_HOSTS_MAX_BYTES + 1)
    except OSError as e:
        raise FlashError(f"connect: cannot read the known-hosts file {path}: {_local_problem(path, e)}") from None
    if len(data) > KNOWN_HOSTS_MAX_BYTES:
        raise FlashError(f"connect: the known-hosts file {path} is larger than {KNOWN_HOSTS_MAX_BYTES >> 20} MiB; "
                         "not a known_hosts file")
    return data.decode("utf-8", errors="replace")


def load_known_hosts(path: Path, text: str | None = None) -> tuple[list, list, list[str]]:
    """path's plain entries as (line number, HostKeyEntry), its @revoked entries, and notes.

    paramiko's own loader dies on the first line it cannot decode (InvalidHostKey), and reads
    marker lines (@cert-authority, @revoked) as malformed ones. OpenSSH skips what it cannot
    use, so one stale or foreign line must not stop every flash; what it skips gets a note."""
    from paramiko.hostkeys import HostKeyEntry

    plain, revoked, notes = [], [], []
    lines = (read_known_hosts_text(path) if text is None else text).splitlines()
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        marker = None
        if line.startswith("@"):
            marker, line = (line.split(None, 1) + [""])[:2]  # fields may be separated by tabs too
            if marker == "@cert-authority":
                continue  # edgekit accepts plain host keys only, never certificates
            if marker != "@revoked":
                notes.append(f"{path}:{lineno}: unknown marker {marker!r}; line ignored")
                continue
        try:
            entry = HostKeyEntry.from_line(line, lineno)
        except Exception as e:  # InvalidHostKey (bad base64), SSHException, ValueError from a key parser
            entry, why = None, type(e).__name__
        else:
            why = "unsupported key type or too few fields"
        if entry is None or entry.key is None:
            # a revoked key that cannot be read cannot be matched either: say so, it is a security list
            what = "@revoked entry" if marker else "entry"
            notes.append(f"{path}:{lineno}: {what} cannot be parsed ({why}); line ignored")
            continue
        if marker:
            revoked.append(entry)
        else:
            plain.append((lineno, entry))
    return plain, revoked, notes


def known_keys(plain, revoked, name: str) -> list:
    """The (line number, entry) pairs OpenSSH consults for name: every plain line whose patterns
    match it (paramiko's lookup compares names exactly, so a wildcard or upper-case line that pins
    another key read as no line at all, and --accept-new-host-key trusted the other key)."""
    # a revoked key must never verify, even when a plain line for the same host still lists it
    return [(n, e) for n, e in plain
            if _host_matches(e.hostnames, name) and not any(e.key == r.key for r in revoked)]


def revoked_for(revoked, hostname: str, key) -> bool:
    return any(r.key == key and _host_matches(r.hostnames, hostname) for r in revoked)


def host_key_problem(kh: Path, known, revoked, hostname: str, key) -> str | None:
    """Why key may not be trusted for hostname, as OpenSSH decides; "" for a key known_hosts does not
    pin for this host (new: refused unless trusted on first use); None when it is known and good."""
    what = f"the host key of {hostname} ({key.get_name()} {fingerprint(key)})"
    if revoked_for(revoked, hostname, key):
        return f"{what} is marked @revoked in {kh}; refusing it"
    if any(e.key == key for _, e in known):
        return None
    if known:
        # a changed key, never a new one: trusting it on first use would defeat the pin. A pin of another
        # type counts too, as for OpenSSH: else a man-in-the-middle that cannot forge the pinned RSA key
        # offered an ed25519 one, and --accept-new-host-key recorded it beside the pin
        same = [(n, e) for n, e in known if e.key.get_name() == key.get_name()]
        n, e = (same or known)[0]
        pin = "" if same else f", which pins a key of another type ({e.key.get_name()}) for it"
        return (f"REMOTE HOST IDENTIFICATION HAS CHANGED: {what} does not match {kh}:{n}{pin}: the key changed "
                "or this is a man-in-the-middle; refusing it, also with --accept-new-host-key")
    return ""


def _local_problem(path: Path, e: OSError) -> str:
    """What is wrong with a local file: strerror alone reads 'File exists' for a parent that is a file."""
    for parent in path.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                return f"{parent} is not a folder"
            break
    other = f" ({e.filename})" if e.filename and str(e.filename) != str(path) else ""
    return f"{e.strerror or e}{other}"


def record_host_key(kh: Path, hostname: str, key) -> None:
    """Append hostname's key to kh (trust on first use) on a line of its own, in one write."""
    line = f"{hostname.lower()} {key.get_name()} {key.get_base64()}\n"
    with _KNOWN_HOSTS_LOCK:
        kh.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(kh, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            # a last line without its newline (edited by hand) would swallow the entry, corrupting both
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line
            data = line.encode()
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write (disk full?)")
        finally:
            os.close(fd)


class KnownHosts:
    """One known_hosts file as read once for a run, and the keys this run recorded in it since."""

    def __init__(self, path: Path, text: str = ""):
        self.path = path
        self.plain, self.revoked, self.notes = load_known_hosts(path, text) if text else ([], [], [])
        self.lines = len(text.splitlines())
        self.lock = threading.Lock()  # check and record as one step: two devices on one new host add one line

    @classmethod
    def read(cls, path: Path) -> "KnownHosts":
        return cls(path, read_known_hosts_text(path) if path.exists() else "")

    def known(self, name: str) -> list:
        return known_keys(self.plain, self.revoked, name)

    def check(self, hostname: str, key, accept_new: bool) -> str | None:
        """Why key may not be used for hostname (None: it may); a new key is recorded when accept_new."""
        from paramiko.hostkeys import HostKeyEntry

        with self.lock:
            problem = host_key_problem(self.path, self.known(hostname), self.revoked, hostname, key)
            if problem is None:
                return None
            if problem or not accept_new:
                return problem or (f"the host key of {hostname} ({key.get_name()} {fingerprint(key)}) is not "
                                   f"in {self.path}; check it and add it (ssh-keyscan) or pass "
                                   "--accept-new-host-key to trust it on first use")
            try:
                record_host_key(self.path, hostname, key)
            except OSError as e:  # the host was reached: the local file is the problem, not the network
                return (f"cannot record the host key of {hostname} in the known-hosts file {self.path}: "
                        f"{_local_problem(self.path, e)}")
            self.lines += 1
            self.plain.append((self.lines, HostKeyEntry([hostname.lower()], key)))
            return None


def _policy(keys: KnownHosts, accept_new: bool):
    """(exception class for a refused key, the policy that checks every host key).

    paramiko is given no keys, so every server key comes to the policy, matched by OpenSSH's rules."""
    import paramiko

    class Refused(paramiko.SSHException):
        pass

    class Verify(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key):
            problem = keys.check(hostname, key, accept_new)
            if problem is not None:
                raise Refused(problem)

    return Refused, Verify()


def _preferring(known):
    """A Transport factory that asks the server for a host key of a type known_hosts holds for it
    (what paramiko does itself only for keys found by its exact-name lookup), else None."""
    import paramiko

    types = {e.key.get_name() for _, e in known}
    if "ssh-rsa" in types:
        types |= {"rsa-sha2-512", "rsa-sha2-256"}  # an RSA key is offered under these algorithm names
    if not types:
        return None

    def factory(sock, **kw):
        t = paramiko.Transport(sock, **kw)
        opts = t.get_security_options()
        order = list(opts.key_types)
        opts.key_types = [a for a in order if a in types] + [a for a in order if a not in types]
        return t

    return factory


def identity_problem(identity: str) -> str | None:
    """Why the --identity file cannot be used, naming it; None when it can (or needs a passphrase).

    paramiko opens the key only after the host answered, and its errors read "cannot reach HOST"."""
    import paramiko

    key = identity[:-len("-cert.pub")] if identity.endswith("-cert.pub") else identity
    try:
        with open(key, "rb") as f:
            head = f.read(64).lstrip()
    except OSError as e:
        return f"cannot read the identity file {key}: {_local_problem(Path(key), e)}"
    try:
        paramiko.PKey.from_path(key)
    except (paramiko.PasswordRequiredException, TypeError):
        # encrypted (cryptography says so with a TypeError): the agent may hold it; connecting says what is missing
        return None
    except Exception as e:  # ValueError/SSHException from the key parsers: every one means "not a key"
        if head.startswith((b"ssh-", b"ecdsa-", b"sk-")) or key.endswith(".pub"):
            return f"the identity file {key} is a public key (a .pub file?); give the private key file"
        return f"the identity file {key} is not a private key edgekit can read ({type(e).__name__})"
    return None


def connect(device, opts: SshOptions) -> "SshTransport":
    """Open an SSH + SFTP session to device; raise FlashError (step 'connect') on any failure."""
    import logging

    import paramiko

    # paramiko logs dropped connections itself; edgekit reports them once, as the failed step
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    why = identity_problem(opts.identity) if opts.identity else None
    if why:
        raise FlashError(f"connect: {why}")
    keys = opts.host_keys()
    # the name OpenSSH (and paramiko) look up: host, or [host]:port off port 22
    name = device.host if device.port == 22 else f"[{device.host}]:{device.port}"
    known = keys.known(name)
    Refused, policy = _policy(keys, opts.accept_new_host_key)
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(policy)
    where = f"{device.user}@{device.host}:{device.port}"
    try:
        client.connect(device.host, port=device.port, username=device.user,
                       key_filename=opts.identity, look_for_keys=opts.identity is None, allow_agent=True,
                       timeout=opts.connect_timeout, banner_timeout=opts.connect_timeout,
                       auth_timeout=opts.connect_timeout, passphrase=None, transport_factory=_preferring(known))
        client.get_transport().set_keepalive(15)
        sftp = client.open_sftp()
        sftp.get_channel().settimeout(opts.io_timeout)  # a silent network fails the step instead of hanging
    except Refused as e:
        client.close()
        raise FlashError(f"connect: {e}") from None
    except paramiko.AuthenticationException as e:
        client.close()
        raise FlashError(f"connect: authentication failed for {where} (key-based only; --identity KEY): {e}") from None
    except (OSError, socket.timeout, paramiko.SSHException, EOFError) as e:
        client.close()
        raise FlashError(f"connect: cannot reach {where}: {e or type(e).__name__}") from None
    t = SshTransport(client, sftp, device.label, opts.remote_python)
    t.warnings = list(keys.notes)
    return t


class DeviceFileError(FlashError, OSError):
    """An SFTP failure that names the device path and what is wrong with it. Still an OSError, with
    the errno paramiko gave (callers tell a full disk or a lost link by it)."""

    def __init__(self, code, message: str):
        OSError.__init__(self, message)  # str() is the message alone, without "[Errno N]"
        self.errno = code


# what paramiko raises for an SFTP status reply ('Failure', 'No such file', 'Permission denied');
# a timeout or a closed socket is not one: describe() reports those as the link failing
_SFTP_STATUS = (OSError, FileNotFoundError, PermissionError)


class SshTransport:
    def __init__(self, client, sftp, label: str, python: str):
        self.client, self.sftp, self.label, self.python = client, sftp, label, python
        self.warnings: list[str] = []  # about the connection (skipped known_hosts lines), for each result

    # ---- files (SFTP)
    def _lstat(self, path):
        try:
            return self.sftp.lstat(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ENOENT:
                return None
            raise

    def _kind(self, path, st) -> str:
        if stat.S_ISLNK(st.st_mode):
            return f"a symlink to {self.sftp.readlink(path)}"
        return "a file" if stat.S_ISREG(st.st_mode) else "a special file"

    def _obstacle(self, path, want) -> str | None:
        """What on the device is in the way of path being a `want` ("folder", "file", "absent"; None:
        only its parents matter): the path itself, or its nearest existing parent when that is no folder."""
        st = self._lstat(path)
        if st is not None:
            if want == "absent":
                return f"{path} already exists"
            if want == "folder" and not stat.S_ISDIR(st.st_mode):
                return f"{path} exists and is not a folder ({self._kind(path, st)})"
            if want == "file" and stat.S_ISDIR(st.st_mode):
                return f"{path} is a folder, not a file"
            return None
        parent = posixpath.dirname(path)
        while parent not in ("", path):
            st = self._lstat(parent)
            if st is not None:
                # a link to a folder among the parents is followed by the server, as by the path transport
                if stat.S_ISDIR(st.st_mode) or (stat.S_ISLNK(st.st_mode) and self._is_dir_via_link(parent)):
                    return None
                return f"{parent} exists and is not a folder ({self._kind(parent, st)})"
            path, parent = parent, posixpath.dirname(parent)
        return None

    def _is_dir_via_link(self, path) -> bool:
        try:
            return stat.S_ISDIR(self.sftp.stat(path).st_mode)
        except FileNotFoundError:
            return False

    def _explain(self, e: BaseException, doing: str, path, want=None) -> BaseException:
        """e as one line naming the device path and, where the device shows it, the cause: an SFTP
        server answers a file where a folder should be, an existing name or a symlink with a bare
        'Failure', which read "inspect: Failure (OSError)"."""
        if type(e) not in _SFTP_STATUS or isinstance(e, DeviceFileError):
            return e
        try:
            why = self._obstacle(path, want)
        except Exception:  # the link is gone too: the original error says so
            return e
        return DeviceFileError(e.errno, why or f"cannot {doing} {path}: {e.strerror or e or type(e).__name__}")

    def exists(self, path) -> bool:
        return self._lstat(path) is not None

    def isdir(self, path) -> bool:
        st = self._lstat(path)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def readlink(self, path):
        st = self._lstat(path)
        if st is None:
            return None
        if not stat.S_ISLNK(st.st_mode):
            raise OSError(errno.EINVAL, f"{path} exists and is not a symlink")
        return self.sftp.readlink(path)

    def mtime(self, path) -> float:
        return float(self.sftp.lstat(path).st_mtime or 0)

    def listdir(self, path) -> list[str]:
        try:
            return sorted(self.sftp.listdir(path))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise self._explain(e, "list", path) from None

    def makedirs(self, path) -> None:
        parts, cur = [p for p in path.split("/") if p], "/" if path.startswith("/") else ""
        for p in parts:
            cur = f"{cur}{p}" if cur in ("", "/") else f"{cur}/{p}"
            if not self.isdir(cur):
                try:
                    self.sftp.mkdir(cur)
                except OSError as e:
                    if not self.isdir(cur):  # created meanwhile is fine, anything else is not
                        raise self._explain(e, "create the folder", cur, "folder") from None

    def mkdir_exclusive(self, path) -> None:
        try:
            self.sftp.mkdir(path)  # mkdir(2) on the device: the atomic test-and-set of the device lock
        except OSError as e:
            if self.exists(path):
                raise FileExistsError(errno.EEXIST, "exists", path) from None
            raise self._explain(e, "create the folder", path, "folder") from None

    def put(self, local, remote, callback=None) -> None:
        try:
            self.sftp.put(str(local), remote, callback=callback, confirm=True)
        except OSError as e:
            # SFTP reports a full disk as a bare "Failure" or, with pipelined writes, as a size
            # mismatch; the caller must tell it from a dropped link (it removes the partial upload)
            if self._out_of_space(local, remote):
                raise OSError(errno.ENOSPC, "No space left on device", remote) from e
            raise self._explain(e, "write", remote, "file") from e

    def _out_of_space(self, local, remote) -> bool:
        try:
            st = self._lstat(remote)
            need = os.path.getsize(local) - (st.st_size if st is not None else 0)
            rc, out, _ = self.run([self.python, "-c", "import os,sys; s=os.statvfs(sys.argv[1]); "
                                   "print(s.f_bavail * s.f_frsize)", posixpath.dirname(remote)], timeout=30)
            return rc == 0 and int(out.decode().strip()) < need
        except Exception:  # the link is gone too: not a disk that is known to be full
            return False

    def read_bytes(self, path, limit: int | None = None):
        """As PathTransport.read_bytes. The SFTP server follows links and waits on FIFOs when it opens a
        file, so the path is looked at first (lstat) and opened only as a regular file."""
        try:
            st = self._lstat(path)
            if st is None:
                return None
            if stat.S_ISDIR(st.st_mode):  # as before the lstat: in the way, not a damaged file
                raise DeviceFileError(errno.EISDIR, f"{path} is a folder, not a file")
            if not stat.S_ISREG(st.st_mode):
                raise UnreadableFile(path, f"is not a regular file ({_kind_of(st.st_mode)})")
            if limit is not None and (st.st_size or 0) > limit:
                raise UnreadableFile(path, _too_large(limit))
            with self.sftp.open(path, "rb") as f:
                return _read_capped(f, path, limit)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._explain(e, "read", path, "file") from None

    def write_bytes_atomic(self, path, data: bytes) -> None:
        tmp = f"{path}.tmp-{os.urandom(4).hex()}"
        try:
            with self.sftp.open(tmp, "wb") as f:
                f.write(data)
            self.sftp.posix_rename(tmp, path)
        except BaseException as e:
            # any failure, the write's too (a full disk, Ctrl-C): no half-written file left beside path
            self._remove_quietly(tmp, fresh=not isinstance(e, Exception))
            if isinstance(e, OSError):
                raise self._explain(e, "write", path, "file") from None
            raise

    def _remove_quietly(self, path, *, fresh: bool = False) -> None:
        """Remove path, on a fresh SFTP session if need be. A write cut short by Ctrl-C (fresh=True) can stop
        mid-request: this session then waits out its I/O timeout (120 s measured) and gets no answer."""
        if not fresh:
            try:
                self.sftp.remove(path)
                return
            except Exception:
                pass
        with contextlib.suppress(Exception):
            fresh = self.client.open_sftp()
            try:
                fresh.remove(path)
            finally:
                fresh.close()

    def symlink(self, target, path) -> None:
        try:
            self.sftp.symlink(target, path)
        except OSError as e:
            raise self._explain(e, "create the symlink", path, "absent") from None

    def replace(self, src, dst) -> None:
        try:
            self.sftp.posix_rename(src, dst)  # rename(2) on the device: atomic, replaces dst
        except OSError as e:
            raise self._explain(e, f"rename {src} to", dst, "file") from None

    def rename(self, src, dst) -> None:
        try:
            self.sftp.rename(src, dst)  # plain SFTP rename refuses an existing dst
        except OSError as e:
            raise self._explain(e, f"rename {src} to", dst, "absent") from None

    def rmtree(self, path) -> None:
        st = self._lstat(path)
        if st is None:
            return
        try:
            if not stat.S_ISDIR(st.st_mode):
                self.sftp.remove(path)
                return
            for a in self.sftp.listdir_attr(path):
                self.rmtree(f"{path}/{a.filename}")
            self.sftp.rmdir(path)
        except OSError as e:
            raise self._explain(e, "remove", path) from None

    # ---- commands
    def run(self, argv, timeout=None, stdin: bytes | None = None):
        """Run argv on the device; (exit code, stdout, stderr). Every argument is shell-quoted."""
        cmd = shlex.join([str(a) for a in argv])
        chan = self.client.get_transport().open_session(timeout=30)
        try:
            chan.exec_command(cmd)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err = [], []
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                busy = False
                while chan.recv_ready():
                    out.append(chan.recv(1 << 16))
                    busy = True
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(1 << 16))
                    busy = True
                if chan.exit_status_ready() and (chan.eof_received or chan.closed) \
                        and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if chan.closed and not chan.exit_status_ready():
                    raise EOFError("connection closed while the command ran")
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"command did not finish within {timeout:.0f} s")
                if not busy:
                    time.sleep(0.005)
            return chan.recv_exit_status(), b"".join(out), b"".join(err)
        finally:
            chan.close()

    def hashes(self, root, rels) -> dict:
        rels = list(rels)
        rc, out, err = self.run([self.python, "-c", HASH_SCRIPT, root], timeout=600,
                                stdin=json.dumps(rels).encode())
        if rc != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {rc}"]
            raise FlashError(f"hashing on the device with {self.python!r} failed: {tail[0]}"
                             + (" (is Python 3 installed there? see --remote-python)" if rc == 127 else ""))
        got = json.loads(out.decode())
        return {r: got.get(r) for r in rels}

    def close(self) -> None:
        try:
            self.sftp.close()
        finally:
            self.client.close()
