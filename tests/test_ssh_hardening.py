"""SSH hardening against a real sshd on 127.0.0.1: known_hosts read with OpenSSH's host patterns (a
wildcard or upper-case line pinning another key is a changed key, refused even with
--accept-new-host-key), trust on first use that keeps the file's lines intact, local file
problems named as such, SFTP failures that name the device path; and device addresses that
carry a password or a file:// host."""
from __future__ import annotations

import subprocess
import sys

import pytest

from edgekit.errors import FlashError, UsageError
from edgekit.flash import FlashOptions, SshOptions, collect_devices, flash_many, read_bundle
from edgekit.flash.bundle import build_bundle
from edgekit.flash.devices import parse_device
from edgekit.flash.transport_ssh import DeviceFileError, connect
from flash_fixtures import make_outdir
from sshd import start_device_sshd


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_device_sshd(tmp_path_factory.mktemp("sshd_hard"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def other_key(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("other_key")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "k")], check=True)
    return " ".join((d / "k.pub").read_text().split()[:2])


def _opts(server, kh, **kw) -> SshOptions:
    kw.setdefault("identity", str(server.user_key))
    return SshOptions(known_hosts=str(kh), remote_python=sys.executable, **kw)


def _connect(server, kh, host="127.0.0.1", **kw):
    dev = parse_device(f"ssh://{server.user}@{host}:{server.port}/tmp/unused")
    connect(dev, _opts(server, kh, **kw)).close()


# ---- known_hosts: OpenSSH host patterns for every entry

@pytest.mark.parametrize("pattern", ["[127.0.0.1]:*", "[127.0.0.?]:{port}", "*", "[LOCALHOST]:{port}"])
def test_an_entry_pinning_another_key_by_pattern_is_a_changed_key(server, other_key, tmp_path, pattern):
    # edgekit read these as 'not in known_hosts' and, with --accept-new-host-key, trusted the server's key
    host = "localhost" if "LOCALHOST" in pattern else "127.0.0.1"
    kh = tmp_path / "known_hosts"
    kh.write_text(f"{pattern.format(port=server.port)} {other_key}\n")
    before = kh.read_text()
    for accept in (False, True):
        with pytest.raises(FlashError, match=r"does not match .*known_hosts:1.*also with --accept-new-host-key"):
            _connect(server, kh, host=host, accept_new_host_key=accept)
    assert kh.read_text() == before


@pytest.mark.parametrize("pattern", ["[127.0.0.1]:*", "[127.0.0.1]:{port},other.example", "[127.0.0.?]:{port}"])
def test_an_entry_matching_by_pattern_with_the_right_key_is_accepted(server, tmp_path, pattern):
    kh = tmp_path / "known_hosts"
    kh.write_text(f"{pattern.format(port=server.port)} {server.host_pub}\n")
    _connect(server, kh)  # was: 'not in known_hosts; ... pass --accept-new-host-key'
    assert kh.read_text().count("\n") == 1


def test_a_hashed_entry_with_another_key_is_a_changed_key(server, other_key, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{server.port} {other_key}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(kh)], check=True, capture_output=True)
    with pytest.raises(FlashError, match="does not match"):
        _connect(server, kh, accept_new_host_key=True)


def test_a_negated_pattern_leaves_the_host_unknown(server, other_key, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:*,![127.0.0.1]:{server.port} {other_key}\n")
    with pytest.raises(FlashError, match="is not in"):
        _connect(server, kh)
    _connect(server, kh, accept_new_host_key=True)  # new for OpenSSH too: trusted on first use
    _connect(server, kh)


def test_a_right_key_on_a_second_matching_line_is_accepted(server, other_key, tmp_path):
    # OpenSSH accepts the key when any line for the host holds it, wherever a pattern pins another
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[127.0.0.1]:* {other_key}\n[127.0.0.1]:{server.port} {server.host_pub}\n")
    _connect(server, kh)


def test_a_host_known_by_its_rsa_key_only_is_asked_for_that_key(tmp_path):
    # paramiko ordered host key types by what its exact-name lookup found; edgekit matches names itself
    # now, so it must order them too, or a server that also has an ed25519 key shows that unknown one
    from sshd import start_sshd

    rsa = tmp_path / "host_rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(rsa)], check=True)
    srv = start_sshd(tmp_path / "srv", extra_config=[f"HostKey {rsa}"])
    try:
        kh = tmp_path / "known_hosts"
        kh.write_text(f"[127.0.0.1]:* {' '.join((tmp_path / 'host_rsa.pub').read_text().split()[:2])}\n")
        _connect(srv, kh)
    finally:
        srv.stop()


# ---- trust on first use

def test_trust_on_first_use_keeps_a_last_line_without_newline_intact(server, other_key, tmp_path):
    kh = tmp_path / "known_hosts"
    kh.write_text(f"otherhost {other_key}")  # edited by hand: no final newline
    _connect(server, kh, accept_new_host_key=True)
    lines = kh.read_text().splitlines()
    assert lines == [f"otherhost {other_key}", f"[127.0.0.1]:{server.port} {server.host_pub}"], lines
    assert kh.read_text().endswith("\n")
    _connect(server, kh)  # recorded: no flag needed any more


# ---- local file problems are not "cannot reach"

def test_a_missing_identity_file_is_named_as_a_local_problem(server, tmp_path):
    with pytest.raises(FlashError) as e:
        _connect(server, server.known_hosts, identity=str(tmp_path / "nokey"))
    msg = str(e.value)
    assert f"cannot read the identity file {tmp_path / 'nokey'}: No such file or directory" in msg, msg
    assert "cannot reach" not in msg and "Errno" not in msg


def test_a_known_hosts_file_that_cannot_be_written_is_named(server, tmp_path):
    (tmp_path / "afile").write_text("x")
    kh = tmp_path / "afile" / "known_hosts"
    with pytest.raises(FlashError) as e:
        _connect(server, kh, accept_new_host_key=True)
    msg = str(e.value)
    assert f"in the known-hosts file {kh}: {tmp_path / 'afile'} is not a folder" in msg, msg
    assert "cannot reach" not in msg and "Errno" not in msg


# ---- SFTP failures name the device path

@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard_bundle")
    build_bundle(make_outdir(root / "out"), root / "v.ekb")
    return read_bundle(root / "v.ekb", root)


def _flash(server, bundle, dev):
    opts = _opts(server, server.known_hosts)
    return flash_many(collect_devices([server.address(str(dev))]), bundle, ssh=opts, opts=FlashOptions())[0]


@pytest.mark.parametrize("blocked", ["", "versions"])
def test_a_device_path_blocked_by_a_file_is_named(server, bundle, tmp_path, blocked):
    # was "inspect: Failure (OSError)", paramiko's bare SFTP status
    dev = tmp_path / "dev"
    if blocked:
        dev.mkdir()
    (dev / blocked if blocked else dev).write_text("x")
    res = _flash(server, bundle, dev)
    where = dev / blocked if blocked else dev
    assert (res.status, res.step, res.reason) == ("failed", "inspect", f"{where} exists and is not a folder (a file)")


def test_transport_errors_name_the_path_and_what_is_in_the_way(server, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "folder").mkdir()
    (tmp_path / "f").write_text("x")
    t = connect(parse_device(server.address(str(tmp_path))), _opts(server, server.known_hosts))
    try:
        cases = [
            (lambda: t.makedirs(str(tmp_path / "link")), f"{tmp_path / 'link'} exists and is not a folder "
                                                         f"(a symlink to {tmp_path / 'real'})"),
            (lambda: t.makedirs(str(tmp_path / "f" / "sub")), f"{tmp_path / 'f'} exists and is not a folder (a file)"),
            (lambda: t.read_bytes(str(tmp_path / "folder")), f"{tmp_path / 'folder'} is a folder, not a file"),
            (lambda: t.rename(str(tmp_path / "real"), str(tmp_path / "folder")), f"{tmp_path / 'folder'} already exists"),
            (lambda: t.write_bytes_atomic(str(tmp_path / "folder"), b"x"), f"{tmp_path / 'folder'} is a folder, not a file"),
        ]
        for call, msg in cases:
            with pytest.raises(DeviceFileError) as e:
                call()
            assert str(e.value) == msg
            assert isinstance(e.value, OSError)  # callers still tell a full disk or a lost link by it
    finally:
        t.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "folder", "link", "real"]  # no temp file left


# ---- device addresses

def test_a_password_in_an_ssh_address_is_refused_without_echoing_it():
    with pytest.raises(UsageError) as e:
        parse_device("ssh://root:hunter2@127.0.0.1:2222/opt/models")
    msg = str(e.value)
    assert "passwords are not supported; key-based authentication only" in msg
    assert "hunter2" not in msg and "ssh://root:***@127.0.0.1:2222/opt/models" in msg


@pytest.mark.parametrize("addr", ["file://pi@192.168.1.20/tmp/models", "file://otherhost/tmp/models"])
def test_a_file_address_naming_a_host_is_refused(addr):
    # the host was dropped and this machine's /tmp/models flashed
    with pytest.raises(UsageError, match="names the host"):
        parse_device(addr)


@pytest.mark.parametrize("addr", ["file:///tmp/models", "file://localhost/tmp/models"])
def test_a_local_file_address_is_a_path(addr):
    d = parse_device(addr)
    assert (d.kind, d.path) == ("path", "/tmp/models")


@pytest.mark.parametrize("addr", ["root:hunter2@127.0.0.1:/opt/models", "root:hunter2@127.0.0.1"])
def test_a_password_in_an_scp_style_address_is_refused_without_echoing_it(addr):
    # it was repeated in full, and the advice read 'write ssh://root/<absolute directory>'
    with pytest.raises(UsageError) as e:
        parse_device(addr)
    msg = str(e.value)
    assert "passwords are not supported" in msg and "hunter2" not in msg and "root:***@127.0.0.1" in msg
