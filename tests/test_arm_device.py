"""Flashing and on-device benchmarking on a real aarch64 runtime: an ARM "device" behind a real sshd.

The device (tests/arm_device.py) is tests/sshd.py's OpenSSH server on 127.0.0.1 with a ForceCommand
wrapper: every session's `python3` is the arm64 rootfs's Python under qemu-aarch64-static, so the
hash checks, the self-test and the benchmark run on aarch64 while SFTP uploads go through unchanged.
Its files are host files under tmp_path, so the tests check on disk what the device holds.

Stated tolerance, ARM vs x86 on the same inputs (as tests/test_arm_emulated.py): FP32 max abs diff
<= 1e-4 x max(1, |output|); INT8 within one output quantization step.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from arm_device import rootfs_fixture, start_arm_device, train_digits_cnn
from edgekit.errors import ConfigError
from edgekit.flash import FlashOptions, SshOptions, collect_devices, flash_many, open_transport, read_bundle
from edgekit.flash.bundle import META, SELFTEST_EXPECTED, build_bundle
from edgekit.fsutil import sha256_file
from edgekit.profile import _output_quantum, profile_models, ratio
from edgekit.targets import load_target, parse_target
from flash_fixtures import rebuild_bundle, tree_hashes

FAST = {"warmup": 1, "min_runs": 3, "min_seconds": 0.0, "max_seconds": 20.0}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def rootfs():
    for st in rootfs_fixture():
        yield Path(st["rootfs"])


@pytest.fixture(scope="module")
def device(rootfs, tmp_path_factory):
    root = tmp_path_factory.mktemp("arm-device")
    cache = root / "device-cache"
    srv = start_arm_device(root, rootfs, env={"XDG_CACHE_HOME": str(cache), "NUMBA_CACHE_DIR": str(cache / "numba")})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    m = train_digits_cnn(tmp_path_factory.mktemp("digits-cnn") / "out")
    assert m["accuracy"] > 0.85, m["accuracy"]  # a real, trained model, not random weights
    return m


def ssh_opts(srv) -> SshOptions:
    # remote_python stays "python3": on this device it resolves to the aarch64 one
    return SshOptions(identity=str(srv.user_key), known_hosts=str(srv.known_hosts))


def ssh_target(tmp_path, srv, dev):
    p = tmp_path / "arm-over-ssh.toml"
    p.write_text("\n".join([
        'description = "aarch64 test device behind sshd on 127.0.0.1 (qemu-user inside)"',
        'arch = "aarch64"',
        f'address = "{srv.address(str(dev))}"',
        "emulated = true",  # reached over SSH, yet qemu inside: its timings are not device latency
        "threads = 1",
        'precisions = ["int8", "fp32"]',
        'isa = ["neon"]',
        'providers = ["CPUExecutionProvider"]',
    ]) + "\n")
    return p


def assert_active(dev, version, files):
    """`current` points at version and every file there has the bundle's hash."""
    assert os.readlink(dev / "current") == f"versions/{version}"
    assert tree_hashes(dev / "current") == files


def bundle_files(b) -> dict:
    want = dict(b.files)
    want[META] = b.meta_sha256()
    return want


# ---------------------------------------------------------------- the target option (fast)


def _target(**kw):
    d = {"arch": "aarch64", "address": "ssh://pi@127.0.0.1:2222/opt/edgekit", "providers": ["CPUExecutionProvider"]}
    d.update(kw)
    return parse_target(d, "board.toml")


def test_emulated_option_marks_an_ssh_device_and_is_validated():
    assert _target().emulated is False and _target().to_dict()["emulated"] is False
    t = _target(emulated=True)
    assert t.emulated is True and t.to_dict()["emulated"] is True and t.address.startswith("ssh://")
    assert load_target("arm64-emulated").emulated is True  # the qemu target needs no flag
    assert load_target("raspberry-pi-4").emulated is False
    with pytest.raises(ConfigError, match=r"board\.toml: emulated: must be true or false"):
        _target(emulated="yes")
    with pytest.raises(ConfigError, match=r"board\.toml: emulated: a local target runs natively"):
        _target(arch="x86_64", address="local", emulated=True)
    with pytest.raises(ConfigError, match=r"board\.toml: emulated: address 'emulated' always"):
        _target(address="emulated", emulated=False)
    with pytest.raises(ConfigError, match=r"unknown key 'emulate'.*emulated"):
        _target(emulate=True)


def test_setup_refuses_an_emulated_ssh_target(tmp_path, capsys):
    from edgekit.cli import main

    p = tmp_path / "board.toml"
    p.write_text('arch = "aarch64"\naddress = "ssh://pi@127.0.0.1/opt/e"\nemulated = true\n'
                 'providers = ["CPUExecutionProvider"]\n')
    with pytest.raises(SystemExit) as e:
        main(["targets", "setup", str(p)])
    assert e.value.code == 2  # a usage error: it is set up on the device, not here
    assert "nothing to set up here" in capsys.readouterr().err


# ---------------------------------------------------------------- on the ARM device (slow)


@pytest.mark.slow
def test_device_python_is_aarch64_sees_host_paths_and_sftp_passes(device, rootfs, tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    probe = dev / "probe.txt"
    t = open_transport(collect_devices([device.address(str(dev))])[0], ssh_opts(device))
    try:
        code = ("import json, platform, sys; open(sys.argv[1], 'w').write(platform.machine()); "
                "print(json.dumps({'machine': platform.machine(), 'cpu': open('/proc/cpuinfo').read()}))")
        rc, out, err = t.run(["python3", "-c", code, str(probe)], timeout=120)
        assert rc == 0, err.decode()[-500:]
        rep = json.loads(out.decode())
        assert rep["machine"] == "aarch64" and "0xd08" in rep["cpu"]  # the Cortex-A72 that qemu emulates
        # qemu's -L prefix left the absolute device path alone: the file is on the host, not in the rootfs
        assert probe.read_text() == "aarch64"
        assert not (rootfs / str(probe).lstrip("/")).exists()
        # uploads go through sftp-server despite the ForceCommand; hashes come from the aarch64 Python
        blob = tmp_path / "blob.bin"
        blob.write_bytes(os.urandom(300_000))
        t.makedirs(f"{dev}/up/a")
        t.put(blob, f"{dev}/up/a/blob.bin")
        assert (dev / "up/a/blob.bin").read_bytes() == blob.read_bytes()
        assert t.hashes(str(dev / "up"), ["a/blob.bin", "missing"]) == {"a/blob.bin": sha256_file(blob),
                                                                         "missing": None}
        rc, _, err = t.run(["sh", "-c", "exit 3"], timeout=30)  # exit codes pass through the wrapper
        assert rc == 3
    finally:
        t.close()
    assert "ForceCommand" in (device.root / "sshd_config").read_text()


@pytest.mark.slow
def test_flash_cli_selftest_runs_on_aarch64(device, digits, tmp_path, capsys):
    from edgekit.cli import main

    dev = tmp_path / "board"
    rc = main(["flash", str(digits["outdir"]), "--artifact", "int8", "--device", device.address(str(dev)),
               "--identity", str(device.user_key), "--known-hosts", str(device.known_hosts), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-2000:]
    res = json.loads(captured.out)["results"][0]
    assert res["status"] == "flashed" and res["previous"] is None, res
    st = res["selftest"]
    assert st["ok"] is True and st["machine"] == "aarch64" and st["provider"] == "CPUExecutionProvider", st
    version = res["version"]
    meta = json.loads((dev / "versions" / version / META).read_text())
    files = dict(meta["files"], **{META: sha256_file(dev / "versions" / version / META)})
    assert_active(dev, version, files)
    assert (dev / "current" / meta["model"]).read_bytes() == (digits["outdir"] / "model.int8.onnx").read_bytes()
    assert meta["selftest"]["input_origin"] == "sample_inputs.npz"  # a real held-out digit, checked on aarch64
    hist = json.loads((dev / "history.json").read_text())
    assert hist[-1]["version"] == version and hist[-1]["selftest"]["machine"] == "aarch64"
    assert os.listdir(dev / ".incoming") == []


@pytest.mark.slow
def test_profile_over_ssh_is_labelled_emulated_and_matches_x86(device, digits, tmp_path):
    from edgekit.report.model import latency_entry

    dev = tmp_path / "board"
    models = {"fp32": digits["fp32"], "int8": digits["int8"]}
    x = digits["x_test"]
    feeds = [{"x": x[i:i + 1]} for i in range(4)]
    target = ssh_target(tmp_path, device, dev)
    arm = profile_models(models, target, inputs=feeds, return_outputs=True, ssh=ssh_opts(device), **FAST)
    native = profile_models(models, "x86-laptop", inputs=feeds, **FAST)
    for kind, path in models.items():
        r = arm[kind]
        assert r["status"] == "ok", r
        assert r["emulated"] is True and "not device latency" in r["note"], r.get("note")
        assert r["target"] == "arm-over-ssh" and r["address"].startswith("ssh://") and r["device"]
        assert r["device_machine"] == "aarch64" and r["host_cpu"] == "Cortex-A72"  # what ran it, over SSH
        assert r["threads"] == 1 and r["runs"] >= 3 and r["p50_ms"] > 0 and r["precision"] == kind
        assert r["arm_vs_host"]["ok"] is True, r["arm_vs_host"]
        assert ratio(r, native[kind]) is None  # emulated and native timings never mix
        rep = latency_entry(r)  # the report files it as emulated, with no top-level latency
        assert rep["status"] == "emulated" and "p50_ms" not in rep and rep["emulated_timing"]["p50_ms"] > 0
        ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds[0])[0]
        got = r["outputs"]["logits"]
        assert got.shape == ref.shape == (1, 10)
        diff = float(np.max(np.abs(got - ref)))
        if kind == "fp32":
            assert diff <= 1e-4 * max(1.0, float(np.abs(ref).max())), diff
        else:
            q = _output_quantum(path)
            assert q and diff <= q * 1.0001, (diff, q)
        assert int(np.argmax(got)) == int(np.argmax(ref))
    assert ratio(arm["int8"], arm["fp32"]) is not None  # two emulated figures on one device do compare
    assert any("QLinear" in op or "Integer" in op or "Quantize" in op for op in arm["int8"]["op_breakdown"])
    assert not os.listdir(dev / ".bench")  # the staged runner and models were removed
    assert not (dev / "current").exists()  # profiling never deploys


@pytest.mark.slow
def test_wrong_expected_output_refused_at_selftest_on_aarch64(device, digits, tmp_path):
    dev = tmp_path / "board"
    build_bundle(digits["outdir"], tmp_path / "good.ekb", artifact="fp32")
    good = read_bundle(tmp_path / "good.ekb", tmp_path)
    devs = collect_devices([device.address(str(dev))])
    first = flash_many(devs, good, ssh=ssh_opts(device), opts=FlashOptions())[0]
    assert first.status == "flashed" and first.selftest["machine"] == "aarch64", first
    before = tree_hashes(dev / "versions" / good.version)
    assert before == bundle_files(good)

    def wrong(d):
        with np.load(d / SELFTEST_EXPECTED) as z:
            exp = {k: z[k] for k in z.files}
        exp["logits"] = exp["logits"] + 1.0  # far beyond the bundle's atol
        np.savez(d / SELFTEST_EXPECTED, **exp)

    bad_version = rebuild_bundle(tmp_path / "good.ekb", tmp_path / "bad.ekb", wrong)
    bad = read_bundle(tmp_path / "bad.ekb", tmp_path)
    assert bad.version == bad_version != good.version
    res = flash_many(devs, bad, ssh=ssh_opts(device), opts=FlashOptions())[0]
    assert (res.status, res.step) == ("failed", "selftest"), res
    assert "self-test failed" in res.reason and "'logits' differs by" in res.reason, res.reason
    assert res.version == good.version
    assert_active(dev, good.version, bundle_files(good))
    assert tree_hashes(dev / "versions" / good.version) == before  # previous version intact by hash
    assert sorted(os.listdir(dev / "versions")) == [good.version]  # the refused one never became a version
    assert os.listdir(dev / ".incoming") == []
    hist = json.loads((dev / "history.json").read_text())
    assert [e["version"] for e in hist] == [good.version]
