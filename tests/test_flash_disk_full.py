"""A flash that fills the device's disk removes its partial upload: left in .incoming it kept the
disk 100% full, and a resume would only hit the same wall. Needs a small real file system (tmpfs)."""
from __future__ import annotations

import os
import sys

import pytest

from edgekit.flash import SshOptions, collect_devices, flash_many, read_bundle
from edgekit.flash.bundle import build_bundle
from flash_fixtures import make_outdir
from sshd import start_sshd



def test_disk_full_removes_the_partial_upload(tmp_path, small_fs):
    dev = small_fs / "models"
    devs = collect_devices([str(dev)])
    build_bundle(make_outdir(tmp_path / "small", seed=0), tmp_path / "small.ekb")
    small = read_bundle(tmp_path / "small.ekb", tmp_path)
    assert flash_many(devs, small)[0].status == "flashed"
    build_bundle(make_outdir(tmp_path / "big", n_in=1024, n_out=512, seed=1), tmp_path / "big.ekb")  # 2 MiB
    res = flash_many(devs, read_bundle(tmp_path / "big.ekb", tmp_path))[0]
    assert (res.status, res.step, res.version) == ("failed", "upload", small.version)
    assert "disk is full" in res.reason and "was removed" in res.reason, res.reason
    assert os.listdir(dev / ".incoming") == []
    assert os.readlink(dev / "current") == f"versions/{small.version}"
    free = os.statvfs(small_fs)
    assert free.f_bavail * free.f_frsize > 512 * 1024  # the space is back for the active version to use


@pytest.mark.slow
def test_disk_full_over_ssh_removes_the_partial_upload(tmp_path, small_fs):
    # SFTP says only "Failure" or "size mismatch": the device's free space tells a full disk apart
    srv = start_sshd(tmp_path / "sshd")
    try:
        build_bundle(make_outdir(tmp_path / "big", n_in=1024, n_out=512, seed=1), tmp_path / "big.ekb")
        ssh = SshOptions(identity=str(srv.user_key), known_hosts=str(srv.known_hosts), remote_python=sys.executable)
        dev = small_fs / "models"
        res = flash_many(collect_devices([srv.address(str(dev))]), read_bundle(tmp_path / "big.ekb", tmp_path),
                         ssh=ssh)[0]
        assert (res.status, res.step) == ("failed", "upload")
        assert "disk is full" in res.reason and "No space left" in res.reason and "was removed" in res.reason
        assert os.listdir(dev / ".incoming") == []
    finally:
        srv.stop()
