"""A real aarch64 ONNX Runtime on an x86 host: an arm64 Debian root file system run with qemu-user.

Setup (`edgekit targets setup arm64-emulated`), cached under cache_dir()/arm64-rootfs:
  1. `debootstrap --foreign --variant=minbase --arch=arm64 --include=python3` (stage 1 only: no
     emulated package scripts), then every downloaded .deb unpacked with `dpkg-deb -x`;
  2. aarch64 wheels of numpy and onnxruntime (the host's versions) installed from this host with
     `pip install --target ... --platform manylinux_2_28_aarch64 ...` (with only the 2_27 tag pip
     silently picks an old onnxruntime);
  3. a fake /proc/cpuinfo and sysfs CPU files describing a Cortex-A72, the CPU qemu emulates
     (QEMU_CPU=cortex-a72): onnxruntime >= 1.28 reads the host's x86 cpuinfo and crashes otherwise,
     and advertising dot-product that qemu does not emulate kills INT8 runs with SIGILL;
  4. the host's CA bundle, so pip inside the rootfs can verify TLS.
It is built in a temp directory beside the cache and renamed into place, under a lock: setup is
idempotent, and an interrupted one leaves no half-built rootfs behind.

Running: `qemu-aarch64-static -L ROOTFS ROOTFS/usr/bin/python3 edgekit_runner.py ...` (qemu looks
absolute paths up in ROOTFS first, so no chroot or binfmt is needed and host temp files are visible).
Timings are labelled emulated and are 40-600x slower than a device: correctness only.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .errors import TargetError
from .fsutil import cache_dir

QEMU = "qemu-aarch64-static"
QEMU_CPU = "cortex-a72"
SUITE = "bookworm"  # python3.11, like the host's wheels tag
PYVER = "3.11"
MARKER = "edgekit-rootfs.json"
ROOTFS_FORMAT = 1
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux2014_aarch64")
SITE = f"usr/local/lib/python{PYVER}/dist-packages"
# Cortex-A72 (ARMv8.0-A): part 0xd08, no dot-product; must match what QEMU_CPU emulates.
_CPUINFO_ENTRY = """processor\t: {i}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3
"""


def rootfs_path() -> Path:
    return cache_dir() / "arm64-rootfs"


def status() -> dict:
    """Whether the emulated target is ready, and what is missing if not."""
    root = rootfs_path()
    missing_tools = [t for t in (QEMU, "debootstrap", "dpkg-deb") if not shutil.which(t)]
    info = {"rootfs": str(root), "ready": False, "missing_tools": missing_tools}
    marker = root / MARKER
    if marker.is_file():
        with contextlib.suppress(OSError, ValueError):
            info.update(json.loads(marker.read_text()))
            info["ready"] = info.get("format") == ROOTFS_FORMAT and not (set(missing_tools) & {QEMU})
    return info


def ensure_ready() -> Path:
    """The rootfs path, or TargetError saying how to set it up."""
    st = status()
    if QEMU in st["missing_tools"]:
        raise TargetError(f"arm64-emulated needs {QEMU} (apt-get install qemu-user-static)")
    if not st["ready"]:
        raise TargetError("arm64-emulated is not set up: run `edgekit targets setup arm64-emulated` "
                          f"(builds {st['rootfs']}, ~450 MB, a few minutes)")
    return Path(st["rootfs"])


# ---------------------------------------------------------------- setup


def setup(*, progress=None, force: bool = False, mirror: str | None = None) -> dict:
    """Build the arm64 rootfs if it is not there (or force). Returns status(). progress(str) narrates."""
    say = progress or (lambda msg: None)
    missing = [t for t in (QEMU, "debootstrap", "dpkg-deb") if not shutil.which(t)]
    if missing:
        raise TargetError(f"arm64-emulated setup needs {', '.join(missing)} "
                          "(apt-get install qemu-user-static debootstrap)")
    dest = rootfs_path()
    with _lock(dest.parent / ".arm64-rootfs.lock"):
        if status()["ready"] and not force:
            say(f"arm64 rootfs already set up at {dest}")
            return status()
        tmp = Path(tempfile.mkdtemp(prefix=".arm64-rootfs.tmp-", dir=dest.parent))
        try:
            _build(tmp, say, mirror or os.environ.get("EDGEKIT_DEBIAN_MIRROR") or "http://deb.debian.org/debian")
            old = None
            if dest.exists():  # force: move the old one aside first, drop it once the new one is in place
                old = dest.with_name(f".arm64-rootfs.old-{os.getpid()}")
                os.rename(dest, old)
            os.rename(tmp, dest)
            if old:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    say(f"arm64 rootfs ready at {dest}")
    return status()


@contextlib.contextmanager
def _lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(argv, what: str, timeout: float = 1800, **kw) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise TargetError(f"arm64-emulated setup: {what} timed out after {timeout:.0f} s") from None
    if p.returncode != 0:
        tail = (p.stderr.strip() or p.stdout.strip()).splitlines()[-1:] or [f"exit {p.returncode}"]
        raise TargetError(f"arm64-emulated setup: {what} failed: {tail[0][:300]}")
    return p


def _build(root: Path, say, mirror: str) -> None:
    t0 = time.monotonic()
    say(f"debootstrap stage 1 ({SUITE}, arm64, minbase + python3) from {mirror}")
    _run(["debootstrap", "--foreign", "--variant=minbase", "--arch=arm64", "--include=python3",
          SUITE, str(root), mirror], "debootstrap")
    debs = sorted((root / "var/cache/apt/archives").glob("*.deb"))
    say(f"unpacking {len(debs)} packages with dpkg-deb -x")
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(root)], f"dpkg-deb -x {deb.name}", timeout=300)
    for deb in debs:
        deb.unlink()
    if not (root / f"usr/bin/python{PYVER}").exists():
        raise TargetError(f"arm64-emulated setup: the rootfs has no python{PYVER} after unpacking")
    py3 = root / "usr/bin/python3"
    if not py3.exists():
        py3.symlink_to(f"python{PYVER}")
    _fake_cpu(root)
    certs = Path("/etc/ssl/certs/ca-certificates.crt")
    if certs.is_file():
        (root / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(certs, root / "etc/ssl/certs/ca-certificates.crt")
    pins = _host_pins()
    say(f"installing aarch64 wheels: {', '.join(pins)}")
    site = root / SITE
    site.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target", str(site),
           "--only-binary=:all:", "--python-version", PYVER, "--implementation", "cp"]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    try:
        _run(cmd + pins, "pip install (aarch64 wheels)")
    except TargetError:  # the host's exact versions may have no aarch64 wheel: take the newest that has one
        say("the host's exact versions have no aarch64 wheels; taking the newest available")
        _run(cmd + [p.split("==")[0] for p in pins], "pip install (aarch64 wheels)")
    say("checking onnxruntime imports and runs under qemu")
    probe = ("import json, platform, numpy, onnxruntime as o; "
             "print(json.dumps({'machine': platform.machine(), 'onnxruntime': o.__version__, "
             "'numpy': numpy.__version__, 'providers': o.get_available_providers()}))")
    p = subprocess.run(qemu_argv(root, ["-c", probe]), capture_output=True, text=True, timeout=600,
                       env=qemu_env(root))
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        raise TargetError(f"arm64-emulated setup: onnxruntime does not run under qemu: {tail[:300]}")
    facts = json.loads(p.stdout.strip().splitlines()[-1])
    facts.update(format=ROOTFS_FORMAT, qemu_cpu=QEMU_CPU, suite=SUITE, built_seconds=round(time.monotonic() - t0, 1),
                 built=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    (root / MARKER).write_text(json.dumps(facts, indent=2) + "\n")


def _host_pins() -> list[str]:
    import importlib.metadata as md

    out = []
    for pkg in ("numpy", "onnxruntime"):
        try:
            out.append(f"{pkg}=={md.version(pkg)}")
        except md.PackageNotFoundError:
            out.append(pkg)
    return out


def _fake_cpu(root: Path, ncpu: int | None = None) -> None:
    """cpuinfo and sysfs files describing the Cortex-A72 that qemu emulates (see the module doc)."""
    n = max(1, min(4, ncpu or os.cpu_count() or 1))
    proc = root / "proc"
    proc.mkdir(exist_ok=True)
    (proc / "cpuinfo").write_text("\n".join(_CPUINFO_ENTRY.format(i=i) for i in range(n)) + "\n")
    sysc = root / "sys/devices/system/cpu"
    sysc.mkdir(parents=True, exist_ok=True)
    rng = "0" if n == 1 else f"0-{n - 1}"
    for f in ("possible", "present", "online"):
        (sysc / f).write_text(rng + "\n")
    for i in range(n):
        c = sysc / f"cpu{i}"
        (c / "topology").mkdir(parents=True, exist_ok=True)
        (c / "cpufreq").mkdir(parents=True, exist_ok=True)
        (c / "regs/identification").mkdir(parents=True, exist_ok=True)
        (c / "topology/physical_package_id").write_text("0\n")
        (c / "topology/core_id").write_text(f"{i}\n")
        (c / "topology/core_siblings_list").write_text(rng + "\n")
        (c / "topology/thread_siblings_list").write_text(f"{i}\n")
        (c / "cpufreq/cpuinfo_max_freq").write_text("1800000\n")
        (c / "cpufreq/cpuinfo_min_freq").write_text("600000\n")
        (c / "regs/identification/midr_el1").write_text("0x00000000410fd083\n")


# ---------------------------------------------------------------- running


def qemu_argv(root: Path, py_args) -> list[str]:
    return [shutil.which(QEMU) or QEMU, "-L", str(root), str(root / "usr/bin/python3"), *py_args]


def qemu_env(root: Path, home: str | None = None) -> dict:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "QEMU_CPU": QEMU_CPU,
           "HOME": home or tempfile.gettempdir(), "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": f"/{SITE}"}
    return env


def run_python(args, *, timeout: float = 600, cwd=None) -> subprocess.CompletedProcess:
    """Run the rootfs's aarch64 python with args (host paths outside the rootfs stay visible)."""
    root = ensure_ready()
    try:
        return subprocess.run(qemu_argv(root, args), capture_output=True, text=True, timeout=timeout,
                              env=qemu_env(root), cwd=cwd)
    except subprocess.TimeoutExpired:
        raise TargetError(f"arm64-emulated: the runner did not finish within {timeout:.0f} s") from None


def profile_emulated(models: dict, target, inputs, *, op_runs=3, warmup=5, min_runs=30, min_seconds=1.0,
                     max_seconds=30.0, threads=None, batch=1, settle=True) -> dict:
    """Run the device runner under qemu on all models (interleaved), and compare outputs with this host."""
    from .crosscheck import attach_comparison, feeds_npz, host_feeds, read_outputs, runner_labels
    from .runner import RUNNER_PATH

    try:
        ensure_ready()
    except TargetError as e:
        return {k: {"status": "unavailable", "reason": str(e)} for k in models}
    host, feeds, failed = host_feeds(models, inputs, batch, threads)
    todo = {k: v for k, v in models.items() if k not in failed}
    if not todo:
        return failed
    alias = runner_labels(todo)
    with tempfile.TemporaryDirectory(prefix="edgekit-emu-") as d:
        feeds_npz(os.path.join(d, "inputs.npz"), {k: v for k, v in feeds.items() if k in todo}, alias)
        outp = os.path.join(d, "outputs.npz")
        args = [str(RUNNER_PATH), "bench", "--always-dict", "--inputs", os.path.join(d, "inputs.npz"),
                "--outputs", outp, "--warmup", str(warmup), "--min-runs", str(min_runs),
                "--min-seconds", str(min_seconds), "--max-seconds", str(max_seconds), "--batch", str(batch),
                "--op-runs", str(op_runs), "--keep-nodes",
                "--providers", json.dumps([{"name": n, "options": o} for n, o in target.providers])]
        if threads:
            args += ["--threads", str(threads)]
        if not settle:
            args.append("--no-settle")
        for m, label in alias.items():
            args += ["--model", f"{m}={os.path.abspath(todo[label])}"]
        t0 = time.monotonic()
        p = run_python(args, timeout=600 + 3 * max_seconds * max(1, len(todo)))
        wall = time.monotonic() - t0
        try:
            rep = json.loads(p.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
            return {**{k: {"status": "failed", "reason": f"runner under qemu: {tail[:300]}"} for k in todo}, **failed}
        if "results" not in rep:
            return {**{k: {"status": "failed", "reason": f"runner under qemu: {rep.get('reason', rep)}"}
                       for k in todo}, **failed}
        try:
            arm_out = read_outputs(outp, alias) if os.path.exists(outp) else {}
        except Exception:  # an unreadable file: the timings stand, each result says no outputs came back
            arm_out = {}
    res = {alias.get(k, k): v for k, v in rep["results"].items()}
    for r in res.values():
        if r.get("status") == "ok":
            r.update(emulated=True, emulated_cpu=QEMU_CPU, runner_wall_s=round(wall, 1),
                     note="emulated with qemu-user: correctness only, not device latency")
    res.update(failed)
    return attach_comparison(res, host, models, feeds, arm_out)
