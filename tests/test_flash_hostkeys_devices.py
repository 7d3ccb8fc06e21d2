"""Device lists and status (sweep29): a '#' inside an address is part of it; a devices file that is not
UTF-8 is named; `devices status` is unhealthy when `current` names no version."""
from __future__ import annotations

import json

import pytest

from cliutil import run_cli
from edgekit.flash.bundle import build_bundle
from edgekit.flash.devices import read_devices_file
from flash_fixtures import make_outdir

@pytest.fixture(scope="module")
def ekb(tmp_path_factory):
    root = tmp_path_factory.mktemp("hk_bundle")
    build_bundle(make_outdir(root / "out"), root / "v.ekb")
    return root / "v.ekb"


# ---- F2, F6: devices files

def test_a_hash_inside_an_address_is_kept(ekb, tmp_path):
    card = tmp_path / "unit#2"
    card.mkdir()
    devs = tmp_path / "devs.txt"
    devs.write_text(f"# fleet\n{card}/models\n{tmp_path}/b  # spare\n\t#{tmp_path}/off\nssh://pi@h/opt/u#1/m #x\n")
    assert read_devices_file(devs) == [f"{card}/models", f"{tmp_path}/b", "ssh://pi@h/opt/u#1/m"]
    devs.write_text(f"{card}/models\n")
    assert run_cli(["flash", str(ekb), "--devices-file", str(devs)]) == 0
    # it flashed tmp_path/unit, a folder beside the card's
    assert (card / "models" / "current").is_symlink() and not (tmp_path / "unit").exists()


@pytest.mark.parametrize("enc", ["utf-16", "latin-1"])
def test_a_devices_file_that_is_not_utf8_is_named(tmp_path, capsys, enc):
    devs = tmp_path / "devs.txt"
    devs.write_bytes(f"{tmp_path}/café/m\n".encode(enc))
    rc = run_cli(["devices", "status", "--devices-file", str(devs)])
    err = capsys.readouterr().err
    assert rc == 2 and f"{devs}: cannot read the devices file: not UTF-8 text" in err, err
    assert "internal error" not in err


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
