"""A real, throwaway OpenSSH server on 127.0.0.1 for the flash tests.

Debian's /usr/sbin/sshd with its own host key, a user key, key-only auth and a config
file of its own (-f), run in the foreground (-D -e) as the current user. Nothing of the
system's ssh setup is read or changed.
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"


@dataclass
class SshServer:
    host: str
    port: int
    user: str
    user_key: Path  # private key accepted by the server
    known_hosts: Path  # holds the server's host key
    host_pub: str  # "ssh-ed25519 AAAA..."
    root: Path
    proc: subprocess.Popen

    def address(self, path) -> str:
        return f"ssh://{self.user}@{self.host}:{self.port}{path}"

    def session_pids(self) -> list[int]:
        """Processes sshd forked for client connections (all descendants of the listener)."""
        kids, frontier = [], [self.proc.pid]
        while frontier:
            parent = frontier.pop()
            for d in os.listdir("/proc"):
                if not d.isdigit():
                    continue
                try:
                    stat = Path(f"/proc/{d}/stat").read_text()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == parent:
                    kids.append(int(d))
                    frontier.append(int(d))
        return kids

    def kill_sessions(self) -> int:
        n = 0
        for pid in self.session_pids():
            try:
                os.kill(pid, 9)
                n += 1
            except ProcessLookupError:
                pass
        return n

    def log(self) -> str:
        return (self.root / "sshd.log").read_text(errors="replace") if (self.root / "sshd.log").exists() else ""

    def stop(self) -> None:
        self.kill_sessions()
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgekit-test", "-f", str(path)],
                   check=True, capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sshd(root: Path, env: dict | None = None, extra_config=()) -> SshServer:
    """Start sshd under root (keys, config, log there); wait until it accepts connections.

    extra_config: more sshd_config lines (e.g. a ForceCommand), appended last."""
    if not os.access(SSHD, os.X_OK) or not shutil.which("ssh-keygen"):
        raise RuntimeError(f"{SSHD} or ssh-keygen missing: install Debian's openssh-server "
                           "(scripts/test.sh does it)")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    host_key, user_key = root / "host_ed25519", root / "user_ed25519"
    _keygen(host_key)
    _keygen(user_key)
    (root / "authorized_keys").write_text((root / "user_ed25519.pub").read_text())
    host_pub = " ".join((root / "host_ed25519.pub").read_text().split()[:2])
    try:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir sshd insists on
    except PermissionError:
        raise RuntimeError("/run/sshd is missing and cannot be created: run `sudo mkdir -p /run/sshd`") from None
    user = getpass.getuser()
    setenv = " ".join(f'"{k}={v}"' for k, v in (env or {}).items())
    last = ""
    for _ in range(5):  # another process may grab the port between probing and binding
        port = _free_port()
        cfg = root / "sshd_config"
        cfg.write_text("\n".join(filter(None, [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host_key}",
            f"PidFile {root / 'sshd.pid'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}",
            f"AllowUsers {user}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "StrictModes no",  # keys live in a pytest tmp dir
            "UsePAM no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "PrintMotd no",
            "Subsystem sftp internal-sftp",
            f"SetEnv {setenv}" if setenv else "",
            "LogLevel VERBOSE",
            *extra_config,
        ])) + "\n")
        log = open(root / "sshd.log", "ab")
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        known = root / "known_hosts"
                        known.write_text(f"[127.0.0.1]:{port} {host_pub}\n")
                        return SshServer("127.0.0.1", port, user, user_key, known, host_pub, root, proc)
            except OSError:
                time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        last = (root / "sshd.log").read_text(errors="replace")[-800:]
    raise RuntimeError(f"sshd did not start: {last}")


def start_device_sshd(root: Path) -> SshServer:
    """sshd for a flash device under root/server: the remote self-test imports onnxruntime and numba, whose
    caches stay under root/device-cache, out of the real home."""
    cache = root / "device-cache"
    return start_sshd(root / "server", env={"XDG_CACHE_HOME": str(cache), "NUMBA_CACHE_DIR": str(cache / "numba")})


def loopback_target(srv: SshServer, root: Path) -> tuple[Path, Path]:
    """(target TOML, device folder): root/device on this host reached through srv, as an x86_64 target with
    one thread on the CPU provider, for profiling over SSH."""
    dev = root / "device"
    dev.mkdir()
    t = root / "loopback.toml"
    t.write_text(f'arch = "x86_64"\naddress = "{srv.address(str(dev))}"\nthreads = 1\n'
                 'providers = ["CPUExecutionProvider"]\n')
    return t, dev
