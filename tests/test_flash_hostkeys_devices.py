"""Device lists and status (sweep29): `devices status` is unhealthy when `current` names no version."""
from __future__ import annotations

import json

import pytest

from cliutil import run_cli
from edgekit.flash.bundle import build_bundle
from flash_fixtures import make_outdir

@pytest.fixture(scope="module")
def ekb(tmp_path_factory):
    root = tmp_path_factory.mktemp("hk_bundle")
    build_bundle(make_outdir(root / "out"), root / "v.ekb")
    return root / "v.ekb"


# ---- F3: status of a device whose `current` is no edgekit version

@pytest.mark.parametrize("how", ["outside", "folder"])
def test_status_is_unhealthy_when_current_names_no_version(ekb, tmp_path, capsys, how):
    dev = tmp_path / "m"
    assert run_cli(["flash", str(ekb), "--device", str(dev)]) == 0
    (dev / "current").unlink()
    if how == "outside":
        (dev / "current").symlink_to(tmp_path)
    else:
        (dev / "current").mkdir()
    capsys.readouterr()
    rc = run_cli(["devices", "status", "--device", str(dev), "--json"])
    rep = json.loads(capsys.readouterr().out)["devices"][0]
    assert rc == 1 and rep["healthy"] is False and rep["active"] is None and "current" in rep["note"], rep
