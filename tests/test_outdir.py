import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.artifact import Artifact, Manifest
from edgekit.errors import UsageError
from edgekit.outdir import check_output, discard, publish, staging_dir

NET = Path(__file__).parent / "models" / "tiny_net.py"


def _run_dir(out, *artifacts):
    """A folder as an earlier edgekit run leaves it: a real manifest listing its artifact files."""
    out.mkdir(parents=True, exist_ok=True)
    for a in artifacts:
        (out / a).write_bytes(b"onnx")
    Manifest(artifacts=[Artifact(kind="fp32", path=a) for a in artifacts]).write(out)
    return out


def _tree(d):
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_existing_run_is_kept_without_overwrite(tmp_path):
    out = _run_dir(tmp_path / "out", "model.fp32.onnx")
    before = _tree(out)
    with pytest.raises(UsageError, match="already holds a previous run; pass --overwrite"):
        check_output(out, overwrite=False)
    assert _tree(out) == before


def test_publish_replaces_only_after_success(tmp_path):
    out = _run_dir(tmp_path / "out")
    st = staging_dir(out)
    (st / "manifest.json").write_text("new")
    publish(st, out, overwrite=True)
    assert (out / "manifest.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or old dirs left


def test_discard_leaves_previous_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("keep")
    st = staging_dir(out)
    (st / "half").write_text("partial")
    discard(st)
    assert (out / "a").read_text() == "keep" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_output_that_is_a_file(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        check_output(f, overwrite=True)


@pytest.mark.parametrize("sub", ["f/out", "f/a/b"])
def test_output_below_a_file(tmp_path, sub):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match=r"f is a file, not a directory"):
        check_output(tmp_path / sub, overwrite=True)
    assert (tmp_path / "f").read_text() == "x"


def test_overwrite_only_replaces_an_earlier_run(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(UsageError, match="not an edgekit output directory"):
        check_output(mine, overwrite=True)
    _run_dir(tmp_path / "run", "model.fp32.onnx")
    assert check_output(tmp_path / "run", overwrite=True) == tmp_path / "run"


def test_staging_dir_that_cannot_be_made_is_a_usage_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="cannot create the output directory"):
        staging_dir(tmp_path / "f" / "out")


# ------------------------------------------------- only an edgekit run, and only edgekit's own files, are replaced

@pytest.mark.parametrize("manifest,why", [
    ('{"name": "my-web-app"}', "not an edgekit manifest: schema None"),
    ('{"schema": "webapp/2"}', "not an edgekit manifest: schema 'webapp/2'"),
    ("old", "not a JSON object"),
    ('["edgekit.manifest/1"]', "not a JSON object"),
])
@pytest.mark.parametrize("overwrite", [True, False])
def test_a_manifest_json_that_edgekit_did_not_write_is_not_a_run(tmp_path, manifest, why, overwrite):
    app = tmp_path / "app"
    app.mkdir()
    (app / "manifest.json").write_text(manifest)
    (app / "index.js").write_text("important")
    with pytest.raises(UsageError, match="not an edgekit output directory") as e:
        check_output(app, overwrite=overwrite)
    assert why in str(e.value) and "\n" not in str(e.value)
    assert _tree(app) == {"manifest.json": manifest.encode(), "index.js": b"important"}


def test_a_folder_without_manifest_says_so_without_overwrite(tmp_path):
    mine = tmp_path / "userdir"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    with pytest.raises(UsageError, match=r"not an edgekit output directory \(no manifest.json\)") as e:
        check_output(mine, overwrite=False)
    assert "previous run" not in str(e.value)


@pytest.mark.parametrize("overwrite", [True, False])
def test_files_added_to_an_earlier_run_are_named_and_refused(tmp_path, overwrite):
    out = _run_dir(tmp_path / "out", "model.fp32.onnx", "model.int8.onnx")
    (out / "NOTES.txt").write_text("mine")
    (out / "model.ekb").write_bytes(b"bundle")
    (out / "report_files").mkdir()
    (out / "report_files" / "latency.png").write_bytes(b"png")
    (out / "report_files" / "draft.docx").write_bytes(b"mine too")
    (out / "old").mkdir()
    before = _tree(out)
    with pytest.raises(UsageError, match=r"files edgekit did not write \(NOTES.txt, model.ekb, old/ and 1 more\); "
                                         r"--overwrite would delete them, so move them") as e:
        check_output(out, overwrite=overwrite)
    assert "\n" not in str(e.value)
    assert _tree(out) == before


def test_a_run_holding_only_what_edgekit_writes_is_replaced(tmp_path):
    out = _run_dir(tmp_path / "out", "net.onnx", "net.int8.onnx")
    for name in ("net.onnx.data", "report.md", "report.html", "report.json", "compress.toml", "sample_inputs.npz",
                 "sensitivity.json", "sensitivity.csv", "sensitivity.png", "pruning.json", "pruned.pt",
                 "report_files/latency-x86.png", ".report.html.abc123.tmp"):
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_bytes(b"x")
    (out / "report.md").write_text("# report\n\n![Latency](report_files/latency-x86.png)\n")
    assert check_output(out, overwrite=True) == out
    st = staging_dir(out)
    (st / "manifest.json").write_text("new")
    publish(st, out, overwrite=True)
    assert _tree(out) == {"manifest.json": b"new"} and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_publish_checks_again_for_files_added_during_the_run(tmp_path):
    out = tmp_path / "out"
    check_output(out, overwrite=False)  # nothing there yet
    st = staging_dir(out)
    (st / "manifest.json").write_text("new")
    out.mkdir()
    (out / "thesis.txt").write_text("saved here while the run was busy")
    with pytest.raises(UsageError, match="not an edgekit output directory"):
        publish(st, out, overwrite=False)
    assert _tree(out) == {"thesis.txt": b"saved here while the run was busy"}
    assert _tree(st) == {"manifest.json": b"new"}  # the caller discards it


def _cli(*args, cwd):
    env = dict(os.environ, EDGEKIT_QUIET="1")
    return subprocess.run([sys.executable, "-m", "edgekit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def _compress(out, *flags, cwd):
    return _cli("compress", f"{NET}:build", "--quantize", "none", "--no-profile", *flags, "-o", out, cwd=cwd)


@pytest.mark.parametrize("overwrite", [["--overwrite"], []])
def test_cli_keeps_a_folder_with_someone_elses_manifest(tmp_path, overwrite):
    app = tmp_path / "fakeman"
    app.mkdir()
    (app / "manifest.json").write_text('{"name":"my-web-app"}')
    (app / "index.js").write_text("important")
    r = _compress(app, *overwrite, cwd=tmp_path)
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert "fakeman: not empty and not an edgekit output directory" in err[0]
    assert _tree(app) == {"manifest.json": b'{"name":"my-web-app"}', "index.js": b"important"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fakeman"]  # no staging folder left


def test_cli_overwrite_refuses_a_real_run_with_a_user_file_in_it(tmp_path, monkeypatch):
    import numpy as np

    from edgekit.cli.quantize import quantize_file
    from edgekit.stages import quantize as stage
    from tests.test_quant_cli import _mlp, _x

    monkeypatch.setattr(stage, "GATE_RUNS", 5)
    monkeypatch.setattr(stage, "GATE_SECONDS", 0.05)
    monkeypatch.setenv("EDGEKIT_QUIET", "1")
    monkeypatch.chdir(tmp_path)
    _mlp(tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", _x(8))
    quantize_file("m.onnx", calib="c.npy", mode="int8-dynamic", tune=False, output="out")  # a real earlier run
    out = tmp_path / "out"
    (out / "NOTES.txt").write_text("what I found")
    before = _tree(out)
    r = _cli("quantize", "m.onnx", "--calib", "c.npy", "--mode", "int8-dynamic", "--no-tune", "-o", "out",
             "--overwrite", cwd=tmp_path)
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert "out: holds an earlier run plus files edgekit did not write (NOTES.txt)" in err[0]
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "m.onnx", "out"]
    (out / "NOTES.txt").unlink()
    quantize_file("m.onnx", calib="c.npy", mode="int8-dynamic", tune=False, output="out", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["m.int8-dynamic.onnx", "m.onnx", "manifest.json"]


def test_sigterm_removes_the_staging_folder_and_keeps_the_previous_run(tmp_path):
    import signal
    import time

    out = tmp_path / "out"
    out.mkdir()
    Manifest(artifacts=[]).write(out)
    before = (out / "manifest.json").read_text()
    # a compress that runs for a while: training a pruned student on the digits model
    p = subprocess.Popen([sys.executable, "-m", "edgekit", "compress", "zoo:digits-cnn", "--prune", "0.5",
                          "--no-profile", "-o", str(out), "--overwrite"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "EDGEKIT_QUIET": "1"})
    deadline = time.time() + 120
    while not list(tmp_path.glob(".out.staging-*")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.1)
    assert list(tmp_path.glob(".out.staging-*")), "the run never started staging"

    # into the run's work; on a loaded host that may still be torch's import, where the signal is held until
    # the import ends (edgekit.interrupts): inside it pybind11 aborted or swallowed the SystemExit
    time.sleep(2)
    assert p.poll() is None
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 128 + signal.SIGTERM, p.stderr.read()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["out"]
    assert (out / "manifest.json").read_text() == before


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(tmp_path):
    from edgekit.outdir import _host

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f".out.staging-{_host()}-{dead.pid}-abc123"
    left.mkdir()
    (left / "model.fp32.onnx").write_bytes(b"partial")
    alive = tmp_path / f".out.staging-{_host()}-{os.getpid()}-def456"  # a run still going: kept
    alive.mkdir()
    other = tmp_path / ".out.staging-otherhost-1-ghi789"  # another machine's, on a shared disk: kept
    other.mkdir()
    s = staging_dir(tmp_path / "out")
    assert not left.exists() and alive.exists() and other.exists() and s.exists()


def test_a_picture_of_yours_beside_the_reports_plots_is_not_deleted(tmp_path):
    out = _run_dir(tmp_path / "out", "model.fp32.onnx")
    (out / "report_files").mkdir()
    (out / "report_files" / "pareto-0.png").write_bytes(b"edgekit's")
    (out / "report.md").write_text("![Pareto](report_files/pareto-0.png)\n")
    assert check_output(out, overwrite=True) == out  # only what report.md links: replaceable
    (out / "report_files" / "mine.png").write_bytes(b"the user's")  # any .png used to count as edgekit's
    with pytest.raises(UsageError, match=r"report_files/mine.png"):
        check_output(out, overwrite=True)
    assert (out / "report_files" / "mine.png").read_bytes() == b"the user's"


def test_the_output_folder_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        st = staging_dir(tmp_path / "out")
        (st / "manifest.json").write_text("{}")
        publish(st, tmp_path / "out", overwrite=True)
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755  # mkdtemp's 0700 kept other users out
