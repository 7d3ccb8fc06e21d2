"""Profile-report leftovers of sweep 15: a model without a batch axis is planned and titled as the one
sample per run it is timed as (F10), the Markdown says why outputs mismatched and which were not
compared (F4/F6), every JSON report is standard JSON (F4), and a model with external data is sized
and hashed with its data files (F7)."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.profiling import resolve_artifacts, run_profile
from edgekit.runner import edgekit_runner as runner

from profile_models import _save, cli_exit as _exit, fp32_run, matmul_chain

QUICK = {"warmup": 1, "min_runs": 3, "min_seconds": 0.0, "max_seconds": 5.0}
FAST = ["--warmup", "1", "--min-runs", "3", "--min-seconds", "0"]


def chw_model(path, declared=True):
    """x [3, 8, 8] -> y [8, 8, 3]: an unbatched image; no output keeps the leading 3.
    declared=False: y is declared [h, w, c] (its axis 0 is found by running the model)."""
    return _save([helper.make_node("Transpose", ["x"], ["y"], "t", perm=[1, 2, 0])], {},
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                [8, 8, 3] if declared else ["h", "w", "c"])], path)


def _strict(text):
    def refuse(c):
        raise ValueError(f"bare {c} in the JSON")
    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------- F10


@pytest.mark.parametrize("declared", [True, False])
def test_batch_1_is_accepted_for_a_model_without_a_batch_axis(tmp_path, capsys, declared):
    """`--batch 1` on chw [3, 8, 8] was a usage error ('fixed batch of 3 ... cannot run batch 1'), though
    the runner times it as one sample per run; without --batch it was grouped and titled 'batch 3'."""
    from edgekit.profile_report import to_markdown

    chw = chw_model(tmp_path / "chw.onnx", declared)
    for batches in ([1], []):
        rep = run_profile([chw], ["x86-laptop"], batches=batches, op_profile=False, **QUICK)
        run = rep["runs"][0]
        assert run["batch"] == 1 and run["results"]["chw"]["batch"] == 1, run
        assert rep["settings"]["batches"] == [1]
        md = to_markdown(rep)
        assert "## x86-laptop — batch 1, threads" in md and "batch 3" not in md.split("Input shapes")[0]
        assert "timed as one sample per run, not a batch of 3._" in md  # the batch_note, as a note
    # the CLI too, and a batch it cannot run names what leaving out --batch measures
    assert _exit(["profile", chw, "--batch", "1", "--no-op-profile", *FAST]) == 0
    capsys.readouterr()
    assert _exit(["profile", chw, "--batch", "2", "--no-op-profile", *FAST]) == 2
    assert "leave out --batch to measure it at one sample per run" in capsys.readouterr().err
    # a real fixed batch is still refused at --batch 1 (its outputs keep axis 0)
    f4 = matmul_chain(tmp_path / "f4.onnx", 1, k=16, batch=4)
    assert _exit(["profile", f4, "--batch", "1", *FAST]) == 2
    assert "fixed batch of 4" in capsys.readouterr().err


def test_the_heading_says_the_batch_the_results_ran(tmp_path):
    """--batch 3 on chw: timed as one sample (batch 1, inf/s per sample) under a heading 'batch 3'."""
    from edgekit.profile_report import to_markdown

    chw = chw_model(tmp_path / "chw.onnx")
    rep = run_profile([chw], ["x86-laptop"], batches=[3], op_profile=False, **QUICK)
    assert rep["runs"][0]["results"]["chw"]["batch"] == 1
    md = to_markdown(rep)
    assert "## x86-laptop — batch 1 (planned as batch 3: see the note), threads" in md, md
    assert "one sample per run" in md


# ---------------------------------------------------------------- F4 / F6 in the Markdown


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    return run_profile([matmul_chain(d / "c.onnx", 1, k=16)], ["x86-laptop"], op_profile=False, **QUICK)


def _with_comparison(rep, got, ref):
    from edgekit.profile_report import build_report

    ok, info = runner.compare(got, ref, 1e-4)
    run = dict(rep["runs"][0])
    run["results"] = {"c": {**run["results"]["c"], "arm_vs_host": {"ok": ok, "atol": 1e-4, **info}}}
    return build_report([run], rep["artifacts"], rep["settings"])


def test_a_mismatch_row_says_why(measured):
    """NaN on the device where the host has numbers read 'MISMATCH 0 (0.0001)': no difference shown and no
    reason; the row now carries the comparison's reason."""
    from edgekit.profile_report import to_markdown

    ref = {"y": np.array([1.0, 2.0, 3.0], np.float32)}
    got = {"y": np.array([1.0, np.nan, 3.0], np.float32)}
    md = to_markdown(_with_comparison(measured, got, ref))
    row = next(line for line in md.splitlines() if line.startswith("| c |"))
    assert "MISMATCH 0 (0.0001): output 'y': 1 NaN/infinite value(s) where the other side differs" in row, row


def test_outputs_not_compared_are_listed(measured):
    """A ZipMap output (a list of dicts) is skipped by the comparison; the report said nothing of it."""
    from edgekit.profile_report import to_markdown

    ref = {"label": np.array([1], np.int64), "probs": [{0: 0.25, 1: 0.75}]}
    got = {"label": np.array([1], np.int64)}
    md = to_markdown(_with_comparison(measured, got, ref))
    row = next(line for line in md.splitlines() if line.startswith("| c |"))
    assert "ok 0 (0.0001); not compared: probs (not a tensor (list))" in row, row


# ---------------------------------------------------------------- F4: standard JSON


def test_profile_json_has_no_bare_nan(tmp_path, monkeypatch, capsys):
    """A NaN or infinity in a result (an output difference, an infinite tolerance) was written as a bare
    NaN/Infinity: not JSON, and JSON.parse rejected the whole report."""
    import edgekit.profile as prof
    from edgekit.profile_report import to_markdown

    real = prof.profile_models

    def with_nan(*a, **kw):
        res = real(*a, **kw)
        for r in res.values():
            r["arm_vs_host"] = {"ok": False, "atol": np.float32("inf"), "max_abs_diff": {"y": float("nan")}}
        return res

    monkeypatch.setattr(prof, "profile_models", with_nan)
    chain = matmul_chain(tmp_path / "c.onnx", 1, k=16)
    out = tmp_path / "p.json"
    assert _exit(["profile", chain, "--no-op-profile", "-o", str(out), *FAST]) == 0
    rep = _strict(out.read_text())
    assert rep["runs"][0]["results"]["c"]["arm_vs_host"] == {"ok": False, "atol": "Infinity",
                                                            "max_abs_diff": {"y": "NaN"}}
    assert "MISMATCH NaN (Infinity)" in to_markdown(rep)  # a report read back still renders
    capsys.readouterr()
    assert _exit(["profile", chain, "--no-op-profile", "--json", *FAST]) == 0
    _strict(capsys.readouterr().out)


def test_compress_report_json_has_no_bare_nan(tmp_path):
    from edgekit.report import write_reports

    d = tmp_path / "run"
    m = fp32_run(d, 16)
    m.artifacts[0].verify = {"ok": False, "max_abs_diff": float("nan"), "atol": float("inf")}  # copied as is
    m.write(d)
    write_reports([d], json_path=tmp_path / "r.json")
    v = _strict((tmp_path / "r.json").read_text())["runs"][0]["variants"][0]
    assert v["verify"] == {"ok": False, "max_abs_diff": "NaN", "atol": "Infinity"}


def test_python_m_edgekit_profile_prints_standard_json(tmp_path, monkeypatch, capsys):
    import edgekit.profile as prof

    real = prof.profile_models
    monkeypatch.setattr(prof, "profile_models", lambda *a, **kw: {
        k: {**v, "odd": float("nan")} for k, v in real(*a, **kw).items()})
    chain = matmul_chain(tmp_path / "c.onnx", 1, k=16)
    assert prof.main([chain, "--min-runs", "3", "--min-seconds", "0"]) == 0
    assert next(iter(_strict(capsys.readouterr().out).values()))["odd"] == "NaN"


# ---------------------------------------------------------------- F7


def test_external_data_counts_in_bytes_and_sha256(tmp_path):
    """ext/big_ext.onnx: artifacts.big_ext.bytes was 1008 (the .onnx stub) and sha256 the stub's, the same
    for any weights of the graph. Both now cover the data file, and sha256 is edgekit.loader's."""
    from edgekit.loader import onnx_sha256

    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], "mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 64])],
                          [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    d = tmp_path / "ext"
    d.mkdir()
    onnx.save_model(model, str(d / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0)
    stub, data = (d / "m.onnx").stat().st_size, (d / "m.data").stat().st_size
    assert data >= w.nbytes > stub
    _, facts, _ = resolve_artifacts([str(d / "m.onnx")])
    f = facts["m"]
    assert f["bytes"] == stub + data and f["onnx_bytes"] == stub
    assert f["sha256"] == onnx_sha256(d / "m.onnx") and set(f["external_data"]) == {"m.data"}
    assert f["external_data"]["m.data"]["bytes"] == data
    # other weights in the same graph: the stub is byte-identical, the hash is not
    before = f["sha256"]
    (d / "m.data").unlink()  # onnx appends to an existing data file
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w * 2, "w"))
    onnx.save_model(model, str(d / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0)
    assert (d / "m.onnx").stat().st_size == stub
    assert resolve_artifacts([str(d / "m.onnx")])[1]["m"]["sha256"] != before
    rep = run_profile([str(d / "m.onnx")], ["x86-laptop"], op_profile=False, **QUICK)
    assert rep["artifacts"]["m"]["bytes"] == stub + data


def test_an_external_data_artifact_keeps_one_hash_and_a_loose_copy_joins_its_run(tmp_path):
    """The manifest's sha256 of an external-data model covers its .data (artifact.model_sha256): profile wrapped
    that combined hash a second time, and a loose .onnx of the run no longer matched it (no ratio within the run)."""
    from edgekit.artifact import load_manifest
    from edgekit.profiling import resolve_artifacts
    from test_bundle_report_hardening import _external_data_outdir

    out = _external_data_outdir(tmp_path / "out")
    f = out / "model.fp32.onnx"
    man = load_manifest(out)
    paths, facts, _ = resolve_artifacts([str(out), str(f)])
    by_path = {v["path"]: v for v in facts.values()}
    in_dir, loose = [v for v in facts.values() if v["kind"] == "fp32"][0], by_path[str(f)]
    assert in_dir["sha256"] == man.artifacts[0].sha256 == loose["sha256"]
    assert loose["run"] == str(out.resolve())
