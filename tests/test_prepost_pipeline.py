"""edgekit.prepost pipelines from manifest specs, warm-up, the CLI, and life without Numba."""
import ast
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit import prepost as pp
from edgekit.cli import cli
from edgekit.prepost import Pipeline, PrepostError, validate_spec

PKG = Path(pp.__file__).resolve().parent
IMAGENET = {"op": "resize_normalize", "size": [224, 224], "mean": [123.675, 116.28, 103.53],
            "std": [58.395, 57.12, 57.375], "layout": "NCHW"}


def test_digits_zoo_spec_reproduces_the_training_preprocessing():
    from sklearn.datasets import load_digits

    from edgekit.zoo import digits_cnn

    images = load_digits().images[:40]
    want = digits_cnn.preprocess(images)  # torch bilinear upsampling + normalisation
    u8 = np.clip(np.rint(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    for backend in ("numba", "numpy"):
        pipe = Pipeline.from_spec(json.loads(json.dumps(digits_cnn.PREPOST)), backend=backend)
        got = pipe.preprocess(u8[:, :, :, None])  # a batch of grey NHWC images
        assert got.shape == want.shape == (40, 1, 32, 32)
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert pipe.preprocess(u8[0]).shape == (1, 1, 32, 32)  # one HW image


def test_classification_pipeline_end_to_end_matches_the_ops():
    spec = {"pre": [IMAGENET], "post": [{"op": "softmax_topk", "k": 5}]}
    pipe = Pipeline.from_spec(json.dumps(spec))
    img = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    x = pipe.preprocess(img)
    np.testing.assert_array_equal(x, pp.resize_normalize(img, (224, 224), IMAGENET["mean"], IMAGENET["std"]))
    logits = np.random.default_rng(1).normal(size=(1, 1000)).astype(np.float32)
    out = pipe.postprocess([logits], names=["logits"])
    probs, idx = pp.softmax_topk(logits, 5)
    np.testing.assert_array_equal(out["indices"], idx)
    np.testing.assert_array_equal(out["probs"], probs)
    ref = Pipeline.from_spec(spec, backend="numpy")
    np.testing.assert_allclose(ref.preprocess(img), x, atol=1e-4)
    np.testing.assert_array_equal(ref.postprocess({"logits": logits})["indices"], idx)


def test_detection_pipeline_reads_named_outputs():
    spec = {"pre": [{"op": "resize_normalize", "size": [64, 64], "mode": "letterbox", "swap_rb": True}],
            "post": [{"op": "decode_boxes", "inputs": ["boxes"]},
                     {"op": "nms", "inputs": ["prev", "scores", "classes"], "iou_threshold": 0.45,
                      "max_detections": 20, "score_threshold": 0.1}]}
    validate_spec(spec)
    rng = np.random.default_rng(0)
    cxcywh = np.concatenate([rng.uniform(0, 64, (1, 300, 2)), rng.uniform(4, 20, (1, 300, 2))], -1).astype(np.float32)
    scores = rng.random((1, 300)).astype(np.float32)
    classes = rng.integers(0, 3, (1, 300))
    outputs = {"boxes": cxcywh, "scores": scores, "classes": classes}
    res = {be: Pipeline.from_spec(spec, backend=be).postprocess(outputs) for be in ("numba", "numpy")}
    np.testing.assert_array_equal(res["numba"]["indices"], res["numpy"]["indices"])
    want = pp.nms(pp.decode_boxes(cxcywh[0]), scores[0], 0.45, 20, classes[0], score_threshold=0.1)
    np.testing.assert_array_equal(res["numba"]["indices"], want)
    assert res["numba"]["boxes"].shape == (len(want), 4) and len(want) <= 20
    np.testing.assert_array_equal(res["numba"]["classes"], classes[0][want])


def test_text_pipeline_pools_with_the_mask_from_preprocessing():
    spec = {"pre": [{"op": "pad_truncate", "max_length": 8}], "post": [{"op": "mean_pool_l2"}]}
    pipe = Pipeline.from_spec(spec)
    feeds = pipe.preprocess([[101, 5, 6, 102], [101, 7, 8, 9, 10, 11, 12, 13, 14, 102]])
    assert feeds["input_ids"].shape == feeds["attention_mask"].shape == (2, 8)
    hidden = np.random.default_rng(0).normal(size=(2, 8, 32)).astype(np.float32)
    emb = pipe.postprocess([hidden], feeds=feeds)
    np.testing.assert_allclose(emb, pp.mean_pool_l2(hidden, feeds["attention_mask"]), rtol=1e-6)
    with pytest.raises(PrepostError, match=r"prepost.post\[0\] \(mean_pool_l2\): input 'attention_mask' not found"):
        pipe.postprocess([hidden])


def test_padded_token_rows_mask_their_padding():
    # a rectangular array is how token rows reach the device runner: its trailing pad_id run was read as
    # tokens (attention mask 1), so every sentence shorter than the array pooled padding into its embedding
    pipe = Pipeline.from_spec({"pre": [{"op": "pad_truncate", "pad_id": 0, "padding": "max_length", "max_length": 6}]})
    rows = np.array([[101, 5, 6, 102, 0, 0], [101, 7, 0, 8, 102, 0]])
    f = pipe.preprocess(rows)
    assert f["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0]]  # an inner 0 is a token
    assert f["input_ids"].tolist() == rows.tolist()
    assert pp.pad_truncate([[101, 5, 0]], pad_id=0)[1].tolist() == [[1, 1, 1]]  # a list is taken as given
    # the inverse the profiler uses to time the step on the run's real samples
    assert [r.tolist() for r in pipe.raw_from_inputs(f)] == [[101, 5, 6, 102], [101, 7, 0, 8, 102]]


@pytest.mark.parametrize("spec,msg", [
    ([], "prepost: expected an object"),
    ({"pre": [], "postprocess": []}, "prepost: unknown key 'postprocess'; valid keys: pre, post"),
    ({"pre": {"op": "resize_normalize"}}, "prepost.pre: expected a list of steps"),
    ({"pre": [{"op": "resize"}]}, "prepost.pre[0]: unknown op 'resize'; valid ops: argmax_segmentation"),
    ({"pre": ["resize_normalize"]}, "prepost.pre[0]: expected an object with an 'op' key"),
    ({"pre": [{"op": "resize_normalize", "size": [2, 2], "sise": 1}],
      "post": []}, "prepost.pre[0] (resize_normalize): unknown key 'sise'; valid keys: crop_fraction, layout"),
    ({"pre": [{"op": "resize_normalize"}]}, "prepost.pre[0] (resize_normalize): missing required key 'size'"),
    ({"pre": [{"op": "resize_normalize", "size": [224]}]}, "(resize_normalize): size: expected [height, width]"),
    ({"pre": [{"op": "resize_normalize", "size": [8, 8], "std": [0]}]}, "std: must be non-zero"),
    ({"pre": [{"op": "resize_normalize", "size": [8, 8], "layout": "CHW"}]}, "layout: 'CHW' is not one of NCHW, NHWC"),
    ({"post": [{"op": "softmax_topk", "k": 2.5}]}, "prepost.post[0] (softmax_topk): k: expected an integer"),
    ({"post": [{"op": "nms", "iou_threshold": 2}]}, "(nms): iou_threshold: 2 must be <= 1.0"),
    ({"post": [{"op": "nms", "inputs": ["boxes"]}]}, "(nms): 'inputs' has 1 entries; nms reads 2 to 3"),
    ({"post": [{"op": "softmax_topk", "inputs": "logits"}]}, "'inputs' must be a list"),
    ({"pre": [{"op": "softmax_topk"}]}, "prepost.pre[0] (softmax_topk): is a post-processing op, not allowed in 'pre'"),
    ({"post": [{"op": "dequantize"}]}, "(dequantize): missing required key 'scale'"),
    ({"pre": [{"op": "pad_truncate", "padding": "max"}]}, "padding: 'max' is not one of longest, max_length"),
    # passed `prepost check`, compress, bundle and flash, then failed on every image on the device
    ({"pre": [{"op": "resize_normalize", "size": [8, 8], "mean": [0, 0], "std": [255, 255, 255]}]},
     "(resize_normalize): mean, std and pad_value must each have 1 value or one per channel, the same number: "
     "got mean 2, std 3, pad_value 1"),
])
def test_validate_spec_names_the_bad_step_and_key(spec, msg):
    with pytest.raises(PrepostError) as e:
        validate_spec(spec)
    assert msg in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


def test_registry_ops_all_build_describe_and_warm_up():
    spec = {"pre": [IMAGENET], "post": [{"op": "softmax_topk", "k": 3}]}
    pipe = Pipeline.from_spec(spec, backend="auto")
    w = pipe.warmup()
    assert w["backend"] == "numba" and w["compile_s"] >= 0 and w["first_call_s"] > 0
    assert set(w["kernels"]) == {"resize_normalize", "softmax_topk", "softmax_topk_f64"}
    # "partial": one of a kernel's two builds (serial, parallel) came from the cache another process filled
    assert all(k["compiled"] and k["cache"] in ("hit", "miss", "partial") for k in w["kernels"].values())
    d = pipe.describe()
    json.dumps(d)
    assert d["backend"] == "numba" and d["pre"][0]["op"] == "resize_normalize" and d["post"][0]["k"] == 3
    assert Pipeline.from_spec(spec, backend="numpy").warmup()["kernels"] == {}
    res = pp.warmup_all(ops=list(pp.OPS))  # every registered op has an example and runs
    assert set(res["ops"]) == set(pp.OPS)
    for name, o in res["ops"].items():
        assert o["first_call_s"] > 0, name
        assert set(o["kernels"]) == set(pp.OPS[name].kernels), name
    assert set(pp.kernel_names()) == {k for d in pp.OPS.values() for k in d.kernels}


def test_cli_warmup_json_and_check(tmp_path):
    r = CliRunner().invoke(cli, ["prepost", "warmup", "--json", "--op", "softmax_topk", "--op", "nms"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["backend"] == "numba" and set(res["ops"]) == {"softmax_topk", "nms"}
    assert res["ops"]["nms"]["kernels"]["nms"]["compiled"] is True
    spec = tmp_path / "prepost.json"
    spec.write_text(json.dumps({"pre": [IMAGENET]}))
    r = CliRunner().invoke(cli, ["prepost", "check", str(spec), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["pre"][0]["size"] == [224, 224]
    spec.write_text(json.dumps({"pre": [{"op": "resize_normalize", "size": [224, 224], "meen": 0}]}))
    r = subprocess.run([sys.executable, "-m", "edgekit", "prepost", "check", str(spec)], capture_output=True,
                       text=True, cwd=PKG.parents[1], timeout=120)
    assert r.returncode == 2
    assert f"{spec}: prepost.pre[0] (resize_normalize): unknown key 'meen'" in r.stderr


def test_cold_cache_compiles_and_warm_cache_loads(tmp_path):
    res = pp.cold_and_warm(cache_dir=str(tmp_path / "numba"), ops=["decode_boxes"])
    cold, warm = (res[k]["ops"]["decode_boxes"]["kernels"]["decode_boxes"] for k in ("cold", "warm"))
    assert cold["cache"] == "miss" and warm["cache"] == "hit"
    assert str(tmp_path) in warm["cache_path"]


def test_package_is_self_contained():
    """Only numpy, numba, the standard library and relative imports: it ships alone to devices."""
    allowed = {"numpy", "numba"} | set(sys.stdlib_module_names)
    for f in PKG.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module]
            else:
                continue
            for m in mods:
                assert m.split(".")[0] in allowed, f"{f.name} imports {m}"


def test_without_numba_everything_runs_on_numpy(tmp_path):
    # a bundle-like copy: edgekit/__init__.py stub + edgekit/prepost, with numba/torch/click unimportable
    shutil.copytree(PKG, tmp_path / "edgekit" / "prepost", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "edgekit" / "__init__.py").write_text("")
    script = textwrap.dedent("""
        import sys, warnings, json
        for m in ("numba", "torch", "click", "onnx", "onnxruntime"):
            sys.modules[m] = None
        import numpy as np
        from edgekit import prepost as pp
        assert not pp.HAVE_NUMBA and pp.resolve_backend("auto") == "numpy"
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            assert pp.resolve_backend("numba") == "numpy"
        assert w and issubclass(w[0].category, pp.PrepostFallbackWarning)
        try:
            pp.resolve_backend("numba", strict=True)
            raise SystemExit("strict did not raise")
        except pp.PrepostError as e:
            assert "numba was required but is unavailable" in str(e)
        img = np.zeros((40, 60, 3), np.uint8)
        pipe = pp.Pipeline.from_spec({"pre": [{"op": "resize_normalize", "size": [8, 8]}],
                                      "post": [{"op": "softmax_topk", "k": 2}]})
        x = pipe.preprocess(img)
        out = pipe.postprocess([np.arange(10, dtype=np.float32)[None]])
        keep = pp.nms(np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.float32), np.array([0.2, 0.9], np.float32), 0.5,
                      backend="numba")
        d = pipe.describe()
        print(json.dumps({"shape": x.shape, "idx": out["indices"].tolist(), "keep": keep.tolist(),
                          "backend": d["backend"], "reason": d.get("fallback_reason", ""),
                          "warm": pipe.warmup()["backend"]}))
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["shape"] == [1, 3, 8, 8] and got["idx"] == [[9, 8]] and got["keep"] == [1]
    assert got["backend"] == got["warm"] == "numpy" and "numba" in got["reason"]


def test_profiler_times_a_real_pipeline_next_to_the_model(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.profile import profile_prepost

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(192, 10)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    pipe = Pipeline.from_spec({"pre": [dict(IMAGENET, size=[8, 8])], "post": [{"op": "softmax_topk", "k": 3}]})
    assert pipe.example_input().shape == (480, 640, 3)
    res = profile_prepost(str(path), pipe, warmup=2, min_runs=5, min_seconds=0.05, max_seconds=5)
    assert res["status"] == "ok", res
    assert res["pre"]["p50_ms"] > 0 and res["post"]["p50_ms"] > 0 and res["model"]["p50_ms"] > 0
    assert res["e2e"]["p50_ms"] >= res["model"]["p50_ms"]
    assert res["spec"]["post"][0]["op"] == "softmax_topk"
