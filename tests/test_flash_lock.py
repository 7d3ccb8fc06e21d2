"""One flash or rollback at a time per device: PATH/.lock, taken by an atomic mkdir on the device.
Without it a second run deleted the first one's upload in .incoming and the first failed blaming
the wrong thing. A second run is refused in one line; a lock whose owner is gone is taken over."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from edgekit.flash import FlashOptions, SshOptions, collect_devices, flash_many, rollback_many
from flash_fixtures import bundles_for_seeds
from sshd import start_device_sshd


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    return bundles_for_seeds(tmp_path_factory.mktemp("lock"), range(2))


def _second_run_during_upload(devs, first, second, **kw):
    """Flash `first`; while its upload runs, flash `second` and roll back on the same device."""
    seen = {}

    def emit(device, step, info):
        if step == "upload" and not seen:
            seen["flash"] = flash_many(devs, second, **kw)[0]
            seen["rollback"] = rollback_many(devs, **kw)[0]

    return flash_many(devs, first, emit=emit, **kw)[0], seen


def test_second_flash_and_rollback_refused_while_one_runs(tmp_path, two):
    dev = tmp_path / "dev"
    devs = collect_devices([str(dev)])
    assert flash_many(devs, two[1])[0].status == "flashed"
    res, seen = _second_run_during_upload(devs, two[0], two[1])
    assert res.status == "flashed", res.reason  # the first run is undisturbed
    for other in seen.values():
        assert (other.status, other.step) == ("failed", "inspect")
        assert "in progress" in other.reason and str(dev / ".lock") in other.reason, other.reason
        assert f"pid {os.getpid()}" in other.reason and " s ago" in other.reason
        assert len(other.reason.splitlines()) == 1
    assert not (dev / ".lock").exists()  # released
    assert os.readlink(dev / "current") == f"versions/{two[0].version}"


def test_lock_released_when_the_flash_fails(tmp_path, two):
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "current").mkdir()  # refused at inspect, after the lock was taken
    res = flash_many(collect_devices([str(dev)]), two[0])[0]
    assert res.status == "failed" and "not a symlink" in res.reason
    assert not (dev / ".lock").exists()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("owner, why", [
    (lambda: {"host": socket.gethostname(), "pid": _dead_pid(), "user": "u", "time": time.time()},
     "its run is gone"),
    (lambda: {"host": "elsewhere", "pid": 1, "user": "u", "time": time.time() - 3 * 86400}, "older than 24 h"),
])
def test_stale_lock_is_taken_over(tmp_path, two, owner, why):
    dev = tmp_path / "dev"
    (dev / ".lock").mkdir(parents=True)
    (dev / ".lock" / "owner.json").write_text(json.dumps(owner()))
    res = flash_many(collect_devices([str(dev)]), two[0])[0]
    assert res.status == "flashed", res.reason
    assert any("took over a stale lock" in w and why in w for w in res.warnings), res.warnings
    assert not (dev / ".lock").exists() and not [n for n in os.listdir(dev) if n.startswith(".lock")]


def test_live_lock_from_another_host_says_how_to_clear_it(tmp_path, two):
    dev = tmp_path / "dev"
    (dev / ".lock").mkdir(parents=True)
    (dev / ".lock" / "owner.json").write_text(json.dumps(
        {"host": "buildbox", "pid": 4242, "user": "ci", "time": time.time() - 120}))
    res = flash_many(collect_devices([str(dev)]), two[0])[0]
    assert (res.status, res.step) == ("failed", "inspect")
    assert "ci@buildbox pid 4242, 2 min ago" in res.reason and f"remove {dev / '.lock'}" in res.reason, res.reason
    assert (dev / ".lock" / "owner.json").exists()  # someone else's: left alone
    assert not (dev / "versions").exists()


def test_an_oversized_lock_owner_file_is_a_damaged_one(tmp_path, two):
    # it was read whole whatever its size (a device's history.json and bundle.json are capped since 635ddaa)
    from edgekit.flash import lock

    dev = tmp_path / "dev"
    (dev / ".lock").mkdir(parents=True)
    owner = {"host": "buildbox", "pid": 4242, "user": "ci", "time": time.time() - 120}
    (dev / ".lock" / "owner.json").write_text(json.dumps(owner) + " " * lock.OWNER_LIMIT)
    res = flash_many(collect_devices([str(dev)]), two[0])[0]
    assert (res.status, res.step) == ("failed", "inspect")
    assert "ci@buildbox" not in res.reason and "an owner not recorded yet" in res.reason, res.reason


@pytest.mark.slow
def test_lock_over_ssh(tmp_path_factory, tmp_path, two):
    srv = start_device_sshd(tmp_path_factory.mktemp("sshd_lock"))
    try:
        dev = tmp_path / "dev"
        devs = collect_devices([srv.address(str(dev))])
        ssh = SshOptions(identity=str(srv.user_key), known_hosts=str(srv.known_hosts), remote_python=sys.executable)
        res, seen = _second_run_during_upload(devs, two[0], two[1], ssh=ssh, opts=FlashOptions())
        assert res.status == "flashed", res.reason
        assert (seen["flash"].step, seen["rollback"].step) == ("inspect", "inspect")
        assert "in progress" in seen["flash"].reason and "in progress" in seen["rollback"].reason
        assert not (dev / ".lock").exists()
    finally:
        srv.stop()
