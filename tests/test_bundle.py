"""edgekit bundle: content, determinism, real self-test data, and safe, verified reading."""
from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from edgekit.errors import InputError, UsageError
from edgekit.flash.bundle import META, RUNNER, build_bundle, read_bundle
from edgekit.fsutil import sha256_file
from flash_fixtures import make_outdir, rebuild_bundle


@pytest.fixture
def outdir(tmp_path):
    return make_outdir(tmp_path / "out", int8_too=True)


def _members(ekb):
    with tarfile.open(ekb) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_bundle_content_hashes_and_recommended_artifact(outdir, tmp_path):
    info = build_bundle(outdir, tmp_path / "m.ekb")
    assert info["artifact"] == {"kind": "int8", "path": "model.int8.onnx"}  # manifest.recommended wins
    files = _members(tmp_path / "m.ekb")
    meta = json.loads(files[META])
    assert meta["format"] == "edgekit.bundle/1" and meta["version"] == info["version"]
    assert meta["model"] == "model.int8.onnx" and RUNNER in files
    assert set(meta["selftest"]) >= {"inputs", "expected", "atol"} and meta["selftest"]["atol"] > 0
    assert meta["artifact"]["sha256"] == sha256_file(outdir / "model.int8.onnx")
    assert meta["prepost"] == {"pre": [], "post": [{"op": "softmax_topk", "k": 2}]}
    assert set(files) == set(meta["files"]) | {META}
    import hashlib

    for rel, sha in meta["files"].items():
        assert hashlib.sha256(files[rel]).hexdigest() == sha, rel
    assert files["model.int8.onnx"] == (outdir / "model.int8.onnx").read_bytes()


def test_bundle_json_keeps_latency_statistics_not_the_raw_samples(outdir, tmp_path):
    man = json.loads((outdir / "manifest.json").read_text())
    samples = [0.5 + i * 1e-3 for i in range(3000)]
    for a in man["artifacts"]:
        a["latency"] = {"x86-laptop": {"status": "ok", "p50_ms": 1.5, "runs": 3000, "samples_ms": samples,
                                       "prepost": {"status": "ok", "e2e": {"p50_ms": 2.0}, "samples_ms": samples}}}
    (outdir / "manifest.json").write_text(json.dumps(man))
    build_bundle(outdir, tmp_path / "m.ekb")
    raw = _members(tmp_path / "m.ekb")[META]
    lat = json.loads(raw)["artifact"]["latency"]["x86-laptop"]
    assert b"samples_ms" not in raw and len(raw) < 20_000
    assert lat["p50_ms"] == 1.5 and lat["runs"] == 3000 and lat["prepost"]["e2e"] == {"p50_ms": 2.0}


def test_same_content_same_bytes_and_version(outdir, tmp_path):
    a = build_bundle(outdir, tmp_path / "a.ekb")
    b = build_bundle(outdir, tmp_path / "b.ekb")
    assert a["version"] == b["version"]
    assert (tmp_path / "a.ekb").read_bytes() == (tmp_path / "b.ekb").read_bytes()
    c = build_bundle(outdir, tmp_path / "c.ekb", artifact="fp32")
    assert c["version"] != a["version"] and c["version"].startswith("fp32-")
    other = make_outdir(tmp_path / "other", seed=7)
    d = build_bundle(other, tmp_path / "d.ekb", artifact="fp32")
    assert d["version"] != c["version"]


def test_selftest_uses_real_input_and_true_output(outdir, tmp_path):
    x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
    np.savez(outdir / "sample_inputs.npz", x=x, y=np.arange(5))
    info = build_bundle(outdir, tmp_path / "m.ekb", artifact="fp32")
    assert info["selftest"]["input_origin"] == "sample_inputs.npz"
    b = read_bundle(tmp_path / "m.ekb", tmp_path)
    sx = np.load(b.root / "selftest.npz")["x"]
    np.testing.assert_array_equal(sx, x[:1])
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(outdir / "model.fp32.onnx"))
    w, bias = (numpy_helper.to_array(i) for i in m.graph.initializer)
    np.testing.assert_allclose(np.load(b.root / "expected.npz")["y"], sx @ w + bias, rtol=1e-5, atol=1e-5)


def test_bad_inputs_and_unknown_artifact(outdir, tmp_path):
    with pytest.raises(UsageError, match="did you mean 'int8'"):
        build_bundle(outdir, tmp_path / "m.ekb", artifact="int9")
    np.savez(tmp_path / "wrong.npz", x=np.zeros((1, 3), np.float32))
    with pytest.raises(InputError, match="wrong.npz"):
        build_bundle(outdir, tmp_path / "m.ekb", inputs=tmp_path / "wrong.npz")
    (outdir / "model.int8.onnx").write_bytes((outdir / "model.int8.onnx").read_bytes() + b"\0")
    with pytest.raises(InputError, match="sha256 differs from manifest"):
        build_bundle(outdir, tmp_path / "m.ekb")
    assert not (tmp_path / "m.ekb").exists()  # nothing half-written


def _evil_tar(path, name, *, kind=tarfile.REGTYPE, link=""):
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = link
        data = b"pwned\n"
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("name,kind,link,why", [
    ("../evil.txt", tarfile.REGTYPE, "", "'..'"),
    ("ok/../../evil.txt", tarfile.REGTYPE, "", "'..'"),
    ("/tmp/evil.txt", tarfile.REGTYPE, "", "absolute"),
    ("link", tarfile.SYMTYPE, "../../etc/passwd", "link"),
    ("hard", tarfile.LNKTYPE, "/etc/passwd", "link"),
    ("dev", tarfile.CHRTYPE, "", "not a regular file"),
    ("a\x1b[2Jb.txt", tarfile.REGTYPE, "", "control character"),
])
def test_unsafe_archive_entries_refused(tmp_path, name, kind, link, why):
    ekb = tmp_path / "evil.ekb"
    _evil_tar(ekb, name, kind=kind, link=link)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(InputError, match=why):
        read_bundle(ekb, work)
    assert not (tmp_path / "evil.txt").exists()
    assert [p for p in work.rglob("*") if p.is_file()] == []


def test_tampered_bundles_refused(outdir, tmp_path):
    build_bundle(outdir, tmp_path / "m.ekb")
    members = _members(tmp_path / "m.ekb")

    def repack(dest, changes):
        with tarfile.open(dest, "w:gz") as tar:
            for name, data in {**members, **changes}.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    repack(tmp_path / "t1.ekb", {"model.int8.onnx": members["model.int8.onnx"][:-1] + b"\x01"})
    with pytest.raises(InputError, match="model.int8.onnx fails its sha256"):
        read_bundle(tmp_path / "t1.ekb", tmp_path)
    repack(tmp_path / "t2.ekb", {"extra.sh": b"rm -rf /\n"})
    with pytest.raises(InputError, match="unlisted"):
        read_bundle(tmp_path / "t2.ekb", tmp_path)
    meta = json.loads(members[META])
    meta["selftest"]["atol"] = 1e9  # edited without re-versioning
    repack(tmp_path / "t3.ekb", {META: json.dumps(meta).encode()})
    with pytest.raises(InputError, match="does not match its content"):
        read_bundle(tmp_path / "t3.ekb", tmp_path)
    (tmp_path / "t4.ekb").write_bytes(b"not a tar")
    with pytest.raises(InputError, match="not an edgekit bundle") as e:
        read_bundle(tmp_path / "t4.ekb", tmp_path)
    assert str(e.value) == f"{tmp_path / 't4.ekb'}: not an edgekit bundle (not a tar.gz archive)"  # one line


def test_rebuilt_bundle_is_consistent(outdir, tmp_path):
    """The fault-injection helper re-hashes honestly, so only the self-test can catch its change."""
    build_bundle(outdir, tmp_path / "m.ekb")

    def bump(d):
        exp = dict(np.load(d / "expected.npz"))
        from edgekit.flash.archive import save_npz

        save_npz(d / "expected.npz", {k: v + 1.0 for k, v in exp.items()})

    v = rebuild_bundle(tmp_path / "m.ekb", tmp_path / "bad.ekb", bump)
    assert read_bundle(tmp_path / "bad.ekb", tmp_path).version == v


def test_cli_bundle(outdir, tmp_path, capsys):
    from edgekit.cli import main

    assert main(["bundle", str(outdir), "--artifact", "fp32", "-o", str(tmp_path / "m.ekb"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["artifact"]["kind"] == "fp32" and (tmp_path / "m.ekb").exists()
    with pytest.raises(SystemExit) as e:
        main(["bundle", str(tmp_path / "nope"), "-o", str(tmp_path / "x.ekb")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "nope" in err and len(err.strip().splitlines()) == 1


def _set_meta(change):
    def mutate(d):
        meta = json.loads((d / META).read_text())
        change(meta)
        (d / META).write_text(json.dumps(meta))
    return mutate


@pytest.mark.parametrize("kind", ["../../../evil_kind", "x/../../y", "..", "a..b", ".hidden", "a/b", "a b",
                                  "int8\n", "-rf", ""])
def test_unsafe_artifact_kind_refused(outdir, tmp_path, kind):
    """The version is `<kind>-<hash>` and names a directory on the device: an honestly re-versioned
    bundle with a path in its kind must still be refused."""
    build_bundle(outdir, tmp_path / "m.ekb", artifact="fp32")
    rebuild_bundle(tmp_path / "m.ekb", tmp_path / "evil.ekb", _set_meta(lambda m: m["artifact"].update(kind=kind)))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(InputError) as e:
        read_bundle(tmp_path / "evil.ekb", work)
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'evil.ekb'}: ") and "unsafe artifact kind" in msg
    assert len(msg.splitlines()) == 1
    assert list(work.iterdir()) == []  # the refused bundle's extracted files are gone too


@pytest.mark.parametrize("change,why", [
    (lambda m: m.update(version="../../../evil_ver"), "unsafe version '../../../evil_ver'"),
    (lambda m: m.update(artifact=["fp32"]), "'artifact' is not an object"),
    (lambda m: m.update(selftest="selftest.npz"), "'selftest' is not an object"),
    (lambda m: m.update(files=sorted(m["files"])), "'files' is not an object"),
    (lambda m: m.update(version=7), "'version' is not a string"),
    (lambda m: m["selftest"].update(inputs=None), "selftest.inputs is missing or not a string"),
    (lambda m: m["files"].update({RUNNER: 1}), f"lists '{RUNNER}' without a sha256 string"),
], ids=["version-path", "artifact-list", "selftest-str", "files-list", "version-int", "inputs-none", "sha-int"])
def test_malformed_bundle_json_refused_in_one_line(outdir, tmp_path, change, why):
    build_bundle(outdir, tmp_path / "m.ekb", artifact="fp32")
    members = _members(tmp_path / "m.ekb")
    meta = json.loads(members[META])
    change(meta)
    with tarfile.open(tmp_path / "bad.ekb", "w:gz") as tar:  # not re-versioned: the shape checks come first
        for name, data in {**members, META: json.dumps(meta).encode()}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(InputError) as e:
        read_bundle(tmp_path / "bad.ekb", tmp_path)
    assert why in str(e.value) and "bad.ekb" in str(e.value) and len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("change,shipped", [
    ({}, "int8"),  # no recommendation, INT8 met the tolerance: INT8
    ({"quantization": {"model.fp32.onnx": {"tolerance_met": False}}}, "fp32"),
    ({"quantization": {"model.fp32.onnx": {"tolerance_met": True,
                                           "speed_gate": {"host": {"status": "ok", "passed": False}}}}}, "fp32"),
    ({"settings": {"tolerance": "1%"}, "metrics": (0.90, 0.80)}, "fp32"),  # a 11% drop, without a quant record
])
def test_without_a_recommendation_a_refused_int8_is_never_shipped(outdir, tmp_path, change, shipped):
    """With profiling off nothing is recommended; the fallback used to be INT8 even when the run itself had
    refused it for missing the tolerance."""
    m = json.loads((outdir / "manifest.json").read_text())
    m["recommended"] = {}
    for a in m["artifacts"]:
        if a["kind"] == "int8":
            a.update(stage="quantize", parent="model.fp32.onnx")
        if "metrics" in change:
            a["metrics"] = {"name": "accuracy", "value": change["metrics"][a["kind"] == "int8"]}
    m.update({k: v for k, v in change.items() if k != "metrics"})
    (outdir / "manifest.json").write_text(json.dumps(m))
    assert build_bundle(outdir, tmp_path / "m.ekb")["artifact"]["kind"] == shipped


def test_artifact_kind_shared_by_two_files_must_be_named(tmp_path):
    from edgekit.artifact import Artifact, Manifest
    from edgekit.errors import UsageError
    from edgekit.flash.bundle import choose_artifact

    m = Manifest(artifacts=[Artifact("fp32", "model.fp32.onnx"), Artifact("int8", "model.int8.onnx"),
                            Artifact("int8", "model.distilled.int8.onnx")])
    with pytest.raises(UsageError, match=r"2 artifacts of that kind .*model.int8.onnx, model.distilled.int8.onnx"
                                         r"\); give the file name"):
        choose_artifact(m, tmp_path, "int8")  # it used to pick the first silently
    assert choose_artifact(m, tmp_path, "model.distilled.int8.onnx").path == "model.distilled.int8.onnx"
    assert choose_artifact(m, tmp_path, "fp32").path == "model.fp32.onnx"
    with pytest.raises(UsageError) as e:
        choose_artifact(m, tmp_path, "xyz")
    assert "int8, int8" not in str(e.value)


def test_without_a_recommendation_the_smallest_acceptable_variant_ships(tmp_path):
    from edgekit.artifact import Artifact, Manifest
    from edgekit.flash.bundle import choose_artifact

    def art(kind, path, nbytes, value):
        return Artifact(kind, path, bytes=nbytes, metrics={"name": "accuracy", "value": value})

    # an `edgekit prune` output: it shipped the unpruned FP32
    m = Manifest(artifacts=[art("fp32", "model.fp32.onnx", 1000, 0.95), art("distilled", "model.distilled.onnx", 400, 0.95)])
    assert choose_artifact(m, tmp_path).path == "model.distilled.onnx"
    # compress with --no-profile: the distilled INT8 beats the FP32's INT8 on size; one beyond tolerance never ships
    m = Manifest(artifacts=[art("fp32", "model.fp32.onnx", 1000, 0.95), art("distilled", "model.distilled.onnx", 400, 0.95),
                            art("int8", "model.int8.onnx", 260, 0.95), art("int8", "model.distilled.int8.onnx", 110, 0.90)],
                 settings={"tolerance": "1%"})
    assert choose_artifact(m, tmp_path).path == "model.int8.onnx"


def test_bundle_output_that_is_a_folder_is_one_line(tmp_path):
    out = make_outdir(tmp_path / "run")
    with pytest.raises(InputError, match=r"is a directory; -o names the bundle file to write \(e.g. run.ekb\)"):
        build_bundle(out, out)  # was "internal error: IsADirectoryError"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_bundle_replaces_an_older_bundle_but_not_another_file(tmp_path):
    # -o naming the user's own file replaced it without a word
    out = make_outdir(tmp_path / "run")
    build_bundle(out, tmp_path / "m.ekb")
    build_bundle(out, tmp_path / "m.ekb", artifact="fp32")  # re-bundling over a bundle: expected
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"notes.txt: exists and is not an edgekit bundle; not replacing it"):
        build_bundle(out, tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kind", ["fp32", "int8"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e300])  # 1e300 is finite in float64, inf as float32
def test_non_finite_selftest_input_refused_in_one_line(outdir, tmp_path, capsys, kind, bad):
    from edgekit.cli import main

    x = np.ones((4, 16), np.float64)
    x[0, 3] = bad  # the first sample is the one the self-test uses
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(SystemExit) as e:
        main(["bundle", str(outdir), "--artifact", kind, "-o", str(tmp_path / "m.ekb"),
              "--inputs", str(tmp_path / "nan.npy")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nan.npy" in err and "'x'" in err and "NaN or infinite" in err, err
    assert not (tmp_path / "m.ekb").exists()


def test_non_finite_sample_inputs_of_the_run_fall_back_to_a_generated_input(outdir, tmp_path):
    x = np.full((1, 16), np.nan, np.float32)
    np.savez(outdir / "sample_inputs.npz", x=x)
    info = build_bundle(outdir, tmp_path / "m.ekb")
    assert info["selftest"]["input_origin"] == "generated"


@pytest.mark.parametrize("where", [0.3, 0.5, 0.7, -6])
def test_flipped_bit_reads_as_a_damaged_archive(outdir, tmp_path, where):
    build_bundle(outdir, tmp_path / "m.ekb")
    b = bytearray((tmp_path / "m.ekb").read_bytes())
    b[int(len(b) * where) if where > 0 else where] ^= 1  # -6: inside the trailing CRC/size
    (tmp_path / "flip.ekb").write_bytes(bytes(b))
    with pytest.raises(InputError, match=r"flip\.ekb: damaged bundle archive \(corrupt compressed data"):
        read_bundle(tmp_path / "flip.ekb", tmp_path)
    (tmp_path / "cut.ekb").write_bytes(bytes(b[: len(b) // 2]))
    with pytest.raises(InputError, match=r"cut\.ekb: damaged bundle archive .*truncated"):
        read_bundle(tmp_path / "cut.ekb", tmp_path)
