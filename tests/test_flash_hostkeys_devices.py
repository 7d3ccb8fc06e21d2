"""Host keys and device lists (sweep29 F1-F6), against a real sshd on 127.0.0.1: a host pinned with a key
of another type is a changed host, not a new one; known_hosts is read once per run (a pipe works) and
never without bound; an unusable --identity file and a devices file that is not UTF-8 are named; a '#'
inside an address is part of it; `devices status` is unhealthy when `current` names no version."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cliutil import run_cli
from edgekit.errors import FlashError
from edgekit.flash import FlashOptions, SshOptions, collect_devices, flash_many, read_bundle
from edgekit.flash.bundle import build_bundle
from edgekit.flash.devices import parse_device, read_devices_file
from edgekit.flash.transport_ssh import connect
from flash_fixtures import make_outdir
from sshd import start_device_sshd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_device_sshd(tmp_path_factory.mktemp("sshd_hk"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def ekb(tmp_path_factory):
    root = tmp_path_factory.mktemp("hk_bundle")
    build_bundle(make_outdir(root / "out"), root / "v.ekb")
    return root / "v.ekb"


@pytest.fixture(scope="module")
def other_type_keys(tmp_path_factory) -> dict:
    """Public keys of the types the server (ed25519 only) does not have, as 'type base64'."""
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for kind, extra in (("rsa", ["-b", "2048"]), ("ecdsa", [])):
        subprocess.run(["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-f", str(d / kind)], check=True)
        out[kind] = " ".join((d / f"{kind}.pub").read_text().split()[:2])
    return out


def _opts(server, kh, **kw) -> SshOptions:
    return SshOptions(identity=str(server.user_key), known_hosts=str(kh), remote_python=sys.executable, **kw)


def _connect(server, opts):
    connect(parse_device(server.address("/tmp/unused")), opts).close()


# ---- F1: a pin of another key type is a changed key

@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
@pytest.mark.parametrize("hashed", [False, True])
def test_a_pin_of_another_key_type_is_a_changed_key(server, other_type_keys, tmp_path, kind, hashed):
    # the server offers ed25519; known_hosts pins an RSA/ECDSA key for [127.0.0.1]:port. edgekit called that
    # "not in known_hosts" and, with --accept-new-host-key, connected and appended the ed25519 key
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{server.port} {other_type_keys[kind]}\n")
    if hashed:
        subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(kh)], check=True, capture_output=True)
        assert kh.read_text().startswith("|1|")
    before = kh.read_text()
    for accept in (False, True):
        with pytest.raises(FlashError) as e:
            _connect(server, _opts(server, kh, accept_new_host_key=accept))
        msg = str(e.value)
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in msg and f"[127.0.0.1]:{server.port}" in msg, msg
        assert f"{kh}:1" in msg and "also with --accept-new-host-key" in msg, msg
    assert kh.read_text() == before


def test_cli_flash_with_accept_new_refuses_a_pin_of_another_type(server, other_type_keys, ekb, tmp_path, capsys):
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{server.port} {other_type_keys['rsa']}\n")
    before = kh.read_text()
    rc = run_cli(["flash", str(ekb), "--device", server.address(str(tmp_path / "dev")), "--identity",
                  str(server.user_key), "--known-hosts", str(kh), "--remote-python", sys.executable,
                  "--accept-new-host-key", "--json"])
    out = capsys.readouterr().out
    assert rc == 1 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in out, out
    assert kh.read_text() == before and not (tmp_path / "dev").exists()


def test_the_right_key_beside_a_pin_of_another_type_is_accepted(server, other_type_keys, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{server.port} {other_type_keys['rsa']}\n[127.0.0.1]:{server.port} {server.host_pub}\n")
    _connect(server, _opts(server, kh))


# ---- F4: known_hosts read once per run, and with a size limit

def test_known_hosts_from_a_pipe_serves_every_device(server, ekb, tmp_path):
    # as --known-hosts <(cat known_hosts) gives it: a pipe can be read once, and re-read per device all but
    # the first device were refused as "not in /dev/fd/N", exit 1
    r, w = os.pipe()
    try:
        os.write(w, f"[127.0.0.1]:{server.port} {server.host_pub}\n".encode())
        os.close(w)
        devs = collect_devices([server.address(str(tmp_path / "p1")), server.address(str(tmp_path / "p2"))])
        res = flash_many(devs, read_bundle(ekb, tmp_path), ssh=_opts(server, f"/dev/fd/{r}"), opts=FlashOptions(),
                         jobs=1)
    finally:
        os.close(r)
    assert [x.status for x in res] == ["flashed", "flashed"], [x.reason for x in res]


def test_a_new_host_is_recorded_once_for_many_devices(server, ekb, tmp_path):
    kh = tmp_path / "known_hosts"
    devs = collect_devices([server.address(str(tmp_path / f"d{i}")) for i in range(3)])
    res = flash_many(devs, read_bundle(ekb, tmp_path), ssh=_opts(server, kh, accept_new_host_key=True),
                     opts=FlashOptions(), jobs=3)
    assert all(r.status == "flashed" for r in res), [r.reason for r in res]
    assert kh.read_text() == f"[127.0.0.1]:{server.port} {server.host_pub}\n"


def test_an_oversized_known_hosts_is_refused_up_front(server, ekb, tmp_path, capsys):
    # /dev/zero was read whole: 22 GB, then the OOM killer
    big = tmp_path / "huge"
    with open(big, "wb") as f:
        f.truncate(65 << 20)  # sparse: costs no disk
    rc = run_cli(["flash", str(ekb), "--device", server.address(str(tmp_path / "dev")), "--identity",
                  str(server.user_key), "--known-hosts", str(big)])
    err = capsys.readouterr().err
    assert rc == 2 and f"the known-hosts file {big} is larger than 64 MiB" in err, err
    with pytest.raises(FlashError, match="larger than 64 MiB"):
        _connect(server, _opts(server, big))


# ---- F5: an unusable identity file is named

@pytest.mark.parametrize("what", ["pub", "garbage"])
def test_an_unusable_identity_file_is_named(server, ekb, tmp_path, capsys, what):
    # it read "connect: cannot reach root@127.0.0.1:PORT: not a valid OPENSSH private key file", once per device
    key = tmp_path / ("id.pub" if what == "pub" else "id_garbage")
    key.write_text(f"{server.host_pub} x\n" if what == "pub" else "garbage\n")
    rc = run_cli(["flash", str(ekb), "--device", server.address(str(tmp_path / "dev")), "--identity", str(key),
                  "--known-hosts", str(server.known_hosts)])
    err = capsys.readouterr().err
    assert rc == 2 and f"the identity file {key}" in err and "cannot reach" not in err, err
    assert ("public key" in err) == (what == "pub"), err
    with pytest.raises(FlashError, match=f"the identity file {key}"):
        _connect(server, SshOptions(identity=str(key), known_hosts=str(server.known_hosts)))


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
