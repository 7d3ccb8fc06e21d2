"""Bundles, reports and output folders hold only what edgekit can vouch for (sweep19 F6, F9, F10, F12,
F15, F16, F18; sweep22 F12): bounded bundle extraction, artifact hashes that cover external data,
outputs that never replace a user's file, and leftovers that are only removed when they are edgekit's."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from edgekit.errors import InputError
from edgekit.flash.bundle import META, build_bundle, read_bundle
from flash_fixtures import make_outdir


@pytest.fixture
def outdir(tmp_path):
    return make_outdir(tmp_path / "out", int8_too=True)


def _repack(src: Path, dest: Path, extra: dict | None = None, replace: dict | None = None) -> None:
    """src's members, those named in replace {name: bytes} with new contents, plus extra {name: bytes};
    gzip level 9 (so zeros shrink about 1000x)."""
    replace = replace or {}
    with tarfile.open(src) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers() if m.isfile()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out:
        for m, data in members:
            data = replace.get(m.name, data)
            m.size = len(data)
            out.addfile(m, io.BytesIO(data))
        for name, data in (extra or {}).items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            out.addfile(ti, io.BytesIO(data))
    dest.write_bytes(gzip.compress(buf.getvalue(), 9))


# --- F6: a small bundle that expands to gigabytes ---------------------------------------------------

def test_bundle_that_expands_far_beyond_its_size_is_refused_before_extraction(outdir, tmp_path, monkeypatch):
    import edgekit.flash.archive as archive

    monkeypatch.setattr(archive, "MIN_LIMIT", 4 << 20, raising=False)  # the floor, scaled down for a test
    build_bundle(outdir, tmp_path / "good.ekb")
    _repack(tmp_path / "good.ekb", tmp_path / "bomb.ekb", {"zeros.bin": bytes(24 << 20)})
    assert (tmp_path / "bomb.ekb").stat().st_size < 200_000
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(InputError, match=r"bomb\.ekb: expands to more than 4 MiB .*decompression bomb"):
        read_bundle(tmp_path / "bomb.ekb", work)
    assert list(work.iterdir()) == []
    assert read_bundle(tmp_path / "good.ekb", work).meta["model"] == "model.int8.onnx"


def test_unlisted_member_is_refused_before_anything_is_written(outdir, tmp_path):
    from edgekit.flash.archive import safe_extract

    build_bundle(outdir, tmp_path / "good.ekb")
    _repack(tmp_path / "good.ekb", tmp_path / "extra.ekb", {"zeros.bin": bytes(1 << 20)})
    seen = []

    def index(found, read):
        seen.append((sorted(p.name for p in (tmp_path / "x").rglob("*")) if (tmp_path / "x").exists() else [],
                     json.loads(read(META))["model"]))
        raise InputError("refused")

    with pytest.raises(InputError, match="refused"):
        safe_extract(tmp_path / "extra.ekb", tmp_path / "x", index)
    assert seen == [([], "model.int8.onnx")]  # bundle.json read, nothing extracted yet
    with pytest.raises(InputError, match=r"contents differ from bundle\.json \(missing none, unlisted \['zeros\.bin'\]\)"):
        read_bundle(tmp_path / "extra.ekb", tmp_path)


def test_a_listed_file_whose_bytes_differ_stops_extraction(outdir, tmp_path):
    build_bundle(outdir, tmp_path / "good.ekb")
    with tarfile.open(tmp_path / "good.ekb") as t:
        members = {m.name: t.extractfile(m).read() for m in t.getmembers() if m.isfile()}
    model = bytearray(members["model.int8.onnx"])
    model[-1] ^= 1
    _repack(tmp_path / "good.ekb", tmp_path / "bad.ekb", replace={"model.int8.onnx": bytes(model)})
    work = tmp_path / "w"
    work.mkdir()
    with pytest.raises(InputError, match=r"bad\.ekb: model\.int8\.onnx fails its sha256 check"):
        read_bundle(tmp_path / "bad.ekb", work)
    assert list(work.iterdir()) == []


# --- F15: an artifact whose weights live in an external data file ----------------------------------

def _external_data_outdir(root: Path) -> Path:
    """A run whose FP32 is stored as model.fp32.onnx + model.fp32.onnx.data (copy_model's layout for a
    model over 2 GB), its manifest entry hashed the way a run records it."""
    import onnx

    from edgekit.artifact import load_manifest

    out = make_outdir(root)
    f = out / "model.fp32.onnx"
    onnx.save_model(onnx.load(str(f)), str(f), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.fp32.onnx.data", size_threshold=0)
    man = load_manifest(out)
    man.artifacts[0].refresh_file_facts(out)
    man.write(out)
    return out


def test_changed_external_data_is_refused_like_a_changed_onnx(tmp_path):
    import numpy as np

    out = _external_data_outdir(tmp_path / "out")
    info = build_bundle(out, tmp_path / "a.ekb")
    assert info["artifact"]["kind"] == "fp32"
    assert read_bundle(tmp_path / "a.ekb", tmp_path).files.keys() >= {"model.fp32.onnx", "model.fp32.onnx.data"}
    data = out / "model.fp32.onnx.data"
    w = np.fromfile(data, dtype=np.float32)
    w[:] = 0.5  # every weight replaced; the .onnx is byte for byte the same
    w.tofile(data)
    with pytest.raises(InputError, match=r"model\.fp32\.onnx: changed since the run .*refusing to bundle it"):
        build_bundle(out, tmp_path / "b.ekb")
    data.unlink()
    with pytest.raises(InputError, match=r"model\.fp32\.onnx: its external data file model\.fp32\.onnx\.data is missing"):
        build_bundle(out, tmp_path / "b.ekb")
    assert not (tmp_path / "b.ekb").exists()


def test_manifest_hashes_of_single_file_models_are_unchanged(outdir):
    from edgekit.artifact import load_manifest
    from edgekit.fsutil import sha256_file

    for a in load_manifest(outdir).artifacts:  # an earlier run's manifest still verifies
        assert a.sha256 == sha256_file(outdir / a.path)
        assert a.checked_file(outdir, then="x") == outdir / a.path


# --- F18: a folder beside OUTDIR named like a run an --overwrite set aside -------------------------

def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_users_folder_named_like_a_set_aside_run_is_left_alone(tmp_path, capsys):
    from edgekit.artifact import Manifest
    from edgekit.outdir import _host, check_output

    mine = tmp_path / ".out.old-original"  # the legacy bare form, the user's own backup
    mine.mkdir()
    (mine / "results.txt").write_text("my previous results\n")
    copy = tmp_path / ".out.old-20261130"  # a copy of a run, plus the user's notes
    Manifest(settings={"tag": "copy"}).write(copy)
    (copy / "notes.txt").write_text("why I kept it\n")
    named = tmp_path / f".out.old-{_host()}-{_dead_pid()}-abcd1234"  # edgekit's name, no run inside
    named.mkdir()
    (named / "data.csv").write_text("1,2\n")
    gone = tmp_path / f".out.old-{_host()}-{_dead_pid()}-efgh5678"  # a real leftover: still removed
    Manifest(settings={"tag": "old"}).write(gone)
    (tmp_path / "out").mkdir()  # OUTDIR in place: a leftover beside it is deleted, not put back
    for overwrite in (False, True):
        assert check_output(tmp_path / "out", overwrite=overwrite) == tmp_path / "out"
    assert (mine / "results.txt").read_text() == "my previous results\n"
    assert (copy / "notes.txt").exists() and (copy / "manifest.json").exists()
    assert (named / "data.csv").exists() and not gone.exists()
    err = capsys.readouterr().err
    assert f"left {named.name} beside" in err and "no manifest.json" in err
    assert mine.name not in err and copy.name not in err


def test_a_replaced_run_is_deleted_with_its_manifest_last(tmp_path):
    from edgekit.artifact import Manifest
    from edgekit.outdir import remove_run

    run = tmp_path / "run"
    Manifest().write(run)
    for name in ("model.fp32.onnx", "report.md", "zzz.json"):
        (run / name).write_text("x")
    (run / "report_files").mkdir()
    (run / "report_files" / "a.png").write_text("x")
    order = []
    import os

    unlink = os.unlink

    def record(path, *a, **k):  # which file goes when: a deletion cut short keeps the manifest
        order.append(os.path.basename(path))
        return unlink(path, *a, **k)

    os.unlink = record
    try:
        remove_run(run)
    finally:
        os.unlink = unlink
    assert not run.exists() and order[-2:] == ["report.md", "manifest.json"]


# --- F12: --overwrite and files named like ones another kind of run writes -------------------------

def _run_of_kind(out: Path, stages: list, **manifest) -> Path:
    from edgekit.artifact import Artifact, Manifest, StageRecord

    Manifest(artifacts=[Artifact(kind="fp32", path="model.fp32.onnx")],
             stages=[StageRecord(s, "done") for s in stages], **manifest).write(out)
    (out / "model.fp32.onnx").write_bytes(b"x")
    return out


@pytest.mark.parametrize("user_file", ["pruned.pt", "distill.json", "sensitivity.png", "pruning.json"])
def test_overwrite_keeps_a_file_that_this_kind_of_run_never_writes(tmp_path, user_file):
    from edgekit.errors import UsageError
    from edgekit.outdir import check_output

    out = _run_of_kind(tmp_path / "out", ["load", "export", "quantize", "report"])
    for name in ("report.md", "report.html", "report.json", "compress.toml", "sample_inputs.npz"):
        (out / name).write_text("x")
    assert check_output(out, overwrite=True) == out  # all of those are a compress run's own
    (out / user_file).write_text("mine\n")
    with pytest.raises(UsageError, match=rf"holds an earlier run plus files edgekit did not write \({user_file}\)"):
        check_output(out, overwrite=True)
    assert (out / user_file).read_text() == "mine\n"


def test_overwrite_knows_what_prune_and_distill_runs_write(tmp_path):
    from edgekit.errors import UsageError
    from edgekit.outdir import check_output

    out = _run_of_kind(tmp_path / "p", ["pruning"], pruning={"sensitivity_files": {"png": "sensitivity.png"}})
    for name in ("pruning.json", "pruned.pt", "sensitivity.png", "report.html"):
        (out / name).write_text("x")
    assert check_output(out, overwrite=True) == out
    (out / "compress.toml").write_text("mine\n")
    with pytest.raises(UsageError, match=r"files edgekit did not write \(compress\.toml\)"):
        check_output(out, overwrite=True)
    out = _run_of_kind(tmp_path / "d", ["distill"])
    (out / "distill.json").write_text("x")
    (out / "pruned.pt").write_text("x")
    assert check_output(out, overwrite=True) == out
    (out / "pruning.json").write_text("mine\n")
    with pytest.raises(UsageError, match=r"files edgekit did not write \(pruning\.json\)"):
        check_output(out, overwrite=True)


# --- F9: a report of a run whose artifact changed or is gone since ---------------------------------

def test_report_warns_about_each_artifact_changed_or_missing_since_the_run(outdir, tmp_path, capsys):
    import shutil

    from edgekit.report import write_reports

    shutil.copyfile(outdir / "model.fp32.onnx", outdir / "model.int8.onnx")  # the int8 replaced
    paths = {"html": tmp_path / "r.html", "markdown": tmp_path / "r.md", "json_path": tmp_path / "r.json"}
    data = write_reports([outdir], **paths)
    err = capsys.readouterr().err
    want = "model.int8.onnx (int8): changed since the run"
    assert f"edgekit: warning: out: {want}" in err
    assert [v["file"] for v in data["runs"][0]["variants"]] == ["ok", "changed"]
    assert want in json.loads(paths["json_path"].read_text())["runs"][0]["warnings"][0]
    assert want in paths["markdown"].read_text() and want in paths["html"].read_text()
    (outdir / "model.fp32.onnx").unlink()
    data = write_reports([outdir], json_path=tmp_path / "r.json")
    assert "model.fp32.onnx (fp32): artifact listed in manifest.json is missing" in capsys.readouterr().err
    assert [v["file"] for v in data["runs"][0]["variants"]] == ["missing", "changed"]


def test_report_of_an_intact_run_has_no_file_warnings(outdir, tmp_path, capsys):
    from edgekit.report import write_reports

    data = write_reports([outdir], json_path=tmp_path / "r.json")
    assert data["runs"][0]["warnings"] == [] and "warning" not in capsys.readouterr().err


# --- F10: report and profile outputs never replace a file that is not their own report -------------

def _main_exit(args, capsys) -> tuple[int, str]:
    from tests.cliutil import run_cli

    return run_cli(args), capsys.readouterr().err


def test_report_refuses_to_replace_a_users_file_or_a_runs_own(outdir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynotes.py").write_text("print('mine')\n")
    before = (outdir / "model.fp32.onnx").read_bytes()
    for args, named in ((["-o", "mynotes.py"], "-o/--output mynotes.py: exists and is not an edgekit HTML report"),
                        (["--markdown", "mynotes.py"], "--markdown mynotes.py: exists and is not an edgekit Markdown"),
                        (["--json-out", str(outdir / "model.fp32.onnx"), "-o", "x.html"],
                         f"--json-out {outdir / 'model.fp32.onnx'}: is listed in {outdir / 'manifest.json'}"),
                        (["--json-out", str(outdir / "manifest.json"), "-o", "x.html"], "is listed in")):
        code, err = _main_exit(["report", str(outdir), *args], capsys)
        assert code == 2 and named in err and "choose another name, e.g." in err, err
        assert len(err.strip().splitlines()) == 1
    assert (tmp_path / "mynotes.py").read_text() == "print('mine')\n"
    assert (outdir / "model.fp32.onnx").read_bytes() == before and not (tmp_path / "x.html").exists()
    # its own earlier reports are replaced, as before
    args = ["report", str(outdir), "-o", "r.html", "--markdown", "r.md", "--json-out", "r.json"]
    for _ in range(2):
        assert _main_exit(args, capsys)[0] == 0
    assert _main_exit(["report", str(outdir)], capsys)[0] == 0
    assert _main_exit(["report", str(outdir)], capsys)[0] == 0  # OUTDIR/report.html, again
    code, err = _main_exit(["report", str(outdir), "--json-out", "r.html", "-o", "s.html"], capsys)
    assert code == 2 and "r.html: exists and is not an edgekit JSON report" in err  # another format


def test_profile_output_refuses_a_users_file_and_its_markdown_twin(outdir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "victim.py").write_text("print('mine')\n")
    code, err = _main_exit(["profile", str(outdir), "-o", "victim.py"], capsys)
    assert code == 2 and "-o/--output victim.py: exists and is not an edgekit profile JSON report" in err
    (tmp_path / "p.md").write_text("my notes\n")  # the Markdown a JSON -o writes beside it
    code, err = _main_exit(["profile", str(outdir), "-o", "p.json"], capsys)
    assert code == 2 and "p.md: exists and is not an edgekit profile Markdown report" in err
    code, err = _main_exit(["profile", str(outdir), "-o", str(outdir / "model.int8.onnx")], capsys)
    assert code == 2 and "is listed in" in err
    assert (tmp_path / "victim.py").read_text() == "print('mine')\n" and (tmp_path / "p.md").read_text() == "my notes\n"
    assert not (tmp_path / "p.json").exists()


# --- F16: --inputs that numpy cannot read without pickle, or that is no .npz at all ----------------

def test_bundle_inputs_with_object_arrays_or_not_an_npz_is_one_line(outdir, tmp_path, capsys):
    import numpy as np

    a = np.empty(2, dtype=object)
    a[0], a[1] = {"x": 1}, [2]
    np.savez(tmp_path / "evil.npz", x=a, y=np.zeros(2, dtype=np.int64))
    (tmp_path / "junk.npz").write_text("hi\n")
    np.savez(tmp_path / "good.npz", x=np.ones((1, 16), dtype=np.float32))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "good.npz").read_bytes()[:60])
    for name, why in (("evil.npz", "holds object arrays (pickled Python objects), which edgekit never loads"),
                      ("junk.npz", "not a .npz or .npy file (no zip or .npy header)"),
                      ("cut.npz", "not a readable .npz or .npy file"),
                      ("none.npz", "no such inputs file")):
        code, err = _main_exit(["bundle", str(outdir), "--inputs", str(tmp_path / name), "-o",
                                str(tmp_path / "b.ekb")], capsys)
        assert code == 2 and err.startswith(f"edgekit: error: {tmp_path / name}: {why}"), err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "b.ekb").exists()
    assert build_bundle(outdir, tmp_path / "b.ekb", inputs=tmp_path / "good.npz")["selftest"]["input_origin"] \
        == "good.npz"


# --- sweep22 F12: bundle --help says which artifact it packs by default -----------------------------

def test_bundle_help_describes_the_default_artifact_as_chosen(capsys):
    from edgekit.cli import main

    try:
        code = main(["bundle", "--help"])
    except SystemExit as e:
        code = e.code
    text = " ".join(capsys.readouterr().out.split())
    assert code in (0, None)
    assert ("default: the first recommended one, else the smallest compressed variant within tolerance that no "
            "measurement showed slower, else fp32") in text and "else int8" not in text


def test_bundle_default_is_the_smallest_variant_within_tolerance_not_int8(tmp_path):
    from edgekit.artifact import load_manifest

    out = make_outdir(tmp_path / "out", int8_too=True)
    man = load_manifest(out)
    man.recommended = {}
    man.write(out)
    small = build_bundle(out, tmp_path / "a.ekb")["artifact"]["kind"]
    assert small == "int8"  # the only compressed variant; a manifest that refuses it falls back to fp32
    man.quantization = {"model.fp32.onnx": {"tolerance_met": False}}
    man.artifacts[1].stage, man.artifacts[1].parent = "quantize", "model.fp32.onnx"
    man.write(out)
    assert build_bundle(out, tmp_path / "b.ekb")["artifact"]["kind"] == "fp32"
