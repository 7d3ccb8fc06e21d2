"""sweep40 security findings: F1, the device runner's Numba cache fallback in the shared temp dir (Numba
loads its index files with pickle, so a folder another user can write into is code execution), and F2,
a --student .pt that names the Python file edgekit imports to rebuild it."""
import json
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


# F2 -------------------------------------------------------------------------------------------------------

TEACHER = '''
import torch, torch.nn as nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))

def small():
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 4))
'''

ARCH = '''
import torch.nn as nn
open({mark!r}, "w").write("code from the .pt's file ran")

def factory():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 4))
'''


@pytest.fixture
def kd(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setenv("EDGEKIT_QUIET", "1")
    (tmp_path / "teacher.py").write_text(TEACHER)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "calib.npy", x[:16])
    np.savez(tmp_path / "eval.npz", input=x[16:48], y=rng.integers(0, 4, 32))
    return tmp_path


def _student_pt(kd, how: str):
    """dl/pruned.pt recording a model file of the .pt's choosing, as a downloaded folder would hold it."""
    import torch.nn as nn

    from edgekit.pruning import serialize

    dl = kd / "dl"
    dl.mkdir()
    arch = ARCH.format(mark=str(kd / "MARK"))
    spec = "arch.py:factory"
    if how == "beside":
        (dl / "arch.py").write_text(arch)
    elif how == "absolute":
        (kd / "shared_arch.py").write_text(arch)
        spec = f"{kd / 'shared_arch.py'}:factory"
    else:  # a manifest.json beside the .pt redirects the relative name
        (kd / "elsewhere.py").write_text(arch)
        (dl / "manifest.json").write_text(json.dumps({"source": {"spec": spec,
                                                                 "source_file": str(kd / "elsewhere.py")}}))
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 4))
    serialize.save(m, dl / "pruned.pt", spec=spec)
    return dl / "pruned.pt"


def _distill(kd, student, out, *extra):
    from tests.cliutil import run_cli

    return run_cli(["distill", "--teacher", f"{kd / 'teacher.py'}:build", "--student", str(student),
                    "--calib", str(kd / "calib.npy"), "--eval", str(kd / "eval.npz"), "--epochs", "1", *extra,
                    "-o", str(out)])


@pytest.mark.parametrize("how", ["beside", "absolute", "manifest"])
def test_student_pt_runs_no_file_it_names_without_trust_pickle(kd, capsys, how):
    pt = _student_pt(kd, how)
    assert _distill(kd, pt, kd / "o") == 2
    err = capsys.readouterr().err
    assert not (kd / "MARK").exists(), "the .pt's file was imported"
    assert str(pt) in err and "--trust-pickle" in err and ".py" in err
    assert not (kd / "o").exists()
    assert _distill(kd, pt, kd / "o2", "--trust-pickle") == 0  # the user trusts it: rebuilt on that file
    assert (kd / "MARK").exists()


def test_student_pt_of_the_teachers_own_file_needs_no_trust(kd):
    import torch.nn as nn

    from edgekit.pruning import serialize

    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 4))
    serialize.save(m, kd / "small.pt", spec=f"{(kd / 'teacher.py').resolve()}:small")  # another factory
    assert _distill(kd, kd / "small.pt", kd / "o") == 0


def test_compress_student_pt_takes_trust_pickle_as_distill_does(kd, capsys):
    # compress refused such a .pt even with --trust-pickle, whose use its error advised
    from tests.cliutil import run_cli

    pt = _student_pt(kd, "beside")

    def compress(out, *extra):
        return run_cli(["compress", f"{kd / 'teacher.py'}:build", "--student", str(pt), "--calib",
                        str(kd / "calib.npy"), "--eval", str(kd / "eval.npz"), "--no-profile", "--quantize", "none",
                        *extra, "-o", str(out)])

    assert compress(kd / "o") == 2 and not (kd / "MARK").exists() and not (kd / "o").exists()
    assert "pass --trust-pickle" in capsys.readouterr().err
    assert compress(kd / "o2", "--trust-pickle") == 0 and (kd / "MARK").exists()
