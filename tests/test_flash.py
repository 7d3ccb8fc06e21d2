"""edgekit flash against a real OpenSSH server on 127.0.0.1: every fault leaves the previous version.

The 'device' is a directory on this machine reached only through sshd (SFTP + exec), so the
tests can check on disk what the device holds: files, hashes, the `current` link.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.flash import FlashOptions, SshOptions, collect_devices, flash_many, read_bundle, rollback_many
from edgekit.flash.bundle import META, build_bundle
from flash_fixtures import make_outdir, rebuild_bundle, tree_hashes
from sshd import start_device_sshd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    srv = start_device_sshd(tmp_path_factory.mktemp("sshd"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Four distinct real bundles (different weights) plus a big one for the mid-upload kill."""
    root = tmp_path_factory.mktemp("bundles")
    out = []
    for i in range(4):
        od = make_outdir(root / f"out{i}", seed=i)
        build_bundle(od, root / f"v{i}.ekb")
        out.append(read_bundle(root / f"v{i}.ekb", root))
    od = make_outdir(root / "big", n_in=1024, n_out=512, seed=9)  # 2 MiB: many SFTP writes
    build_bundle(od, root / "big.ekb")
    return {"v": out, "big": read_bundle(root / "big.ekb", root), "root": root}


def ssh_opts(server, **kw):
    kw.setdefault("identity", str(server.user_key))
    kw.setdefault("known_hosts", str(server.known_hosts))
    kw.setdefault("remote_python", sys.executable)  # the device's Python: this venv (numpy + onnxruntime)
    return SshOptions(**kw)


def flash(server, dev, bundle, emit=None, **kw):
    devs = collect_devices([server.address(str(dev))])
    return flash_many(devs, bundle, ssh=ssh_opts(server), opts=FlashOptions(**kw), emit=emit)[0]


def assert_active(dev, bundle):
    """`current` points at bundle's version and every file there has the bundle's hash."""
    assert os.readlink(dev / "current") == f"versions/{bundle.version}"
    want = dict(bundle.files)
    want[META] = bundle.meta_sha256()
    assert tree_hashes(dev / "current") == want


def test_flash_checks_on_disk_then_up_to_date(server, bundles, tmp_path, capsys):
    from edgekit.cli import main

    # quotes, spaces and $(...) in the path: every remote argument must be quoted, never interpreted
    dev = tmp_path / "dev dir's $(touch pwned)"
    v0 = bundles["v"][0]
    rc = main(["flash", str(bundles["root"] / "v0.ekb"), "--device", server.address(str(dev)),
               "--identity", str(server.user_key), "--known-hosts", str(server.known_hosts),
               "--remote-python", sys.executable, "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)["results"][0]
    assert res["status"] == "flashed" and res["version"] == v0.version and res["bytes_sent"] == v0.total_bytes()
    assert_active(dev, v0)
    assert not (Path.home() / "pwned").exists() and not (tmp_path / "pwned").exists()
    assert (dev / "current" / "model.fp32.onnx").read_bytes() == (v0.root / "model.fp32.onnx").read_bytes()
    hist = json.loads((dev / "history.json").read_text())
    assert hist[-1]["version"] == v0.version
    assert hist[-1]["selftest"]["ok"] is True  # the runner's report from the device
    assert os.listdir(dev / ".incoming") == []
    # same content again: nothing is sent and nothing changes
    mtime = (dev / "versions" / v0.version).stat().st_mtime_ns
    again = flash(server, dev, v0)
    assert (again.status, again.bytes_sent, again.files_sent) == ("up-to-date", 0, 0)
    assert (dev / "versions" / v0.version).stat().st_mtime_ns == mtime
    assert_active(dev, v0)


def test_connection_killed_mid_upload_then_resume(server, bundles, tmp_path):
    dev, v0, big = tmp_path / "dev", bundles["v"][0], bundles["big"]
    assert flash(server, dev, v0).status == "flashed"
    killed = []

    def emit(device, step, info):
        if step == "upload" and info and info["sent"] > info["total"] // 3 and not killed:
            killed.append(server.kill_sessions())  # the sshd process serving this connection dies

    res = flash(server, dev, big, emit=emit)
    assert killed and killed[0] >= 1
    assert (res.status, res.step) == ("failed", "upload"), res
    assert "connection" in res.reason or "closed" in res.reason.lower()
    assert res.version == v0.version
    assert_active(dev, v0)
    assert not (dev / "versions" / big.version).exists()  # a partial upload is never a version
    assert len(os.listdir(dev / ".incoming")) == 1
    retry = flash(server, dev, big)
    assert retry.status == "flashed", retry
    assert retry.files_resumed >= 2 and retry.bytes_sent < big.total_bytes()  # resumed, not restarted
    assert_active(dev, big)
    assert os.listdir(dev / ".incoming") == []


def test_file_corrupted_on_device_before_activation(server, bundles, tmp_path):
    dev, v0, v1 = tmp_path / "dev", *bundles["v"][:2]
    assert flash(server, dev, v0).status == "flashed"

    def emit(device, step, info):
        if step == "verify":  # upload finished; flip a byte of the uploaded model on the device
            (stage,) = (dev / ".incoming").iterdir()
            p = stage / "model.fp32.onnx"
            data = bytearray(p.read_bytes())
            data[len(data) // 2] ^= 0xFF
            p.write_bytes(bytes(data))

    res = flash(server, dev, v1, emit=emit)
    assert (res.status, res.step) == ("failed", "verify"), res
    assert "model.fp32.onnx" in res.reason
    assert_active(dev, v0)
    retry = flash(server, dev, v1)  # only the damaged file goes again
    assert retry.status == "flashed" and retry.files_sent == 1, retry
    assert_active(dev, v1)
    # the active copy damaged on the device: flashing the same bundle again over SSH repairs it
    p = dev / "versions" / v1.version / "model.fp32.onnx"
    p.write_bytes(p.read_bytes()[:-10])
    repair = flash(server, dev, v1)
    assert repair.status == "flashed" and any("was damaged" in w for w in repair.warnings), repair
    assert_active(dev, v1)
    assert list((dev / ".incoming").iterdir()) == []


def test_failing_selftest_refused(server, bundles, tmp_path):
    dev, v0 = tmp_path / "dev", bundles["v"][0]
    assert flash(server, dev, v0).status == "flashed"

    def wrong_expected(d):
        from edgekit.flash.archive import save_npz

        save_npz(d / "expected.npz", {k: v + 1.0 for k, v in np.load(d / "expected.npz").items()})

    bad_path = tmp_path / "bad.ekb"
    rebuild_bundle(bundles["root"] / "v1.ekb", bad_path, wrong_expected)
    bad = read_bundle(bad_path, tmp_path)
    res = flash(server, dev, bad)
    assert (res.status, res.step) == ("failed", "selftest"), res
    assert "self-test failed" in res.reason
    assert_active(dev, v0)
    assert not (dev / "versions" / bad.version).exists() and os.listdir(dev / ".incoming") == []


def test_history_keep_rollback_and_status(server, bundles, tmp_path, capsys):
    from edgekit.cli import main

    dev, vs = tmp_path / "dev", bundles["v"]
    for b in vs:
        assert flash(server, dev, b, keep=3).status == "flashed"
    assert sorted(os.listdir(dev / "versions")) == sorted(b.version for b in vs[1:])  # oldest removed
    assert_active(dev, vs[3])
    common = ["--device", server.address(str(dev)), "--identity", str(server.user_key),
              "--known-hosts", str(server.known_hosts), "--remote-python", sys.executable]
    assert main(["flash", "--rollback", *common, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["results"][0]
    assert (res["status"], res["version"], res["previous"]) == ("rolled-back", vs[2].version, vs[3].version)
    assert_active(dev, vs[2])
    assert rollback_many(collect_devices([server.address(str(dev))]), ssh=ssh_opts(server))[0].version == vs[1].version
    assert_active(dev, vs[1])
    last = rollback_many(collect_devices([server.address(str(dev))]), ssh=ssh_opts(server))[0]
    assert (last.status, last.step) == ("failed", "inspect") and "no earlier version" in last.reason
    assert_active(dev, vs[1])
    # a damaged candidate is refused too: flash v2 back (kept), damage v1, roll back
    again = flash(server, dev, vs[2])  # still kept on the device: re-verified and re-tested, not re-sent
    assert (again.status, again.files_sent) == ("flashed", 0)
    (dev / "versions" / vs[1].version / "model.fp32.onnx").write_bytes(b"garbage")
    r = rollback_many(collect_devices([server.address(str(dev))]), ssh=ssh_opts(server))[0]
    assert (r.status, r.step) == ("failed", "verify") and "damaged" in r.reason
    assert_active(dev, vs[2])
    # status lists every version, the active one, hashes, and spots the damaged copy
    assert main(["devices", "status", *common, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)["devices"][0]
    assert rep["active"] == vs[2].version
    by = {v["version"]: v for v in rep["versions"]}
    assert by[vs[2].version]["active"] and by[vs[2].version]["intact"]
    assert by[vs[2].version]["model_sha256"] == vs[2].files["model.fp32.onnx"]
    assert by[vs[1].version]["intact"] is False and "model.fp32.onnx" in by[vs[1].version]["problems"][0]


def test_host_keys_unknown_refused_changed_refused_tofu_recorded(server, bundles, tmp_path):
    dev, v0 = tmp_path / "dev", bundles["v"][0]
    devs = collect_devices([server.address(str(dev))])
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    res = flash_many(devs, v0, ssh=ssh_opts(server, known_hosts=str(empty)))[0]
    assert (res.status, res.step) == ("failed", "connect") and "not in" in res.reason
    assert not dev.exists()  # refused before anything was touched
    # a different key recorded for this host: always refused, even with --accept-new-host-key
    other = tmp_path / "other_kh"
    import paramiko

    fake = paramiko.Ed25519Key.from_private_key_file(str(server.user_key))
    other.write_text(f"[127.0.0.1]:{server.port} ssh-ed25519 {fake.get_base64()}\n")
    res = flash_many(devs, v0, ssh=ssh_opts(server, known_hosts=str(other), accept_new_host_key=True))[0]
    assert (res.status, res.step) == ("failed", "connect") and "does not match" in res.reason
    assert not dev.exists()
    res = flash_many(devs, v0, ssh=ssh_opts(server, known_hosts=str(empty), accept_new_host_key=True))[0]
    assert res.status == "flashed"
    assert empty.read_text().split() == [f"[127.0.0.1]:{server.port}", *server.host_pub.split()]
    assert_active(dev, v0)


def test_path_traversal_bundle_refused_by_flash(server, tmp_path, capsys):
    import io
    import tarfile

    from edgekit.cli import main

    evil = tmp_path / "evil.ekb"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../../evil.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"x\n"))
    dev = tmp_path / "dev"
    with pytest.raises(SystemExit) as e:
        main(["flash", str(evil), "--device", server.address(str(dev)), "--identity", str(server.user_key),
              "--known-hosts", str(server.known_hosts)])
    assert e.value.code == 2
    assert "unsafe entry '../../evil.txt'" in capsys.readouterr().err
    assert not dev.exists() and not (tmp_path.parent / "evil.txt").exists()


def test_many_devices_concurrently_with_a_failure(server, bundles, tmp_path, capsys):
    from edgekit.cli import main

    v0 = bundles["v"][0]
    devs = [tmp_path / f"dev{i}" for i in range(3)]
    assert flash(server, devs[2], v0).status == "flashed"  # already up to date
    listing = tmp_path / "devices.txt"
    import socket

    with socket.socket() as s:  # a port with nothing listening: that device fails to connect
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    listing.write_text("# fleet\n" + "\n".join(server.address(str(d)) for d in devs)
                       + f"\nssh://{server.user}@127.0.0.1:{dead}/srv/x\n")
    with pytest.raises(SystemExit) as e:
        main(["flash", str(bundles["root"] / "v0.ekb"), "--devices-file", str(listing), "--jobs", "2",
              "--identity", str(server.user_key), "--known-hosts", str(server.known_hosts),
              "--remote-python", sys.executable, "--json"])
    assert e.value.code == 1
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["status"] for r in results] == ["flashed", "flashed", "up-to-date", "failed"]
    assert results[3]["step"] == "connect" and "cannot reach" in results[3]["reason"]
    for d in devs:
        assert_active(d, v0)


def test_bench_on_device_leaves_deployment_alone(server, bundles, tmp_path):
    from edgekit.flash.remote import bench_on_device

    dev, v0, v1 = tmp_path / "dev", *bundles["v"][:2]
    assert flash(server, dev, v0).status == "flashed"
    rep = bench_on_device(server.address(str(dev)), v1, ["--runs", "3"], ssh=ssh_opts(server))
    assert rep["p50_ms"] > 0 and rep.get("status", "ok") == "ok"
    assert_active(dev, v0)  # the benchmarked bundle was staged apart, never activated
    (staged,) = (dev / ".bench").iterdir()
    assert tree_hashes(staged) == {**v1.files, META: v1.meta_sha256()}


def test_unsafe_version_refused_over_ssh(server, bundles, tmp_path):
    """read_bundle refuses these; the deploy layer refuses them too before any SFTP path is built from them."""
    from edgekit.errors import TargetError
    from edgekit.flash import Bundle
    from edgekit.flash.remote import run_runner

    def tree():
        return sorted(os.path.join(d, n) for d, ds, fs in os.walk(tmp_path) for n in ds + fs)

    v0 = bundles["v"][0]
    dev = tmp_path / "a" / "b" / "dev"
    assert flash(server, dev, v0).status == "flashed"
    before = tree()
    for version in ("../../evil-0123", "x/../../y-0123"):
        evil = Bundle(v0.root, {**v0.meta, "version": version})
        res = flash(server, dev, evil)
        assert (res.status, res.step, res.version) == ("failed", "inspect", v0.version)
        assert "unsafe version name" in res.reason
        with pytest.raises(TargetError, match="upload: unsafe version name"):
            run_runner(server.address(str(dev)), evil, ["selftest", "--bundle", "{dir}"], ssh=ssh_opts(server))
    assert tree() == before
    assert_active(dev, v0)
