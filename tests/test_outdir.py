import pytest

from edgekit.errors import UsageError
from edgekit.outdir import check_output, discard, publish, staging_dir


def test_existing_run_is_kept_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    with pytest.raises(UsageError, match="--overwrite"):
        check_output(out, overwrite=False)
    assert (out / "manifest.json").read_text() == "old"


def test_publish_replaces_only_after_success(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("old")
    st = staging_dir(out)
    (st / "manifest.json").write_text("new")
    publish(st, out)
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
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text("{}")
    assert check_output(tmp_path / "run", overwrite=True) == tmp_path / "run"


def test_staging_dir_that_cannot_be_made_is_a_usage_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="cannot create the output directory"):
        staging_dir(tmp_path / "f" / "out")
