"""`edgekit report A B` across runs timed under other conditions (sweep39 F4), and Markdown that carries
user-named folders, labels and reasons as text, never as HTML (F-md).

The runs are real: a tiny ONNX model timed with onnxruntime through edgekit.profile.profile_models on
x86-laptop, once at the runtime's default thread count and once at threads = 1, as `compress` and
`compress --target` a copy with `threads = 1` record them.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.artifact import Artifact, Manifest, host_info, versions
from edgekit.report import write_reports

CPU = "x86-laptop"


def _tiny_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)


def make_run(outdir: Path, threads=None) -> Path:
    """A real OUTDIR: one FP32 file, timed on this CPU at `threads` (None: onnxruntime's default)."""
    from edgekit.profile import profile_models

    outdir.mkdir(parents=True)
    _tiny_onnx(outdir / "model.fp32.onnx")
    a = Artifact("fp32", "model.fp32.onnx", parent="source", stage="export", params=64)
    a.refresh_file_facts(outdir)
    a.metrics = {"name": "accuracy", "value": 0.9, "n": 10, "data": "eval.npz"}
    a.latency[CPU] = profile_models({a.path: str(outdir / a.path)}, CPU, warmup=2, min_runs=20, min_seconds=0.05,
                                    max_seconds=2, op_profile=False, threads=threads)[a.path]
    assert a.latency[CPU]["status"] == "ok" and a.latency[CPU]["threads"] == threads
    Manifest(source={"spec": "tiny.onnx", "kind": "onnx", "weights_sha256": "ab" * 32},
             settings={"threads": threads}, artifacts=[a],
             recommended={CPU: {"status": "ok", "path": a.path, "kind": "fp32", "reason": "only file"}},
             profile={CPU: {"address": "local", "arch": "x86_64"}}, versions=versions(), host=host_info()).write(outdir)
    return outdir


def _report(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgekit", "report", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("cond")
    return make_run(base / "a"), make_run(base / "t1", threads=1), make_run(base / "a2")


@pytest.mark.slow  # renders HTML and Markdown with their plots: ~13 s on a loaded 2-core host
def test_runs_timed_at_other_thread_counts_are_not_flagged_slower_or_faster(runs, tmp_path, capsys):
    a, t1, _ = runs
    write_reports([a, t1], html=tmp_path / "c.html", markdown=tmp_path / "c.md", json_path=tmp_path / "c.json")
    err = capsys.readouterr().err
    comp = json.loads((tmp_path / "c.json").read_text())["comparison"]
    assert comp["differences"]["t1"] == {"model": None, "eval": None, "conditions": "threads default vs 1"}
    assert len(comp["warnings"]) == 1 and "t1 was timed under other conditions than a (threads default vs 1)" \
        in comp["warnings"][0]
    assert f"edgekit: warning: {comp['warnings'][0]}" in err
    (row,) = comp["rows"]
    base, cell = row["runs"]["a"], row["runs"]["t1"]
    assert base["conditions"]["threads"] is None and cell["conditions"]["threads"] == 1
    assert cell["latency_ratio"] == pytest.approx(cell["p50_ms"] / base["p50_ms"])  # the ratio is kept ...
    assert "latency_flag" not in cell and cell["latency_note"] == "other conditions: threads default vs 1"  # ... unflagged
    md, html = (tmp_path / "c.md").read_text(), (tmp_path / "c.html").read_text()
    assert not re.search(r"[▲▼] (slower|faster)", md)
    assert "(other conditions: threads default vs 1)" in md and md.count("> **Warning:** ") == 1
    assert html.count('class="warning"') == 1 and 'class="sub">other conditions: threads default vs 1<' in html
    assert "▲" not in html and "▼" not in html


def test_runs_timed_alike_keep_their_flags_and_no_warning(runs, tmp_path, capsys):
    a, _, a2 = runs
    comp = write_reports([a, a2], json_path=tmp_path / "c.json")["comparison"]
    assert "warning" not in capsys.readouterr().err
    assert comp["warnings"] == [] and comp["differences"]["a2"]["conditions"] is None
    cell = comp["rows"][0]["runs"]["a2"]
    assert cell["latency_flag"] in ("slower", "faster", "same") and "latency_note" not in cell


def test_every_recorded_condition_is_compared():
    from edgekit.report.model import condition_difference

    a = {"threads": None, "batch": 1, "provider": "CPUExecutionProvider", "onnxruntime": "1.18.0",
         "host_cpu": "Intel Xeon", "arch": "x86_64", "emulated": False}
    b = {**a, "threads": 4, "batch": 8, "provider": "CUDAExecutionProvider", "onnxruntime": "1.19.2",
         "host_cpu": "AMD EPYC"}
    assert condition_difference(a, b) == ["threads default vs 4", "batch 1 vs 8", "provider CPU vs CUDA",
                                          "onnxruntime 1.18.0 vs 1.19.2", "cpu Intel Xeon vs AMD EPYC"]
    assert condition_difference(a, {"batch": 1}) == []  # an older manifest's unrecorded facts are not guessed at


PAYLOAD = "<img src=x onerror=alert(1)>"


def _named_like_html(runs, tmp_path) -> tuple:
    """Copies of two runs, one in a folder named like an HTML tag, whose name is its label in the report."""
    a, _, a2 = runs
    shutil.copytree(a, tmp_path / "base")
    shutil.copytree(a2, tmp_path / PAYLOAD)
    return tmp_path / "base", tmp_path / PAYLOAD


@pytest.mark.slow  # renders the Markdown report with its plots: ~10 s on a loaded 2-core host
def test_report_markdown_shows_a_folder_named_like_html_as_text(runs, tmp_path, capsys, monkeypatch):
    from edgekit.cli import main

    monkeypatch.chdir(tmp_path)  # where `edgekit report` also writes its default report.html
    base, odd = _named_like_html(runs, tmp_path)
    assert main(["report", str(base), str(odd), "--markdown", str(tmp_path / "r.md")]) == 0, capsys.readouterr().err
    md = (tmp_path / "r.md").read_text()
    assert "<img" not in md and "onerror=alert(1)&gt;" in md
    assert f"#### {PAYLOAD}" not in md and "#### &lt;img src=x onerror=alert(1)&gt;" in md  # the run's heading
    assert "&lt;img src=x onerror=alert(1)&gt; p50 ms" in md  # its comparison columns


def test_profile_markdown_shows_a_folder_named_like_html_as_text(runs, tmp_path, capsys):
    from edgekit.cli import main

    base, odd = _named_like_html(runs, tmp_path)
    loose = tmp_path / "a`b|c.onnx"  # a backtick and a table cell's end
    loose.write_bytes((base / "model.fp32.onnx").read_bytes())
    args = ["profile", str(base), str(odd), str(loose), "--min-runs", "5", "--min-seconds", "0", "--warmup", "1",
            "--no-op-profile", "-o"]
    assert main(args + [str(tmp_path / "p.md")]) == 0, capsys.readouterr().err
    md = (tmp_path / "p.md").read_text()
    assert "<img" not in md
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and " fp32 | " in ln]
    assert [r.split(" | ")[0] for r in rows] == ["| base/fp32", "| &lt;img src=x onerror=alert(1)&gt;/fp32",
                                                 "| a`b\\|c"]
    assert len({len(re.split(r"(?<!\\)\|", r)) for r in rows}) == 1  # no row split by a name's '|'
    assert main(args + [str(tmp_path / "p.html")]) == 0
    html = (tmp_path / "p.html").read_text()  # the page made from that Markdown shows the names as written
    assert "<img" not in html and "<td>&lt;img src=x onerror=alert(1)&gt;/fp32</td>" in html
    assert "<td>a`b|c</td>" in html and "&amp;lt;" not in html
    capsys.readouterr()
    assert main(args[:-1]) == 0  # the console copy: the names as written, not their Markdown escapes (sweep44 F2)
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("| ") and " fp32 | " in ln]
    assert [r.split(" | ")[0] for r in rows] == ["| base/fp32", "| <img src=x onerror=alert(1)>/fp32", "| a`b\\|c"]
    assert "&lt;" not in out and "&gt;" not in out


def test_an_asterisk_in_a_run_folder_shows_as_written(runs, tmp_path, capsys):
    """A run folder 'int8*fast*' showed in Markdown as 'int8' and an italic 'fast': '*' is escaped, in the
    compress report and in the profile report, whose HTML page is made from its Markdown."""
    from edgekit.cli import main

    a, _, _ = runs
    odd, base = tmp_path / "int8*fast*", tmp_path / "base"
    shutil.copytree(a, odd)
    shutil.copytree(a, base)  # two folders: the profile's rows are then named after them
    assert main(["report", str(odd), "-o", str(tmp_path / "r.html"), "--markdown", str(tmp_path / "r.md")]) == 0
    md = (tmp_path / "r.md").read_text()
    assert "int8\\*fast\\*" in md and "int8*fast*" not in md
    assert main(["profile", str(base), str(odd), "--min-runs", "5", "--min-seconds", "0", "--warmup", "1",
                 "--no-op-profile", "-o", str(tmp_path / "p.md")]) == 0, capsys.readouterr().err
    pmd = (tmp_path / "p.md").read_text()
    assert "int8\\*fast\\*/fp32" in pmd and "int8*fast*/fp32" not in pmd
    assert main(["profile", str(base), str(odd), "--min-runs", "5", "--min-seconds", "0", "--warmup", "1",
                 "--no-op-profile", "-o", str(tmp_path / "p.html")]) == 0
    html = (tmp_path / "p.html").read_text()
    assert "<td>int8*fast*/fp32</td>" in html and "\\*" not in html
