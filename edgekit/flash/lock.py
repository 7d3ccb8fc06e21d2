"""PATH/.lock on a device: one flash or rollback at a time (an atomic mkdir through the transport)."""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import time

from ..errors import EdgekitError

LOCK = ".lock"
# A flash holds the lock for minutes (an upload over a slow link, a 600 s self-test); a lock this old
# was left by a run that died without releasing it, wherever that ran.
LOCK_MAX_AGE = 24 * 3600.0


_HELD: set = set()  # tokens of the locks this process holds now (a lock of ours not in it was left behind)


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # someone else's process, or no usable pid: assume it runs
    return True


OWNER_LIMIT = 64 << 10


def _lock_owner(t, lockdir: str) -> dict:
    try:
        # a few hundred bytes when edgekit wrote it: a larger one is damaged, and is not read whole
        owner = json.loads(t.read_bytes(posixpath.join(lockdir, "owner.json"), limit=OWNER_LIMIT) or b"{}")
    except (ValueError, RecursionError):  # a damaged owner file (RecursionError: nested too deeply)
        owner = {}
    return owner if isinstance(owner, dict) else {}


def _describe_owner(owner: dict, age: float | None) -> str:
    who = (f"{owner.get('user', '?')}@{owner.get('host', '?')} pid {owner.get('pid', '?')}" if owner.get("host")
           else "an owner not recorded yet")
    if age is None:
        return who
    return who + (f", {age:.0f} s ago" if age < 120 else f", {age / 60:.0f} min ago")


@contextlib.contextmanager
def device_lock(t, path: str, warnings: list):
    """Hold PATH/.lock (an atomic mkdir on the device) for one flash or rollback: two runs at once
    deleted each other's uploads in .incoming and raced on `current`. A lock whose owner is gone
    (a dead process on this host, or older than LOCK_MAX_AGE) is taken over, with a warning."""
    import getpass
    import socket

    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                         "time": time.time(), "token": os.urandom(8).hex()}
    with contextlib.suppress(Exception):
        me["user"] = getpass.getuser()
    for attempt in (1, 2):
        try:
            t.mkdir_exclusive(path)
            break
        except FileExistsError:
            owner = _lock_owner(t, path)
            since = owner.get("time")
            if not isinstance(since, (int, float)):
                with contextlib.suppress(Exception):
                    since = t.mtime(path)
            age = time.time() - since if isinstance(since, (int, float)) else None
            # same host: a gone process, or this one when it no longer holds that lock (its connection
            # dropped before the release, and a retry in the same process must not wait a day)
            dead = owner.get("host") == me["host"] and (
                not _pid_alive(owner.get("pid"))
                or (owner.get("pid") == me["pid"] and owner.get("token") not in _HELD))
            if attempt == 1 and (dead or (age is not None and age > LOCK_MAX_AGE)):
                # renamed aside first: of two runs taking over the same stale lock, one rename wins
                aside = f"{path}.stale-{os.urandom(4).hex()}"
                with contextlib.suppress(OSError):
                    t.rename(path, aside)
                    moved = _lock_owner(t, aside)
                    if moved != owner:  # another run took it over between our read and the rename
                        with contextlib.suppress(OSError):
                            t.rename(aside, path)
                        raise FileExistsError(path)  # refused below, as a lock in use
                    with contextlib.suppress(Exception):
                        t.rmtree(aside)
                    warnings.append(f"took over a stale lock {path} ({_describe_owner(owner, age)}; "
                                        f"{'its run is gone' if dead else 'older than 24 h'})")
                continue
            raise EdgekitError(f"another flash or rollback is in progress on this device: {path} is held by "
                               f"{_describe_owner(owner, age)}; if none is running, remove {path}")
    _HELD.add(me["token"])
    written = False
    try:
        t.write_bytes_atomic(posixpath.join(path, "owner.json"), (json.dumps(me) + "\n").encode())
        written = True
        yield
    finally:
        _HELD.discard(me["token"])
        # only our own lock: after a takeover the folder may be another run's (an unwritten owner
        # file means the folder is the one our mkdir just made)
        with contextlib.suppress(Exception):
            if not written or _lock_owner(t, path).get("token") == me["token"]:
                t.rmtree(path)
