"""Report fixes from sweep39: labels escaped in every HTML attribute, tolerance drops in their own unit,
report.json's created from the manifest, two outputs on one file refused."""
from __future__ import annotations

import shutil
from html.parser import HTMLParser

import pytest

from edgekit.report import write_reports
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
