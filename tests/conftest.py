import atexit
import os
import shutil
import signal
import tempfile

import pytest

# onnxruntime and numba write caches on import; keep tests from touching the user's home.
_CACHE = tempfile.mkdtemp(prefix="edgekit-test-cache-")
atexit.register(shutil.rmtree, _CACHE, True)  # one per test run: they piled up in /tmp
os.environ.setdefault("XDG_CACHE_HOME", _CACHE)
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(_CACHE, "numba"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# flash compiles a bundle's Numba kernels on the device after the switch (tens of seconds per flash of a
# bundle with pre/post steps); tests/test_flash_warm.py clears this to test the warm-up itself
os.environ.setdefault("EDGEKIT_FLASH_NO_WARM", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# A suite started in the background (`cmd &` in a script, nohup) inherits SIGINT ignored, and so would every
# process it starts: the Ctrl-C tests would then test nothing (KeyboardInterrupt never raised). Ctrl-C as a
# terminal delivers it; a Python handler here is also reset to the default in the children on exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tier (ARM emulation, sshd, browser, zoo models); still runs in CI")
    config.addinivalue_line("markers", "serial: judges how busy the host is; scripts/test.sh runs these after the "
                                       "parallel workers have finished")


# Fast profiling settings for tests; real measurements, just fewer of them.
FAST_PROFILE = {"warmup": 2, "min_runs": 10, "min_seconds": 0.1, "max_seconds": 5.0}


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A real `edgekit compress zoo:digits-cnn` run (fp32 + int8), shared by the report/flash/e2e tests."""
    import edgekit

    out = tmp_path_factory.mktemp("digits-run") / "out"
    edgekit.compress("zoo:digits-cnn", output=str(out), profile=FAST_PROFILE,
                     quantize={"max_trials": 4})
    return out


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs mounted for the test: a real full disk (mounting needs root, which CI has)."""
    import shutil
    import subprocess

    mnt = tmp_path / "card"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
