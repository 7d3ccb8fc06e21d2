"""Target profiles that would mislead a run are refused on load, naming the file and the key (sweep22 F4, F5,
F10, F16), and a target whose precisions exclude every measured artifact is not called "unavailable" (F17)."""
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit import targets as T
from edgekit.artifact import Artifact, Manifest
from edgekit.config import Tolerance
from edgekit.errors import ConfigError
from edgekit.hostinfo import cpu_info
from edgekit.recommend import recommend
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


# --- F16: addresses flash and profile would refuse later -----------------------------------------------------


@pytest.mark.parametrize("address,problem", [
    ("ssh://pi@127.0.0.1:99999/opt/x", "bad port"),
    ("ssh://pi@127.0.0.1/opt/x?y=1", "unexpected '?' or '#' part"),
    ("ssh://pi@127.0.0.1/opt/x#here", "unexpected '?' or '#' part"),
])
def test_a_device_address_flash_would_refuse_fails_on_load(tmp_path, address, problem):
    f = _write(tmp_path / "dev.toml", arch="aarch64", address=address)
    with pytest.raises(ConfigError) as e:
        T.load_target(str(f))
    msg = _one_line(e)
    assert msg.startswith(f"{f}: address: ") and address in msg and msg.endswith(problem), msg


def test_targets_show_exits_2_naming_the_file_and_address(tmp_path):
    f = _write(tmp_path / "port.toml", arch="aarch64", address="ssh://pi@127.0.0.1:99999/opt/x")
    r = subprocess.run([sys.executable, "-m", "edgekit", "targets", "show", str(f)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == (
        f"edgekit: error: {f}: address: 'ssh://pi@127.0.0.1:99999/opt/x': bad port"), r.stderr


@pytest.mark.parametrize("first", ["edgekit.targets", "edgekit.flash.devices"])
def test_address_check_imports_cleanly_in_either_order(tmp_path, first):
    # targets imports flash.devices to check an address, and flash.devices imports targets for --target
    f = _write(tmp_path / "ok.toml", arch="aarch64", address="ssh://pi@127.0.0.1:2222/opt/x")
    code = f"import {first}; from edgekit.targets import load_target; print(load_target({str(f)!r}).address)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ssh://pi@127.0.0.1:2222/opt/x", r.stderr


# --- F4: two targets with one name in one run --------------------------------------------------------------


def test_a_user_file_named_like_a_built_in_is_refused_next_to_it(tmp_path):
    mine = _write(tmp_path / "x86-laptop.toml", extra="threads = 1")
    with pytest.raises(ConfigError) as e:
        T.load_targets(["x86-laptop", str(mine)])
    msg = _one_line(e)
    assert "'x86-laptop'" in msg and "built-in" in msg and str(mine) in msg, msg


def test_a_name_key_equal_to_another_target_is_refused(tmp_path):
    a = _write(tmp_path / "fakepi.toml", extra='name = "raspberry-pi-4"')
    with pytest.raises(ConfigError) as e:
        T.load_targets(["raspberry-pi-4", str(a)])
    assert "'raspberry-pi-4'" in _one_line(e) and "built-in" in str(e.value) and "fakepi.toml" in str(e.value)
    (tmp_path / "sub").mkdir()
    c = _write(tmp_path / "sub" / "board.toml")
    b = _write(tmp_path / "other.toml", extra='name = "board"')
    with pytest.raises(ConfigError, match=r"two targets are named 'board': \S*sub/board\.toml and \S*other\.toml"):
        T.load_targets([str(c), str(b)])


def test_one_file_named_twice_is_one_target(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "board.toml")
    got = T.load_targets(["board.toml", str(tmp_path / "board.toml"), "x86-laptop",
                          str(targets_dir() / "x86-laptop.toml")])
    assert [t.name for t in got] == ["board", "x86-laptop"]


def test_compress_context_refuses_two_targets_with_one_name(tmp_path):
    # every compress stage (and quantize, prune) reads targets from the RunContext: it is where results are keyed
    from edgekit.context import RunContext

    mine = T.load_target(str(_write(tmp_path / "x86-laptop.toml", extra='precisions = ["fp32"]')))
    with pytest.raises(ConfigError, match="two targets are named 'x86-laptop': built-in and "):
        RunContext(outdir=tmp_path, source=None, manifest=Manifest(), targets=[T.load_target("x86-laptop"), mine])


@pytest.mark.slow
def test_compress_with_a_built_in_and_its_namesake_exits_2_naming_both(tmp_path):
    from tests.test_compress_data_errors import MODEL
    from tests.test_quant_cli import _cli
    import numpy as np

    (tmp_path / "mlp.py").write_text(MODEL)
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32))
    _write(tmp_path / "x86-laptop.toml", extra='precisions = ["fp32"]')
    r = _cli("compress", "mlp.py:build", "--calib", "calib.npy", "--target", "x86-laptop", "--target",
             "x86-laptop.toml", "-o", "out", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert "two targets are named 'x86-laptop': built-in and x86-laptop.toml" in lines[-1], r.stderr
    assert not (tmp_path / "out").exists()


# --- F5: a local target is this machine ------------------------------------------------------------------------


def test_a_local_target_of_another_architecture_is_refused(tmp_path):
    f = _write(tmp_path / "armlocal.toml", arch=OTHER)
    with pytest.raises(ConfigError) as e:
        T.load_target(str(f))
    msg = _one_line(e)
    assert msg.startswith(f"{f}: arch: {OTHER}, but a local target runs on this machine, which is {HERE}"), msg
    assert "ssh://" in msg


def test_a_local_target_claiming_features_this_cpu_lacks_is_refused(tmp_path, monkeypatch):
    from edgekit.hostinfo import _ISA_FLAGS

    family = T.X86_ISA if HERE == "x86_64" else T.ARM_ISA

    def lacks(info):
        return [f for f in dict.fromkeys(_ISA_FLAGS.values()) if f in family and f not in info["isa"]]

    info = cpu_info()
    if not lacks(info):
        # this CPU has every feature edgekit detects (AMX and VNNI here): the loader then reads a CPU of this
        # architecture that lacks some, an AVX2-only x86 or an ARM without the dot-product instructions
        info = cpu_info(AVX2_ONLY if HERE == "x86_64" else "Features\t: fp asimd\n")
        monkeypatch.setattr("edgekit.hostinfo.cpu_info", lambda text=None: info if text is None else cpu_info(text))
    lacking = lacks(info)
    assert lacking
    f = _write(tmp_path / "claims.toml", extra=f'isa = ["host", "{lacking[-1]}"]')
    with pytest.raises(ConfigError) as e:
        T.load_target(str(f))
    msg = _one_line(e)
    assert msg.startswith(f"{f}: isa: this CPU lacks {lacking[-1]}"), msg
    # what the CPU has, "host", and features edgekit cannot detect (taken on trust) stay valid
    ok = list(info["isa"]) + ["host"] + (["avx", "sse4.2"] if HERE == "x86_64" else ["sve"])
    _write(f, extra=f"isa = {ok!r}".replace("'", '"'))
    assert set(T.load_target(str(f)).isa) == set(ok)


AVX2_ONLY = "flags\t\t: fpu sse sse4_2 avx avx2 fma\n"
AVX512 = "flags\t\t: fpu sse sse4_2 avx avx2 fma avx512f avx512_vnni amx_int8\n"


@pytest.mark.parametrize("cpuinfo", [AVX2_ONLY, AVX512, ""])
def test_shipped_targets_load_whatever_this_cpu_has(monkeypatch, cpuinfo):
    monkeypatch.setattr("edgekit.hostinfo.cpu_info", lambda text=None: cpu_info(cpuinfo))
    assert {t.name for t in T.list_targets()} == {p.stem for p in targets_dir().glob("*.toml")}


def test_shipped_local_targets_load_on_a_host_of_another_architecture(tmp_path, monkeypatch):
    # x86-laptop is the default target: an ARM host must still list and load it (profiling reports it
    # unavailable there); a user's local file of another architecture is refused
    monkeypatch.setattr(T, "_host_arch", lambda: OTHER)
    assert T.load_target("x86-laptop").arch == "x86_64" and len(T.list_targets()) >= 6
    with pytest.raises(ConfigError, match=f"arch: {HERE}, but a local target runs on this machine"):
        T.load_target(str(_write(tmp_path / "mine.toml")))


# --- F17: a target whose precisions exclude everything that was measured ---------------------------------------


def _art(kind, path, p50, parent=None, stage="export"):
    a = Artifact(kind=kind, path=path, parent=parent, stage=stage, metrics={"name": "accuracy", "value": 0.99})
    a.latency = {"fp16only": {"status": "ok", "p50_ms": p50}}
    return a


def _fp16only(tmp_path):
    return T.load_target(str(_write(tmp_path / "fp16only.toml", extra='precisions = ["fp16"]')))


def test_precisions_excluding_every_measured_artifact_is_none_not_unavailable(tmp_path):
    m = Manifest(artifacts=[_art("fp32", "model.fp32.onnx", 1.0),
                            _art("int8", "model.int8.onnx", 0.5, "model.fp32.onnx", "quantize")])
    r = recommend(m, Tolerance.parse("1%"), [_fp16only(tmp_path)])["fp16only"]
    assert r["status"] == "none", r
    assert r["reason"] == ("no measured artifact can be recommended: model.fp32.onnx: fp32 is not among fp16only's "
                           "precisions (fp16); model.int8.onnx: int8 is not among fp16only's precisions (fp16)")
    # a runtime that is not there is still "unavailable", with its own reason
    for a in m.artifacts:
        a.latency["fp16only"] = {"status": "unavailable", "reason": "onnxruntime-gpu not installed"}
    assert recommend(m, Tolerance.parse("1%"), [_fp16only(tmp_path)])["fp16only"] == {
        "status": "unavailable", "reason": "onnxruntime-gpu not installed"}


def test_the_report_shows_the_none_status_with_its_reason(tmp_path):
    from edgekit.report import write_reports

    m = Manifest(artifacts=[_art("fp32", "model.fp32.onnx", 1.0)])
    m.recommended = recommend(m, Tolerance.parse("1%"), [_fp16only(tmp_path)])
    m.write(tmp_path / "out")
    write_reports([tmp_path / "out"], markdown=tmp_path / "r.md", html=tmp_path / "r.html")
    md = (tmp_path / "r.md").read_text()
    assert ("- **fp16only**: no recommendation (none: no measured artifact can be recommended: model.fp32.onnx: "
            "fp32 is not among fp16only's precisions (fp16))") in md, md
    assert "no recommendation" in (tmp_path / "r.html").read_text()
