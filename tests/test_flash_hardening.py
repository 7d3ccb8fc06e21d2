"""A device's medium is not trusted: files planted on it never run on this host, links on it never
make flash write or delete elsewhere, retention touches only edgekit's versions, and `devices status`
reads only what a version's bundle.json may name (mounted-path devices, real files and real runs)."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time

import pytest

from edgekit.flash import collect_devices, flash_many, rollback_many
from edgekit.flash.bundle import META
from edgekit.flash.deploy import FlashOptions, run_selftest
from edgekit.flash.transport_path import PathTransport
from flash_fixtures import bundles_for_seeds

PLANT = """import os, sys
open({marker!r}, "w").write("planted code ran")
sys.path.remove(os.path.dirname(os.path.abspath(__file__)))
del sys.modules["numpy"]
import numpy
sys.modules[__name__] = numpy
"""


@pytest.fixture(scope="module")
def vs(tmp_path_factory):
    return bundles_for_seeds(tmp_path_factory.mktemp("hard"), range(4))


def _plant(folder, marker):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "numpy.py").write_text(PLANT.format(marker=str(marker)))


def _main(argv) -> int:
    from edgekit.cli import main

    try:
        return main(argv)
    except SystemExit as e:  # a non-zero exit status
        return e.code


def _status(capsys, *args):
    rc = _main(["devices", "status", *args, "--json"])
    return rc, json.loads(capsys.readouterr().out)


# ---- F1: files on the medium that bundle.json does not list

def test_planted_module_in_a_resumed_upload_is_removed_not_run(tmp_path, vs):
    dev, marker = tmp_path / "dev", tmp_path / "PWNED"
    _plant(dev / ".incoming" / f"{vs[0].version}-deadbeef", marker)
    res = flash_many(collect_devices([str(dev)]), vs[0])[0]
    assert res.status == "flashed", res.reason
    assert not marker.exists()
    assert not (dev / "versions" / vs[0].version / "numpy.py").exists()
    assert any("numpy.py" in w and "not in the bundle" in w for w in res.warnings), res.warnings


def test_selftest_runs_isolated_from_its_folder(tmp_path, vs, monkeypatch):
    # even with an unlisted numpy.py beside the runner, the self-test imports the host's numpy
    dev, marker = tmp_path / "dev", tmp_path / "PWNED"
    assert flash_many(collect_devices([str(dev)]), vs[0])[0].status == "flashed"
    vdir = dev / "versions" / vs[0].version
    _plant(vdir, marker)
    monkeypatch.setenv("PYTHONPATH", str(vdir))  # PYTHON* variables are ignored too
    rep = run_selftest(PathTransport(str(dev)), str(vdir), 120)
    assert rep["ok"] and "max_abs_diff" in rep and not marker.exists()


def test_rollback_refuses_a_version_holding_unlisted_files(tmp_path, vs):
    dev, marker = tmp_path / "dev", tmp_path / "PWNED"
    devs = collect_devices([str(dev)])
    for b in vs[:2]:
        assert flash_many(devs, b)[0].status == "flashed"
    _plant(dev / "versions" / vs[0].version, marker)
    res = rollback_many(devs)[0]
    assert (res.status, res.step) == ("failed", "verify") and "numpy.py" in res.reason, res.reason
    assert not marker.exists() and os.readlink(dev / "current") == f"versions/{vs[1].version}"


def test_status_flags_unlisted_files_and_reflash_repairs(tmp_path, vs, capsys):
    dev, marker = tmp_path / "dev", tmp_path / "PWNED"
    devs = collect_devices([str(dev)])
    assert flash_many(devs, vs[0])[0].status == "flashed"
    _plant(dev / "versions" / vs[0].version, marker)
    rc, rep = _status(capsys, "--device", str(dev))
    v = rep["devices"][0]["versions"][0]
    assert v["intact"] is False and "numpy.py (not in bundle.json)" in v["problems"]
    assert (rc, rep["ok"]) == (1, False)  # the active version is not intact
    res = flash_many(devs, vs[0])[0]  # not up to date: a fresh copy replaces it, the old one is kept aside
    assert res.status == "flashed" and not (dev / "versions" / vs[0].version / "numpy.py").exists()
    assert [p.name for p in (dev / "damaged").iterdir()][0].startswith(vs[0].version)


# ---- F2: links on the medium

@pytest.mark.parametrize("name", [".incoming", "versions", "damaged", ".lock"])
def test_a_device_folder_that_is_a_link_is_refused(tmp_path, vs, name):
    dev, victim = tmp_path / "dev", tmp_path / "victim"
    (victim / "photos").mkdir(parents=True)
    (victim / "notes.txt").write_text("mine")
    dev.mkdir()
    (dev / name).symlink_to(victim)
    devs = collect_devices([str(dev)])
    res = flash_many(devs, vs[0])[0]
    assert (res.status, res.step) == ("failed", "inspect"), res
    assert f"{name} is a symbolic link" in res.reason
    assert sorted(os.listdir(victim)) == ["notes.txt", "photos"] and (victim / "notes.txt").read_text() == "mine"
    assert rollback_many(devs)[0].step == "inspect"


def test_links_in_a_resumed_upload_are_removed_not_written_through(tmp_path, vs):
    dev, victim = tmp_path / "dev", tmp_path / "victim_rc"
    victim.write_text("export IMPORTANT=1\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    stage = dev / ".incoming" / f"{vs[0].version}-deadbeef"
    stage.mkdir(parents=True)
    (stage / "selftest.npz").symlink_to(victim)
    (stage / "edgekit").symlink_to(outside)  # a linked folder: the prepost files would land outside
    res = flash_many(collect_devices([str(dev)]), vs[0])[0]
    assert res.status == "flashed", res.reason
    assert victim.read_text() == "export IMPORTANT=1\n" and os.listdir(outside) == []
    vdir = dev / "versions" / vs[0].version
    assert not (vdir / "selftest.npz").is_symlink() and not (vdir / "edgekit").is_symlink()


def test_a_linked_upload_folder_is_dropped_not_resumed(tmp_path, vs):
    dev, outside = tmp_path / "dev", tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    (dev / ".incoming").mkdir(parents=True)
    (dev / ".incoming" / f"{vs[0].version}-deadbeef").symlink_to(outside)
    assert flash_many(collect_devices([str(dev)]), vs[0])[0].status == "flashed"
    assert os.listdir(outside) == ["keep.txt"]


# ---- F3: a relative device path starting with '-'

def test_a_device_path_starting_with_a_dash_is_not_an_option(tmp_path, vs, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWN3"
    # no '/' in it: the whole string is one folder name in the current directory
    code = f"-cimport pathlib;pathlib.Path(chr(47).join({str(marker).split('/')!r})).touch()#"
    for name in ("-dev", code):
        res = flash_many(collect_devices([name]), vs[0])[0]
        assert res.status == "flashed", (name, res.reason)
        assert "max_abs_diff" in res.selftest  # the runner's own report: the self-test really ran
    assert not marker.exists()


# ---- F4: retention touches only edgekit's versions

def test_retention_leaves_user_entries_in_versions(tmp_path, vs, capsys):
    dev = tmp_path / "dev"
    (dev / "versions" / "backup").mkdir(parents=True)
    (dev / "versions" / "backup" / "keep-me.txt").write_text("mine")
    (dev / "versions" / "README").write_text("mine")
    devs = collect_devices([str(dev)])
    for b in vs:
        res = flash_many(devs, b, opts=FlashOptions(keep=1))[0]
        assert res.status == "flashed", res.reason
        foreign = [w for w in res.warnings if "not edgekit versions" in w]
        assert len(foreign) == 1 and "README" in foreign[0] and "backup" in foreign[0], res.warnings
    assert (dev / "versions" / "backup" / "keep-me.txt").read_text() == "mine"
    assert (dev / "versions" / "README").read_text() == "mine"
    rc, rep = _status(capsys, "--device", str(dev))
    d = rep["devices"][0]
    assert rc == 0 and d["foreign"] == ["README", "backup"]
    assert sorted(v["version"] for v in d["versions"]) == sorted(b.version for b in vs[2:])


# ---- F5: status reads only what bundle.json may name, regular files only

def _edit_meta(vdir, edit):
    meta = json.loads((vdir / META).read_text())
    edit(meta)
    (vdir / META).write_text(json.dumps(meta))


def test_status_refuses_unsafe_paths_and_skips_special_files(tmp_path, vs, capsys):
    dev = tmp_path / "dev"
    devs = collect_devices([str(dev)])
    for b in vs[:2]:
        assert flash_many(devs, b)[0].status == "flashed"
    v0, v1 = dev / "versions" / vs[0].version, dev / "versions" / vs[1].version
    _edit_meta(v0, lambda m: m["files"].update({"/dev/zero": "0" * 64, "../../etc/hostname": "0" * 64}))
    (v1 / "selftest.npz").unlink()
    os.mkfifo(v1 / "selftest.npz")  # a listed name that is a FIFO: opening it to hash would block forever
    t0 = time.monotonic()
    rc, rep = _status(capsys, "--device", str(dev))
    assert time.monotonic() - t0 < 60
    by = {v["version"]: v for v in rep["devices"][0]["versions"]}
    assert by[vs[0].version]["intact"] is False and "unsafe path" in by[vs[0].version]["problems"][0]
    assert by[vs[1].version]["intact"] is False
    assert any(p.startswith("selftest.npz (missing)") for p in by[vs[1].version]["problems"])
    assert (rc, rep["ok"]) == (1, False)  # v1 is active


# ---- F6: partial or nested history.json

def test_empty_history_rebuilds_order_for_rollback_and_retention(tmp_path, vs):
    dev = tmp_path / "dev"
    devs = collect_devices([str(dev)])
    for i, b in enumerate(vs[:3]):
        assert flash_many(devs, b)[0].status == "flashed"
        os.utime(dev / "versions" / b.version, (1_000_000 + i, 1_000_000 + i))
    (dev / "history.json").write_text("[]\n")
    res = rollback_many(devs)[0]
    assert (res.status, res.version) == ("rolled-back", vs[1].version), res.reason
    assert any("does not name" in w for w in res.warnings), res.warnings
    # retention: the oldest goes, not the newest inactive one
    shutil.rmtree(dev)
    for i, b in enumerate(vs[:3]):
        assert flash_many(devs, b)[0].status == "flashed"
        os.utime(dev / "versions" / b.version, (1_000_000 + i, 1_000_000 + i))
    (dev / "history.json").write_text("[]\n")
    res = flash_many(devs, vs[3], opts=FlashOptions(keep=3))[0]
    assert (res.status, res.removed) == ("flashed", [vs[0].version]), (res.removed, res.warnings)


def test_deeply_nested_history_and_lock_owner_count_as_damage(tmp_path, vs, capsys):
    from edgekit.flash.lock import _lock_owner

    dev = tmp_path / "dev"
    devs = collect_devices([str(dev)])
    assert flash_many(devs, vs[0])[0].status == "flashed"
    (dev / "history.json").write_text("[" * 100000)
    res = flash_many(devs, vs[1])[0]
    assert res.status == "flashed" and any("history.json is not valid JSON" in w for w in res.warnings)
    (dev / "history.json").write_text("[" * 100000)
    assert _status(capsys, "--device", str(dev))[0] == 0
    (dev / ".lock").mkdir()
    (dev / ".lock" / "owner.json").write_text("[" * 100000)
    assert _lock_owner(PathTransport(str(dev)), str(dev / ".lock")) == {}


# ---- F7: status of a dangling `current`, of a damaged active version, after a rollback

def test_status_dangling_current_and_damaged_active(tmp_path, vs, capsys):
    dev = tmp_path / "dev"
    devs = collect_devices([str(dev)])
    for b in vs[:2]:
        assert flash_many(devs, b)[0].status == "flashed"
    shutil.rmtree(dev / "versions" / vs[1].version)
    rc, rep = _status(capsys, "--device", str(dev))
    d = rep["devices"][0]
    assert (rc, rep["ok"], d["active"]) == (1, False, None)
    assert "not on the device" in d["note"] and not any(v["active"] for v in d["versions"])
    assert flash_many(devs, vs[1])[0].status == "flashed"
    assert _status(capsys, "--device", str(dev))[0] == 0
    (dev / "versions" / vs[1].version / "model.fp32.onnx").write_bytes(b"garbage")
    rc, rep = _status(capsys, "--device", str(dev))
    assert (rc, rep["ok"]) == (1, False)


def test_status_after_rollback_shows_last_activation_and_mark(tmp_path, vs, capsys):
    dev = tmp_path / "dev"
    devs = collect_devices([str(dev)])
    for b in vs[:2]:
        assert flash_many(devs, b)[0].status == "flashed"
    time.sleep(1.1)  # activation times are to the second
    assert rollback_many(devs)[0].status == "rolled-back"
    rc, rep = _status(capsys, "--device", str(dev))
    by = {v["version"]: v for v in rep["devices"][0]["versions"]}
    assert by[vs[1].version]["rolled_back"] and by[vs[0].version]["rolled_back"] is None
    assert by[vs[0].version]["activated"] >= by[vs[1].version]["rolled_back"]
    assert rep["devices"][0]["versions"][-1]["version"] == vs[0].version  # newest activation last


# ---- F8: a damaged inactive copy is kept aside, not deleted

def test_reflash_over_a_damaged_inactive_copy_keeps_it(tmp_path, vs):
    dev = tmp_path / "dev"
    devs = collect_devices([str(dev)])
    for b in vs[:2]:
        assert flash_many(devs, b)[0].status == "flashed"
    v0 = dev / "versions" / vs[0].version
    (v0 / "my-extra.txt").write_text("mine")
    (v0 / "model.fp32.onnx").write_bytes(b"garbage")
    res = flash_many(devs, vs[0])[0]
    assert res.status == "flashed"
    assert any("inactive copy" in w and "model.fp32.onnx" in w and "damaged" in w for w in res.warnings)
    (aside,) = (dev / "damaged").iterdir()
    assert (aside / "my-extra.txt").read_text() == "mine"


# ---- F9, F10: a full disk (small real tmpfs)


def _fill(fs, leave: int = 0):
    with open(fs / "filler", "wb") as f:
        try:
            while True:
                st = os.statvfs(fs)
                room = st.f_bavail * st.f_frsize - leave
                if room <= 0:
                    break
                f.write(b"\0" * min(room, 1 << 16))
                f.flush()
        except OSError:
            pass


def test_history_write_failure_says_so_and_leaves_no_tmp(small_fs, vs):
    dev = small_fs / "models"
    devs = collect_devices([str(dev)])
    for b in vs[:2]:
        assert flash_many(devs, b)[0].status == "flashed"
    _fill(small_fs, leave=4096)  # room for the lock's owner.json, none for history.json's next copy
    res = flash_many(devs, vs[0])[0]  # kept on the device: nothing to upload, history.json cannot be written
    assert (res.status, res.version) == ("flashed", vs[0].version), res.reason
    assert any("history.json was not updated: it does not record the activation of " + vs[0].version in w
               for w in res.warnings), res.warnings
    assert [n for n in os.listdir(dev) if ".tmp-" in n] == []


def test_disk_full_message_gives_the_size_in_kib(small_fs, vs):
    dev = small_fs / "models"
    _fill(small_fs, leave=16 * 1024)
    res = flash_many(collect_devices([str(dev)]), vs[0])[0]
    assert (res.status, res.step) == ("failed", "upload"), res
    assert " KiB, about " in res.reason and "KiB on disk" in res.reason and "0.1 MiB" not in res.reason


# ---- F17: device text printed by `devices status`

def test_status_escapes_markup_and_drops_terminal_escapes(tmp_path, vs, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    dev = tmp_path / "d[/x]"
    dev.parent.mkdir()
    assert flash_many(collect_devices([str(dev)]), vs[0])[0].status == "flashed"
    _edit_meta(dev / "versions" / vs[0].version,
               lambda m: m.update(model="\x1b]0;TITLE\x07\x1b[2J[bold]x[/bold][/y]"))
    rc = _main(["devices", "status", "--device", str(dev)])
    out = capsys.readouterr().err  # the table goes to stderr
    assert rc == 1 and "internal error" not in out and vs[0].version[:8] in out, out
    assert "\x1b]0;" not in out and "\x07" not in out and "\x1b[2J" not in out and "[bold]x[/bold][/y]" in out


# ---- over ssh: the same refusal, and the isolated self-test on the device

def test_over_ssh_a_linked_incoming_is_refused_and_planted_files_removed(tmp_path, vs):
    from edgekit.flash import SshOptions
    from sshd import start_sshd

    srv = start_sshd(tmp_path / "sshd")
    try:
        ssh = SshOptions(identity=str(srv.user_key), known_hosts=str(srv.known_hosts),
                         remote_python=sys.executable)
        dev, victim = tmp_path / "dev", tmp_path / "victim"
        victim.mkdir()
        (victim / "n.txt").write_text("mine")
        dev.mkdir()
        (dev / ".incoming").symlink_to(victim)
        res = flash_many(collect_devices([srv.address(str(dev))]), vs[0], ssh=ssh)[0]
        assert (res.status, res.step) == ("failed", "inspect") and ".incoming is a symbolic link" in res.reason
        assert os.listdir(victim) == ["n.txt"]
        (dev / ".incoming").unlink()
        marker = tmp_path / "PWNED"
        _plant(dev / ".incoming" / f"{vs[0].version}-deadbeef", marker)
        res = flash_many(collect_devices([srv.address(str(dev))]), vs[0], ssh=ssh)[0]
        assert res.status == "flashed" and not marker.exists(), res.reason
        assert not (dev / "versions" / vs[0].version / "numpy.py").exists()
    finally:
        srv.stop()
