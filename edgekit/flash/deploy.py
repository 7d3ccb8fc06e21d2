"""Atomic, verified deployment of one bundle to one device, rollback and status.

Device layout under PATH:

    versions/<version>/...        complete, verified, self-tested bundles
    current -> versions/<version> the active one; switched by rename(2) of a fresh symlink
    .incoming/<version>-<nonce>/  an upload in progress; never activated, resumed next time
    .lock/owner.json              held while a flash or rollback runs (who, where, since when)
    history.json                  activations in order (for rollback and retention); entries a
                                  rollback went back past stay, marked "rolled_back"

Every step before `activate` works beside the active version, so a failure at any of them
leaves the device exactly as it was; the result names the step that failed.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import posixpath
import re
import time
from dataclasses import asdict, dataclass, field

from ..errors import EdgekitError, FlashError, InputError
from ..fsutil import signals_deferred
from ..profile_remote import _KILL
from .archive import INDEX_LIMIT
from .bundle import META, RUNNER, SAFE_NAME_RULE, Bundle, check_meta, is_safe_name
from .lock import LOCK, device_lock
from .transport_path import UnreadableFile

STEPS = ("connect", "inspect", "upload", "verify", "selftest", "activate", "cleanup", "warmup")
# the folders edgekit deletes in or writes into: one that is a link would point that at whatever it names
# (on a mounted card, this host's files)
DEVICE_DIRS = (".incoming", "versions", "damaged", LOCK)
# bundle.content_version's form: the only names in PATH/versions that edgekit made (and so may remove)
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*-[0-9a-f]{16}")
FS_OWN = ("lost+found",)  # made by the file system (fsck), neither edgekit's nor worth a warning


@dataclass
class FlashOptions:
    keep: int = 3  # versions kept on the device (the active and the previous one always are)
    selftest_timeout: float = 600.0  # emulated ARM boards are slow (the warm-up gets the same time)
    # compile the active version's pre/post kernels into the cache `run` uses (edgekit flash turns it on
    # unless --no-warm): off for other callers, since it can take a minute on a busy or small device
    warm: bool = False

    def __post_init__(self):
        if self.keep < 1:
            raise ValueError(f"keep must be at least 1 (got {self.keep})")


@dataclass
class DeviceResult:
    device: str
    status: str = "failed"  # flashed | up-to-date | rolled-back | failed
    version: str | None = None  # active after the operation
    previous: str | None = None  # active before it
    step: str = ""  # the step that failed
    reason: str = ""
    bytes_sent: int = 0
    files_sent: int = 0
    files_resumed: int = 0
    removed: list = field(default_factory=list)
    selftest: dict | None = None
    warmup: dict | None = None  # {"ran", "ok", "seconds", ...}; None when no version was made active
    warnings: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    @property
    def ready(self) -> bool:
        """ok, and not left cold by a failed warm-up (the version is active either way)."""
        return self.ok and (self.warmup or {}).get("ok", True)

    def to_dict(self) -> dict:
        return asdict(self)


class FlashInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (cause) during a flash or rollback, with the results of the devices that got that
    far: a device whose `current` was switched must be reported as such, not hidden behind 'Aborted.'."""

    def __init__(self, results, cause: BaseException):
        super().__init__(f"interrupted ({type(cause).__name__})")
        self.results, self.cause = list(results), cause


def _interrupted_after_switch(res: DeviceResult, e: BaseException, recorded: bool):
    # recorded is False when a second Ctrl-C, or a failed cleanup, cut the deferred bookkeeping short
    res.warnings.append("interrupted after the switch: the device runs this version; " +
                        ("its history.json and cleanup were completed first" if recorded else
                         "history.json may not record it, and older versions were not pruned"))
    return FlashInterrupted([res], e)


class StepFailed(Exception):
    def __init__(self, step: str, reason: str):
        super().__init__(f"{step}: {reason}")
        self.step, self.reason = step, reason


def describe(e: BaseException) -> str:
    """One line for any exception, including paramiko's terse ones."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, EOFError) or "Socket is closed" in msg or "Server connection dropped" in msg:
        return f"connection lost ({msg or type(e).__name__})"
    return f"{msg} ({type(e).__name__})" if msg and not isinstance(e, EdgekitError) else (msg or type(e).__name__)


@contextlib.contextmanager
def step(name: str, emit=None, device: str = ""):
    if emit:
        emit(device, name, {})
    try:
        yield
    except StepFailed:
        raise
    except Exception as e:  # every failure becomes "<step>: <reason>"; the device is left as it was
        raise StepFailed(name, describe(e)) from e


def check_version_name(version) -> str:
    """version, if it is one plain path component; every device path built from a version goes through here."""
    # read_bundle already refuses such bundles; this also covers Bundles made any other way
    # and names read back from a device (history.json)
    if not is_safe_name(version):
        raise FlashError(f"unsafe version name {version!r} (allowed: {SAFE_NAME_RULE}); refusing to use it in a path")
    return version


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class Layout:
    def __init__(self, root: str):
        self.root = root.rstrip("/") or "/"

    def __call__(self, *parts) -> str:
        return posixpath.join(self.root, *parts)

    def version(self, v) -> str:
        return self("versions", check_version_name(v))


def is_version_name(name) -> bool:
    return is_safe_name(name) and VERSION_NAME.fullmatch(name) is not None


def version_dirs(t, L: Layout) -> list[str]:
    """The entries of PATH/versions that edgekit could have made (folders named `<kind>-<16 hex>`); anything
    else there (a user's backup/ or README) is not ours to touch: retention removed those too."""
    return [v for v in t.listdir(L("versions")) if is_version_name(v) and t.isdir(L("versions", v))]


def foreign_entries(t, L: Layout) -> list[str]:
    """The entries of PATH/versions that are not edgekit versions (left alone, named in warnings)."""
    ours = set(version_dirs(t, L))
    return [n for n in t.listdir(L("versions")) if n not in ours and n not in FS_OWN]


def is_link(t, path) -> bool:
    try:
        return t.readlink(path) is not None
    except OSError:  # there and not a link
        return False


def refuse_links(t, L: Layout) -> None:
    for name in DEVICE_DIRS:
        if is_link(t, L(name)):
            raise EdgekitError(f"{L(name)} is a symbolic link; edgekit will not write or delete through it "
                               "(remove the link, or give the folder it points to as the device)")


def unexpected_entries(t, root: str, listed) -> list[str]:
    """Paths under root that its bundle.json does not account for: unlisted files (a numpy.py beside the
    runner would be imported by it), folders no listed file is in, and links even where a listed file's
    name is (a write would go through them). Folders are walked without following links."""
    listed = set(listed)
    needed = {posixpath.dirname(r) for r in listed}
    for d in list(needed):
        while d:
            needed.add(d)
            d = posixpath.dirname(d)
    out = []

    def walk(rel):
        for name in t.listdir(posixpath.join(root, rel) if rel else root):
            r = posixpath.join(rel, name) if rel else name
            p = posixpath.join(root, r)
            folder = t.isdir(p)  # lstat: a link to a folder is not one
            if folder and r in needed:
                walk(r)
            elif folder or r not in listed or is_link(t, p):
                out.append(r)

    walk("")
    return out


def _unlisted_problems(extra: list[str]) -> list[str]:
    return [f"{r} (not in {META})" for r in extra]


def _active_missing(t, L: Layout, active: str | None, warnings: list) -> bool:
    """Whether `current` names a version whose directory is gone (deleted by hand); warns if so."""
    if active is None or not is_safe_name(active) or t.isdir(L("versions", active)):
        return False
    warnings.append(f"the active version {active} was missing on the device ({L('current')} pointed at a "
                    "deleted directory)")
    return True


def _load_json(raw):
    """json.loads, with the ways a damaged file fails it (a nesting deeper than the parser goes too) as ValueError."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def active_version(t, L: Layout) -> str | None:
    try:
        target = t.readlink(L("current"))
    except OSError:
        raise EdgekitError(f"{L('current')} exists and is not a symlink; edgekit will not replace it") from None
    if target is None:
        return None
    # edgekit's links are versions/<version>; one pointing anywhere else (current -> /etc) is the
    # user's, and replacing it would silently drop what it served
    where = posixpath.normpath(posixpath.join(L.root, target))
    if posixpath.dirname(where) != posixpath.normpath(L("versions")):
        raise EdgekitError(f"{L('current')} points outside {L('versions')}/ (to {target}); "
                           "edgekit will not replace it")
    return posixpath.basename(where)


def read_history(t, L: Layout, warnings: list | None = None) -> list[dict]:
    """history.json's entries; for the versions on the device it does not name (the file is missing,
    damaged, or a valid `[]`), an order rebuilt from the version directories' times (a note goes to
    warnings): a damaged history only costs rollback ordering, it must not leave the device with
    nothing to roll back to, nor make retention remove the newest inactive version."""
    history = []
    try:
        # regular files only, bounded: a history.json linked to /dev/zero grew status to 3.8 GB
        raw = t.read_bytes(L("history.json"), limit=INDEX_LIMIT)
        problem = None if raw is not None else "is missing"
    except UnreadableFile as e:
        raw, problem = None, e.why
    if raw is not None:
        try:
            h = _load_json(raw)
        except ValueError:
            problem = "is not valid JSON"
        else:
            if isinstance(h, list):
                history = [e for e in h if isinstance(e, dict) and isinstance(e.get("version"), str) and e["version"]]
            else:
                problem = f"holds a JSON {type(h).__name__}, not a list"
    named = {e["version"] for e in history}
    missing = [v for v in version_dirs(t, L) if v not in named]
    if not missing:
        return history  # a fresh device has nothing to order
    rebuilt = _history_from_times(t, L, missing)  # oldest first, by time alone
    order = ", ".join(e["version"] for e in rebuilt)
    active = _active_or_none(t, L)
    if not history:
        # nothing recorded: the times are the only evidence, for the active version too (moved to the end, it
        # made rollback go forth, to a version installed after it that it may have been rolled back from)
        history, what = rebuilt, problem or f"does not name {', '.join(missing)}"
        note = f"the install order was taken from the version directories' times ({order}, oldest first)"
    else:
        # those it does not name rank before those it does, except the active one: history.json records
        # every activation it could, so one it lacks came after its last write
        history = ([e for e in rebuilt if e["version"] != active] + history
                   + [e for e in rebuilt if e["version"] == active])
        what = f"does not name {', '.join(missing)}"
        note = (f"they rank before the versions it names, by their directories' times ({order}, oldest first)"
                + (f", except the active {active}, taken as the last activation" if active in missing else ""))
    if warnings is not None:
        warnings.append(f"{L('history.json')} {what}; {note}")
    return history


def _active_or_none(t, L: Layout):
    try:
        return active_version(t, L)
    except EdgekitError:
        return None


def _history_from_times(t, L: Layout, present: list[str]) -> list[dict]:
    def when(v):
        try:
            return t.mtime(L.version(v))
        except OSError:
            return 0.0

    return [{"version": v, "reconstructed": True} for v in sorted(present, key=lambda v: (when(v), v))]


def write_history(t, L: Layout, history: list[dict], what: str) -> None:
    """Write history.json; on failure, one line saying it does not record `what` (rollback and retention
    depend on it: they fall back to the version directories' times)."""
    try:
        t.write_bytes_atomic(L("history.json"), (json.dumps(history, indent=2) + "\n").encode())
    except Exception as e:
        raise EdgekitError(f"{L('history.json')} was not updated: it does not record {what} ({describe(e)}); "
                           "rollback and retention will order versions by their directories' times") from e


def switch_current(t, L: Layout, version: str) -> None:
    tmp = L(f"current.tmp-{os.urandom(4).hex()}")
    t.symlink(f"versions/{check_version_name(version)}", tmp)
    try:
        t.replace(tmp, L("current"))
    except BaseException:
        with contextlib.suppress(Exception):
            t.rmtree(tmp)
        raise


# Runs the runner in isolated mode (-I): a plain `python DIR/edgekit_runner.py` puts DIR first on sys.path,
# so a numpy.py on the medium ran with this host's Python, and PYTHON* variables are ignored. The user's
# own site-packages (`pip install --user` on a device) stays usable outside a venv, as in a plain run;
# the runner adds its bundle folder itself for edgekit.prepost (load_prepost) when it needs it.
# With `--pid-file F` first, it writes its pid to F and stops if F.stop is there (the runner's own
# --pid-file, done here since runners in bundles built before it refuse the option): the process that
# reads the model is this one, whatever wrapper script --remote-python names. A pid file that cannot be
# written (a full disk) only makes a timed-out self-test unstoppable; it must not fail a good one.
SELFTEST_BOOT = ("import os, runpy, site, sys\n"
                 "if sys.argv[1:2] == ['--pid-file']:\n"
                 "    pid_file = sys.argv[2]\n"
                 "    del sys.argv[1:3]\n"
                 "    try:\n"
                 "        with os.fdopen(os.open(pid_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), 'w') as f:\n"
                 "            f.write(str(os.getpid()))\n"
                 "    except OSError:\n"
                 "        pass\n"
                 "    if os.path.exists(pid_file + '.stop'):\n"
                 "        print('{\"status\": \"stopped\", \"ok\": false, "
                 "\"reason\": \"stopped by the caller before it started\"}')\n"
                 "        sys.exit(130)\n"
                 "sys.path[:] = [p for p in sys.path if p not in ('', '.')]\n"
                 "u = site.getusersitepackages() if sys.prefix == sys.base_prefix else ''\n"
                 "if u and os.path.isdir(u):\n"
                 "    site.addsitedir(u)\n"
                 "sys.argv = sys.argv[1:]\n"
                 "runpy.run_path(sys.argv[0], run_name='__main__')\n")

# Run after a self-test timed out or was interrupted: profile_remote's kill (stop mark, then SIGTERM to the pid
# in the file), then a wait for that process to end (SIGKILL after 5 s). Prints what happened as JSON; removes
# the pid file and its stop mark once the process is gone, and keeps the mark when no pid was there yet (a
# wrapper still starting it), so that it stops as soon as it starts.
STOP_SELFTEST = _KILL + """import json, time
def alive(pid):
    try:
        with open('/proc/%d/stat' % pid) as f:
            if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return True
try:
    pid = int(open(sys.argv[1]).read())
except (OSError, ValueError):
    print(json.dumps({"stopped": "not started"}))
    sys.exit(0)
end = time.monotonic() + 10
while alive(pid) and time.monotonic() < end:
    if time.monotonic() > end - 5:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.05)
if alive(pid):
    print(json.dumps({"stopped": "running", "pid": pid}))
    sys.exit(0)
for p in (sys.argv[1], sys.argv[1] + '.stop'):
    try:
        os.remove(p)
    except OSError:
        pass
print(json.dumps({"stopped": "yes", "pid": pid}))
"""


def selftest_argv(t, vdir: str, pid_file: str | None = None) -> list[str]:
    return runner_argv(t, vdir, "selftest", pid_file)


def runner_argv(t, vdir: str, command: str, pid_file: str | None = None) -> list[str]:
    """The bundled runner's `command --bundle vdir`, started through SELFTEST_BOOT (isolated, --pid-file)."""
    absolute = getattr(t, "absolute", None)  # a mounted path may be relative; an ssh one is absolute
    vdir = absolute(vdir) if absolute else vdir
    if vdir.startswith("-"):
        vdir = "./" + vdir  # never an option, whatever the transport
    pid = ["--pid-file", absolute(pid_file) if absolute else pid_file] if pid_file else []
    return [t.python, "-I", "-c", SELFTEST_BOOT, *pid, posixpath.join(vdir, RUNNER), command, "--bundle", vdir]


def selftest_pid_file(t, L: Layout, what: str = "selftest") -> str:
    """A fresh pid-file path for one self-test (or warm-up): in PATH/.incoming, outside every version folder
    (whose files are verified) and cleared of leftovers by the next flash."""
    t.makedirs(L(".incoming"))
    return L(".incoming", f"{what}-{os.urandom(4).hex()}.pid")


def _stop_selftest(t, pid_file: str) -> str:
    """Stop the self-test whose pid is in pid_file (over SSH a timeout closes only this side's channel: the
    runner went on, in .incoming, under the next flash's lock); what happened, as a clause."""
    try:
        rc, out, err = t.run([t.python, "-c", STOP_SELFTEST, pid_file], timeout=30)
        got = json.loads(out.decode().strip().splitlines()[-1])
    except Exception as e:  # the link is gone too: nothing more can be done from here
        return f"stopping it on the device failed ({describe(e)}); it may still be running there"
    if got.get("stopped") == "yes":
        return "it was stopped on the device"
    if got.get("stopped") == "not started":
        return f"it had not started yet; {pid_file}.stop makes it stop as soon as it does"
    return f"it is still running on the device (pid {got.get('pid')}) after SIGTERM and SIGKILL"


def run_selftest(t, vdir: str, timeout: float, pid_file: str | None = None) -> dict:
    """Run the bundled runner's self-test in vdir; return its JSON; raise with its reason if it fails.
    With pid_file, a self-test that times out or is interrupted is stopped on the device as well."""
    return _run_runner(t, runner_argv(t, vdir, "selftest", pid_file), timeout, pid_file, "self-test")


def _run_runner(t, argv, timeout: float, pid_file: str | None, what: str) -> dict:
    """Run a runner command on the device (argv from runner_argv); its JSON report, or an error naming `what`."""
    try:
        rc, out, err = t.run(argv, timeout=timeout)
    except TimeoutError:
        if pid_file is None:
            raise
        # a TimeoutError still: the staged upload is kept for a resume, as a busy device may pass next time
        raise TimeoutError(f"the {what} did not finish within {timeout:g} s; "
                           f"{_stop_selftest(t, pid_file)}") from None
    except BaseException:  # Ctrl-C, SIGTERM (SystemExit), a lost link
        if pid_file is not None:
            _stop_selftest(t, pid_file)
        raise
    if pid_file is not None:
        with contextlib.suppress(Exception):
            t.rmtree(pid_file)
    text = out.decode(errors="replace").strip()
    report = None
    for cand in (text, text.splitlines()[-1] if text else ""):
        with contextlib.suppress(ValueError):
            report = json.loads(cand)
            break
    if rc == 0:
        return report if isinstance(report, dict) else {"ok": True, "stdout": text[-500:]}
    if isinstance(report, dict):
        why = report.get("reason") or report.get("error") or json.dumps(report, sort_keys=True)[:300]
    else:
        lines = err.decode(errors="replace").strip().splitlines() or text.splitlines() or [""]
        why = lines[-1][:300] or f"exit status {rc}"
    hint = " (is Python 3 with numpy and onnxruntime there? see --remote-python)" if rc in (126, 127) else ""
    raise EdgekitError(f"{what} failed on the device (exit {rc}): {why}{hint}")


# how a runner from a bundle built before `warmup` existed (509b0c3) answers it: argparse's usage error
_NO_WARMUP = "invalid choice: 'warmup'"


def warm_up(t, L: Layout, meta: dict, timeout: float) -> dict:
    """Compile the active version's pre/post kernels into the cache `run --bundle current` uses, through
    `current` as run names it (Numba files its cache under the import path; the runner keeps it outside
    the version folder, which stays as verified). Never raises an Exception: the version is active and
    self-tested whatever happens here, so a failure is reported ({"ok": False, "reason"}), not rolled back."""
    prepost = meta.get("prepost") if isinstance(meta.get("prepost"), dict) else {}
    if not (prepost.get("pre") or prepost.get("post")):
        return {"ran": False, "ok": True, "reason": "no pre/post steps: nothing to compile"}
    t0 = time.monotonic()
    try:
        pid_file = selftest_pid_file(t, L, "warmup")
        rep = _run_runner(t, runner_argv(t, L("current"), "warmup", pid_file), timeout, pid_file, "warm-up")
    except Exception as e:
        seconds = round(time.monotonic() - t0, 3)
        if _NO_WARMUP in str(e):
            return {"ran": False, "ok": True, "seconds": seconds,
                    "reason": "the bundle's runner has no warmup command (built before it existed)"}
        return {"ran": True, "ok": False, "seconds": seconds, "reason": describe(e)}
    return {"ran": True, "ok": True, "seconds": round(time.monotonic() - t0, 3),
            **{k: rep.get(k) for k in ("steps", "backend", "compile_s", "cache_dir")}}


def _warm(t, L: Layout, bundle: Bundle, res: DeviceResult, opts: FlashOptions, emit) -> None:
    """res.warmup for the version res made active (or found active), and a warning if it failed."""
    if not opts.warm:
        res.warmup = {"ran": False, "ok": True, "reason": "skipped (--no-warm)"}
        return
    if emit:
        emit(t.label, "warmup", {})
    # what an interrupt (Ctrl-C, SIGTERM) during it leaves: warmup null read as never attempted
    res.warmup = {"ran": True, "ok": False, "reason": "interrupted before it finished"}
    cut = (f"warmup: interrupted; {res.version} is active, but its first run will compile the pre/post kernels "
           f"(run `python3 current/{RUNNER} warmup --bundle current` on the device, or flash again)")
    res.warnings.append(cut)
    res.warmup = warm_up(t, L, bundle.meta, opts.selftest_timeout)
    res.warnings.remove(cut)
    if not res.warmup["ok"]:
        res.warnings.append(f"warmup: {res.warmup['reason']}; {res.version} is active, but its first run will "
                            f"compile the pre/post kernels (run `python3 current/{RUNNER} warmup --bundle current` "
                            "on the device, or flash again)")


def _check_root(t, root: str, create_last: bool) -> None:
    """A mounted-path device must be there already (see transport_path.root_problem); an SSH device's
    folder is created on the device as before, since it cannot land on this host's disk."""
    check = getattr(t, "check_root", None)
    if check is not None:
        check(root, create_last=create_last)


def _mismatches(got: dict, want: dict) -> list[str]:
    return [f"{rel} ({'missing' if got.get(rel) is None else 'sha256 ' + got[rel][:12] + ' != ' + sha[:12]})"
            for rel, sha in want.items() if got.get(rel) != sha]


def flash(t, root: str, bundle: Bundle, opts: FlashOptions, emit=None) -> DeviceResult:
    """Install bundle on the device behind transport t (root = its install directory)."""
    L, res, t0 = Layout(root), DeviceResult(device=t.label), time.monotonic()
    res.warnings.extend(getattr(t, "warnings", ()))  # the transport's own notes (skipped known_hosts lines)
    dev = t.label
    want = dict(bundle.files)
    want[META] = bundle.meta_sha256()
    version = bundle.version
    held, recorded = contextlib.ExitStack(), False
    try:
        with step("inspect", emit, dev):  # the lock first: inspecting while another run changes things misleads
            res.previous = active_version(t, L)  # read again under the lock; named even if refused here
            check_version_name(version)  # a refused name must not leave even the lock folder
            _check_root(t, L.root, create_last=True)
            refuse_links(t, L)
            t.makedirs(L.root)
            held.enter_context(device_lock(t, L(LOCK), res.warnings))
        with step("inspect", emit, dev):
            res.previous = active_version(t, L)
            vdir = L.version(version)  # before any makedirs: a refused name must not leave even empty dirs
            if _active_missing(t, L, res.previous, res.warnings):
                res.previous = None  # nothing was running, and nothing to roll back to
            _check_root(t, L.root, create_last=True)  # checked again here: the card may be pulled since
            refuse_links(t, L)
            t.makedirs(L("versions"))
            t.makedirs(L(".incoming"))
            history = read_history(t, L, res.warnings)
            existing, damaged_active = False, []
            if t.isdir(vdir):
                # files it does not list count as damage: the self-test and the device's runner would import them
                bad = _mismatches(t.hashes(vdir, want), want) + _unlisted_problems(unexpected_entries(t, vdir, want))
                if not bad and res.previous == version:
                    res.status, res.version = "up-to-date", version
                    _warm(t, L, bundle, res, opts, emit)  # cheap when warm; a cold or failed one is retried
                    return res
                if not bad:
                    existing = True  # kept from an earlier flash: nothing to send
                elif res.previous == version:
                    # the running copy is damaged: a fresh one is uploaded, verified and self-tested beside
                    # it, and only then swapped in (the damaged copy keeps serving until that point)
                    damaged_active = bad
                else:
                    # an inactive, damaged copy is replaced; kept aside like the active one, since files the
                    # user added live in it too (it was deleted without a word)
                    aside = _move_aside(t, L, vdir)
                    res.warnings.append(f"the inactive copy of {version} was damaged on the device "
                                        f"({'; '.join(bad[:3])}); a fresh copy is uploaded; the damaged one "
                                        f"(and any file added to it) is kept at {aside}")
        stage = vdir
        if not existing:
            with step("upload", emit, dev):
                stage = _upload(t, L, bundle, want, res, emit)
            with step("verify", emit, dev):
                bad = _mismatches(t.hashes(stage, want), want) + _unlisted_problems(unexpected_entries(t, stage, want))
                if bad:
                    raise EdgekitError(f"{len(bad)} file(s) differ on the device after upload: {'; '.join(bad[:3])}")
        with step("selftest", emit, dev):
            try:
                res.selftest = run_selftest(t, stage, opts.selftest_timeout, selftest_pid_file(t, L))
            except EdgekitError:
                if stage != vdir:
                    with contextlib.suppress(Exception):
                        t.rmtree(stage)  # this content can never pass: do not keep it for a resume
                raise
        # SIGINT/SIGTERM wait from the switch to its record in history.json (activation time, self-test):
        # an interrupt between them left the device running a version history.json did not name
        with signals_deferred():
            with step("activate", emit, dev):
                if damaged_active:
                    aside = _replace_damaged(t, L, stage, vdir)
                    res.warnings.append(f"the active version {version} was damaged on the device "
                                        f"({'; '.join(damaged_active[:3])}); replaced with the bundle's verified "
                                        f"copy; the damaged copy (and any file added to it) is kept at {aside}")
                elif stage != vdir:
                    t.rename(stage, vdir)
                switch_current(t, L, version)
                res.status, res.version = "flashed", version
            try:  # the new version is active from here; a failed cleanup is a warning, and the warm-up follows
                with step("cleanup", emit, dev):
                    history = [e for e in history if e["version"] != version]
                    history.append({"version": version, "activated": _now(), "selftest": res.selftest,
                                    "model": bundle.meta["model"],
                                    "model_sha256": bundle.files[bundle.meta["model"]]})
                    pruning = None
                    try:
                        _prune(t, L, history, opts.keep, protect={version, res.previous}, removed=res.removed,
                               warnings=res.warnings)
                    except Exception as e:  # history.json still records the activation (and what went)
                        pruning = e
                    write_history(t, L, [e for e in history if e["version"] not in res.removed],
                                  f"the activation of {version}")
                    recorded = True
                    if pruning is not None:
                        raise pruning
            except StepFailed as e:
                res.warnings.append(f"cleanup: {e.reason}")  # only housekeeping failed
        _warm(t, L, bundle, res, opts, emit)  # after the record: Ctrl-C here leaves a recorded, active version
    except StepFailed as e:
        res.status, res.step, res.reason = "failed", e.step, e.reason
        res.version = res.previous
    except (KeyboardInterrupt, SystemExit) as e:  # SystemExit: edgekit's SIGTERM handler
        if res.status == "flashed":
            raise _interrupted_after_switch(res, e, recorded) from e
        raise
    finally:
        held.close()
        res.seconds = round(time.monotonic() - t0, 3)
    return res


def _move_aside(t, L: Layout, vdir: str) -> str:
    """Move a version folder to PATH/damaged/ (kept for the user, never deleted); returns where it went."""
    t.makedirs(L("damaged"))
    aside = L("damaged", f"{posixpath.basename(vdir)}-{os.urandom(4).hex()}")
    t.rename(vdir, aside)
    return aside


def _replace_damaged(t, L: Layout, stage: str, vdir: str) -> str:
    """Swap a verified, self-tested copy in for the damaged active one; returns where the damaged copy
    went (PATH/damaged/, left for the user: it may hold files they added). `current` names vdir, so
    between the two renames it points at nothing for an instant (it pointed at broken files before); if
    the second rename fails or is interrupted, the damaged copy goes back."""
    # kept, not deleted: files the user added beside the bundle's live in that folder too
    aside = _move_aside(t, L, vdir)
    try:
        t.rename(stage, vdir)
    except BaseException:  # Ctrl-C between the renames too: the device must not be left without a model
        t.rename(aside, vdir)
        raise
    return aside


def _upload(t, L: Layout, bundle: Bundle, want: dict, res: DeviceResult, emit, area: str = ".incoming") -> str:
    """Send the bundle into PATH/area, reusing a previous unfinished upload of the same version."""
    version = check_version_name(bundle.version)
    mine, stale = [], []
    t.makedirs(L(area))
    for name in t.listdir(L(area)):
        # only a real folder is resumed: a link there would send the upload wherever it points
        (mine if name.startswith(version + "-") and t.isdir(L(area, name)) else stale).append(name)
    for name in stale + mine[1:]:
        t.rmtree(L(area, name))  # a link is unlinked, never followed
    stage = L(area, mine[0] if mine else f"{version}-{os.urandom(4).hex()}")
    if mine:
        _clean_resumed(t, stage, want, res)
    have = t.hashes(stage, want) if mine else {}
    try:
        _send(t, bundle, want, res, emit, stage, have)
    except OSError as e:
        if not _disk_full(e):
            raise  # an interruption: the partial upload stays, the next flash resumes it
        # a resume would hit the same wall, and the partial upload is what keeps the disk full
        with contextlib.suppress(Exception):
            t.rmtree(stage)
        raise FlashError(f"the device's disk is full ({describe(e)}; the bundle needs {_size(bundle.total_bytes())}, "
                         f"about {_size(_on_disk(bundle))} on disk); the partial upload {stage} was removed") from None
    return stage


def _clean_resumed(t, stage: str, want: dict, res: DeviceResult) -> None:
    """Remove what an unfinished upload holds beyond the bundle's files before it is resumed: anything
    there came from the medium, not from this bundle (a planted numpy.py, a link to a host file)."""
    extra = unexpected_entries(t, stage, want)
    for rel in extra:
        t.rmtree(posixpath.join(stage, rel))
    if extra:
        res.warnings.append(f"removed {len(extra)} file(s) that are not in the bundle from the unfinished upload "
                            f"{stage}: {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def _on_disk(bundle: Bundle, block: int = 4096) -> int:
    """An estimate of what the install takes on the device: whole blocks per file and per folder."""
    rels = bundle.upload_order()
    dirs = {posixpath.dirname(r) for r in rels}
    return sum(-(-(bundle.root / r).stat().st_size // block) * block for r in rels) + (len(dirs) + 1) * block


def _disk_full(e: OSError) -> bool:
    # a mounted path reports ENOSPC/EDQUOT; over SFTP the server may pass only its message on
    return e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(e) or "quota exceeded" in str(e).lower()


def _send(t, bundle: Bundle, want: dict, res: DeviceResult, emit, stage: str, have: dict) -> None:
    t.makedirs(stage)
    total, sent_before = bundle.total_bytes(), 0
    made = {stage}
    for rel in bundle.upload_order():
        size = (bundle.root / rel).stat().st_size
        if have.get(rel) == want[rel]:
            res.files_resumed += 1
            sent_before += size
            continue
        parent = posixpath.dirname(posixpath.join(stage, rel))
        if parent not in made:
            t.makedirs(parent)
            made.add(parent)

        def cb(done, _size, base=sent_before):
            if emit:
                emit(t.label, "upload", {"sent": base + done, "total": total})

        t.put(bundle.root / rel, posixpath.join(stage, rel), cb)
        sent_before += size
        res.bytes_sent += size
        res.files_sent += 1


def _prune(t, L: Layout, history: list[dict], keep: int, protect=(), removed=None, warnings=None) -> list[str]:
    """Keep the `keep` most recently installed versions present, always including `protect` (the
    active and the previous one, even beyond `keep`); remove the others (appended to `removed` one by
    one, so a failure midway still tells what went). Entries of PATH/versions that are not edgekit
    versions are left alone and named in `warnings`."""
    removed = [] if removed is None else removed
    present = version_dirs(t, L)
    foreign = foreign_entries(t, L)
    if foreign and warnings is not None:
        warnings.append(f"{L('versions')} holds entries that are not edgekit versions, left alone: "
                        f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}")
    newest_first = list(dict.fromkeys(e["version"] for e in reversed(history)))
    # history holds rolled-back-from versions too, so they keep their place by install order;
    # versions it does not name (a damaged history.json) rank as the oldest
    ranked = [v for v in newest_first if v in present] + sorted((v for v in present if v not in newest_first),
                                                                reverse=True)
    keepset = {v for v in protect if v in present}
    for v in ranked:
        if len(keepset) >= keep:
            break
        keepset.add(v)
    for v in present:
        if v not in keepset:
            t.rmtree(L.version(v))
            removed.append(v)
    return removed


def rollback(t, root: str, opts: FlashOptions, emit=None) -> DeviceResult:
    """Switch `current` back to the version active before it (verified and self-tested first)."""
    L, res, t0 = Layout(root), DeviceResult(device=t.label), time.monotonic()
    res.warnings.extend(getattr(t, "warnings", ()))  # the transport's own notes (skipped known_hosts lines)
    dev = t.label
    held, recorded = contextlib.ExitStack(), False
    try:
        with step("inspect", emit, dev):  # the lock first: inspecting while another run changes things misleads
            _check_root(t, L.root, create_last=False)
            refuse_links(t, L)
            res.previous = active_version(t, L)  # read again under the lock; named even if refused here
            if t.isdir(L.root):  # an SSH device without the folder has nothing to roll back (said next)
                held.enter_context(device_lock(t, L(LOCK), res.warnings))
        with step("inspect", emit, dev):
            res.previous = active_version(t, L)
            history = read_history(t, L, res.warnings)
            present = set(version_dirs(t, L))
            order = [e["version"] for e in history]
            upto = len(order) - 1 - order[::-1].index(res.previous) if res.previous in order else len(order)
            # a version already rolled back from is not a rollback target: rollback walks back, never forth
            target = next((e["version"] for e in reversed(history[:upto])
                           if not e.get("rolled_back") and e["version"] in present and e["version"] != res.previous),
                          None)
            if target is None:
                raise EdgekitError(_nothing_earlier(history, res.previous))
            if _active_missing(t, L, res.previous, res.warnings):
                res.previous = None  # its place in the history chose the target; it is not a version to name
            vdir = L.version(target)
        with step("verify", emit, dev):
            meta = _load_json(t.read_bytes(posixpath.join(vdir, META), limit=INDEX_LIMIT) or b"{}")
            if not isinstance(meta, dict) or not meta.get("files"):
                raise EdgekitError(f"{target}: no readable {META} on the device")
            check_meta(meta, f"{target}/{META} on the device")  # the paths it lists are hashed there next
            if meta["version"] != target:
                raise EdgekitError(f"{target}: its {META} names version {meta['version']}")
            files = meta["files"]
            bad = _mismatches(t.hashes(vdir, files), files)
            if bad:
                raise EdgekitError(f"{target} is damaged on the device: {'; '.join(bad[:3])}")
            extra = unexpected_entries(t, vdir, list(files) + [META])
            if extra:  # the self-test would run beside them, on this host for a mounted path
                raise EdgekitError(f"{target} on the device holds files its {META} does not list "
                                   f"({', '.join(extra[:5])}); refusing to run it: remove them, or flash its "
                                   ".ekb again (the copy is then kept under damaged/)")
        with step("selftest", emit, dev):
            res.selftest = run_selftest(t, vdir, opts.selftest_timeout, selftest_pid_file(t, L))
        with signals_deferred():  # the switch and its record go together, as in flash()
            with step("activate", emit, dev):
                switch_current(t, L, target)
                res.status, res.version = "rolled-back", target
            with step("cleanup", emit, dev):
                # the versions rolled back from stay in history (marked), so retention still counts them
                # by install order; dropping them made the next flash prune more than --keep allows
                cut = len(order) - 1 - order[::-1].index(target)
                when = _now()
                for e in history[cut + 1:]:
                    e.setdefault("rolled_back", when)
                history[cut]["reactivated"] = when  # status shows the last activation, not the first
                write_history(t, L, history, f"the rollback to {target}")
                recorded = True
    except StepFailed as e:
        if e.step == "cleanup" and res.status == "rolled-back":
            res.warnings.append(f"cleanup: {e.reason}")
        else:
            res.status, res.step, res.reason, res.version = "failed", e.step, e.reason, res.previous
    except (KeyboardInterrupt, SystemExit) as e:
        if res.status == "rolled-back":
            raise _interrupted_after_switch(res, e, recorded) from e
        raise
    finally:
        held.close()
        res.seconds = round(time.monotonic() - t0, 3)
    return res


def _nothing_earlier(history: list[dict], active) -> str:
    why = "no earlier version on the device to roll back to"
    if any(e["version"] == active and e.get("reconstructed") for e in history):
        # the order came from the directories' times: say so, the user may know better
        why += (f" (the install order was rebuilt from the directories' times, and no version's is older than the "
                f"active {active}'s; to restore another version, flash its .ekb again)")
    return why


def status(t, root: str, verify: bool = True) -> dict:
    """Versions on the device, the active one, and whether each is intact (hashes rechecked there, and
    no file its bundle.json does not list). `healthy` is False when the active version is not intact,
    `current` names a version that is gone, or `current` exists but is no link into versions/."""
    if not t.isdir(root):
        # an empty table and ok: true read as "a device with nothing on it" for a mistyped or unmounted path
        raise EdgekitError(f"{root}: no such folder on the device (a mistyped path, or the device is not mounted)")
    L = Layout(root)
    refuse_links(t, L)
    notes = []
    healthy = True
    try:
        active = active_version(t, L)
    except EdgekitError as e:
        # `current` is there but names no edgekit version (a folder, a link out of versions/): the device
        # runs nothing verified and no flash can switch it, so it is not healthy
        active, healthy = None, False
        notes.append(str(e))
    if active is not None and (not is_safe_name(active) or not t.isdir(L("versions", active))):
        notes.append(f"{L('current')} points at {active}, which is not on the device (deleted?); "
                     "no version is active")
        active, healthy = None, False
    history = {e["version"]: e for e in read_history(t, L)}
    out = []
    for v in version_dirs(t, L):
        e = history.get(v, {})
        entry = {"version": v, "active": v == active, "activated": e.get("reactivated") or e.get("activated"),
                 "rolled_back": e.get("rolled_back")}
        entry.update(_version_facts(t, L.version(v), v, verify))
        if v == active and entry.get("intact") is False:
            healthy = False
        out.append(entry)
    out.sort(key=lambda e: (e["activated"] or "", e["version"]))
    foreign = foreign_entries(t, L)
    if foreign:
        notes.append(f"{L('versions')} also holds entries that are not edgekit versions (left alone): "
                     f"{', '.join(foreign)}")
    return {"device": t.label, "active": active, "healthy": healthy, "versions": out, "foreign": foreign,
            "incoming": t.listdir(L(".incoming")), "note": "; ".join(notes)}


def _version_facts(t, vdir: str, v: str, verify: bool) -> dict:
    """model, kind, file count and (verify) whether vdir holds exactly what its bundle.json lists."""
    unreadable = None
    try:
        meta = _load_json(t.read_bytes(posixpath.join(vdir, META), limit=INDEX_LIMIT) or b"{}")
    except UnreadableFile as e:  # a link, a FIFO or a huge file: not read, and the version's problem
        meta, unreadable = {}, f"{v}/{META} {e.why}"
    except ValueError:
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    files = meta.get("files") if isinstance(meta.get("files"), dict) else {}
    model = meta.get("model") if isinstance(meta.get("model"), str) else None
    artifact = meta.get("artifact") if isinstance(meta.get("artifact"), dict) else {}
    kind = artifact.get("kind") if isinstance(artifact.get("kind"), str) else None
    facts = {"model": model, "model_sha256": files.get(model) if model else None, "kind": kind, "files": len(files)}
    if not verify:
        return facts
    if not files:
        bad = [unreadable or f"no readable {META}"]
    else:
        try:
            # the paths it names are hashed next: none may leave the folder (../../etc/hostname was read)
            check_meta(meta, f"{v}/{META}")
            if meta["version"] != v:
                raise InputError(f"{v}/{META} names version {meta['version']}")
        except InputError as e:
            bad = [str(e)]
        else:
            bad = _mismatches(t.hashes(vdir, files), files) + _unlisted_problems(
                unexpected_entries(t, vdir, list(files) + [META]))
    facts.update(intact=not bad, problems=bad[:5])
    return facts
