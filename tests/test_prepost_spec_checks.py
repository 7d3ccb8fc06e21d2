"""Pre/post specs that pass the checks must run (sweep30 F1-F6): the spec checker and the ops agree, compress
runs the declared pre steps on a sample and refuses any failure in one line, a step after another reads
its result, NMS stays fast and exact with a far-away box, and errors name where the spec came from."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cliutil import run_cli
from edgekit.prepost import Pipeline, PrepostError, decode_boxes, nms, validate_spec
from edgekit.prepost._jit import resolve_backend


def _classifier(path, channels):
    """[N, C, 8, 8] -> 10 logits: Flatten + MatMul."""
    w = np.random.default_rng(0).standard_normal((channels * 64, 10)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], axis=1), helper.make_node("MatMul", ["f", "W"], ["logits"])],
        "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], [numpy_helper.from_array(w, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))


@pytest.fixture
def cls(tmp_path):
    _classifier(tmp_path / "cls.onnx", 3)
    np.save(tmp_path / "calib.npy", np.random.default_rng(1).random((16, 3, 8, 8)).astype(np.float32))
    return tmp_path


def _compress(d, model, calib, spec, capsys):
    out = d / "out"
    rc = run_cli(["compress", str(d / model), "--calib", str(d / calib), "--quantize", "none", "--no-profile",
                  "-o", str(out), "--preprocess", spec])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("edgekit: error")]
    return rc, err, out


@pytest.mark.parametrize("step, words", [
    # the spec checker took 0 (closed range), the op refused it: bundled, and failed on the device every run
    ({"size": [8, 8], "crop_fraction": 0}, "prepost.pre[0] (resize_normalize): crop_fraction: 0 must be > 0.0"),
    # ran on a 480x640 example inside a swallowed MemoryError: now refused from the spec, nothing allocated
    ({"size": [100000, 100000]}, "prepost.pre[0] (resize_normalize): size[0]: 100000 must be <= 8192"),
])
def test_compress_refuses_a_resize_the_op_cannot_run(cls, capsys, step, words):
    spec = cls / "spec.json"
    spec.write_text(json.dumps({"pre": [{"op": "resize_normalize", **step}]}))
    rc, err, out = _compress(cls, "cls.onnx", "calib.npy", str(spec), capsys)
    assert rc == 2 and len(err) == 1 and f"{spec}: {words}" in err[0], err
    assert not out.exists()


def test_compress_refuses_pad_truncate_without_max_length(cls, capsys):
    rc, err, out = _compress(cls, "cls.onnx", "calib.npy",
                             '{"pre":[{"op":"pad_truncate","padding":"max_length"}]}', capsys)
    assert rc == 2 and err == ["edgekit: error: --preprocess: prepost.pre[0] (pad_truncate): max_length: required "
                               "when padding='max_length'"], err
    assert not out.exists()


@pytest.mark.parametrize("step", [{"size": [8, 8], "crop_fraction": 0}, {"size": [0, 8]}, {"size": [8, 9000]}])
def test_spec_checker_and_op_agree_on_resize(step):
    from edgekit.prepost.image import ResizeNormalize

    with pytest.raises(PrepostError) as spec_err:
        validate_spec({"pre": [{"op": "resize_normalize", **step}]})
    with pytest.raises(PrepostError) as op_err:
        ResizeNormalize(**step)
    assert str(spec_err.value).endswith(str(op_err.value)), (spec_err.value, op_err.value)


def test_a_step_that_fails_on_the_sample_is_named(tmp_path):
    """Parameters that pass every check but cannot run (swap_rb on 2 channels) fail the fit check in one line,
    rather than being skipped as any exception was."""
    from edgekit.artifact import TensorSpec
    from edgekit.prepost.fit import check_pre_fits

    spec = {"pre": [{"op": "resize_normalize", "size": [8, 8], "mean": [1, 2], "swap_rb": True}]}
    with pytest.raises(PrepostError) as e:
        check_pre_fits(spec, [TensorSpec("x", ["N", "c", "h", "w"], "float32")], "m.onnx", "s.json")
    assert str(e.value) == "s.json: prepost.pre[0] (resize_normalize): swap_rb: needs 3 or 4 channels, the image has 2"


def test_three_channel_resize_refused_for_a_grey_model(tmp_path, capsys):
    _classifier(tmp_path / "grey.onnx", 1)
    np.save(tmp_path / "calib.npy", np.random.default_rng(1).random((16, 1, 8, 8)).astype(np.float32))
    spec = '{"pre":[{"op":"resize_normalize","size":[8,8],"mean":[120,110,100],"std":[60,50,40]}]}'
    rc, err, out = _compress(tmp_path, "grey.onnx", "calib.npy", spec, capsys)
    assert rc == 2 and err == [
        "edgekit: error: --preprocess: the pre-processing gives 'x' shape [1, 3, 8, 8] (3 channels: mean, std or "
        f"pad_value has 3 values), but {tmp_path / 'grey.onnx'} takes [N, 1, 8, 8]"], err
    assert not out.exists()
    # one mean/std value: the channel count follows the raw image, so a grey model is fed
    rc, err, out = _compress(tmp_path, "grey.onnx", "calib.npy", '{"pre":[{"op":"resize_normalize","size":[8,8]}]}',
                             capsys)
    assert rc == 0 and out.is_dir(), err


def _detector(path):
    """Outputs named boxes (cx, cy, w, h) and scores, as most detectors name them."""
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["boxes"]), helper.make_node("Sigmoid", ["s"], ["scores"])], "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 300, 4]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 300])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 300, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 300])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, str(path))


def test_nms_after_decode_boxes_reads_the_decoded_boxes(tmp_path):
    _detector(tmp_path / "det.onnx")
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0, 64, (1, 300, 2)), rng.uniform(4, 20, (1, 300, 2))], -1).astype(np.float32)
    s = rng.standard_normal((1, 300)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "det.onnx"), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"x": x, "s": s})
    names = [o.name for o in sess.get_outputs()]
    pipe = Pipeline({"post": [{"op": "decode_boxes"}, {"op": "nms", "iou_threshold": 0.5}]})
    assert pipe.describe()["post"][1]["inputs"] == ["prev", "scores"]
    got = pipe.postprocess(outs, names=names)
    corners = decode_boxes(outs[0][0])
    want = nms(corners, outs[1][0], 0.5)
    # it ran NMS on the raw cx, cy, w, h output (227 kept instead of 232) and returned those as boxes
    assert np.array_equal(got["indices"], want) and np.array_equal(got["boxes"], corners[want])
    # as the first step, nms still reads the outputs named boxes and scores
    first = Pipeline({"post": [{"op": "nms", "iou_threshold": 0.5}]}).postprocess(outs, names=names)
    assert np.array_equal(first["indices"], nms(outs[0][0], outs[1][0], 0.5))


@pytest.mark.skipif(resolve_backend("auto") != "numba", reason="the Numba kernel is what is tested")
@pytest.mark.parametrize("far", [1e4, 1e9, 3e38, -3e38])
def test_nms_kernel_exact_with_far_away_boxes(far):
    """A far box stretched the kernel's grid (20,000 boxes: 25 ms -> 4 s, benchmarks/prepost/nms_outlier.py);
    the grid now spans the bulk of the boxes, and the far ones must still be found and suppressed exactly."""
    rng = np.random.default_rng(3)
    n = 3000
    xy = rng.uniform(0, 300, (n, 2))
    wh = rng.uniform(1, 30, (n, 2))
    b = np.concatenate([xy, xy + wh], 1)
    b[:40] = [far, far, far + 5, far + 5]  # a cluster of far boxes that suppress one another
    b[40:50, 2:] = b[40:50, :2] + 1e6  # huge boxes overlap far ones only by area
    b[50:60] = b[40:50] + [[1, 1, 2, 2]]
    scores = rng.random(n)
    classes = rng.integers(0, 3, n)
    for thr in (0.1, 0.5, 0.9):
        for cl in (None, classes):
            ref = nms(b, scores, thr, classes=cl, backend="numpy")
            assert np.array_equal(nms(b, scores, thr, classes=cl, backend="numba"), ref), (far, thr)


@pytest.mark.parametrize("text", ["[]", "0", "false", '""', "null"])
def test_prepost_check_refuses_what_compress_refuses(tmp_path, capsys, text):
    rc = run_cli(["prepost", "check", text])
    err = capsys.readouterr().err
    assert rc == 2 and "SPEC: prepost: expected an object with 'pre' and/or 'post' lists" in err, err
    f = tmp_path / "s.json"
    f.write_text(text)
    assert run_cli(["prepost", "check", str(f)]) == 2
    assert f"{f}: prepost: expected an object" in capsys.readouterr().err


def test_bad_inline_spec_in_recipe_names_the_recipe(cls, capsys):
    recipe = cls / "bad.toml"
    spec = json.dumps({"post": [{"op": "softmax_topk", "k": 0}]})
    recipe.write_text(f'model = "{cls / "cls.onnx"}"\noutput = "{cls / "out"}"\ncalib = "{cls / "calib.npy"}"\n'
                      f'preprocess = {json.dumps(spec)}\n\n[quantize]\nmode = "none"\n\n[profile]\nenabled = false\n')
    rc = run_cli(["compress", "--config", str(recipe)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("edgekit: error")]
    assert rc == 2 and err == [f"edgekit: error: {recipe}: preprocess: prepost.post[0] (softmax_topk): k: 0 must be "
                               ">= 1"], err
    assert not (cls / "out").exists()


def test_inline_spec_in_recipe_that_does_not_fit_the_model_names_the_recipe(cls, capsys):
    # valid on its own, found wrong only once the model is loaded: it said '--preprocess: ...', a flag the
    # user never passed
    recipe = cls / "fit.toml"
    spec = json.dumps({"pre": [{"op": "resize_normalize", "size": [5, 5]}]})
    recipe.write_text(f'model = "{cls / "cls.onnx"}"\noutput = "{cls / "out"}"\ncalib = "{cls / "calib.npy"}"\n'
                      f'preprocess = {json.dumps(spec)}\n\n[quantize]\nmode = "none"\n\n[profile]\nenabled = false\n')
    rc = run_cli(["compress", "--config", str(recipe)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("edgekit: error")]
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"edgekit: error: {recipe}: preprocess: "), err
    assert "[5, 5]" in err[0] or "5, 5" in err[0], err
    assert not (cls / "out").exists()
    # the same spec on the command line still names the flag
    rc, err, _ = _compress(cls, "cls.onnx", "calib.npy", spec, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("edgekit: error: --preprocess: "), err
