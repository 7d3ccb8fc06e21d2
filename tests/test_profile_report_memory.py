"""Memory figures of a measurement, pre/post timing without pre steps, and the JSON/Markdown report's
recommendation status, run count and plot folder (sweep28 F1-F8). Real onnxruntime sessions, real
runner subprocesses, real report files."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cliutil import run_cli
from edgekit.artifact import Artifact, Manifest, StageRecord, host_info, versions
from edgekit.profile import profile_models, profile_prepost
from edgekit.runner import edgekit_runner as runner

CPU = "x86-laptop"
EMU = "arm64-emulated"
RUNNER = Path(runner.__file__)


def _mlp(path: Path, width: int, layers: int = 1) -> Path:
    """x[N, width] -> `layers` MatMuls of width x width float32 weights (4*width*width bytes each)."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def _weights_mb(width, layers):
    return layers * width * width * 4 / 2**20


def _has_malloc_trim() -> bool:
    import ctypes

    return hasattr(ctypes.CDLL(None), "malloc_trim")


@pytest.mark.skipif(not _has_malloc_trim(), reason="no glibc malloc_trim here")
def test_session_rss_is_the_models_weights_every_time(tmp_path):
    """F1: rss_delta_mb read 0.0, 31.9, 15.9, -0.12 MB for one 32 MiB model: the timed session reused
    the cold-start session's freed memory. It must now be about the weights, every time."""
    big = _mlp(tmp_path / "big.onnx", 1024, 4)  # 16 MiB of weights
    small = _mlp(tmp_path / "small.onnx", 8)
    want = _weights_mb(1024, 4)
    got = []
    for _ in range(3):
        res = runner.bench_models({"big": str(big), "small": str(small)}, warmup=1, min_runs=3, min_seconds=0.0,
                                  max_seconds=2, op_runs=0)
        got.append(res["big"]["rss_delta_mb"])
        assert abs(res["small"]["rss_delta_mb"]) < 2, res["small"]
    assert all(want - 1 <= g <= want + 4 for g in got), (want, got)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc needed")
def test_peak_rss_is_the_measurements_not_the_process_lifetime():
    """F5: compress's peak was its whole run's (eval data, torch): 356 or 608 MB for a 24 KB model that
    `edgekit profile` put at 88 MB. A big transient allocation before the measurement is not its peak."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        m = _mlp(Path(d) / "m.onnx", 8)
        ballast = np.ones(400 * 2**20 // 8)  # 400 MiB, touched, freed before measuring
        del ballast
        res = runner.bench_models({"m": str(m)}, warmup=1, min_runs=3, min_seconds=0.0, op_runs=0)["m"]
    before_mb = runner.current_rss_mb()
    assert res["peak_rss_mb"] < before_mb + 150, res
    assert res["base_rss_mb"] <= res["peak_rss_mb"] < res["base_rss_mb"] + 150, res


def _runner_peak(model: Path, ballast_mb: int) -> float:
    """peak_rss_mb the runner reports when started by a process holding ballast_mb of its own memory."""
    code = ("import json, subprocess, sys, numpy as np\n"
            f"b = np.ones({ballast_mb} * 2**20 // 8)\n"
            f"out = subprocess.run([sys.executable, {str(RUNNER)!r}, 'bench', '--model', {str(model)!r}, "
            "'--runs', '3', '--warmup', '1'], capture_output=True, text=True, check=True).stdout\n"
            "print(json.loads(out)['peak_rss_mb'])\n")
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc needed")
def test_runner_peak_rss_is_its_own_not_its_parents(tmp_path):
    """F4: getrusage's ru_maxrss is carried over from the parent across fork and exec: the emulated
    runner read 185 MB, or 1080 MB when its caller held 1000 MiB it never saw."""
    m = _mlp(tmp_path / "m.onnx", 8)
    lean, heavy = _runner_peak(m, 0), _runner_peak(m, 500)
    assert abs(heavy - lean) < 50, (lean, heavy)


def test_post_only_pipeline_spends_no_time_in_pre(tmp_path):
    """F3: a spec with only post steps reported 23-27% of its end-to-end time as "pre": edgekit's own
    feed building, timed as if it were the pipeline's."""
    from edgekit.prepost.pipeline import Pipeline

    m = _mlp(tmp_path / "m.onnx", 16)
    pipe = Pipeline.from_spec({"post": [{"op": "softmax_topk", "k": 3}]}, backend="numpy")  # no JIT wait
    feeds = [{"x": np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32)} for i in range(5)]
    for batch in (1, 4):
        pp = profile_prepost(str(m), pipe, inputs=feeds, batch=batch, warmup=2, min_runs=20, min_seconds=0.0)
        assert pp["status"] == "ok", pp
        assert pp["pre"]["p50_ms"] == 0.0 and pp["pre"]["max_ms"] == 0.0, (batch, pp["pre"])
        assert pp["model"]["p50_ms"] > 0 and pp["post"]["p50_ms"] > 0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real OUTDIR: an FP32 model timed on this CPU, and an emulated target whose manifest entry and
    recommendation are what compress writes for arm64-emulated."""
    d = tmp_path_factory.mktemp("run") / "out"
    d.mkdir()
    _mlp(d / "model.fp32.onnx", 8)
    a = Artifact(kind="fp32", path="model.fp32.onnx", parent="source", params=64, opset=17, stage="export")
    a.refresh_file_facts(d)
    a.metrics = {"name": "fidelity", "value": 1.0, "n": 4}
    a.latency[CPU] = profile_models({"m": str(d / "model.fp32.onnx")}, CPU, warmup=1, min_runs=5,
                                    min_seconds=0.0, op_profile=False)["m"]
    a.latency[EMU] = {"status": "ok", "emulated": True, "p50_ms": 2.0, "runs": 7, "provider": "CPUExecutionProvider"}
    reason = (f"{EMU} runs under user-mode emulation: its timings check correctness only and are not device "
              "latency; the native pick model.fp32.onnx is shown for reference")
    rec = {CPU: {"status": "ok", "path": a.path, "kind": "fp32", "speedup_vs_fp32": 1.0, "reason": "fastest"},
           EMU: {"status": "emulated", "reason": reason, "path": a.path, "kind": "fp32"}}
    Manifest(source={"spec": "tests:mlp", "kind": "onnx"}, settings={}, stages=[StageRecord("load", "done")],
             artifacts=[a], recommended=rec, versions=versions(), host=host_info()).write(d)
    return d


def test_emulated_recommendation_keeps_its_status_and_runs_stay_integers(run_dir, tmp_path, capfd):
    """F2: report.json turned the emulated target's reference pick into status "ok" (the manifest says
    "emulated"), and the console said "recommended fp32". F6: runs was written as 2030.0."""
    assert run_cli(["report", str(run_dir), "-o", str(tmp_path / "r.html"), "--json-out",
                    str(tmp_path / "r.json")]) == 0
    out = capfd.readouterr().err  # the summary goes to stderr, beside the logs
    run = json.loads((tmp_path / "r.json").read_text())["runs"][0]
    emu = run["recommended"][EMU]
    assert emu["status"] == "emulated" and emu["path"] == "model.fp32.onnx" and "speedup_vs_fp32" not in emu
    assert run["recommended"][CPU]["status"] == "ok"
    out = " ".join(out.split())  # rich wraps long lines
    assert f"{EMU}: recommended" not in out and f"{EMU}: no recommendation (emulated:" in out
    lat = run["variants"][0]["latency"]
    assert type(lat[CPU]["runs"]) is int and type(lat[EMU]["emulated_timing"]["runs"]) is int
    assert lat[CPU]["runs"] == json.loads((run_dir / "manifest.json").read_text())["artifacts"][0]["latency"][CPU]["runs"]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_markdown_never_replaces_a_users_file_in_its_plot_folder(run_dir, tmp_path, capsys):
    """F7: a user's notes_files/pareto.png became edgekit's PNG without a word, exit 0."""
    mine = tmp_path / "notes_files" / "pareto.png"
    mine.parent.mkdir()
    mine.write_text("my own diagram")
    before = _sha(mine)
    rc = run_cli(["report", str(run_dir), "-o", str(tmp_path / "x.html"), "--markdown", str(tmp_path / "notes.md")])
    err = capsys.readouterr().err
    assert rc == 2 and _sha(mine) == before
    assert "notes_files/pareto.png exists and is not a plot an edgekit report wrote" in err
    assert not (tmp_path / "notes.md").exists() and not (tmp_path / "x.html").exists()
    # edgekit's own plots are replaced by the next report, which is what the folder is for
    mine.unlink()
    for _ in range(2):
        assert run_cli(["report", str(run_dir), "-o", str(tmp_path / "x.html"),
                        "--markdown", str(tmp_path / "notes.md")]) == 0
    assert mine.read_bytes().startswith(b"\x89PNG")


def test_markdown_plot_folder_that_is_a_file_is_a_usage_error(run_dir, tmp_path, capsys):
    """F8: `--markdown n.md` with a file n_files was 'internal error: FileExistsError', exit 1."""
    (tmp_path / "n_files").write_text("data")
    rc = run_cli(["report", str(run_dir), "-o", str(tmp_path / "x.html"), "--markdown", str(tmp_path / "n.md")])
    err = capsys.readouterr().err
    assert rc == 2 and "n_files is a file, not a folder" in err and "internal error" not in err
    assert (tmp_path / "n_files").read_text() == "data"
    assert not (tmp_path / "n.md").exists() and not (tmp_path / "x.html").exists()
