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
import time
from dataclasses import asdict, dataclass, field

from ..errors import EdgekitError, FlashError
from ..fsutil import signals_deferred
from .bundle import META, RUNNER, SAFE_NAME_RULE, Bundle, check_meta, is_safe_name
from .lock import LOCK, device_lock

STEPS = ("connect", "inspect", "upload", "verify", "selftest", "activate", "cleanup")


@dataclass
class FlashOptions:
    keep: int = 3  # versions kept on the device (the active and the previous one always are)
    selftest_timeout: float = 600.0  # emulated ARM boards are slow

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
    warnings: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "failed"

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


def version_dirs(t, L: Layout) -> list[str]:
    """The entries of PATH/versions that edgekit could have made; anything else there is not ours to touch."""
    return [v for v in t.listdir(L("versions")) if is_safe_name(v)]


def _active_missing(t, L: Layout, active: str | None, warnings: list) -> bool:
    """Whether `current` names a version whose directory is gone (deleted by hand); warns if so."""
    if active is None or not is_safe_name(active) or t.isdir(L("versions", active)):
        return False
    warnings.append(f"the active version {active} was missing on the device ({L('current')} pointed at a "
                    "deleted directory)")
    return True


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
    """history.json's entries; if it is missing or damaged while versions are on the device, an order
    rebuilt from the version directories' times (a note goes to warnings): a damaged history only
    costs rollback ordering, it must not leave the device with nothing to roll back to."""
    raw = t.read_bytes(L("history.json"))
    problem = None
    if raw is None:
        problem = "is missing"
    else:
        try:
            h = json.loads(raw)
        except ValueError:
            problem = "is not valid JSON"
        else:
            if isinstance(h, list):
                return [e for e in h if isinstance(e, dict) and isinstance(e.get("version"), str) and e["version"]]
            problem = f"holds a JSON {type(h).__name__}, not a list"
    present = version_dirs(t, L)
    if not present:
        return []  # a fresh device: nothing to order
    history = _history_from_times(t, L, present)
    if warnings is not None:
        warnings.append(f"{L('history.json')} {problem}; the install order was taken from the version "
                        f"directories' times ({', '.join(e['version'] for e in history)}, oldest first)")
    return history


def _history_from_times(t, L: Layout, present: list[str]) -> list[dict]:
    def when(v):
        try:
            return t.mtime(L.version(v))
        except OSError:
            return 0.0

    order = sorted(present, key=lambda v: (when(v), v))
    try:
        active = active_version(t, L)
    except EdgekitError:
        active = None
    if active in order:  # whatever `current` names was activated last
        order.remove(active)
        order.append(active)
    return [{"version": v, "reconstructed": True} for v in order]


def write_history(t, L: Layout, history: list[dict]) -> None:
    t.write_bytes_atomic(L("history.json"), (json.dumps(history, indent=2) + "\n").encode())


def switch_current(t, L: Layout, version: str) -> None:
    tmp = L(f"current.tmp-{os.urandom(4).hex()}")
    t.symlink(f"versions/{check_version_name(version)}", tmp)
    try:
        t.replace(tmp, L("current"))
    except BaseException:
        with contextlib.suppress(Exception):
            t.rmtree(tmp)
        raise


def run_selftest(t, vdir: str, timeout: float) -> dict:
    """Run the bundled runner's self-test in vdir; return its JSON; raise with its reason if it fails."""
    rc, out, err = t.run([t.python, posixpath.join(vdir, RUNNER), "selftest", "--bundle", vdir], timeout=timeout)
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
    raise EdgekitError(f"self-test failed on the device (exit {rc}): {why}{hint}")


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
            t.makedirs(L.root)
            held.enter_context(device_lock(t, L(LOCK), res.warnings))
        with step("inspect", emit, dev):
            res.previous = active_version(t, L)
            vdir = L.version(version)  # before any makedirs: a refused name must not leave even empty dirs
            if _active_missing(t, L, res.previous, res.warnings):
                res.previous = None  # nothing was running, and nothing to roll back to
            _check_root(t, L.root, create_last=True)  # checked again here: the card may be pulled since
            t.makedirs(L("versions"))
            t.makedirs(L(".incoming"))
            history = read_history(t, L, res.warnings)
            existing, damaged_active = False, []
            if t.isdir(vdir):
                bad = _mismatches(t.hashes(vdir, want), want)
                if not bad and res.previous == version:
                    res.status, res.version = "up-to-date", version
                    return res
                if not bad:
                    existing = True  # kept from an earlier flash: nothing to send
                elif res.previous == version:
                    # the running copy is damaged: a fresh one is uploaded, verified and self-tested beside
                    # it, and only then swapped in (the damaged copy keeps serving until that point)
                    damaged_active = bad
                else:
                    t.rmtree(vdir)  # an inactive, damaged copy: replace it
        stage = vdir
        if not existing:
            with step("upload", emit, dev):
                stage = _upload(t, L, bundle, want, res, emit)
            with step("verify", emit, dev):
                bad = _mismatches(t.hashes(stage, want), want)
                if bad:
                    raise EdgekitError(f"{len(bad)} file(s) differ on the device after upload: {'; '.join(bad[:3])}")
        with step("selftest", emit, dev):
            try:
                res.selftest = run_selftest(t, stage, opts.selftest_timeout)
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
            with step("cleanup", emit, dev):
                history = [e for e in history if e["version"] != version]
                history.append({"version": version, "activated": _now(), "selftest": res.selftest,
                                "model": bundle.meta["model"], "model_sha256": bundle.files[bundle.meta["model"]]})
                res.removed = _prune(t, L, history, opts.keep, protect={version, res.previous})
                write_history(t, L, [e for e in history if e["version"] not in res.removed])
                recorded = True
    except StepFailed as e:
        if e.step == "cleanup" and res.status == "flashed":
            res.warnings.append(f"cleanup: {e.reason}")  # the new version is active; only housekeeping failed
        else:
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


def _replace_damaged(t, L: Layout, stage: str, vdir: str) -> str:
    """Swap a verified, self-tested copy in for the damaged active one; returns where the damaged copy
    went (PATH/damaged/, left for the user: it may hold files they added). `current` names vdir, so
    between the two renames it points at nothing for an instant (it pointed at broken files before); if
    the second rename fails or is interrupted, the damaged copy goes back."""
    # kept, not deleted: files the user added beside the bundle's live in that folder too
    t.makedirs(L("damaged"))
    aside = L("damaged", f"{posixpath.basename(vdir)}-{os.urandom(4).hex()}")
    t.rename(vdir, aside)
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
        (mine if name.startswith(version + "-") else stale).append(name)
    for name in stale + mine[1:]:
        t.rmtree(L(area, name))
    stage = L(area, mine[0] if mine else f"{version}-{os.urandom(4).hex()}")
    have = t.hashes(stage, want) if mine else {}
    try:
        _send(t, bundle, want, res, emit, stage, have)
    except OSError as e:
        if not _disk_full(e):
            raise  # an interruption: the partial upload stays, the next flash resumes it
        # a resume would hit the same wall, and the partial upload is what keeps the disk full
        with contextlib.suppress(Exception):
            t.rmtree(stage)
        raise FlashError(f"the device's disk is full ({describe(e)}; the bundle needs "
                         f"{bundle.total_bytes() / 2**20:.1f} MiB); the partial upload {stage} was removed") from None
    return stage


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


def _prune(t, L: Layout, history: list[dict], keep: int, protect=()) -> list[str]:
    """Keep the `keep` most recently installed versions present, always including `protect` (the
    active and the previous one, even beyond `keep`); remove the others."""
    present = version_dirs(t, L)
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
    removed = [v for v in present if v not in keepset]
    for v in removed:
        t.rmtree(L.version(v))
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
                raise EdgekitError("no earlier version on the device to roll back to")
            if _active_missing(t, L, res.previous, res.warnings):
                res.previous = None  # its place in the history chose the target; it is not a version to name
            vdir = L.version(target)
        with step("verify", emit, dev):
            meta = json.loads(t.read_bytes(posixpath.join(vdir, META)) or b"{}")
            if not isinstance(meta, dict) or not meta.get("files"):
                raise EdgekitError(f"{target}: no readable {META} on the device")
            check_meta(meta, f"{target}/{META} on the device")  # the paths it lists are hashed there next
            if meta["version"] != target:
                raise EdgekitError(f"{target}: its {META} names version {meta['version']}")
            files = meta["files"]
            bad = _mismatches(t.hashes(vdir, files), files)
            if bad:
                raise EdgekitError(f"{target} is damaged on the device: {'; '.join(bad[:3])}")
        with step("selftest", emit, dev):
            res.selftest = run_selftest(t, vdir, opts.selftest_timeout)
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
                write_history(t, L, history)
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


def status(t, root: str, verify: bool = True) -> dict:
    """Versions on the device, the active one, and whether each is intact (hashes rechecked there)."""
    if not t.isdir(root):
        # an empty table and ok: true read as "a device with nothing on it" for a mistyped or unmounted path
        raise EdgekitError(f"{root}: no such folder on the device (a mistyped path, or the device is not mounted)")
    L = Layout(root)
    try:
        active = active_version(t, L)
    except EdgekitError as e:
        active, note = None, str(e)
    else:
        note = ""
    history = {e["version"]: e for e in read_history(t, L)}
    out = []
    for v in version_dirs(t, L):
        vdir = L.version(v)
        raw = t.read_bytes(posixpath.join(vdir, META))
        entry = {"version": v, "active": v == active, "activated": history.get(v, {}).get("activated")}
        try:
            meta = json.loads(raw) if raw else {}
        except ValueError:
            meta = {}
        if not isinstance(meta, dict):
            meta = {}
        files = meta.get("files") if isinstance(meta.get("files"), dict) else {}
        entry.update(model=meta.get("model"), model_sha256=files.get(meta.get("model", "")),
                     kind=(meta.get("artifact") or {}).get("kind"), files=len(files))
        if verify:
            bad = _mismatches(t.hashes(vdir, files), files) if files else [f"no readable {META}"]
            entry.update(intact=not bad, problems=bad[:5])
        out.append(entry)
    out.sort(key=lambda e: (e["activated"] or "", e["version"]))
    return {"device": t.label, "active": active, "versions": out,
            "incoming": t.listdir(L(".incoming")), "note": note}
