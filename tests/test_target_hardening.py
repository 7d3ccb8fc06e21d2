"""Target profiles that would mislead a run are refused on load, naming the file and the key (sweep22 F4, F5,
F10, F16), and a target whose precisions exclude every measured artifact is not called "unavailable" (F17)."""
from pathlib import Path

import pytest

from edgekit import targets as T
from edgekit.errors import ConfigError
from edgekit.resources import targets_dir

LOCAL = 'arch = "{arch}"\naddress = "local"\n{extra}\nproviders = ["CPUExecutionProvider"]\n'
HERE = T._host_arch()
OTHER = "aarch64" if HERE == "x86_64" else "x86_64"


def _write(path: Path, arch=HERE, extra="", address=None) -> Path:
    text = LOCAL.format(arch=arch, extra=extra)
    if address:
        text = text.replace('"local"', f'"{address}"')
    path.write_text(text)
    return path


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# --- F10: a file in the working directory named like a shipped target ---------------------------------------


def test_a_bare_shipped_name_is_the_shipped_profile_even_beside_a_file_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nvidia-gpu").write_text("some notes\n")
    t = T.load_target("nvidia-gpu")
    assert Path(t.source).parent == targets_dir() and t.name == "nvidia-gpu"
    with pytest.raises(ConfigError, match=r"^nvidia-gpu: not valid TOML"):
        T.load_target("./nvidia-gpu")  # a path: the user's file
    _write(tmp_path / "my-board")  # not a shipped name: the file, as before
    assert T.load_target("my-board").source == "my-board"
    with pytest.raises(ConfigError, match="unknown target 'nvidia-gpux'"):
        T.load_target("nvidia-gpux")
