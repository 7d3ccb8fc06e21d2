"""Device addresses: `ssh://user@host[:port]/path`, a mounted path, or a file listing them."""
from __future__ import annotations

import getpass
import os
import posixpath
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, InputError, UsageError

# target-file addresses that name this host or the emulator rather than a device to copy to
NOT_FLASHABLE = ("local", "emulated")


@dataclass(frozen=True)
class Device:
    """Where a bundle goes. kind is "ssh" or "path"; for "path", host/user/port are unused."""

    kind: str
    path: str
    host: str = ""
    user: str = ""
    port: int = 22
    raw: str = ""

    @property
    def label(self) -> str:
        return self.raw or (f"ssh://{self.user}@{self.host}:{self.port}{self.path}" if self.kind == "ssh" else self.path)


def parse_device(addr: str) -> Device:
    """Parse one address; raise UsageError naming the address and what is wrong."""
    raw = str(addr).strip()
    if not raw:
        raise UsageError("empty device address")
    if raw in NOT_FLASHABLE:
        raise UsageError(f"device address {raw!r} is not a device to flash (it means this host or the emulator); "
                         "give ssh://user@host[:port]/path or a mounted path")
    u = urllib.parse.urlsplit(raw) if "://" in raw else None
    if u is not None and u.password is not None:
        # authentication is by key only, and the address is the device's label in every line and --json
        raise UsageError(f"device address {_without_password(u)!r}: passwords are not supported; key-based "
                         "authentication only (--identity KEY, or your ssh agent)")
    if raw.startswith("file://"):
        if u.netloc.lower() not in ("", "localhost"):
            # file://HOST/dir is another machine's folder: reading it as this one's flashed the wrong disk
            raise UsageError(f"device address {raw!r}: a file:// address is a folder on this machine, but it names "
                             f"the host {u.netloc!r}; write ssh://{u.netloc}{u.path} for a device over ssh, or "
                             f"file://{u.path} for a local folder")
        return Device("path", str(Path(urllib.parse.unquote(u.path)).expanduser()), raw=raw)
    if u is not None:
        if u.scheme != "ssh":
            raise UsageError(f"device address {raw!r}: unsupported scheme {u.scheme!r} (use ssh://user@host[:port]/path "
                             "or a mounted path)")
        if not u.hostname:
            raise UsageError(f"device address {raw!r}: no host")
        try:
            port = u.port or 22
        except ValueError:
            raise UsageError(f"device address {raw!r}: bad port") from None
        path = urllib.parse.unquote(u.path)
        if not path.strip("/"):
            raise UsageError(f"device address {raw!r}: no remote directory; give the install directory, "
                             f"e.g. ssh://{u.netloc}/opt/models")
        if u.query or u.fragment:
            raise UsageError(f"device address {raw!r}: unexpected '?' or '#' part")
        user = urllib.parse.unquote(u.username) if u.username else getpass.getuser()
        return Device("ssh", path.rstrip("/"), host=u.hostname, user=user, port=port, raw=raw)
    head = raw.split("/", 1)[0]
    if "@" in head:
        # an ssh login without ssh:// would otherwise be taken as a local folder of that name, and "flashed"
        userinfo, _, after = raw.partition("@")
        if ":" in userinfo:  # user:password@host...: never repeated, as for ssh:// (it ends up in CI logs)
            raise UsageError(f"device address '{userinfo.split(':', 1)[0]}:***@{after}': passwords are not "
                             "supported; key-based authentication only (--identity KEY, or your ssh agent)")
        login = head.split(":", 1)[0]
        rest = raw[len(login):].removeprefix(":")
        local = f" (or ./{raw} for a local folder)"
        if rest.strip("/") and not rest.isdigit():
            where = f"ssh://{login}{rest}" if rest.startswith("/") else f"ssh://{login}/<absolute directory>"
            raise UsageError(f"device address {raw!r}: not an ssh:// address; write {where}{local}")
        port = f":{rest}" if rest.isdigit() else ""
        raise UsageError(f"device address {raw!r}: no remote directory; an ssh device needs "
                         f"ssh://user@host[:port]/<install directory>, e.g. ssh://{login}{port}/opt/models{local}")
    return Device("path", str(Path(raw).expanduser()), raw=raw)


def _without_password(u: urllib.parse.SplitResult) -> str:
    login, _, host = u.netloc.rpartition("@")
    return u._replace(netloc=f"{login.split(':', 1)[0]}:***@{host}").geturl()


# a comment starts at a '#' that begins the line or follows whitespace: one inside an address is part of it
# (cutting at any '#' flashed /x/unit#2/models to /x/unit)
_COMMENT = re.compile(r"(?:^|\s)#.*")


def read_devices_file(path) -> list[str]:
    """One address per line; blank lines and '#' comments (at the start of a line or after a space) are ignored."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8-sig")  # Notepad saves UTF-8 with a BOM
    except OSError as e:
        raise InputError(f"{p}: cannot read the devices file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: cannot read the devices file: not UTF-8 text (byte {e.object[e.start]:#04x} at "
                         f"offset {e.start}; save it as UTF-8)") from None
    out = []
    for line in text.splitlines():
        line = _COMMENT.sub("", line).strip()
        if line:
            out.append(line)
    if not out:
        raise InputError(f"{p}: no device addresses in the file")
    return out


def target_address(name: str) -> str:
    """The address of a target profile (targets/<name>.toml), checked to be flashable."""
    try:
        from ..targets import load_target
    except ImportError:
        raise ConfigError(f"--target {name}: target profiles are not available in this installation") from None
    prof = load_target(name)
    addr = getattr(prof, "address", None) or ""
    if not addr or addr in NOT_FLASHABLE:
        raise ConfigError(f"target {name!r} has address {addr or '(none)'!r}, not a device to flash; "
                          "set address = \"ssh://user@host/path\" in its target file or pass --device")
    return addr


def _same_device_key(d: Device) -> tuple:
    """Two addresses of one device get one key: the same folder spelled relative and absolute (or through a
    link) was flashed once and then failed against its own lock, exit 1 for a deployment that worked."""
    if d.kind == "path":
        return ("path", os.path.realpath(d.path))
    return ("ssh", d.user, d.host.lower(), d.port, posixpath.normpath(d.path))


def collect_devices(devices=(), devices_file=None, targets=()) -> list[Device]:
    """All addresses from --device, --devices-file and --target, parsed, duplicates removed (order kept)."""
    addrs = list(devices or ())
    if devices_file:
        addrs += read_devices_file(devices_file)
    for t in targets or ():
        addrs.append(target_address(t))
    if not addrs:
        raise UsageError("no device given: use --device ADDR (repeatable), --devices-file FILE or --target NAME")
    seen, out = set(), []
    for a in addrs:
        d = parse_device(a)
        key = _same_device_key(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out
