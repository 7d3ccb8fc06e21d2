"""An output FILE below a regular file (-o, --markdown, --json-out) is a one-line usage error (exit 2),
raised before any work: it used to surface as 'internal error: FileExistsError' (exit 1), and profile
only failed after measuring everything."""
from __future__ import annotations

import pytest

from edgekit.cli import main
from flash_fixtures import make_outdir


def _run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    return e.value.code, err


@pytest.mark.parametrize("argv, flag", [
    (["bundle", "{out}", "-o", "{f}/x.ekb"], "-o/--output"),
    (["report", "{out}", "-o", "{f}/r.html"], "-o/--output"),
    (["report", "{out}", "--markdown", "{f}/r.md"], "--markdown"),
    (["report", "{out}", "--json-out", "{f}/deeper/r.json"], "--json-out"),
    (["profile", "{out}", "-o", "{f}/p.json"], "-o/--output"),
])
def test_output_below_a_file_is_a_usage_error(tmp_path, capsys, monkeypatch, argv, flag):
    import edgekit.profiling

    out = make_outdir(tmp_path / "out")
    f = tmp_path / "afile"
    f.write_text("hi\n")
    measured = []
    monkeypatch.setattr(edgekit.profiling, "run_profile", lambda *a, **k: measured.append(1) or {"runs": []})
    before = sorted(p.name for p in out.iterdir())
    code, err = _run([a.format(out=out, f=f) for a in argv], capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "internal error" not in err, err
    assert err.startswith(f"edgekit: error: {flag} {f}/") and f"{f} is a file, not a directory" in err, err
    assert measured == []  # refused before profiling anything
    assert f.read_text() == "hi\n" and sorted(p.name for p in out.iterdir()) == before


def test_output_that_is_a_directory_is_a_usage_error(tmp_path, capsys):
    out = make_outdir(tmp_path / "out")
    d = tmp_path / "adir"
    d.mkdir()
    for argv in (["bundle", str(out), "-o", str(d)], ["report", str(out), "--markdown", str(d)]):
        code, err = _run(argv, capsys)
        assert code == 2 and len(err.splitlines()) == 1 and str(d) in err and "directory" in err, err
    assert list(d.iterdir()) == []


def test_report_still_writes_into_a_new_folder(tmp_path, capsys):
    # the check must not refuse a parent that does not exist yet: report creates it
    out = make_outdir(tmp_path / "out")
    md = tmp_path / "new" / "sub" / "r.md"
    assert main(["report", str(out), "--markdown", str(md)]) == 0
    assert md.is_file()
