"""The fallback also tries the model's input convs in FP32 (an INT8 stem is often slower than FP32)."""
import numpy as np
from onnx import TensorProto, helper

from edgekit.config import QuantizeConfig
from edgekit.dataset import Dataset
from edgekit.quant import stem
from edgekit.stages import quantize as stage
from test_quant import _ctx, _save


def _model(nodes, inits, x_shape, path):
    return _save(nodes, inits, helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape),
                 helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10]), path)


def _fallback_trials(tmp_path, monkeypatch, in_ch) -> dict:
    from edgekit.quant import tuning

    # this model is too small for INT8 to be reliably faster or slower: the search's rule "stop growing once
    # a candidate is no longer faster" would end it at random, so no candidate counts as faster here
    monkeypatch.setattr(tuning, "_faster", lambda t: False)
    p = cnn(tmp_path / "cnn.fp32.onnx", in_ch=in_ch)
    data = Dataset({"x": np.random.default_rng(3).uniform(size=(160, in_ch, 12, 12)).astype(np.float32)})
    parent, ctx = _ctx(tmp_path, p, data, tol="3%")
    cfg = QuantizeConfig(calibrate_method="minmax", per_channel=False, activation_type="u8", weight_type="s8",
                         weight_rounding="nearest", bias_correction="off", max_trials=8)
    stage.run(parent, ctx, cfg)
    return ctx.manifest.quantization[parent.path]


def cnn(path, in_ch=3, outlier=True):
    """Normalise -> stem conv (in_ch -> 8) -> conv a (8 -> 16) -> conv b (16 -> 16) -> pool -> fc.

    With outlier, conv a scales its output channel 0 by 1000 and conv b divides the matching input by
    1000: the FP32 function is unchanged, but quantizing that tensor per-tensor crushes its other 15
    channels, so the fallback must keep layers in FP32, none of them the stem."""
    r = np.random.default_rng(7)
    wa, ba = (r.normal(size=(16, 8, 3, 3)) * 0.2).astype(np.float32), r.normal(size=16).astype(np.float32)
    wb = (r.normal(size=(16, 16, 3, 3)) * 0.2).astype(np.float32)
    if outlier:
        wa[0] *= 1000.0
        ba[0] = abs(ba[0]) * 1000.0
        wb[:, 0] /= 1000.0
    inits = {"mean": np.full((1, in_ch, 1, 1), 0.5, np.float32), "std": np.full((1, in_ch, 1, 1), 0.25, np.float32),
             "ws": (r.normal(size=(8, in_ch, 3, 3)) * 0.4).astype(np.float32), "bs": r.normal(size=8).astype(np.float32),
             "wa": wa, "ba": ba, "wb": wb, "bb": r.normal(size=16).astype(np.float32),
             "wf": (r.normal(size=(10, 16)) * 0.3).astype(np.float32), "bf": np.zeros(10, np.float32)}
    nodes = [helper.make_node("Sub", ["x", "mean"], ["xs"], "sub"),
             helper.make_node("Div", ["xs", "std"], ["xn"], "div"),
             helper.make_node("Conv", ["xn", "ws", "bs"], ["cs"], "stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["cs"], ["rs"], "stem_relu"),
             helper.make_node("Conv", ["rs", "wa", "ba"], ["ca"], "conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["ca"], ["ra"], "relu_a"),
             helper.make_node("Conv", ["ra", "wb", "bb"], ["cb"], "conv_b", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["cb"], ["rb"], "relu_b"),
             helper.make_node("GlobalAveragePool", ["rb"], ["p"], "gap"),
             helper.make_node("Flatten", ["p"], ["f"], "flat"),
             helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], "fc", transB=1)]
    return _model(nodes, inits, ["n", in_ch, 12, 12], path)


def test_input_convs_are_the_shallow_convs_the_image_reaches(tmp_path):
    assert stem.input_convs(cnn(tmp_path / "rgb.onnx")) == ["stem"]  # through Sub and Div, not conv_a
    assert stem.input_convs(cnn(tmp_path / "grey.onnx", in_ch=1)) == ["stem"]
    assert stem.input_convs(cnn(tmp_path / "deep.onnx", in_ch=16)) == []  # not an image: INT8 pays there


def test_a_conv_after_another_conv_is_not_a_stem_whatever_its_depth(tmp_path):
    r = np.random.default_rng(1)
    inits = {"w1": r.normal(size=(3, 3, 1, 1)).astype(np.float32), "w2": r.normal(size=(10, 3, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], "first"),
             helper.make_node("Conv", ["c1", "w2"], ["c2"], "second"),
             helper.make_node("GlobalAveragePool", ["c2"], ["p"], "gap"),
             helper.make_node("Flatten", ["p"], ["y"], "flat")]
    assert stem.input_convs(_model(nodes, inits, ["n", 3, 8, 8], tmp_path / "m.onnx")) == ["first"]


def test_the_fallback_also_tries_its_passing_set_with_the_stem_in_fp32(tmp_path, monkeypatch):
    rec = _fallback_trials(tmp_path, monkeypatch, in_ch=3)
    assert not rec["trials"][0]["passed"], rec["trials"][0]  # all-INT8 misses: the fallback runs
    fb = [t for t in rec["trials"] if t["phase"] == "fallback"]
    passing = [set(t["fp32_nodes"]) for t in fb if t["passed"] and "stem" not in t["fp32_nodes"]]
    assert passing, fb  # the search's own answer leaves the stem in INT8
    with_stem = [set(t["fp32_nodes"]) for t in fb if "stem" in t["fp32_nodes"]]
    assert min(passing, key=len) | {"stem", "stem_relu"} in with_stem, fb
    assert any("input conv(s) stem in FP32" in n for n in rec["notes"]), rec["notes"]


def test_no_stem_trial_when_the_model_has_no_image_input(tmp_path, monkeypatch):
    rec = _fallback_trials(tmp_path, monkeypatch, in_ch=16)
    assert any(t["passed"] for t in rec["trials"] if t["phase"] == "fallback"), rec["trials"]
    assert not any("stem" in t["fp32_nodes"] for t in rec["trials"]), rec["trials"]
    assert not any("input conv" in n for n in rec["notes"]), rec["notes"]
