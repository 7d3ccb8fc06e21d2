import os
import tempfile

import pytest

# onnxruntime and numba write caches on import; keep tests from touching the user's home.
_CACHE = tempfile.mkdtemp(prefix="edgekit-test-cache-")
os.environ.setdefault("XDG_CACHE_HOME", _CACHE)
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(_CACHE, "numba"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tier (ARM emulation, sshd, browser, zoo models); still runs in CI")
