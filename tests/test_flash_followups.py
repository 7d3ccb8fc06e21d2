"""Flash follow-ups (sweep22 F18, F19, F21 and the SSH transport's hashing and history writes): a timed-out
self-test is stopped on the device, rollback without history.json walks back by time, a rollback refused by
the lock names the active version, and the SSH transport hashes regular files only and leaves no temp file.
Real files, a real OpenSSH server on 127.0.0.1 (tests/sshd.py), real runs of the device runner."""
from __future__ import annotations

import _thread
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgekit.flash import SshOptions, collect_devices, flash_many, rollback_many
from edgekit.flash.deploy import FlashOptions, flash
from edgekit.flash.devices import parse_device
from edgekit.flash.transport_path import PathTransport
from edgekit.flash.transport_ssh import connect
from flash_fixtures import bundles_for_seeds
from sshd import start_device_sshd


@pytest.fixture(scope="module")
def vs(tmp_path_factory):
    return bundles_for_seeds(tmp_path_factory.mktemp("followups"), range(3))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_device_sshd(tmp_path_factory.mktemp("sshd_followups"))
    yield srv
    srv.stop()


def _ssh(srv, python=sys.executable) -> SshOptions:
    return SshOptions(identity=str(srv.user_key), known_hosts=str(srv.known_hosts), remote_python=python)


# ---- F19: a self-test that times out is stopped on the device

def _hanging_python(tmp_path: Path, *, exec_it: bool = True, delay: float = 0) -> tuple[Path, Path]:
    """(a --remote-python wrapper whose self-test runs hang.py instead of the runner, hang.py). hang.py marks
    that it started and sleeps; with exec_it False the wrapper stays the parent (a plain `python "$@"`)."""
    hang = tmp_path / "hang.py"
    hang.write_text(f"import time\nopen({str(tmp_path / 'HANG_STARTED')!r}, 'w').close()\ntime.sleep(120)\n")
    wrapper = tmp_path / "hangpy.sh"
    wrapper.write_text("#!/bin/bash\nargs=()\n"
                       f'for a in "$@"; do case "$a" in */edgekit_runner.py) args+=({str(hang)!r});; '
                       '*) args+=("$a");; esac; done\n'
                       + (f'case "$*" in *" selftest "*) sleep {delay};; esac\n' if delay else "")
                       + f'{"exec " if exec_it else ""}{sys.executable} "${{args[@]}}"\n')
    wrapper.chmod(0o755)
    return wrapper, hang


def _running(script: Path) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
                state = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if str(script).encode() in cmd and state != "Z":
                pids.append(int(d))
    return pids


def _wait_gone(script: Path, seconds: float = 5) -> list[int]:
    end = time.monotonic() + seconds
    while _running(script) and time.monotonic() < end:
        time.sleep(0.1)
    return _running(script)


def _check_stopped(res, dev: Path, hang: Path, active: str):
    try:
        assert (res.status, res.step, res.version) == ("failed", "selftest", active), res.reason
        assert "did not finish within 3 s; it was stopped on the device" in res.reason, res.reason
        assert (hang.parent / "HANG_STARTED").exists()  # it was running when the time ran out
        assert _wait_gone(hang) == []
        assert not (dev / ".lock").exists()
        assert [n for n in os.listdir(dev / ".incoming") if n.startswith("selftest-")] == []
        assert os.readlink(dev / "current") == f"versions/{active}"
    finally:
        for pid in _running(hang):  # the old code left it running
            os.kill(pid, 9)


def test_a_timed_out_selftest_over_ssh_is_stopped_on_the_device(tmp_path, vs, server):
    # SshTransport.run closes only its channel: the runner went on after flash said 'failed' (sweep22 F19)
    dev = tmp_path / "dev"
    devs = collect_devices([server.address(str(dev))])
    assert flash_many(devs, vs[0], ssh=_ssh(server))[0].status == "flashed"
    wrapper, hang = _hanging_python(tmp_path)
    res = flash_many(devs, vs[1], ssh=_ssh(server, str(wrapper)), opts=FlashOptions(selftest_timeout=3))[0]
    _check_stopped(res, dev, hang, vs[0].version)


def test_a_timed_out_selftest_behind_a_wrapper_on_a_path_is_stopped(tmp_path, vs):
    # subprocess.run's timeout kills the wrapper only; the python it started kept running
    dev = tmp_path / "dev"
    devs = collect_devices([str(dev)])
    assert flash_many(devs, vs[0])[0].status == "flashed"
    wrapper, hang = _hanging_python(tmp_path, exec_it=False)
    t = PathTransport(str(dev))
    t.python = str(wrapper)  # what --remote-python is over SSH
    res = flash(t, str(dev), vs[1], FlashOptions(selftest_timeout=3))
    _check_stopped(res, dev, hang, vs[0].version)


@pytest.mark.slow
def test_a_selftest_stopped_before_its_python_started_stops_itself_when_it_does(tmp_path, vs, server):
    # a wrapper still starting the runner has written no pid: the stop mark stays for it to find
    dev = tmp_path / "dev"
    devs = collect_devices([server.address(str(dev))])
    wrapper, hang = _hanging_python(tmp_path, delay=5)
    try:
        res = flash_many(devs, vs[0], ssh=_ssh(server, str(wrapper)), opts=FlashOptions(selftest_timeout=2))[0]
        assert (res.status, res.step) == ("failed", "selftest"), res.reason
        assert "had not started yet" in res.reason and ".stop makes it stop as soon as it does" in res.reason
        end = time.monotonic() + 15
        while time.monotonic() < end and not any(n.endswith(".pid") for n in os.listdir(dev / ".incoming")):
            time.sleep(0.2)
        (pid_file,) = [n for n in os.listdir(dev / ".incoming") if n.endswith(".pid")]  # it did start, later
        assert _wait_gone(hang) == [] and not (tmp_path / "HANG_STARTED").exists()  # and stopped at once
        # the next flash clears the marks with the other leftovers
        assert flash_many(devs, vs[0], ssh=_ssh(server))[0].status == "flashed"
        assert [n for n in os.listdir(dev / ".incoming") if n.startswith("selftest-")] == []
    finally:
        for pid in _running(hang):
            os.kill(pid, 9)


def test_a_selftest_that_passes_leaves_no_pid_file(tmp_path, vs, server):
    dev = tmp_path / "dev"
    for devs, kw in ((collect_devices([str(dev)]), {}),
                     (collect_devices([server.address(str(tmp_path / "sdev"))]), {"ssh": _ssh(server)})):
        assert flash_many(devs, vs[0], **kw)[0].status == "flashed"
        assert flash_many(devs, vs[1], **kw)[0].status == "flashed"
        res = rollback_many(devs, **kw)[0]
        assert res.status == "rolled-back", res.reason
    for d in (dev, tmp_path / "sdev"):
        assert os.listdir(d / ".incoming") == []


# ---- F21: rollback with history.json lost walks back by time, never forth

def test_rollback_without_history_goes_to_the_version_installed_before_the_active_one(tmp_path, vs):
    dev = tmp_path / "dev"
    devs = collect_devices([str(dev)])
    for i, b in enumerate(vs):
        assert flash_many(devs, b)[0].status == "flashed"
        os.utime(dev / "versions" / b.version, (1_000_000 + i, 1_000_000 + i))
    assert rollback_many(devs)[0].version == vs[1].version  # vs[2] rolled back from
    (dev / "history.json").unlink()
    res = rollback_many(devs)[0]
    # it went to vs[2], installed after the active one: the active was moved to the end of the time order
    assert (res.status, res.previous, res.version) == ("rolled-back", vs[1].version, vs[0].version), res.reason
    order = ", ".join(b.version for b in vs)
    assert res.warnings == [f"{dev}/history.json is missing; the install order was taken from the version "
                            f"directories' times ({order}, oldest first)"]
    (dev / "history.json").unlink()
    res = rollback_many(devs)[0]
    assert (res.status, res.step, res.version) == ("failed", "inspect", vs[0].version)
    assert res.reason == ("no earlier version on the device to roll back to (the install order was rebuilt from "
                          f"the directories' times, and no version's is older than the active {vs[0].version}'s; "
                          "to restore another version, flash its .ekb again)")


# ---- F18: a rollback refused by the lock names the active version

def test_a_rollback_refused_by_the_lock_reports_the_active_version(tmp_path, vs):
    dev = tmp_path / "dev"
    devs = collect_devices([str(dev)])
    for b in vs[:2]:
        assert flash_many(devs, b)[0].status == "flashed"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (dev / ".lock").mkdir()
        (dev / ".lock" / "owner.json").write_text(json.dumps({"host": os.uname().nodename, "pid": holder.pid,
                                                              "time": time.time(), "user": "me"}))
        res = rollback_many(devs)[0]
        assert (res.status, res.step) == ("failed", "inspect") and "in progress" in res.reason, res.reason
        assert (res.version, res.previous) == (vs[1].version, vs[1].version)  # was None, None
    finally:
        holder.kill()
        holder.wait()


# ---- the SSH transport: hashing reads regular files only; history writes leave no temp file

def test_ssh_hashing_skips_fifos_links_and_paths_out_of_the_folder(tmp_path, server):
    root = tmp_path / "v"
    (root / "sub").mkdir(parents=True)
    (root / "ok.bin").write_bytes(b"data")
    os.mkfifo(root / "fifo")  # opening it to read blocked the hash until its 600 s timeout
    (tmp_path / "outside").write_bytes(b"host file")
    (root / "link").symlink_to(tmp_path / "outside")
    (root / "dirlink").symlink_to(tmp_path)
    t = connect(parse_device(server.address(str(root))), _ssh(server))
    got = {}
    worker = threading.Thread(target=lambda: got.update(
        t.hashes(str(root), ["ok.bin", "fifo", "link", "dirlink/outside", "../outside", "sub", "none"])), daemon=True)
    worker.start()
    worker.join(60)
    try:
        assert not worker.is_alive(), "hashing hung on the FIFO"
        import hashlib

        assert got == {"ok.bin": hashlib.sha256(b"data").hexdigest(), "fifo": None, "link": None,
                       "dirlink/outside": None, "../outside": None, "sub": None, "none": None}
    finally:
        if worker.is_alive():
            server.kill_sessions()  # ends the remote hash the old code left blocked
        t.close()


def test_ssh_history_write_cut_short_leaves_no_temp_file(tmp_path, server):
    # only an OSError removed the temp file; a Ctrl-C (or any other failure) during the write left it
    d = tmp_path / "dev"
    d.mkdir()
    data = b"x" * (256 << 20)  # takes seconds over SFTP

    def interrupt_once_the_temp_file_is_there():
        end = time.monotonic() + 30
        while not os.listdir(d) and time.monotonic() < end:
            time.sleep(0.01)
        _thread.interrupt_main()  # what Ctrl-C does: KeyboardInterrupt in the write

    t = connect(parse_device(server.address(str(d))), _ssh(server))
    try:
        threading.Thread(target=interrupt_once_the_temp_file_is_there, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            t.write_bytes_atomic(str(d / "history.json"), data)
            time.sleep(30)
    finally:
        t.close()
    assert os.listdir(d) == []
