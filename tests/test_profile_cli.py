"""`edgekit profile` end to end on artifacts built here: report files, schema, exit codes."""
import json

import numpy as np
import pytest

from edgekit.artifact import Artifact, Manifest

from profile_models import (channel_mean, cli_exit as _exit, digits_batches, embedding_bag, matmul_chain,
                            quantize_qdq, small_cnn)

FAST = ["--warmup", "1", "--min-runs", "5", "--min-seconds", "0.05"]


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    """A minimal edgekit output directory: fp32 + int8 artifacts and a manifest."""
    d = tmp_path_factory.mktemp("run")
    small_cnn(d / "model.fp32.onnx")
    quantize_qdq(d / "model.fp32.onnx", d / "model.int8.onnx", digits_batches(16))
    m = Manifest(artifacts=[Artifact("fp32", "model.fp32.onnx"), Artifact("int8", "model.int8.onnx")])
    for a in m.artifacts:
        a.refresh_file_facts(d)
    m.write(d)
    return d


def test_profile_outdir_on_cpu_and_missing_gpu(outdir, tmp_path, capsys):
    out = tmp_path / "rep" / "profile.json"
    np.savez(tmp_path / "in.npz", x=digits_batches(4), y=np.arange(4))
    rc = _exit(["profile", str(outdir), "--target", "x86-laptop", "--target", "nvidia-gpu", "--batch", "1",
                "--batch", "2", "--threads", "1", "--inputs", str(tmp_path / "in.npz"), "-o", str(out), *FAST])
    assert rc == 0  # the GPU is unavailable here, the CPU measurements succeeded
    rep = json.loads(out.read_text())
    assert rep["schema"] == "edgekit.profile/1" and set(rep["artifacts"]) == {"fp32", "int8"}
    runs = {(r["target"], r["batch"]): r for r in rep["runs"]}
    assert set(runs) == {("x86-laptop", 1), ("x86-laptop", 2), ("nvidia-gpu", 1), ("nvidia-gpu", 2)}
    cpu = runs[("x86-laptop", 2)]["results"]
    for kind in ("fp32", "int8"):
        r = cpu[kind]
        assert r["status"] == "ok" and r["batch"] == 2 and r["threads"] == 1 and r["precision"] == kind
        assert r["emulated"] is False and r["host_cpu"] and r["runs"] >= 5
    assert any(op.startswith("QLinear") or "Integer" in op for op in cpu["int8"]["op_breakdown"])
    assert runs[("x86-laptop", 1)]["ratios"]["fp32"] == 1.0
    gpu = runs[("nvidia-gpu", 1)]["results"]["fp32"]
    md = out.with_suffix(".md").read_text()
    if gpu["status"] != "ok":
        assert gpu["status"] == "unavailable" and "p50_ms" not in gpu and "unavailable:" in md
    else:  # a machine with a GPU measured it
        assert gpu["provider"] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") and gpu["p50_ms"] > 0
    assert "| fp32 | fp32 | CPU |" in md and "Time per operator type" in md
    # the peak is the process's, the same on every row: the column says so
    assert "process peak RSS MB" in md and rep["settings"]["inputs"] == str(tmp_path / "in.npz")
    assert "no FP32 of its own run" not in md  # an unavailable target's rows say why; no ratio note


def test_profile_onnx_files_json_and_errors(tmp_path, capsys):
    a, b = matmul_chain(tmp_path / "a.onnx", 2), matmul_chain(tmp_path / "b.onnx", 4)
    assert _exit(["profile", a, b, "--json", "--no-op-profile", *FAST]) == 0
    rep = json.loads(capsys.readouterr().out)
    res = rep["runs"][0]["results"]
    assert rep["runs"][0]["target"] == "x86-laptop" and set(res) == {"a", "b"}
    assert "op_breakdown" not in res["a"] and res["a"]["providers_by_node"] == {"CPUExecutionProvider": 3}
    # a target given twice is measured once (it ran the whole sweep twice)
    assert _exit(["profile", a, "-t", "x86-laptop", "-t", "x86-laptop", "--json", "--no-op-profile", *FAST]) == 0
    assert [r["target"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["x86-laptop"]
    # only an unavailable target: a clear error and exit 1, the report still written
    out = tmp_path / "gpu.json"
    if _exit(["profile", a, "--target", "nvidia-gpu", "-o", str(out), *FAST]) == 1:
        assert "no measurement succeeded" in capsys.readouterr().err
        assert json.loads(out.read_text())["runs"][0]["results"]["a"]["status"] == "unavailable"
    # bad inputs: exit 2 with the file named
    bad = tmp_path / "x.txt"
    bad.write_text("hello")
    assert _exit(["profile", str(bad)]) == 2
    assert "x.txt" in capsys.readouterr().err
    assert _exit(["profile", a, "--inputs", str(bad)]) == 2
    assert _exit(["profile", a, "--target", "nvidia-gpuu"]) == 2
    assert "did you mean 'nvidia-gpu'" in capsys.readouterr().err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    assert _exit(["profile", str(junk)]) == 2
    assert "junk.onnx" in capsys.readouterr().err


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_profile_fixed_batch_model_reports_the_batch_it_ran(tmp_path, capsys):
    f4, dyn = matmul_chain(tmp_path / "f4.onnx", 2, k=64, batch=4), matmul_chain(tmp_path / "dyn.onnx", 2, k=64)
    assert _exit(["profile", f4, dyn, "--json", "--no-op-profile", *FAST]) == 0
    by_batch = {r["batch"]: r["results"] for r in json.loads(capsys.readouterr().out)["runs"]}
    assert set(by_batch) == {1, 4} and set(by_batch[4]) == {"f4"} and set(by_batch[1]) == {"dyn"}
    r = by_batch[4]["f4"]
    assert r["batch"] == 4 and r["throughput"] == pytest.approx(4000 / r["mean_ms"], rel=1e-6)
    for b in ("2", "1"):  # asked for explicitly: a batch the model cannot run is an error
        assert _exit(["profile", f4, "--batch", b, *FAST]) == 2
        err = _one_line_error(capsys)
        assert "f4.onnx" in err and "fixed batch of 4" in err and f"cannot run batch {b}" in err
    # in a sweep, that point is unavailable with the reason; the others are measured
    assert _exit(["profile", f4, "--batch", "2", "--batch", "4", "--json", "--no-op-profile", *FAST]) == 0
    runs = {r["batch"]: r["results"]["f4"] for r in json.loads(capsys.readouterr().out)["runs"]}
    assert runs[2]["status"] == "unavailable" and "fixed batch of 4" in runs[2]["reason"] and "p50_ms" not in runs[2]
    assert runs[4]["status"] == "ok" and runs[4]["batch"] == 4


def test_profile_symbolic_spatial_dims_need_real_inputs(tmp_path, capsys):
    cnn = small_cnn(tmp_path / "hw.onnx", hw=("height", "width"))
    assert _exit(["profile", cnn, *FAST]) == 2
    err = _one_line_error(capsys)
    assert "hw.onnx" in err and "'x'" in err and "height, width" in err and "--inputs" in err
    # a .npy is accepted for a single-input model
    np.save(tmp_path / "x.npy", digits_batches(4))
    assert _exit(["profile", cnn, "--inputs", str(tmp_path / "x.npy"), "--json", "--no-op-profile", *FAST]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["results"]["hw"]["status"] == "ok"


def test_profile_generated_ids_fit_a_small_embedding(tmp_path, capsys):
    bag = embedding_bag(tmp_path / "bag.onnx", rows=50)
    assert _exit(["profile", bag, "--json", "--no-op-profile", *FAST]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["results"]["bag"]["status"] == "ok"


def test_profile_inputs_file_errors_name_the_file(tmp_path, capsys):
    bag = embedding_bag(tmp_path / "bag.onnx", rows=50)
    mm = matmul_chain(tmp_path / "mm.onnx", 1, k=16)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "float_ids.npz", ids=rng.standard_normal((3, 7)) * 10, mask=np.ones((3, 7)))
    np.save(tmp_path / "one.npy", np.zeros((3, 7), np.int64))
    np.savez(tmp_path / "wide.npz", x=np.ones((3, 17), np.float32))
    for model, data, says in ((bag, "float_ids.npz", "input 'ids' has dtype float64; "),
                              (bag, "one.npy", "a .npy holds one array, but "),
                              (mm, "wide.npz", "(axis 1: 17 != 16)")):
        assert _exit(["profile", model, "--inputs", str(tmp_path / data), *FAST]) == 2, data
        err = _one_line_error(capsys)
        assert data in err and says in err, err
    # integral ids in int32 and float64 masks are cast without loss: accepted
    np.savez(tmp_path / "ok.npz", ids=np.ones((3, 7), np.int32), mask=np.ones((3, 7)))
    assert _exit(["profile", bag, "--inputs", str(tmp_path / "ok.npz"), "--no-op-profile", *FAST]) == 0


@pytest.mark.slow
def test_profile_over_ssh_runs_the_runner_on_the_device(tmp_path):
    """A loopback sshd is the 'device': the runner is staged there, run, and removed; outputs come back."""
    import sys

    from edgekit.flash import SshOptions
    from edgekit.profile import profile_models
    from sshd import loopback_target, start_sshd

    cache = tmp_path / "device-cache"
    srv = start_sshd(tmp_path / "server", env={"XDG_CACHE_HOME": str(cache)})
    try:
        t, dev = loopback_target(srv, tmp_path)
        a, b = matmul_chain(tmp_path / "a.onnx", 2), matmul_chain(tmp_path / "b.onnx", 4)
        opts = SshOptions(identity=str(srv.user_key), known_hosts=str(srv.known_hosts), remote_python=sys.executable)
        res = profile_models({"a": a, "b": b}, str(t), ssh=opts, return_outputs=True,
                             warmup=1, min_runs=5, min_seconds=0.0)
        for r in res.values():
            assert r["status"] == "ok" and r["emulated"] is False and r["threads"] == 1, r
            assert r["arm_vs_host"]["ok"] is True and r["arm_vs_host"]["max_abs_diff"]["y"] == 0.0
            assert r["outputs"]["y"].shape == (1, 256) and r["host_cpu"]
        assert list((dev / ".bench").iterdir()) == []  # the stage is gone, nothing deployed was touched
        # a host key that does not match is refused, and reported as unavailable (never a number)
        other = tmp_path / "other_known_hosts"
        other.write_text(srv.known_hosts.read_text().replace(srv.host_pub.split()[1],
                                                             "AAAAC3NzaC1lZDI1NTE5AAAAIGJhZGtleWJhZGtleWJhZGtleWJhZGtleWJhZGs="))
        bad = profile_models({"a": a}, str(t), ssh=SshOptions(identity=str(srv.user_key), known_hosts=str(other)),
                             warmup=1, min_runs=3, min_seconds=0.0)["a"]
        assert bad["status"] == "unavailable" and "p50_ms" not in bad
    finally:
        srv.stop()


def test_with_prepost_times_a_post_only_spec_on_the_saved_sample_inputs(tmp_path, capsys):
    from flash_fixtures import make_outdir

    out = make_outdir(tmp_path / "out")  # prepost: post softmax_topk only
    np.savez(out / "sample_inputs.npz", x=np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32))
    rep_path = tmp_path / "prof.json"
    assert _exit(["profile", str(out), "--with-prepost", "--no-op-profile", "-o", str(rep_path), *FAST]) == 0
    pp = json.loads(rep_path.read_text())["runs"][0]["results"]["fp32"]["prepost"]
    assert pp["status"] == "ok" and pp["raw_input"] == "model inputs", pp
    assert pp["post"]["p50_ms"] > 0


def test_profile_refuses_an_artifact_changed_since_the_run(outdir, tmp_path, capsys):
    """A model swapped into a run folder was timed under the run's label, its ratio taken against an
    unrelated FP32: the manifest's hash must match."""
    import shutil

    d = tmp_path / "run"
    shutil.copytree(outdir, d)
    matmul_chain(d / "model.int8.onnx", 2)
    out = tmp_path / "p.json"
    assert _exit(["profile", str(d), "-o", str(out), *FAST]) == 2
    err = _one_line_error(capsys)
    assert "model.int8.onnx: changed since the run" in err and not out.exists()


def test_ratios_stay_within_each_run(outdir, tmp_path, capsys):
    # a second run of another model: its INT8 given alone has no FP32 of its own here, and a ratio
    # against the first run's FP32 would compare two different models
    other = tmp_path / "other"
    other.mkdir()
    matmul_chain(other / "model.fp32.onnx", 2)
    (other / "model.int8.onnx").write_bytes((other / "model.fp32.onnx").read_bytes())
    m = Manifest(artifacts=[Artifact("fp32", "model.fp32.onnx"), Artifact("int8", "model.int8.onnx")])
    for a in m.artifacts:
        a.refresh_file_facts(other)
    m.write(other)
    loose = tmp_path / "loose.onnx"  # a copy of the first run's FP32: the same model, so the same run
    loose.write_bytes((outdir / "model.fp32.onnx").read_bytes())
    out = tmp_path / "p.json"
    assert _exit(["profile", str(outdir), str(other / "model.int8.onnx"), str(loose), "-o", str(out),
                  "--no-op-profile", *FAST]) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["baselines"] == {"fp32": "fp32", "int8": "fp32", "model.int8": None, "loose": "fp32"}
    assert run["ratios"]["model.int8"] is None and run["ratios"]["int8"] > 0 and run["baseline"] is None
    assert "model.int8: none (no FP32 of its own run" in out.with_suffix(".md").read_text()
    # with its own FP32 beside it, the ratio is back
    assert _exit(["profile", str(other / "model.fp32.onnx"), str(other / "model.int8.onnx"), "-o", str(out),
                  "--no-op-profile", *FAST]) == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["baseline"] == "model.fp32" and run["ratios"]["model.int8"] > 0


def test_two_artifacts_of_one_kind_are_named_by_file(outdir, tmp_path):
    from edgekit.profile import precision_of
    from edgekit.profiling import resolve_artifacts

    run = tmp_path / "run"
    run.mkdir()
    for f in ("model.fp32.onnx", "model.int8.onnx"):
        (run / f).write_bytes((outdir / f).read_bytes())
    (run / "model.distilled.int8.onnx").write_bytes((outdir / "model.int8.onnx").read_bytes())
    m = Manifest(artifacts=[Artifact("fp32", "model.fp32.onnx"), Artifact("int8", "model.int8.onnx"),
                            Artifact("int8", "model.distilled.int8.onnx")])
    for a in m.artifacts:
        a.refresh_file_facts(run)
    m.write(run)
    paths, _, _ = resolve_artifacts([str(run)])
    assert list(paths) == ["fp32", "int8", "distilled.int8"]  # was int8#2
    assert [precision_of(k, {}) for k in paths] == ["fp32", "int8", "int8"]
    assert precision_of("run/model.distilled.int8-dynamic", {}) == "int8-dynamic"


def _run_dir(d, **models):
    """An edgekit output folder holding {kind: model file written by a profile_models builder}."""
    d.mkdir()
    m = Manifest(artifacts=[Artifact(kind, f"model.{kind}.onnx") for kind in models])
    for kind, build in models.items():
        build(d / f"model.{kind}.onnx")
    for a in m.artifacts:
        a.refresh_file_facts(d)
    m.write(d)
    return d


def test_profile_outdir_times_the_runs_own_sample_inputs(tmp_path, capsys):
    """A length no generator can guess (x [batch, 4, L]): the run's saved inputs make it measurable,
    and the report says which inputs were timed."""
    run = _run_dir(tmp_path / "run", fp32=channel_mean)
    assert _exit(["profile", str(run), *FAST]) == 2  # no saved inputs: the one-line error says so
    err = _one_line_error(capsys)
    assert "symbolic dims L" in err and "has no sample_inputs.npz" in err, err
    np.savez(run / "sample_inputs.npz", x=np.ones((3, 4, 12), np.float32))
    out = tmp_path / "p.json"
    assert _exit(["profile", str(run), "--no-op-profile", "-o", str(out), *FAST]) == 0
    rep = json.loads(out.read_text())
    assert rep["runs"][0]["results"]["fp32"]["status"] == "ok"
    says = f"{run / 'sample_inputs.npz'} (the run's own)"
    assert rep["settings"]["inputs"] == says and rep["settings"]["inputs_by_artifact"] == {"fp32": says}
    assert f"inputs: {says}." in out.with_suffix(".md").read_text()


def test_two_runs_are_each_timed_on_their_own_inputs(tmp_path):
    """Inputs no single file could hold for both ([batch, 4, L] and [batch, 6, L]): each run gets its own."""
    a = _run_dir(tmp_path / "a", fp32=channel_mean)
    b = _run_dir(tmp_path / "b", fp32=lambda p: channel_mean(p, channels=6))
    np.savez(a / "sample_inputs.npz", x=np.ones((2, 4, 12), np.float32))
    np.savez(b / "sample_inputs.npz", x=np.ones((2, 6, 30), np.float32))
    out = tmp_path / "p.json"
    assert _exit(["profile", str(a), str(b), "--no-op-profile", "-o", str(out), *FAST]) == 0
    rep = json.loads(out.read_text())
    assert {k: r["status"] for k, r in rep["runs"][0]["results"].items()} == {"a/fp32": "ok", "b/fp32": "ok"}
    assert rep["settings"]["inputs_by_artifact"] == {"a/fp32": f"{a / 'sample_inputs.npz'} (the run's own)",
                                                     "b/fp32": f"{b / 'sample_inputs.npz'} (the run's own)"}


def test_ratio_note_tells_an_fp32_not_measured_from_one_not_given(tmp_path, capsys):
    """The run's FP32 has a fixed batch of 4, its INT8 any batch: at batch 2 the FP32 was given but
    could not run, and the note must say that, not 'no FP32 of its own run was given'."""
    run = _run_dir(tmp_path / "run", fp32=lambda p: matmul_chain(p, 1, k=16, batch=4),
                   int8=lambda p: matmul_chain(p, 1, k=16))
    out = tmp_path / "p.json"
    assert _exit(["profile", str(run), "--batch", "2", "--batch", "4", "--no-op-profile", "-o", str(out),
                  *FAST]) == 0
    at2 = next(r for r in json.loads(out.read_text())["runs"] if r["batch"] == 2)
    assert at2["results"]["fp32"]["status"] == "unavailable" and at2["ratios"]["int8"] is None
    md = out.with_suffix(".md").read_text()
    assert "int8: none (the FP32 of its run, fp32, was not measured on this target: unavailable: " in md
    assert "fixed batch of 4" in md and "no FP32 of its own run was given" not in md
