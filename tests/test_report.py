"""Reports from real runs: JSON and Markdown numbers against the manifest, statuses as words, comparisons."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.errors import InputError
from edgekit.report import SCHEMA, build_report, write_reports
from edgekit.report import fmt, plots
from report_fixtures import CPU, GPU, two_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two real runs of a tiny digits CNN: A (pruned + int8, 1 thread), B (int8 only, 2 threads, other seed)."""
    return two_runs(tmp_path_factory)


@pytest.fixture(scope="module")
def single(runs, tmp_path_factory):
    """Run A rendered once to HTML, Markdown and JSON: (report dict, directory)."""
    d = tmp_path_factory.mktemp("single") / "out"
    rep = write_reports([runs[0]], html=d / "report.html", markdown=d / "report.md", json_path=d / "report.json")
    return rep, d


def _manifest(outdir):
    return json.loads((Path(outdir) / "manifest.json").read_text())


def _md_rows(md: str, first_col: str) -> list:
    """Cells of Markdown table rows whose first cell starts with first_col (bold stripped)."""
    out = []
    for line in md.splitlines():
        if line.startswith("| "):
            cells = [c.strip().strip("*") for c in line.strip().strip("|").split(" | ")]
            if cells[0].startswith(first_col):
                out.append(cells)
    return out


def test_json_report_matches_manifest(runs, single):
    a, _ = runs
    man = _manifest(a)
    rep, d = single
    assert json.loads((d / "report.json").read_text()) == json.loads(json.dumps(rep))
    assert rep["schema"] == SCHEMA == "edgekit.report/1"
    run = rep["runs"][0]
    assert run["targets"] == [CPU, GPU]
    assert [v["kind"] for v in run["variants"]] == ["fp32", "pruned", "int8"]
    fp32_p50 = next(x for x in man["artifacts"] if x["kind"] == "fp32")["latency"][CPU]["p50_ms"]
    for art in man["artifacts"]:
        v = next(x for x in run["variants"] if x["path"] == art["path"])
        assert v["bytes"] == art["bytes"] == (a / art["path"]).stat().st_size
        assert v["sha256"] == art["sha256"] and v["params"] == art["params"]
        assert v["metric"]["value"] == art["metrics"]["value"]
        assert v["metric"].get("drop_rel") == art["metrics"].get("drop_rel")
        lat, src = v["latency"][CPU], art["latency"][CPU]
        assert lat["status"] == "ok" and lat["emulated"] is False
        for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput", "runs", "cold_start_ms"):
            assert lat[k] == pytest.approx(src[k], rel=1e-12), k
        assert lat["samples_ms"] == src["samples_ms"] and lat["op_breakdown"] == src["op_breakdown"]
        assert lat["speedup_vs_fp32"] == pytest.approx(fp32_p50 / src["p50_ms"])
        pp = src["prepost"]
        assert lat["prepost"]["pre_ms"] == pp["pre"]["p50_ms"] and lat["prepost"]["post_ms"] == pp["post"]["p50_ms"]
        assert lat["prepost"]["e2e_p50_ms"] == pp["e2e"]["p50_ms"]
        gpu = v["latency"][GPU]
        assert gpu["status"] == "unavailable" and gpu["reason"] == art["latency"][GPU]["reason"]
        assert not any(k.endswith("_ms") or k == "throughput" for k in gpu)
    rec = run["recommended"][CPU]
    assert rec["status"] == "ok" and rec["path"] == man["recommended"][CPU]["path"]
    assert run["recommended"][GPU]["status"] == "unavailable"
    q = run["quantization"][0]
    assert q["parent"] == "model.fp32.onnx"
    assert [t["metric"] for t in q["trials"]] == [t["metric"] for t in man["quantization"]["model.fp32.onnx"]["trials"]]
    assert len(run["pruning"]["sensitivity"]) == len(man["pruning"]["sensitivity"]) > 0
    assert [s["name"] for s in run["stages"]] == [s["name"] for s in man["stages"]]
    assert rep["comparison"] is None


def test_markdown_numbers_match_manifest_and_pngs_exist(runs, single):
    a, _ = runs
    man = _manifest(a)
    md_path = single[1] / "report.md"
    md = md_path.read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Variant | Size"))
    cols = [c.strip() for c in header.strip().strip("|").split(" | ")]
    assert f"{CPU} p50 ms" in cols and f"{GPU} latency" in cols  # an all-unavailable target: one status column
    for art in man["artifacts"]:
        row = _md_rows(md, f"{art['kind']} ({art['path']})")[0]
        cell = dict(zip(cols, row))
        lat = art["latency"][CPU]
        assert cell[f"{CPU} p50 ms"] == fmt.ms(lat["p50_ms"])
        assert cell[f"{CPU} p90 ms"] == fmt.ms(lat["p90_ms"])
        assert cell[f"{CPU} p99 ms"] == fmt.ms(lat["p99_ms"])
        assert cell["Metric"].startswith(f"{art['metrics']['value']:.4f}")
        assert cell["Size"].startswith(fmt.size(art["bytes"]))
        assert cell[f"{GPU} latency"] == f"unavailable: {art['latency'][GPU]['reason']}".replace("|", "\\|")
        if art["kind"] != "fp32":
            assert cell["vs FP32"] == fmt.metric_drop(art["metrics"])
            fp = next(x for x in man["artifacts"] if x["kind"] == "fp32")["latency"][CPU]["p50_ms"]
            assert cell[f"{CPU} Speed-up"] == fmt.ratio(fp / lat["p50_ms"])
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {Path(i).stem.split("-")[0] for i in images} >= {"pareto", "dist", "ops", "prepost", "prune", "quant"}
    for i in images:
        png = md_path.parent / i
        assert png.parent.name == "report_files"
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    trial = man["quantization"]["model.fp32.onnx"]["trials"][0]
    assert _md_rows(md, "1")[0][1:4] == [trial["name"] + " (chosen)" * (trial["name"] == man["quantization"][
        "model.fp32.onnx"]["chosen"]), "grid", f"{trial['metric']:.4f}"]
    assert "## Pipeline stages" in md and "distillation is off" in md


def test_emulated_failed_and_missing_render_as_words(runs, tmp_path):
    """A known, distinctive emulated timing must never appear as a number in the HTML or Markdown."""
    a, _ = runs
    d = tmp_path / "run"
    shutil.copytree(a, d)
    man = _manifest(d)
    marker = 987.654321  # would print as 987.7 / 987.65 / 987.654 if it leaked into a table or plot
    for i, art in enumerate(man["artifacts"]):
        art["latency"]["arm64-emulated"] = {"status": "ok", "emulated": True, "p50_ms": marker, "p90_ms": marker,
                                            "p99_ms": marker, "samples_ms": [marker] * 5, "runs": 5,
                                            "op_breakdown": {"Conv": marker}, "provider": "CPUExecutionProvider"}
        art["latency"]["jetson"] = {"status": "failed", "reason": "ssh: connection refused"}
        if art["kind"] == "int8":
            del art["latency"][CPU]  # not measured at all
            art["metrics"] = {}
    (d / "manifest.json").write_text(json.dumps(man))
    rep = write_reports([d], html=tmp_path / "r.html", markdown=tmp_path / "r.md", json_path=tmp_path / "r.json")
    html, md = (tmp_path / "r.html").read_text(), (tmp_path / "r.md").read_text()
    for text in (html, md):
        for leaked in ("987.7", "987.6", "987.65", "987.654"):
            # as a number of its own: a plot's SVG coordinate such as x="3987.63134" holds the digits by chance
            assert not re.search(r"(?<![\d.])" + re.escape(leaked), text), leaked
        assert "emulated: measured under emulation" in text
        assert "failed: ssh: connection refused" in text
        assert "not measured: not measured on this target" in text
        assert "not evaluated" in text
    run = rep["runs"][0]
    emu = run["variants"][0]["latency"]["arm64-emulated"]
    assert emu["status"] == "emulated" and "p50_ms" not in emu and emu["emulated_timing"]["p50_ms"] == marker
    int8 = next(v for v in run["variants"] if v["kind"] == "int8")
    assert int8["latency"][CPU]["status"] == "missing" and int8["metric"] is None
    # only native, measured points with a metric reach the Pareto plot: fp32 and pruned on the CPU
    (pareto,) = plots.pareto(rep)
    xs = sorted(float(c.get_offsets()[0][0]) for c in pareto.fig.axes[0].collections)
    assert xs == sorted(v["latency"][CPU]["p50_ms"] for v in run["variants"] if v["kind"] != "int8")
    assert "arm64-emulated" not in {t for p in plots.distributions(rep) for ax in p.fig.axes for t in [ax.get_title()]}


def test_multi_run_comparison(runs, tmp_path):
    a, b = runs
    rep = write_reports([a, b], html=tmp_path / "c.html", markdown=tmp_path / "c.md")
    ma, mb = _manifest(a), _manifest(b)
    comp = rep["comparison"]
    assert comp["baseline"] == "runA" and [r["label"] for r in rep["runs"]] == ["runA", "runB"]
    # rows are artifact files: a pruned run's model.distilled.int8.onnx is never paired with model.int8.onnx
    name = {k: next(x["path"] for x in ma["artifacts"] if x["kind"] == k) for k in ("fp32", "pruned", "int8")}
    rows = {(r["variant"], r["target"]): r for r in comp["rows"]}
    assert set(rows) == {(name[k], CPU) for k in ("fp32", "pruned", "int8")}
    assert {(x["variant"], x["target"]) for x in comp["not_compared"]} == {(name[k], GPU) for k in ("fp32", "pruned", "int8")}
    for kind in ("fp32", "int8"):
        pa = next(x for x in ma["artifacts"] if x["kind"] == kind)
        pb = next(x for x in mb["artifacts"] if x["kind"] == kind)
        assert pa["path"] == pb["path"]
        c = rows[(name[kind], CPU)]["runs"]["runB"]
        ratio = pb["latency"][CPU]["p50_ms"] / pa["latency"][CPU]["p50_ms"]
        assert c["latency_ratio"] == pytest.approx(ratio)
        # A timed at 1 thread, B at 2: the ratio measures that too, so it is never called slower or faster
        assert "latency_flag" not in c and c["latency_note"] == "other conditions: threads 1 vs 2"
        assert c["metric_delta"] == pytest.approx(pb["metrics"]["value"] - pa["metrics"]["value"])
    assert rows[(name["pruned"], CPU)]["runs"]["runB"]["status"] == "missing"
    md = (tmp_path / "c.md").read_text()
    int8_row = _md_rows(md, name["int8"])
    cmp_row = next(r for r in int8_row if r[1] == CPU and len(r) == 8)
    assert cmp_row[5].startswith(fmt.ratio(rows[(name["int8"], CPU)]["runs"]["runB"]["latency_ratio"]))
    html = (tmp_path / "c.html").read_text()
    assert 'id="comparison"' in html and html.count("<h3>runA</h3>") >= 3
    flagged = [r["runs"]["runB"].get("latency_flag") for r in comp["rows"]]
    if "slower" in flagged:
        assert "▲ slower" in html and "▲ slower" in md


def test_html_is_self_contained_with_every_plot(single):
    html = (single[1] / "report.html").read_text()
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/|<script|<link|@import|<img|<iframe", html, re.I)
    keys = re.findall(r'data-plot="([^"]+)"', html)
    assert {k.split("-")[0] for k in keys} == {"pareto", "dist", "ops", "prepost", "prune", "quant"}
    assert html.count("<svg") == len(keys)
    ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "SVG ids must not collide between inline plots"


def test_labels_are_unique_for_same_named_dirs(runs, tmp_path):
    a, _ = runs
    for side in ("before", "after"):
        shutil.copytree(a, tmp_path / side / "out")
    rep = build_report([tmp_path / "before" / "out", tmp_path / "after" / "out"])
    assert [r["label"] for r in rep["runs"]] == ["before/out", "after/out"]
    ratio = rep["comparison"]["rows"][0]["runs"]["after/out"]["latency_ratio"]
    assert ratio == pytest.approx(1.0)


def test_bad_input_keeps_previous_report(runs, single, tmp_path):
    a, _ = runs
    dest = tmp_path / "r.html"
    shutil.copyfile(single[1] / "report.html", dest)
    before = dest.read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="manifest.json"):
        write_reports([a, bad], html=dest)
    assert dest.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgekit", "report", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_cli_writes_all_outputs_and_prints_json(runs, tmp_path):
    a, b = runs
    r = _cli(a, b, "-o", tmp_path / "x.html", "--markdown", tmp_path / "x.md", "--json-out", tmp_path / "x.json",
             "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["schema"] == SCHEMA and len(out["runs"]) == 2
    assert json.loads((tmp_path / "x.json").read_text())["comparison"]["baseline"] == "runA"
    assert (tmp_path / "x.html").stat().st_size > 10000 and (tmp_path / "x_files").is_dir()


def test_cli_bad_outdir_is_a_one_line_usage_error(runs, tmp_path):
    a, _ = runs
    r = _cli(a, tmp_path / "nope", "-o", tmp_path / "x.html")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and str(tmp_path / "nope") in r.stderr and "manifest.json" in r.stderr
    assert not (tmp_path / "x.html").exists()
    r = _cli(a, "-o", tmp_path)
    assert r.returncode == 2 and "is a directory" in r.stderr
    r = _cli(a, "-o", tmp_path / "one.md")  # wrote HTML into one.md
    assert r.returncode == 2 and "for .md use --markdown" in r.stderr and not (tmp_path / "one.md").exists()



def _relabel(src, dest, source=None, eval_facts=None, metric_data=None, threads=1):
    """A copy of a real run whose manifest claims another source model / eval data (files untouched),
    timed at `threads` (the fixture's runs differ there, which the report warns about on its own)."""
    shutil.copytree(src, dest)
    m = _manifest(dest)
    for a in m["artifacts"]:
        for lat in a.get("latency", {}).values():
            if lat.get("status") == "ok":
                lat["threads"] = threads
    if source is not None:
        m["source"] = {**m["source"], **source}
    if eval_facts is not None:
        load = next(s for s in m["stages"] if s["name"] == "load")
        load["details"] = {**(load.get("details") or {}), "eval": eval_facts}
    if metric_data is not None:
        for a in m["artifacts"]:
            a["metrics"]["data"] = metric_data
    (Path(dest) / "manifest.json").write_text(json.dumps(m))
    return dest


def test_unrelated_runs_warn_and_show_no_metric_delta(runs, tmp_path):
    a, b = runs
    x = _relabel(a, tmp_path / "x", {"spec": "digits.onnx", "weights_sha256": "aa" * 32},
                 {"n": 397, "source": "data/digits_eval.npz", "labelled": True})
    y = _relabel(b, tmp_path / "y", {"spec": "speech.onnx", "weights_sha256": "bb" * 32},
                 {"n": 120, "source": "data/speech_eval.npz", "labelled": True})
    r = _cli(x, y, "-o", tmp_path / "c.html", "--markdown", tmp_path / "c.md", "--json-out", tmp_path / "c.json")
    assert r.returncode == 0, r.stderr
    warned = [ln for ln in r.stderr.splitlines() if ln.startswith("edgekit: warning: ")]
    assert len(warned) == 2 and "different source model" in warned[0] and "aaaaaaaaaaaa vs bbbbbbbbbbbb" in warned[0]
    assert "'data/digits_eval.npz', 397 samples vs 'data/speech_eval.npz', 120 samples" in warned[1]
    comp = json.loads((tmp_path / "c.json").read_text())["comparison"]
    assert comp["warnings"] == [w.removeprefix("edgekit: warning: ") for w in warned]
    assert comp["differences"]["y"]["model"] and comp["differences"]["y"]["eval"]
    cells = [row["runs"]["y"] for row in comp["rows"] if row["runs"]["y"]["status"] == "ok"]
    assert cells and all("metric_delta" not in c and c["metric_note"] == "not comparable: different eval data"
                          for c in cells)
    assert all(c["latency_ratio"] > 0 for c in cells)  # latency is still compared, under the warning
    md, html = (tmp_path / "c.md").read_text(), (tmp_path / "c.html").read_text()
    assert md.count("> **Warning:** ") == 2 and "different source model" in md
    assert md.count("not comparable (different eval data)") == len(cells)
    assert html.count('class="warning"') == 2 and html.count(">not comparable<") == len(cells)
    assert not re.search(r"[+-]\d\.\d{4} [▲▼]", md)  # no delta arrow anywhere in the comparison


def test_same_model_and_data_has_no_warning(runs, tmp_path):
    a, b = runs
    same = {"spec": "digits.onnx", "weights_sha256": "aa" * 32}
    # the same data spelt from two machines: a path prefix alone does not make it other data
    x = _relabel(a, tmp_path / "x", same, {"n": 397, "source": "/home/ci/data/eval.npz", "labelled": True})
    y = _relabel(b, tmp_path / "y", same, {"n": 397, "source": "data/eval.npz", "labelled": True})
    r = _cli(x, y, "-o", tmp_path / "c.html", "--json-out", tmp_path / "c.json")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    comp = json.loads((tmp_path / "c.json").read_text())["comparison"]
    assert comp["warnings"] == [] and comp["differences"] == {"y": {"model": None, "eval": None, "conditions": None}}
    deltas = [row["runs"]["y"]["metric_delta"] for row in comp["rows"] if "metric" in row["runs"]["y"]]
    assert deltas and 'class="warning"' not in (tmp_path / "c.html").read_text()
    # runs whose metrics name only their data (as quantize and prune record it) are matched on that
    z = _relabel(b, tmp_path / "z", same, metric_data="calib.npz [256:300]")
    w = _relabel(a, tmp_path / "w", same, metric_data="calib.npz [256:300]")
    comp = build_report([w, z])["comparison"]
    assert comp["warnings"] == [] and comp["rows"][0]["runs"]["z"].get("metric_delta") is not None
    rep = build_report([x, z])
    assert {row["runs"]["z"].get("metric_note") for row in rep["comparison"]["rows"] if "metric" in row["runs"]["z"]} \
        == {"not comparable: different eval data"}


def test_model_identity_rules():
    from edgekit.report.model import model_difference

    def run(spec, fp32, weights=None, torch="2.3.0", edgekit="0.9"):
        return {"source": {"spec": spec, "weights_sha256": weights}, "versions": {"torch": torch},
                "edgekit_version": edgekit, "variants": [{"kind": "fp32", "sha256": fp32}]}

    assert model_difference(run("m.py:net", "f1"), run("other/m.py:net", "f1")) is None  # same FP32 bytes
    assert "spec" in model_difference(run("m.py:net", "f1"), run("m.py:big", "f2"))
    assert "FP32" in model_difference(run("m.py:net", "f1"), run("m.py:net", "f2"))  # retrained / other seed
    assert model_difference(run("m.py:net", "f1"), run("m.py:net", "f2", torch="2.4.0")) is None  # other exporter
    assert model_difference(run("a.onnx", "f1", "w1"), run("/abs/a.onnx", "f2", "w1")) is None  # weights decide
    assert "weights" in model_difference(run("a.onnx", "f1", "w1"), run("a.onnx", "f2", "w2"))
    assert model_difference(run("a.pt", "f1", "w1"), run("a.pt", "f1", "w2")) is None  # re-saved, same tensors
    # an ONNX source is its own FP32: other FP32 bytes are another model even when an older manifest's
    # source hash (the .onnx without its external data file) matches
    def onnx_run(fp32, edgekit="0.9"):
        r = run("m.onnx", fp32, "same-graph", edgekit=edgekit)
        r["source"]["kind"] = "onnx"
        return r
    assert "ONNX sources" in model_difference(onnx_run("f1"), onnx_run("f2"))
    assert model_difference(onnx_run("f1"), onnx_run("f1")) is None
    assert model_difference(onnx_run("f1"), onnx_run("f2", edgekit="1.0")) is None  # another copier: hashes decide


def test_sizes_are_named_in_powers_of_1024():
    from edgekit.report import fmt

    # 116068 bytes read "113 KB" beside the console's "113.3 KiB"
    assert (fmt.size(116068), fmt.size(512), fmt.size(3 * 1024 ** 2)) == ("113 KiB", "512 B", "3.0 MiB")


def test_quantization_trials_show_the_fp32_time_their_speed_up_is_over(runs, single):
    # trials are timed minutes apart, each interleaved with its own FP32 round: a speed-up that did not
    # follow from the latency column beside it read as an arithmetic error
    man = _manifest(runs[0])
    md = (single[1] / "report.md").read_text()
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| # | Trial"))
    cols = [c.strip() for c in lines[start].strip().strip("|").split(" | ")]
    assert "FP32 ms, same round" in cols
    rows = []
    for line in lines[start + 2:]:  # the first trials table, in trial order
        if not line.startswith("|"):
            break
        rows.append(dict(zip(cols, [c.strip() for c in line.strip().strip("|").split(" | ")])))
    trials = next(iter(man["quantization"].values()))["trials"]
    assert len(rows) == len(trials) > 0
    for t, row in zip(trials, rows):
        if t.get("error"):
            continue
        assert row["FP32 ms, same round"] == fmt.ms(t["fp32_ms"])
        assert row["Speed-up"] == fmt.ratio(t["fp32_ms"] / t["latency_ms"])
    assert "Speed-up: the FP32 time measured in the same interleaved round" in md


def test_artifact_notes_are_shown_and_the_recommendation_is_not_repeated(runs, tmp_path):
    """An artifact's notes (kept in FP32, weights still float, larger than its parent) were in the manifest and
    report.json only; the reports show them, except one the recommendation above already quotes."""
    a, _ = runs
    d = tmp_path / "run"
    shutil.copytree(a, d)
    man = _manifest(d)
    art = next(x for x in man["artifacts"] if x["kind"] == "int8")
    quoted = next(iter(man["recommended"].values()))["reason"]
    art["notes"] = [quoted, "most weights stay float in this int8 file: 10 of 12 | read by GRU"]
    (d / "manifest.json").write_text(json.dumps(man))
    out = tmp_path / "rep"
    write_reports([d], html=out / "r.html", markdown=out / "r.md")
    md = (out / "r.md").read_text()
    section = md.split("## Notes\n", 1)[1].split("\n## ", 1)[0]
    rows = _md_rows(section, f"int8 ({art['path']})")
    assert [r[1] for r in rows] == ["most weights stay float in this int8 file: 10 of 12 \\| read by GRU"], section
    html = (out / "r.html").read_text()
    assert 'id="notes"' in html and "10 of 12 | read by GRU" in html
    assert quoted and fmt.md_text(quoted) not in section  # the recommendation above quotes it already
