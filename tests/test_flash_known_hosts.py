"""known_hosts files as OpenSSH reads them: marker lines and broken lines for other hosts are
skipped, never fatal; a key marked @revoked for this host is refused; verification stays strict."""
from __future__ import annotations

import subprocess
import sys

import pytest

from edgekit.flash import FlashOptions, SshOptions, collect_devices, flash_many, read_bundle
from edgekit.flash.bundle import build_bundle
from edgekit.flash.transport_ssh import _host_matches
from flash_fixtures import make_outdir
from sshd import start_device_sshd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_device_sshd(tmp_path_factory.mktemp("sshd_kh"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("kh_bundle")
    build_bundle(make_outdir(root / "out"), root / "v.ekb")
    return read_bundle(root / "v.ekb", root)


def _other_key(tmp_path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    return " ".join((tmp_path / "other.pub").read_text().split()[:2])


def _flash(server, bundle, dev, kh, **kw):
    opts = SshOptions(identity=str(server.user_key), known_hosts=str(kh), remote_python=sys.executable, **kw)
    return flash_many(collect_devices([server.address(str(dev))]), bundle, ssh=opts, opts=FlashOptions())[0]


def test_marker_and_malformed_lines_for_other_hosts_are_skipped(server, bundle, tmp_path):
    other = _other_key(tmp_path)
    me = f"[127.0.0.1]:{server.port} {server.host_pub}"
    kh = tmp_path / "known_hosts"
    kh.write_text(f"# comment\n@cert-authority *.example.com {other}\n@revoked\totherhost.example {other}\n"
                  f"otherhost.example ssh-ed25519 AAAAbroken\nshort-line\n{me}\n")
    res = _flash(server, bundle, tmp_path / "dev", kh)
    assert res.status == "flashed", res.reason
    # the broken line is named once; the marker lines are understood, not reported as broken
    notes = [w for w in res.warnings if "known_hosts" in w]
    assert len(notes) == 2 and any(f"{kh}:4:" in w for w in notes) and any(f"{kh}:5:" in w for w in notes), notes


def test_hashed_host_name_is_matched(server, bundle, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{server.port} {server.host_pub}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(kh)], check=True, capture_output=True)
    assert "|1|" in kh.read_text()
    assert _flash(server, bundle, tmp_path / "dev", kh).status == "flashed"


@pytest.mark.parametrize("pattern", ["[127.0.0.1]:{port}", "*"])
def test_revoked_key_for_this_host_is_refused_even_if_listed_or_tofu(server, bundle, tmp_path, pattern):
    dev = tmp_path / "dev"
    revoked = f"@revoked {pattern.format(port=server.port)} {server.host_pub}\n"
    kh = tmp_path / "known_hosts"
    kh.write_text(revoked + f"[127.0.0.1]:{server.port} {server.host_pub}\n")
    res = _flash(server, bundle, dev, kh)
    assert (res.status, res.step) == ("failed", "connect") and "@revoked" in res.reason, res.reason
    kh.write_text(revoked)
    res = _flash(server, bundle, dev, kh, accept_new_host_key=True)
    assert (res.status, res.step) == ("failed", "connect") and "@revoked" in res.reason, res.reason
    assert kh.read_text() == revoked  # never trusted on first use either
    assert not dev.exists()


def test_unknown_and_changed_keys_still_refused_next_to_marker_lines(server, bundle, tmp_path):
    other = _other_key(tmp_path)
    kh = tmp_path / "known_hosts"
    kh.write_text(f"@cert-authority [127.0.0.1]:{server.port} {server.host_pub}\n")  # CA lines are not host keys
    res = _flash(server, bundle, tmp_path / "dev", kh)
    assert (res.status, res.step) == ("failed", "connect") and "not in" in res.reason
    kh.write_text(f"garbage\n[127.0.0.1]:{server.port} {other}\n")
    res = _flash(server, bundle, tmp_path / "dev", kh, accept_new_host_key=True)
    assert (res.status, res.step) == ("failed", "connect") and "does not match" in res.reason


def test_host_patterns():
    assert _host_matches(["*.example.com"], "a.example.com")
    assert not _host_matches(["*.example.com", "!a.example.com"], "a.example.com")
    assert _host_matches(["[127.0.0.1]:2222"], "[127.0.0.1]:2222")
    assert not _host_matches(["127.0.0.1"], "[127.0.0.1]:2222")


@pytest.mark.parametrize("cmd", [["flash", "b.ekb", "--device", "ssh://me@127.0.0.1/opt/m"],
                                 ["profile", "m.onnx", "--target", "t.toml"]])
def test_a_missing_identity_file_is_refused_before_any_connection(tmp_path, monkeypatch, capsys, cmd):
    # it was only found by paramiko, mid-connect, and read "connect: cannot reach me@127.0.0.1:22: [Errno 2] ..."
    from edgekit.cli import main

    monkeypatch.chdir(tmp_path)
    for f in ("b.ekb", "m.onnx", "t.toml"):
        (tmp_path / f).write_text("")
    with pytest.raises(SystemExit) as e:
        main(cmd + ["--identity", str(tmp_path / "no-such-key")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--identity" in err and "no-such-key" in err and "does not exist" in err, err
    assert "cannot reach" not in err
