"""sweep40 security findings: F1, the device runner's Numba cache fallback in the shared temp dir (Numba
loads its index files with pickle, so a folder another user can write into is code execution), and F2,
a --student .pt that names the Python file edgekit imports to rebuild it."""
import os
import stat
import tempfile

import pytest

from edgekit.runner import edgekit_runner as runner


@pytest.fixture
def device_tmp(tmp_path, monkeypatch):
    """A device whose cache dir cannot be made (read-only home) and whose temp dir is tmp_path/tmp."""
    t = tmp_path / "tmp"
    t.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(t))
    monkeypatch.setenv("EDGEKIT_CACHE", "/dev/null/nope")
    bundle = tmp_path / "dev" / "versions" / "fp32-1"
    bundle.mkdir(parents=True)
    return t, bundle


def _private_to_us(path) -> bool:
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def test_fallback_numba_cache_is_a_private_folder_of_this_user(device_tmp):
    t, bundle = device_tmp
    d = runner._numba_cache_dir(str(bundle))
    parent = t / f"edgekit-numba-{os.getuid()}"
    assert os.path.dirname(d) == str(parent)
    assert _private_to_us(parent)
    assert (parent / os.path.basename(d) / runner.SOURCE_MARK).read_text() == str(bundle.resolve())
    assert runner._numba_cache_dir(str(bundle)) == d  # the same cache on the next run


@pytest.mark.parametrize("how", ["world-writable", "symlink"])
def test_planted_fallback_folder_is_not_used(device_tmp, tmp_path, capsys, how):
    # as root here, "another user's folder" is one anyone can write into, or a link to elsewhere
    t, bundle = device_tmp
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    theirs.chmod(0o777)
    planted = [t / "edgekit-numba", t / f"edgekit-numba-{os.getuid()}"]  # the old shared name and the new one
    for p in planted:
        if how == "symlink":
            p.symlink_to(theirs)
        else:
            p.mkdir()
            p.chmod(0o777)
    d = runner._numba_cache_dir(str(bundle))
    assert d is not None and _private_to_us(d)
    assert all(os.listdir(p) == [] for p in planted), "wrote into a folder others can write into"
    assert "kernels compile on every run" in capsys.readouterr().err


def test_source_mark_does_not_write_through_a_planted_link(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEKIT_CACHE", str(cache))
    bundle = tmp_path / "v1"
    bundle.mkdir()
    first = runner._numba_cache_dir(str(bundle))
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, os.path.join(first, f".{runner.SOURCE_MARK}-{os.getpid()}"))
    assert runner._numba_cache_dir(str(bundle)) == first
    assert victim.read_text() == "keep"
    assert (cache / "numba" / os.path.basename(first) / runner.SOURCE_MARK).read_text() == str(bundle.resolve())
