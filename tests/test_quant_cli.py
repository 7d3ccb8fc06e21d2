"""`edgekit quantize` on a bare ONNX file: artifacts + manifest, and one-line errors for bad data."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.test_quant import conv_model


ROOT = str(Path(__file__).resolve().parents[1])


def _cli(*args, cwd):
    env = {**os.environ, "EDGEKIT_QUIET": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def test_quantize_command_writes_artifacts_and_manifest(tmp_path):
    model = conv_model(tmp_path / "net.onnx")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.normal(size=(40, 1, 16, 16)).astype(np.float32))
    r = _cli("quantize", str(model), "--calib", str(tmp_path / "calib.npy"), "--max-trials", "2",
             "-o", str(tmp_path / "out"), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    man = json.loads(r.stdout)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["artifacts"] == man["artifacts"]
    kinds = {a["kind"]: a for a in man["artifacts"]}
    assert set(kinds) == {"fp32", "int8"}
    assert (tmp_path / "out" / "net.int8.onnx").stat().st_size == kinds["int8"]["bytes"]
    assert kinds["int8"]["metrics"]["name"] == "top1_agreement"  # fidelity: no --eval given
    q = man["quantization"]["net.onnx"]
    assert len(q["trials"]) == 2 and q["isa"]["reason"] and "recommend" in q
    # a second run refuses to clobber the first
    r2 = _cli("quantize", str(model), "--calib", str(tmp_path / "calib.npy"), "-o", str(tmp_path / "out"),
              cwd=tmp_path)
    assert r2.returncode == 2 and "--overwrite" in r2.stderr


def test_quantize_command_bad_calibration_is_one_line_exit_2(tmp_path):
    model = conv_model(tmp_path / "net.onnx")
    np.save(tmp_path / "bad.npy", np.zeros((4, 3, 16, 16), np.float32))
    r = _cli("quantize", str(model), "--calib", str(tmp_path / "bad.npy"), "-o", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "bad.npy" in err[0] and "axis 1: 3 != 1" in err[0], r.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()


# ------------------------------------------------------------------------ defects found by the sweep
import onnx  # noqa: E402
import pytest  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgekit.artifact import Artifact, Manifest  # noqa: E402


def _mlp(path, *, batch="n", out_cols=10, dtype=TensorProto.FLOAT, out_shape=None, ext_data=None):
    """x[batch, 16] -> MatMul -> Relu -> MatMul -> y[batch, out_cols] (or out_shape, via Reshape)."""
    r = np.random.default_rng(3)
    npt = helper.tensor_dtype_to_np_dtype(dtype)
    inits = [numpy_helper.from_array((r.normal(size=(16, 32)) * 0.5).astype(npt), "w1"),
             numpy_helper.from_array((r.normal(size=(32, out_cols)) * 0.3).astype(npt), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], "fc1"), helper.make_node("Relu", ["h"], ["a"], "act"),
             helper.make_node("MatMul", ["a", "w2"], ["y" if out_shape is None else "z"], "fc2")]
    if out_shape is not None:
        inits.append(numpy_helper.from_array(np.array([0, *out_shape[1:]], np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["z", "shape"], ["y"], "reshape"))
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", dtype, [batch, 16])],
                          [helper.make_tensor_value_info("y", dtype, out_shape or [batch, out_cols])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    if ext_data:
        onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=ext_data, size_threshold=0)
    else:
        onnx.save(m, str(path))
    return path


def _one_line_error(r, *needles):
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def _x(n, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=(n, 16)).astype(dtype)


@pytest.fixture
def fast_gate(monkeypatch):
    """Shorter speed-gate timing, and quantize_file in-process: real runs, just fewer timed ones."""
    from edgekit.stages import quantize as stage

    monkeypatch.setattr(stage, "GATE_RUNS", 5)
    monkeypatch.setattr(stage, "GATE_SECONDS", 0.05)
    monkeypatch.setenv("EDGEKIT_QUIET", "1")
    from edgekit.cli.quantize import quantize_file

    return quantize_file


@pytest.mark.parametrize("batch,n", [(1, 6), (4, 10)])
def test_fixed_batch_model_is_evaluated_in_its_own_batch_with_a_partial_last_batch(tmp_path, fast_gate, batch, n):
    model = _mlp(tmp_path / "fix.onnx", batch=batch)
    np.save(tmp_path / "c.npy", _x(n))
    np.savez(tmp_path / "e.npz", x=_x(n, seed=1))
    man = fast_gate(str(model), calib=str(tmp_path / "c.npy"), eval_path=str(tmp_path / "e.npz"),
                    output=str(tmp_path / "out"), tune=False)
    fp32, q = man.artifacts
    # every sample scored exactly once: N not a multiple of B is padded, and the padding is cut off again
    assert fp32.metrics["n"] == n and q.metrics["n"] == n and fp32.metrics["value"] == 1.0
    # calibration takes whole batches only, and says so
    cut = [x for x in man.quantization["fix.onnx"]["notes"] if x.startswith("calibrated on the first")]
    assert cut == ([] if n % batch == 0 else [f"calibrated on the first {n // batch * batch} of {n} samples: "
                                              f"the model's fixed batch of {batch} takes whole batches only"])


def test_fixed_batch_outputs_match_a_dynamic_batch_model(tmp_path):
    from edgekit.dataset import Dataset
    from edgekit.onnxutil import run_batches as run_dataset

    data = Dataset({"x": _x(10)})
    fixed = run_dataset(_mlp(tmp_path / "f.onnx", batch=4), data)[0]
    dyn = run_dataset(_mlp(tmp_path / "d.onnx"), data)[0]
    assert fixed.shape == (10, 10) and np.allclose(fixed, dyn, atol=1e-5)


@pytest.mark.parametrize("mode", ["int8-dynamic", "fp16"])
def test_modes_without_calibration_data_work_and_say_accuracy_was_not_measured(tmp_path, fast_gate, mode):
    model = _mlp(tmp_path / "m.onnx")
    man = fast_gate(str(model), calib=None, mode=mode, output=str(tmp_path / "out"), tune=False)
    fp32, q = man.artifacts
    assert q.kind == mode
    assert any(n.startswith("accuracy not measured: no --eval or --calib data") for n in fp32.notes)
    assert any(n.startswith("accuracy not measured") for n in q.notes)
    assert all("accuracy" not in a.metrics["name"] and a.metrics["name"].endswith("_on_random_inputs")
               for a in man.artifacts)
    d = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert any("accuracy not measured" in n for n in d["quantization"]["m.onnx"]["notes"])
    # the ISA-aware default is the static QDQ one: this run's record says it did not use it
    assert d["quantization"]["m.onnx"]["isa"]["applies_to"].endswith(f"this run: {mode}")
    q_settings = next(a["settings"] for a in d["artifacts"] if a["kind"] == mode)
    assert q_settings.get("isa_choice") is None and "method" not in q_settings and "format" not in q_settings
    # the recommendation's reason explains the pick: FP32 kept is not "FP16 within tolerance"
    rec = next(iter(d["recommended"].values()))
    if rec["kind"] == "fp32":
        assert rec["reason"].startswith(f"FP32 kept: {mode.upper()} was not both within tolerance and faster"), rec
    else:
        assert d["quantization"]["m.onnx"]["recommend"] and rec["kind"] == mode


def test_dynamic_without_calib_is_scored_on_eval(tmp_path, fast_gate):
    model = _mlp(tmp_path / "m.onnx")
    np.savez(tmp_path / "e.npz", x=_x(12), y=np.arange(12) % 10)
    man = fast_gate(str(model), calib=None, eval_path=str(tmp_path / "e.npz"), mode="int8-dynamic",
                    output=str(tmp_path / "out"), tune=False)
    assert [a.metrics["name"] for a in man.artifacts] == ["accuracy", "accuracy"]
    assert man.artifacts[0].metrics["n"] == 12


@pytest.mark.parametrize("from_model_dir", [False, True])
def test_model_with_external_data_is_copied_self_contained(tmp_path, fast_gate, monkeypatch, from_model_dir):
    (tmp_path / "m").mkdir()
    _mlp(tmp_path / "m" / "ext.onnx", ext_data="ext.data")
    np.save(tmp_path / "c.npy", _x(20))
    if from_model_dir:
        monkeypatch.chdir(tmp_path / "m")
        model, calib = "ext.onnx", "../c.npy"
    else:
        monkeypatch.chdir(tmp_path)
        model, calib = "m/ext.onnx", "c.npy"
    fast_gate(model, calib=calib, output=str(tmp_path / "out"), tune=False)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["ext.int8.onnx", "ext.onnx", "manifest.json"]
    copy = onnx.load(str(out / "ext.onnx"), load_external_data=False)
    assert all(i.data_location == TensorProto.DEFAULT for i in copy.graph.initializer)
    import onnxruntime as ort

    (tmp_path / "m" / "ext.data").unlink()  # the copy must not lean on the source's data file
    ort.InferenceSession(str(out / "ext.onnx"), providers=["CPUExecutionProvider"])


def test_failed_run_leaves_no_output_and_keeps_the_previous_run(tmp_path):
    model = _mlp(tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", _x(20))
    np.savez(tmp_path / "bad.npz", x=_x(8), y=np.full(8, 12))  # labels beyond the 10 classes: fails mid-run
    fresh = _cli("quantize", str(model), "--calib", "c.npy", "--eval", "bad.npz", "-o", "new", cwd=tmp_path)
    assert fresh.returncode == 2
    _one_line_error(fresh, "bad.npz", "[0, 10)")
    assert not (tmp_path / "new").exists()

    old = tmp_path / "old"
    old.mkdir()
    (old / "m.int8.onnx").write_bytes(b"previous")
    Manifest(artifacts=[Artifact(kind="int8", path="m.int8.onnx")]).write(old)  # an earlier edgekit run
    man_before = (old / "manifest.json").read_text()
    again = _cli("quantize", str(model), "--calib", "c.npy", "--eval", "bad.npz", "-o", "old", "--overwrite",
                 cwd=tmp_path)
    assert again.returncode == 2
    assert sorted(p.name for p in old.iterdir()) == ["m.int8.onnx", "manifest.json"]
    assert (old / "m.int8.onnx").read_bytes() == b"previous" and (old / "manifest.json").read_text() == man_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "c.npy", "m.onnx", "old"]  # no staging left


def test_successful_overwrite_replaces_the_whole_previous_run(tmp_path, fast_gate):
    model = _mlp(tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", _x(20))
    old = tmp_path / "out"
    old.mkdir()
    (old / "stale.fp16.onnx").write_bytes(b"from an earlier run")
    Manifest(artifacts=[Artifact(kind="fp16", path="stale.fp16.onnx")]).write(old)
    fast_gate(str(model), calib=str(tmp_path / "c.npy"), output=str(old), tune=False, overwrite=True)
    assert sorted(p.name for p in old.iterdir()) == ["m.int8.onnx", "m.onnx", "manifest.json"]


def test_bad_target_fails_before_any_output(tmp_path):
    model = _mlp(tmp_path / "m.onnx")
    np.save(tmp_path / "c.npy", _x(20))
    r = _cli("quantize", str(model), "--calib", "c.npy", "--target", "no-such-board", "-o", "out", cwd=tmp_path)
    assert r.returncode == 2
    _one_line_error(r, "no-such-board")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "m.onnx"]


def test_nan_calibration_data_is_one_line(tmp_path):
    model = _mlp(tmp_path / "m.onnx")
    x = _x(20)
    x[3, 5] = np.nan
    np.save(tmp_path / "nan.npy", x)
    r = _cli("quantize", str(model), "--calib", "nan.npy", "-o", "out", cwd=tmp_path)
    assert r.returncode == 2
    _one_line_error(r, "nan.npy", "NaN", "sample 3")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dest", ["afile", "afile/sub"])
def test_output_under_an_existing_file_is_one_line(tmp_path, dest):
    model = _mlp(tmp_path / "m.onnx")
    (tmp_path / "afile").write_text("keep")
    r = _cli("quantize", str(model), "--mode", "int8-dynamic", "-o", dest, cwd=tmp_path)
    assert r.returncode == 2
    _one_line_error(r, "afile", "not a directory")
    assert (tmp_path / "afile").read_text() == "keep"


def test_float16_model_with_fp16_mode_is_one_line(tmp_path):
    model = _mlp(tmp_path / "h.onnx", dtype=TensorProto.FLOAT16)
    r = _cli("quantize", str(model), "--mode", "fp16", "-o", "out", cwd=tmp_path)
    assert r.returncode == 2
    _one_line_error(r, "h.onnx", "already float16")
    assert not (tmp_path / "out").exists()


def test_float16_weights_behind_float32_inputs_are_float16(tmp_path, fast_gate):
    # an FP16 file that keeps float32 inputs and outputs (edgekit's own, onnxruntime's keep_io_types) was
    # read by its inputs: labelled fp32, and converted to FP16 again
    from edgekit.quant import fp16

    fp16.convert(_mlp(tmp_path / "m.onnx"), tmp_path / "h.onnx")
    r = _cli("quantize", "h.onnx", "--mode", "fp16", "-o", "out", cwd=tmp_path)
    assert r.returncode == 2
    _one_line_error(r, "h.onnx", "already float16")
    np.save(tmp_path / "c.npy", _x(20))
    man = fast_gate(str(tmp_path / "h.onnx"), calib=str(tmp_path / "c.npy"), mode="int8-dynamic",
                    output=str(tmp_path / "out"), tune=False)
    assert man.artifacts[0].kind == "fp16"


def test_float16_source_is_labelled_fp16(tmp_path, fast_gate):
    model = _mlp(tmp_path / "h.onnx", dtype=TensorProto.FLOAT16)
    np.save(tmp_path / "c.npy", _x(20, dtype=np.float16))
    man = fast_gate(str(model), calib=str(tmp_path / "c.npy"), mode="int8-dynamic", output=str(tmp_path / "out"),
                    tune=False)
    assert man.artifacts[0].kind == "fp16"


def test_already_quantized_model_is_refused_before_any_work(tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(_mlp(tmp_path / "m.onnx")), str(tmp_path / "q.onnx"))
    np.save(tmp_path / "c.npy", _x(20))
    r = _cli("quantize", "q.onnx", "--calib", "c.npy", "-o", "out", cwd=tmp_path)
    assert r.returncode == 2
    _one_line_error(r, "q.onnx", "already quantized", "MatMulInteger", "pass the FP32 model")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("form", ["dynamic", "qdq"])
def test_compress_refuses_an_already_quantized_model_unless_told_not_to_quantize(tmp_path, form):
    # compress labelled it model.fp32.onnx and quantized it again: a QDQ source failed every candidate
    # ("two nodes with same node name"), a dynamic one became INT8 of INT8
    from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"x": _x(1, seed=i)} for i in range(8))

        def get_next(self):
            return next(self.it, None)

    src = str(_mlp(tmp_path / "m.onnx"))
    if form == "dynamic":
        quantize_dynamic(src, str(tmp_path / "q.onnx"))
    else:
        quantize_static(src, str(tmp_path / "q.onnx"), Reader())
    np.save(tmp_path / "c.npy", _x(40))
    r = _cli("compress", "q.onnx", "--calib", "c.npy", "--no-profile", "-o", "out", cwd=tmp_path)
    assert r.returncode == 2
    _one_line_error(r, "q.onnx", "already quantized", "QuantizeLinear" if form == "qdq" else "MatMulInteger",
                    "--quantize none")
    assert not (tmp_path / "out").exists()
    r = _cli("compress", "q.onnx", "--calib", "c.npy", "--no-profile", "--quantize", "none", "-o", "out2",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    man = json.loads((tmp_path / "out2" / "manifest.json").read_text())
    (art,) = man["artifacts"]
    assert any("computes in INT8" in n for n in art["notes"]), art["notes"]
    assert "the source computes in INT8" in r.stderr


def test_single_column_output_with_labels_is_not_scored_as_accuracy(tmp_path, fast_gate):
    model = _mlp(tmp_path / "reg.onnx", out_cols=1)
    np.save(tmp_path / "c.npy", _x(20))
    np.savez(tmp_path / "e.npz", x=_x(12, seed=1), y=np.zeros(12, np.int64))
    man = fast_gate(str(model), calib=str(tmp_path / "c.npy"), eval_path=str(tmp_path / "e.npz"),
                    output=str(tmp_path / "out"), tune=False)
    fp32 = man.artifacts[0]
    # argmax over one column is always 0: all-zero labels would have read as "accuracy 1.0"
    assert fp32.metrics["name"] == "fidelity"
    assert any("labels ignored" in n and "[N, 1]" in n for n in fp32.notes), fp32.notes


def test_rank3_output_with_labels_says_why_labels_are_ignored(tmp_path, fast_gate):
    model = _mlp(tmp_path / "r3.onnx", out_cols=10, out_shape=["n", 2, 5])
    np.save(tmp_path / "c.npy", _x(20))
    np.savez(tmp_path / "e.npz", x=_x(12, seed=1), y=np.arange(12) % 10)
    man = fast_gate(str(model), calib=str(tmp_path / "c.npy"), eval_path=str(tmp_path / "e.npz"),
                    output=str(tmp_path / "out"), tune=False)
    notes = man.artifacts[0].notes
    assert any("labels ignored" in n and "[N, 2, 5]" in n for n in notes), notes
    assert not any("has no labels" in n for n in notes)


def test_regression_fidelity_is_not_just_sign_agreement():
    from edgekit.evaluate import score

    ref = np.array([[1.0], [2.0], [3.0]])
    # same signs, wrong values: a per-sample cosine of one number would call this a perfect 1.0
    assert score([ref[::-1]], "generic", reference=[ref]) < 0.8
    assert score([ref], "generic", reference=[ref]) == pytest.approx(1.0)


def test_regression_fidelity_sees_scale_and_offset():
    from edgekit.evaluate import score

    ref = np.linspace(-2.0, 3.0, 50)[:, None]
    assert score([ref * 0.5], "generic", reference=[ref]) < 0.9  # a column cosine scored this 1.0
    assert score([ref + 1.0], "generic", reference=[ref]) < 0.9
    assert score([ref + 1e-3], "generic", reference=[ref]) > 0.99
    assert 0.0 <= score([-ref], "generic", reference=[ref]) <= 1.0


def test_manifest_names_data_files_by_absolute_path(tmp_path):
    """The bundle's self-test input comes from the manifest's data paths: relative ones only resolved from
    the folder quantize ran in, so bundling from elsewhere silently changed the bundle's version."""
    model = conv_model(tmp_path / "net.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).normal(size=(40, 1, 16, 16)).astype(np.float32))
    r = _cli("quantize", "net.onnx", "--calib", "calib.npy", "--no-tune", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    settings = json.loads((tmp_path / "out" / "manifest.json").read_text())["settings"]
    assert settings["calib"] == str(tmp_path / "calib.npy"), settings
    assert model.exists()


def test_every_output_counts_in_fidelity():
    from edgekit.evaluate import per_output, score

    rng = np.random.default_rng(0)
    logits, aux = rng.normal(size=(40, 5)), rng.normal(size=(40, 3))
    # the first output agrees perfectly, the second is scaled: the metric must not stay at 1.0
    bad = [logits, aux * 0.2 + 1.0]
    assert score(bad, "classification", reference=[logits, aux]) < 0.99
    vals = per_output(bad, "classification", [logits, aux])
    assert vals[0] == 1.0 and vals[1] < 0.99
    # an output whose length differs (post-NMS boxes) is reported as not comparable, not as a score
    assert per_output([logits, aux[:7]], "classification", [logits, aux])[1] is None
    assert score([logits, aux[:7]], "classification", reference=[logits, aux]) == 1.0


def test_integer_outputs_are_scored_by_exact_agreement():
    # (logits, argmax) models: R^2 over class ids scored 90% of samples agreeing as 0.95 or as 0.3
    # depending on which ids were swapped; the share of samples that agree exactly is what it means
    from edgekit.evaluate import per_output

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(100, 5))
    ids = logits.argmax(1).astype(np.int64)
    got = ids.copy()
    got[:10] = (got[:10] + 1) % 5
    assert per_output([logits, got], "classification", [logits, ids])[1] == 0.9
    mask = rng.random((100, 4)) > 0.5
    flipped = mask.copy()
    flipped[:25, 0] = ~flipped[:25, 0]
    assert per_output([logits, flipped], "classification", [logits, mask])[1] == 0.75
    # the only output of a generic model, too
    assert per_output([got], "generic", [ids]) == [0.9]


def test_image_folder_for_an_nhwc_model_with_a_preprocess_spec(tmp_path):
    from PIL import Image
    from onnx import TensorProto, helper, numpy_helper
    import onnx

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], "to_nchw", perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"], "conv"),
             helper.make_node("GlobalAveragePool", ["c"], ["p"], "gap"),
             helper.make_node("Flatten", ["p"], ["y"], "flat")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 20, 24, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "nhwc.onnx"))
    (tmp_path / "imgs").mkdir()
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i:02d}.png")
    spec = '{"pre": [{"op": "resize_normalize", "size": [20, 24], "mean": [127, 127, 127], "std": [128, 128, 128], "layout": "NHWC"}]}'
    r = _cli("quantize", "nhwc.onnx", "--calib", "imgs", "--preprocess", spec, "--no-tune", "-o", "out", "--json",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    man = json.loads(r.stdout)
    assert man["prepost"]["pre"][0]["layout"] == "NHWC"
    r2 = _cli("quantize", "nhwc.onnx", "--calib", "imgs", "--no-tune", "-o", "out2", cwd=tmp_path)
    assert r2.returncode == 2 and "channels" in r2.stderr  # without the spec the layout defaults to NCHW


def _two_output_model(path, flip_second=False):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    v = np.random.default_rng(2).normal(size=(6, 3)).astype(np.float32) * (-1 if flip_second else 1)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"], "cls"), helper.make_node("MatMul", ["x", "v"], ["aux"], "aux")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 4]),
                           helper.make_tensor_value_info("aux", TensorProto.FLOAT, ["n", 3])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(v, "v")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_second_output_is_held_to_fp32_with_labels_and_without(tmp_path):
    from edgekit.dataset import Dataset
    from edgekit.evaluate import Evaluator

    ref = _two_output_model(tmp_path / "ref.onnx")
    broken = _two_output_model(tmp_path / "broken.onnx", flip_second=True)  # same logits, opposite second head
    x = np.random.default_rng(3).normal(size=(30, 6)).astype(np.float32)
    y = np.random.default_rng(4).integers(0, 4, 30)
    labelled = Evaluator(Dataset({"x": x}, y, "eval.npz"), "classification", ref)(broken)
    assert labelled["name"] == "accuracy" and labelled["other_outputs_fidelity"] == [0.0], labelled
    unlabelled = Evaluator(Dataset({"x": x}, None, "calib.npy"), "classification", ref)(broken)
    assert unlabelled["name"] == "fidelity_min" and unlabelled["value"] == 0.0, unlabelled  # never negative
    assert unlabelled["per_output"] == [1.0, 0.0]


def test_tolerance_above_100_is_refused():
    from edgekit.config import Tolerance
    from edgekit.errors import ConfigError

    for bad in ("200%", "150pt"):
        with pytest.raises(ConfigError, match="at most 100%"):
            Tolerance.parse(bad)
    assert Tolerance.parse("100%").value == 1.0


def test_compress_of_onnx_files(tmp_path):
    # external data travels with the copy (it was left behind, and the error blamed the eval data);
    # a float16 source is said to be one; --prune on an ONNX file is refused, not silently ignored
    (tmp_path / "m").mkdir()
    _mlp(tmp_path / "m" / "ext.onnx", ext_data="ext.data")
    _mlp(tmp_path / "f16.onnx", dtype=TensorProto.FLOAT16)
    np.save(tmp_path / "c.npy", _x(40))
    np.save(tmp_path / "c16.npy", _x(40, dtype=np.float16))
    r = _cli("compress", "m/ext.onnx", "--calib", "c.npy", "--no-profile", "--no-tune", "-o", "o1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import onnxruntime as ort

    (tmp_path / "m" / "ext.data").unlink()  # the copy stands on its own
    assert ort.InferenceSession(str(tmp_path / "o1" / "model.fp32.onnx")).run(None, {"x": _x(2)})[0].shape == (2, 10)
    r = _cli("compress", "f16.onnx", "--calib", "c16.npy", "--no-profile", "--no-tune", "-o", "o2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "note: the source computes in float16" in r.stderr
    fp32 = json.loads((tmp_path / "o2" / "manifest.json").read_text())["artifacts"][0]
    assert any("float16" in n for n in fp32["notes"])
    r = _cli("compress", "f16.onnx", "--calib", "c16.npy", "--prune", "0.5", "-o", "o3", cwd=tmp_path)
    _one_line_error(r, "--prune: f16.onnx is an ONNX file")
    assert r.returncode == 2 and not (tmp_path / "o3").exists()
