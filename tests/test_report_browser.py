"""The HTML report in a real headless Chromium: it loads offline, with no errors, every table and plot.

Chromium runs with its host resolver mapped to nothing, so neither the page nor the browser's own
background services can reach the network; the net log still records every request the page tried.
Set EDGEKIT_REPORT_SCREENSHOTS=DIR to keep the screenshots (e.g. for the README).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

from edgekit.report import write_reports
from report_fixtures import two_runs

pytestmark = pytest.mark.slow


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("headless Chromium is required for the report tests: apt-get install chromium")


@dataclass
class Page:
    rc: int
    dom: str
    console: list  # console messages the page logged
    requests: list  # non-file URLs the page itself tried to load
    shot: Path


def _page_requests(netlog: Path) -> list:
    """URLs the page requested (network isolation key file://), from Chromium's net log."""
    text = netlog.read_text()
    try:
        events = json.loads(text)["events"]
    except ValueError:  # a log cut short: close it
        events = json.loads(text.rstrip().rstrip(",") + "]}")["events"]
    urls = set()
    by_source = {}
    for e in events:
        p = e.get("params") or {}
        sid = (e.get("source") or {}).get("id")
        if "url" in p:
            by_source.setdefault(sid, set()).add(p["url"])
        if "file://" in str(p.get("network_isolation_key", "")):
            urls |= by_source.get(sid, set())
    return sorted(u for u in urls if not u.startswith(("file:", "data:", "about:")))


def open_in_chromium(html: Path, tmp: Path, height=3000) -> Page:
    shot, netlog = tmp / "shot.png", tmp / "net.json"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-default-apps", "--disable-extensions", f"--user-data-dir={tmp / 'chromium-profile'}",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0", f"--log-net-log={netlog}",
           "--hide-scrollbars", f"--window-size=1400,{height}", f"--screenshot={shot}", "--dump-dom",
           html.resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line]
    return Page(r.returncode, r.stdout, console, _page_requests(netlog) if netlog.exists() else ["<no net log>"],
                shot)


class _Dom(HTMLParser):
    """What a reader sees: tables per section, plots (figure -> svg) and their SVG drawing elements."""

    def __init__(self):
        super().__init__()
        self.section = None
        self.tables, self.plots, self.rows = {}, {}, {}
        self.figure = None
        self.text = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.section = a.get("id")
        elif tag == "table":
            self.tables[self.section] = self.tables.get(self.section, 0) + 1
        elif tag == "tr":
            self.rows[self.section] = self.rows.get(self.section, 0) + 1
        elif tag == "figure":
            self.figure = a.get("data-plot")
            self.plots[self.figure] = 0
        elif self.figure and tag in ("path", "text", "rect", "use", "line", "polyline"):
            self.plots[self.figure] += 1

    def handle_endtag(self, tag):
        if tag == "figure":
            self.figure = None

    def handle_data(self, data):
        self.text.append(data)


def _parse(dom: str) -> _Dom:
    d = _Dom()
    d.feed(dom)
    d.all_text = " ".join(d.text)
    return d


def _check_screenshot(page: Page, name: str):
    from PIL import Image

    data = page.shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000
    im = Image.open(page.shot).convert("RGB")
    assert im.size == (1400, 3000)
    colors = im.resize((350, 750)).getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 200, "the screenshot is (nearly) blank"
    keep = os.environ.get("EDGEKIT_REPORT_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(page.shot, Path(keep) / name)


def _expected_plots(man) -> set:
    """The plots a manifest's data calls for, read from the manifest itself (not from the renderer)."""
    lats = [lat for a in man["artifacts"] for lat in a["latency"].values()
            if lat.get("status") == "ok" and not lat.get("emulated")]
    out = set()
    if any(a["metrics"].get("value") is not None and any(
            v.get("status") == "ok" and not v.get("emulated") for v in a["latency"].values()) for a in man["artifacts"]):
        out.add("pareto")
    if any(len(lat.get("samples_ms") or []) >= 2 for lat in lats):
        out.add("dist")
    if any(lat.get("op_breakdown") for lat in lats):
        out.add("ops")
    if any(lat.get("prepost") for lat in lats):
        out.add("prepost")
    p = man.get("pruning") or {}
    if p.get("sensitivity") or p.get("steps"):
        out.add("prune")
    q = man.get("quantization") or {}
    recs = [q] if "trials" in q else [r for r in q.values() if isinstance(r, dict)]
    if any(t.get("metric") is not None and t.get("speedup") is not None for r in recs for t in r.get("trials") or []):
        out.add("quant")
    return out


def test_checker_sees_external_requests_and_console_errors(tmp_path):
    """The checks below can fail: a page that loads a remote image and logs an error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><h1>x</h1><img src="http://edgekit-test.invalid/x.png">'
                   '<script>console.error("boom")</script></body></html>')
    page = open_in_chromium(bad, tmp_path)
    assert page.requests == ["http://edgekit-test.invalid/x.png"]
    assert any("boom" in c for c in page.console)


def test_report_of_compress_run_loads_in_chromium(digits_run, tmp_path):
    man = json.loads((Path(digits_run) / "manifest.json").read_text())
    html = tmp_path / "report.html"
    rep = write_reports([digits_run], html=html)
    page = open_in_chromium(html, tmp_path)
    assert page.rc == 0
    assert page.console == [] and page.requests == []
    dom = _parse(page.dom)
    assert dom.tables.get("summary") == 1
    assert dom.rows["summary"] == 2 + len(man["artifacts"])  # two header rows (target groups), one per artifact
    for a in man["artifacts"]:
        assert a["path"] in dom.all_text
    got = {k.split("-")[0] for k in dom.plots}
    assert got == _expected_plots(man)
    assert {"pareto", "dist"} <= got  # a compress run always has native CPU timings with samples
    for key, n in dom.plots.items():
        assert n > 20, f"plot {key} has almost nothing drawn"
    for t, rec in rep["runs"][0]["recommended"].items():
        assert t in dom.all_text and (rec.get("reason") or "")[:40] in dom.all_text
    for s in ("stages", "provenance", "conditions"):
        assert dom.tables.get(s) == 1
    assert (Path(digits_run) / "report.html").stat().st_size > 10_000  # compress wrote its own report too
    _check_screenshot(page, "report-digits.png")


def test_multi_run_report_loads_in_chromium(tmp_path_factory, tmp_path):
    a, b = two_runs(tmp_path_factory)
    html = tmp_path / "compare.html"
    rep = write_reports([a, b], html=html)
    page = open_in_chromium(html, tmp_path)
    assert page.rc == 0 and page.console == [] and page.requests == []
    dom = _parse(page.dom)
    assert dom.tables.get("comparison") == 1
    assert dom.rows["comparison"] == 2 + len(rep["comparison"]["rows"])
    assert dom.tables.get("summary") == 2
    assert {k.split("-")[0] for k in dom.plots} == {"pareto", "dist", "ops", "prepost", "prune", "quant"}
    assert sum(1 for k in dom.plots if k.startswith("dist")) == 2  # one distribution plot per run
    _check_screenshot(page, "report-compare.png")
