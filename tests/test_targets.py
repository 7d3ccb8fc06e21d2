"""Target profiles: every shipped file loads; bad files fail with one line naming the file and key."""
import json

import pytest

from edgekit import targets as T
from edgekit.errors import ConfigError
from edgekit.hostinfo import cpu_info
from edgekit.resources import targets_dir

SHIPPED = {"x86-laptop", "nvidia-gpu", "jetson-orin-nano", "raspberry-pi-4", "raspberry-pi-5", "arm64-emulated"}

GOOD = """
description = "test board"
arch = "aarch64"
address = "ssh://me@127.0.0.1:2222/opt/edgekit"
threads = 4
precisions = ["int8", "fp32"]
isa = ["neon", "dotprod"]
memory_mb = 2048

[[providers]]
name = "CPUExecutionProvider"
"""


def test_every_target_file_is_registered_and_loads():
    files = {p.stem for p in targets_dir().glob("*.toml")}
    assert SHIPPED <= files
    loaded = {t.name: t for t in T.list_targets()}
    assert set(loaded) == files
    assert T.DEFAULT_TARGET in loaded
    for name, t in loaded.items():
        assert t.arch in T.ARCHES and t.providers and t.precisions
        assert t.source.endswith(f"{name}.toml")
        assert T.load_target(name) == t


def test_shipped_profiles_say_what_the_devices_are():
    pi4, pi5 = T.load_target("raspberry-pi-4"), T.load_target("raspberry-pi-5")
    assert (pi4.arch, pi4.threads, pi5.threads) == ("aarch64", 4, 4)
    assert "dotprod" not in pi4.isa and "dotprod" in pi5.isa  # A72 has no dot-product, A76 does
    emu = T.load_target("arm64-emulated")
    assert emu.emulated and emu.isa == pi4.isa  # must match the Cortex-A72 qemu emulates
    gpu = T.load_target("nvidia-gpu")
    assert "CUDAExecutionProvider" in gpu.required_providers
    assert gpu.optional_providers == ("TensorrtExecutionProvider",)
    assert T.resolved_isa(T.load_target("x86-laptop")) == tuple(cpu_info()["isa"])


def test_user_file_by_path(tmp_path):
    p = tmp_path / "my-board.toml"
    p.write_text(GOOD)
    t = T.load_target(str(p))
    assert (t.name, t.threads, t.memory_mb, t.address) == ("my-board", 4, 2048, "ssh://me@127.0.0.1:2222/opt/edgekit")
    assert t.providers == (("CPUExecutionProvider", {}),)
    assert T.resolved_isa(t) == ("neon", "dotprod")


@pytest.mark.parametrize("edit, key, hint", [
    (lambda s: s.replace("threads = 4", "thread = 4"), "'thread'", "did you mean 'threads'"),
    (lambda s: s.replace('arch = "aarch64"\n', ""), "'arch'", "missing"),
    (lambda s: s.replace("threads = 4", 'threads = "four"'), "threads", "positive integer"),
    (lambda s: s.replace('arch = "aarch64"', 'arch = "arm64"'), "arch", "not one of"),
    (lambda s: s.replace('name = "CPUExecutionProvider"', 'name = "CPUExecutionProvide"'),
     "providers[0].name", "did you mean 'CPUExecutionProvider'"),
    (lambda s: s.replace('name = "CPUExecutionProvider"', 'name = "CPUExecutionProvider"\nopts = {}'),
     "providers[0].opts", "did you mean 'options'"),
    (lambda s: s.replace('"ssh://me@127.0.0.1:2222/opt/edgekit"', '"ftp://x"'), "address", "ssh://"),
    (lambda s: s.replace('"ssh://me@127.0.0.1:2222/opt/edgekit"', '"ssh://me@127.0.0.1:2222"'), "address",
     "'ssh://me@127.0.0.1:2222' has no remote directory; give the install directory"),
    (lambda s: s.replace('"ssh://me@127.0.0.1:2222/opt/edgekit"', '"ssh://me@h/"'), "address", "no remote directory"),
    (lambda s: s.replace('["int8", "fp32"]', '["int4"]'), "precisions", "unknown value 'int4'"),
    (lambda s: s.replace('["neon", "dotprod"]', '["neon", "dotprd"]'), "isa", "did you mean 'dotprod'"),
    (lambda s: s.replace("memory_mb = 2048", "memory_mb = -1"), "memory_mb", "positive"),
    (lambda s: s + "\n[[providers]]\nname = \"CPUExecutionProvider\"\n", "providers[1].name", "twice"),
    (lambda s: s.replace("threads = 4", "threads = [4"), "not valid TOML", ""),
])
def test_bad_target_files_name_the_file_and_key(tmp_path, edit, key, hint):
    p = tmp_path / "board.toml"
    p.write_text(edit(GOOD))
    with pytest.raises(ConfigError) as e:
        T.load_target(str(p))
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and key in msg and hint in msg, msg


def test_unknown_target_name_suggests_one():
    with pytest.raises(ConfigError, match="did you mean 'raspberry-pi-4'"):
        T.load_target("raspbery-pi-4")
    with pytest.raises(ConfigError, match="not found"):
        T.load_target("/nonexistent/board.toml")


def test_a_device_address_given_as_target_is_told_what_a_target_needs():
    # flash takes --device ssh://...; as --target it read "target file not found", taken for a path
    with pytest.raises(ConfigError) as e:
        T.load_target("ssh://pi@127.0.0.1/opt/models")
    msg = str(e.value)
    assert msg.startswith("ssh://pi@127.0.0.1/opt/models: a device address, not a target") and "not found" not in msg
    assert 'address = "ssh://pi@127.0.0.1/opt/models"' in msg and "arch" in msg and "\n" not in msg


def test_targets_cli(tmp_path, capsys):
    from edgekit.cli import main

    assert main(["targets", "list", "--json"]) == 0
    names = {d["name"] for d in json.loads(capsys.readouterr().out)}
    assert SHIPPED <= names
    assert main(["targets", "show", "raspberry-pi-5", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["threads"] == 4 and d["providers"][0]["name"] == "CPUExecutionProvider"
    p = tmp_path / "b.toml"
    p.write_text(GOOD.replace("threads = 4", "thread = 4"))
    with pytest.raises(SystemExit) as e:
        main(["targets", "show", str(p)])
    assert e.value.code == 2
    assert "did you mean 'threads'" in capsys.readouterr().err
    assert main(["targets", "setup", "x86-laptop"]) == 0
    assert "ready" in capsys.readouterr().out


ARM_TOML = """
arch = "aarch64"
address = "ssh://pi@127.0.0.1:1/home/pi/edgekit"
isa = {isa}

[[providers]]
name = "CPUExecutionProvider"
"""


def test_features_of_another_architecture_are_refused(tmp_path):
    p = tmp_path / "mixed.toml"
    p.write_text(ARM_TOML.format(isa='["neon", "avx512-vnni"]'))
    with pytest.raises(ConfigError, match="isa: avx512-vnni is not an aarch64 feature"):
        T.load_target(str(p))


def test_host_features_only_describe_a_target_of_this_architecture(tmp_path):
    import platform

    p = tmp_path / "armhost.toml"
    p.write_text(ARM_TOML.format(isa='["host", "neon"]'))
    t = T.load_target(str(p))
    here = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}[platform.machine().lower()]
    expected = set(cpu_info()["isa"]) | {"neon"} if here == "aarch64" else {"neon"}
    assert set(T.resolved_isa(t)) == expected  # an x86 host's AVX-512 is no Pi's


def test_profile_refuses_two_targets_of_one_name(tmp_path):
    # both were profiled and printed under one '## x86-laptop' heading, one section holding the other's numbers
    from edgekit.profiling import run_profile

    (tmp_path / "x86-laptop.toml").write_text('arch = "x86_64"\naddress = "local"\nthreads = 1\n'
                                              '[[providers]]\nname = "CPUExecutionProvider"\n')
    with pytest.raises(ConfigError, match="two targets are named 'x86-laptop'"):
        run_profile([str(tmp_path / "m.onnx")], ["x86-laptop", str(tmp_path / "x86-laptop.toml")])


def test_targets_setup_exits_1_when_the_target_cannot_run_here(capsys):
    # 'unavailable: onnxruntime-gpu not installed' came with exit 0, read by a script as set up
    import onnxruntime as ort

    from edgekit.cli import main

    try:
        rc = main(["targets", "setup", "nvidia-gpu"])
    except SystemExit as e:  # a non-zero return leaves main_entry as sys.exit
        rc = e.code
    out = capsys.readouterr().out
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert rc == 0 and "ready" in out
    else:
        assert rc == 1 and "unavailable" in out, out
