"""Report fixes from sweep39: labels escaped in every HTML attribute, tolerance drops in their own unit,
report.json's created from the manifest, two outputs on one file refused."""
from __future__ import annotations

import shutil
import subprocess
import sys
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest

from edgekit.artifact import Artifact, Manifest
from edgekit.config import Tolerance
from edgekit.recommend import recommend
from edgekit.report import tables, write_reports
from report_fixtures import two_runs

EVIL = "q\" onload=\"alert('x')\" a='1' <xss>&amp; >"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return two_runs(tmp_path_factory)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v) for k, v in attrs]


def test_a_crafted_run_label_stays_text_in_the_html(runs, tmp_path):
    a, _ = runs
    evil = tmp_path / EVIL
    shutil.copytree(a, evil)
    dest = tmp_path / "r.html"
    write_reports([a, evil], html=dest)
    page = _Tags()
    page.feed(dest.read_text())
    assert not [x for x in page.attrs if x[1].startswith("on") or x[1] in ("a", "a'")], "injected attribute"
    assert "xss" not in page.tags, "injected tag"
    labels = [v for _, k, v in page.attrs if k == "aria-label" and v and v.endswith(EVIL)]
    assert labels, "the label reads back whole from the plot's aria-label"


def _art(kind, path, value, p50):
    a = Artifact(kind=kind, path=path, parent=None if kind == "fp32" else "f.onnx", stage="export",
                 metrics={"name": "accuracy", "value": value})
    a.latency = {"cpu": {"status": "ok", "p50_ms": p50}}
    return a


@pytest.mark.parametrize("tol, said", [("3pt", "metric drop 5.04pt beyond 3pt"),
                                       ("1%", "metric drop 5.54% beyond 1%")])
def test_a_vetoed_drop_is_printed_in_the_tolerance_unit(tol, said):
    m = Manifest(artifacts=[_art("fp32", "f.onnx", 0.9093, 1.0), _art("int8", "q.onnx", 0.8589, 0.5)])
    r = recommend(m, Tolerance.parse(tol), [SimpleNamespace(name="cpu", emulated=False)])["cpu"]
    assert r["path"] == "f.onnx" and [said in x for x in r["rejected"]] == [True]


@pytest.mark.parametrize("tol, drop", [("3pt", "5.04pt"), ("1%", "5.54%")])
def test_the_trials_table_drop_is_in_the_tolerance_unit(tol, drop):
    tr = {"name": "t", "phase": "fixed", "metric": 0.8589, "drop_rel": (0.9093 - 0.8589) / 0.9093, "latency_ms": 1.0,
          "fp32_ms": 1.0, "speedup": 1.0, "passed": False, "fp32_nodes": [], "error": None}
    run = {"label": "r", "quantization": [{"parent": "f.onnx", "tolerance": tol, "reference": 0.9093,
                                           "reason": "", "chosen": "t", "trials": [tr]}]}
    (t,) = tables.quant_trials(run)
    col = [c.name for c in t.columns].index("Drop")
    assert t.rows[0][col].text == drop


@pytest.mark.parametrize("args, flags", [(["-o", "same.html", "--json-out", "same.html"], "-o/--output and --json-out"),
                                         (["--markdown", "same.md", "--json-out", "./same.md"], "--markdown and --json-out"),
                                         (["-o", "same.html", "--markdown", "same.html"], "-o/--output and --markdown")])
def test_two_outputs_on_one_file_are_refused_before_writing(runs, tmp_path, args, flags):
    a, _ = runs
    r = subprocess.run([sys.executable, "-m", "edgekit", "report", str(a), *args], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and flags in line and "same." in line
    assert list(tmp_path.iterdir()) == []


def test_the_pruning_caption_describes_only_the_panels_drawn():
    # sweep38 F2: a run without --sensitivity has only the schedule panel, and its caption described a
    # 'Left' sensitivity panel that was not there
    from edgekit.report.plots import _pruning_caption

    one = _pruning_caption(["steps"])
    assert one == "Metric and size along the pruning schedule." and "Left" not in one
    two = _pruning_caption(["sensitivity", "steps"])
    assert two.startswith("Left: the metric drop when each layer alone") and "Right: metric and size" in two
