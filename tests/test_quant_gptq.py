"""GPTQ weight rounding: im2col matches onnxruntime's convolutions, the rounded weights survive
onnxruntime's quantizer bit for bit, and the rounding lowers the output error it is meant to."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.config import QuantizeConfig
from edgekit.dataset import Dataset
from edgekit.errors import ConfigError
from edgekit.onnxutil import run_batches, session
from edgekit.quant import gptq, static
from edgekit.quant.spec import QuantSpec
from edgekit.stages import quantize as stage

from test_quant import _ctx, conv_model


def _layers_model(path):
    """One of each layer kind GPTQ covers, every node output exposed so a test can read it."""
    r = np.random.default_rng(7)
    w = {
        "wg": r.normal(size=(6, 2, 3, 3)).astype(np.float32),     # grouped, dilated, asymmetric pads
        "ws": r.normal(size=(5, 6, 3, 3)).astype(np.float32),     # SAME_UPPER, stride 2
        "w1d": r.normal(size=(4, 5, 3)).astype(np.float32),       # Conv1d on a reshaped tensor
        "wm": r.normal(size=(4, 3)).astype(np.float32),           # MatMul (K, N)
        "wt": r.normal(size=(4, 3)).astype(np.float32),           # Gemm transB=0
        "wb": r.normal(size=(2, 3)).astype(np.float32),           # Gemm transB=1
        "shape1d": np.array([0, 5, -1], np.int64), "shape2d": np.array([-1, 4], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "wg"], ["cg"], "conv_g", group=3, dilations=[2, 2], pads=[0, 1, 2, 1]),
        helper.make_node("Conv", ["cg", "ws"], ["cs"], "conv_s", auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Reshape", ["cs", "shape1d"], ["r1"], "to1d"),
        helper.make_node("Conv", ["r1", "w1d"], ["c1"], "conv_1d", pads=[1, 1]),
        helper.make_node("Transpose", ["c1"], ["t1"], "tr", perm=[0, 2, 1]),
        helper.make_node("Reshape", ["t1", "shape2d"], ["f"], "flat"),
        helper.make_node("MatMul", ["f", "wm"], ["mm"], "matmul"),
        helper.make_node("Gemm", ["f", "wt"], ["gt"], "gemm_t"),
        helper.make_node("Gemm", ["gt", "wb"], ["y"], "gemm_b", transB=1),
    ]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("cg", "cs", "r1", "c1", "f", "mm", "gt")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6, 11, 9])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)] + outs,
                          [numpy_helper.from_array(v, k) for k, v in w.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def test_columns_reproduce_each_layer_output(tmp_path):
    """rows(W) @ columns(x) must equal the layer's output as onnxruntime computes it."""
    p = _layers_model(tmp_path / "layers.onnx")
    m = onnx.load(str(p))
    layers = {l.node: l for l in gptq.find_layers(m)}
    assert set(layers) == {"conv_g", "conv_s", "conv_1d", "matmul", "gemm_t", "gemm_b"}
    x = np.random.default_rng(0).normal(size=(2, 6, 11, 9)).astype(np.float32)
    sess = session(p)
    res = {"x": x, **dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))}
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    out_of = {"conv_g": "cg", "conv_s": "cs", "conv_1d": "c1", "matmul": "mm", "gemm_t": "gt", "gemm_b": "y"}
    rng = np.random.default_rng(0)
    for name, layer in layers.items():
        w = init[layer.weight]
        cols = gptq._columns(layer, res[layer.x], w.shape, rng).numpy()
        rows = gptq._rows(w, layer)
        y = res[out_of[name]]
        if layer.op_type == "Conv":
            groups, og = cols.shape[0], rows.shape[0] // cols.shape[0]
            b = y.shape[0]
            for g in range(groups):
                want = y[:, g * og:(g + 1) * og].reshape(b, og, -1).transpose(1, 0, 2).reshape(og, -1)
                np.testing.assert_allclose(rows[g * og:(g + 1) * og] @ cols[g], want, rtol=1e-4, atol=1e-4,
                                           err_msg=name)
        else:
            np.testing.assert_allclose(rows @ cols[0], y.T, rtol=1e-4, atol=1e-4, err_msg=name)


def _int8_weights(qdq_path) -> dict:
    """{float weight name: dequantized INT8 weight} read from a QDQ model."""
    m = onnx.load(str(qdq_path))
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    out = {}
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and init.get(n.input[0]) is not None and init[n.input[0]].dtype == np.int8:
            q, s = init[n.input[0]].astype(np.float64), init[n.input[1]].astype(np.float64)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if s.ndim:
                shape = [1] * q.ndim
                shape[axis] = -1
                s = s.reshape(shape)
            out[n.output[0]] = q * s
    return out


@pytest.mark.parametrize("per_channel", [True, False])
def test_rounded_weights_survive_onnxruntime_exactly(tmp_path, per_channel):
    p = conv_model(tmp_path / "conv.onnx")
    prep = tmp_path / "prep.onnx"
    static.preprocess(p, prep)
    data = Dataset({"x": np.random.default_rng(1).normal(size=(64, 1, 16, 16)).astype(np.float32)})
    info = gptq.apply(prep, tmp_path / "g.onnx", data, ["x"], per_channel=per_channel, limit=64)
    assert info["layers"] == 3
    rounded = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "g.onnx")).graph.initializer}
    spec = QuantSpec(per_channel=per_channel)
    static.quantize(tmp_path / "g.onnx", tmp_path / "q.onnx", data, spec, calib_size=64, input_names=["x"],
                    use_cache=False, overrides=info["overrides"])
    deq = _int8_weights(tmp_path / "q.onnx")
    matched = 0
    for name, w in deq.items():
        src = name.replace("_DequantizeLinear_Output", "")
        if src in rounded and rounded[src].ndim >= 2:
            np.testing.assert_allclose(w, rounded[src], rtol=0, atol=1e-6 * np.abs(rounded[src]).max(), err_msg=src)
            matched += 1
    assert matched == 3, sorted(deq)
    scales = {len(o) for o in info["overrides"].values()}
    assert scales == ({1} if not per_channel else {8, 16, 10})


def test_gptq_lowers_the_output_error_of_rounding(tmp_path):
    """On the calibration inputs, GPTQ-rounded weights move the outputs less than rounding to nearest."""
    p = conv_model(tmp_path / "conv.onnx")
    prep = tmp_path / "prep.onnx"
    static.preprocess(p, prep)
    data = Dataset({"x": np.random.default_rng(2).normal(size=(96, 1, 16, 16)).astype(np.float32)})
    info = gptq.apply(prep, tmp_path / "g.onnx", data, ["x"], per_channel=True, limit=96)
    assert info["sqnr_gain_db_median"] > 0.5
    m = onnx.load(str(prep))
    for i in m.graph.initializer:  # the same grid, rounded to nearest
        w = numpy_helper.to_array(i)
        if w.ndim >= 2:
            s = np.abs(w.reshape(w.shape[0], -1)).max(1) / 127 if i.name != "wf" else np.abs(w).max(1) / 127
            s = s.reshape([-1] + [1] * (w.ndim - 1))
            i.CopyFrom(numpy_helper.from_array((np.round(w / s) * s).astype(np.float32), i.name))
    onnx.save(m, str(tmp_path / "rtn.onnx"))
    ref = run_batches(prep, data)[0]
    err_g = np.linalg.norm(run_batches(tmp_path / "g.onnx", data)[0] - ref)
    err_r = np.linalg.norm(run_batches(tmp_path / "rtn.onnx", data)[0] - ref)
    assert err_g < 0.8 * err_r, (err_g, err_r)


def test_subsampled_columns_are_the_same_positions_of_every_sample(monkeypatch):
    """Past MAX_ROWS_PER_SAMPLE positions a conv's columns are a random subset, the same one for each
    sample of the batch, and each kept column is the im2col column of that position."""
    import torch
    import torch.nn.functional as F

    monkeypatch.setattr(gptq, "MAX_ROWS_PER_SAMPLE", 20)
    x = np.random.default_rng(0).normal(size=(3, 4, 9, 8)).astype(np.float32)
    got = gptq._conv_columns(x, (6, 2, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}, np.random.default_rng(1))
    assert got.shape == (2, 18, 3 * 20)
    full = F.unfold(torch.from_numpy(x), [3, 3], padding=1).view(3, 2, 18, 72)  # (sample, group, K, position)
    per_sample = got.view(2, 18, 3, 20)
    picks = [int(torch.nonzero((full[0] - per_sample[:, :, 0, j:j + 1]).abs().sum(dim=(0, 1)) == 0)[0])
             for j in range(20)]
    assert len(set(picks)) == 20  # 20 distinct positions, read off sample 0
    for s_ in range(3):
        assert torch.equal(per_sample[:, :, s_, :], full[s_][..., picks])


def _gptq_column_by_column(W, scale, H, qmin, qmax, damp=gptq.DAMP):
    """The GPTQ recurrence as the paper states it: each column's error updates every later column at once."""
    W, H = W.astype(np.float64).copy(), H.astype(np.float64).copy()
    H += damp * np.mean(np.diag(H)) * np.eye(len(H))
    perm = np.argsort(-np.diag(H), kind="stable")
    W, H = W[:, perm], H[perm][:, perm]
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    Q = np.zeros_like(W)
    for i in range(W.shape[1]):
        Q[:, i] = np.clip(np.round(W[:, i] / scale), qmin, qmax)
        err = (W[:, i] - Q[:, i] * scale) / U[i, i]
        W[:, i + 1:] -= np.outer(err, U[i, i + 1:])
    return Q[:, np.argsort(perm)]


@pytest.mark.parametrize("k", [7, gptq.BLOCK, 2 * gptq.BLOCK + 45])
def test_blocked_rounding_picks_the_integers_of_the_column_by_column_recurrence(k):
    """Lazy batch updates only reorder the sums: the integers are those of the plain recurrence, across
    block edges too (k spans 1, exactly 1 and 3 partial blocks)."""
    import torch

    r = np.random.default_rng(k)
    W = r.normal(scale=0.05, size=(24, k))
    X = r.normal(size=(k, 2 * k + 5)) * r.uniform(0.2, 3.0, size=(k, 1))  # distinct diagonals: one order
    H = X @ X.T
    scale = np.abs(W).max(axis=1) / 127
    got = gptq.gptq_round(W, scale, torch.as_tensor(H), -127, 127)
    want = _gptq_column_by_column(W, scale, H, -127, 127)
    assert np.array_equal(got, want), int((got != want).sum())
    assert not np.array_equal(got, np.clip(np.round(W / scale[:, None]), -127, 127))  # it compensated


def test_a_hessian_that_is_not_positive_definite_rounds_to_nearest():
    import torch

    W = np.array([[0.3, -0.71], [0.05, 0.2]])
    scale = np.array([0.1, 0.1])
    H = torch.tensor([[1.0, 2.0], [2.0, 1.0]])  # eigenvalues 3 and -1: no Cholesky factor, even dampened
    assert np.array_equal(gptq.gptq_round(W, scale, H, -127, 127), np.round(W / 0.1))


def test_the_recorded_gain_is_the_hessian_weighted_error_ratio_group_by_group():
    """_gain_db: 10 log10 of sum_g tr(D_g H_g D_gᵀ), rounding to nearest over the given rounding, with each
    group's rows measured against its own Hessian."""
    import torch

    r = np.random.default_rng(3)
    groups, per, k = 3, 2, 5
    rows = r.normal(size=(groups * per, k))
    Xs = [r.normal(size=(k, 11)) for _ in range(groups)]
    H = torch.as_tensor(np.stack([x @ x.T for x in Xs]))
    scale = np.abs(rows).max(axis=1) / 7
    new = rows + r.normal(scale=0.01, size=rows.shape)
    rtn = np.clip(np.round(rows / scale[:, None]), -7, 7) * scale[:, None]

    def err(r_):
        return sum(float(np.sum(((rows - r_)[g * per:(g + 1) * per] @ Xs[g]) ** 2)) for g in range(groups))

    want = 10 * np.log10(err(rtn) / err(new))
    assert gptq._gain_db(rows, new, scale, H, -7, 7, per) == pytest.approx(want, rel=1e-9)


def _gptq_weights(tmp_path, name):
    p = conv_model(tmp_path / "conv.onnx")
    prep = tmp_path / "prep.onnx"
    static.preprocess(p, prep)
    data = Dataset({"x": np.random.default_rng(2).normal(size=(40, 1, 16, 16)).astype(np.float32)})
    info = gptq.apply(prep, tmp_path / name, data, ["x"], per_channel=True, limit=40)
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / name)).graph.initializer}
    return info, weights, {i.name: numpy_helper.to_array(i) for i in onnx.load(str(prep)).graph.initializer}


def test_hessians_measured_in_several_passes_round_to_the_same_weights(tmp_path, monkeypatch):
    """A Hessian budget too small for the whole model splits it into passes over the data; each pass
    measures the unrounded model, so the weights are those of one pass."""
    info1, one, _ = _gptq_weights(tmp_path, "one.onnx")
    m = onnx.load(str(tmp_path / "prep.onnx"))
    layers = gptq.find_layers(m)
    shapes = {i.name: tuple(i.dims) for i in m.graph.initializer}
    monkeypatch.setattr(gptq, "HESSIAN_BYTES", 72 * 72 * 8)  # conv2's alone (K = 8 x 3 x 3)
    assert [[l.node for l in run] for run in gptq._passes(layers, shapes)] == [["conv1"], ["conv2"], ["fc"]]
    info3, three, _ = _gptq_weights(tmp_path, "three.onnx")
    assert info1["overrides"] == info3["overrides"] and info1["layers"] == info3["layers"] == 3
    for k in one:
        assert np.array_equal(one[k], three[k]), k


def test_layers_wider_than_the_column_cap_keep_round_to_nearest(tmp_path, monkeypatch):
    """A layer whose Hessian would be too large to hold and factorise is left to onnxruntime's rounding:
    its FP32 weights untouched, no range override, and the summary says how many."""
    monkeypatch.setattr(gptq, "MAX_COLUMNS", 16)  # conv1 has 9 columns, fc 16, conv2 72
    info, w, orig = _gptq_weights(tmp_path, "capped.onnx")
    assert info["layers"] == 2 and info["too_wide"] == 1
    assert set(info["overrides"]) == {"w1", "wf"}
    assert np.array_equal(w["w2"], orig["w2"])
    assert not np.array_equal(w["w1"], orig["w1"]) and not np.array_equal(w["wf"], orig["wf"])
    assert "1 layer(s) with more than 16 input columns kept round-to-nearest" in gptq.summary(info)


def test_tuning_tries_gptq_and_records_it(tmp_path):
    p = conv_model(tmp_path / "conv.fp32.onnx")
    data = Dataset({"x": np.random.default_rng(3).normal(size=(64, 1, 16, 16)).astype(np.float32)})
    parent, ctx = _ctx(tmp_path, p, data, tol="5%")
    stage.run(parent, ctx, QuantizeConfig(max_trials=3, speed_gate=False))
    rec = ctx.manifest.quantization[parent.path]
    names = [t["name"] for t in rec["trials"]]
    # the first is the ISA-aware default (its name ends in 'reduce-range' on an AVX2-only host)
    assert rec["trials"][0]["config"]["weight_rounding"] == "nearest" and names[1].endswith("gptq"), names
    assert rec["trials"][1]["config"]["weight_rounding"] == "gptq"
    assert any("GPTQ weight rounding on 3 layers" in n for n in rec["notes"]), rec["notes"]
    # pinned to nearest: no GPTQ trial at all
    parent, ctx = _ctx(tmp_path, p, data, tol="5%")
    stage.run(parent, ctx, QuantizeConfig(max_trials=3, speed_gate=False, weight_rounding="nearest"))
    assert not any("gptq" in t["name"] for t in ctx.manifest.quantization[parent.path]["trials"])


def test_bad_weight_rounding_is_a_config_error():
    with pytest.raises(ConfigError, match="weight_rounding 'gptqq'.*gptq"):
        QuantizeConfig(weight_rounding="gptqq")


def _tuner(tmp_path, prep, data):
    from edgekit.config import Tolerance
    from edgekit.quant.tuning import Tuner

    return Tuner(prep_path=prep, fp32_path=prep, workdir=tmp_path, calib=data, input_names=["x"], evaluate=None,
                 reference=1.0, tolerance=Tolerance.parse("1%"), target=None, feeds={}, calib_size=64, max_trials=4)


def test_layers_left_in_fp32_get_their_original_weights_back(tmp_path):
    p = conv_model(tmp_path / "conv.onnx")
    prep = tmp_path / "prep.onnx"
    static.preprocess(p, prep)
    data = Dataset({"x": np.random.default_rng(4).normal(size=(64, 1, 16, 16)).astype(np.float32)})
    tuner = _tuner(tmp_path, prep, data)
    orig = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(prep)).graph.initializer}
    weight = {layer.node: layer.weight for layer in gptq.find_layers(onnx.load(str(prep)))}
    src, overrides, ranges_of = tuner.static_source(QuantSpec(weight_rounding="gptq", exclude_nodes=("conv2",)))
    got = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(src)).graph.initializer}
    assert np.array_equal(got[weight["conv2"]], orig[weight["conv2"]])  # restored bit for bit
    assert not np.array_equal(got[weight["conv1"]], orig[weight["conv1"]])  # still rounded
    assert set(overrides) == {weight["conv1"], weight["fc"]} and ranges_of is not None
    # sensitivity's view: only the measured node rounded
    src, overrides, _ = tuner.static_source(QuantSpec(weight_rounding="gptq"), only_nodes=["fc"])
    got = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(src)).graph.initializer}
    assert np.array_equal(got[weight["conv1"]], orig[weight["conv1"]]) and set(overrides) == {weight["fc"]}
    assert tuner.static_source(QuantSpec())[0] == prep  # round-to-nearest: the model as it is


def test_without_a_passing_candidate_the_best_is_the_most_accurate_faster_one(tmp_path):
    from edgekit.quant.tuning import Trial

    tuner = _tuner(tmp_path, tmp_path / "unused.onnx", None)

    def trial(metric, speedup):
        return Trial("t", QuantSpec(), tmp_path / "t.onnx", metric=metric, speedup=speedup,
                     latency_ms=10 / speedup, passed=False)

    slow_accurate, fast, faster_worse = trial(0.95, 0.9), trial(0.93, 1.6), trial(0.90, 2.0)
    tuner.trials = [slow_accurate, fast, faster_worse]
    assert tuner.best() is fast
    tuner.trials = [slow_accurate, trial(0.90, 1.0)]  # none faster than FP32: the most accurate
    assert tuner.best() is slow_accurate
    # equally accurate, none faster, speeds within noise: the earlier one on every replay (the raw
    # fastest flipped the written INT8 file between two runs of one recipe)
    first, second = trial(0.95, 0.80), trial(0.95, 0.81)
    tuner.trials = [first, second]
    assert tuner.best() is first
    tuner.trials = [first, trial(0.95, 0.95)]  # a real speed difference still counts
    assert tuner.best() is tuner.trials[1]


def test_a_passing_candidate_as_slow_as_fp32_does_not_win_where_int8_can_be_faster(tmp_path):
    from edgekit.quant.tuning import Trial

    tuner = _tuner(tmp_path, tmp_path / "unused.onnx", None)

    def trial(metric, speedup, passed):
        return Trial("t", QuantSpec(), tmp_path / "t.onnx", metric=metric, speedup=speedup,
                     latency_ms=10 / speedup, passed=passed)

    all_fp32, partial = trial(1.0, 1.0, True), trial(0.96, 1.3, False)
    tuner.trials = [trial(0.90, 2.0, False), partial, all_fp32]
    assert tuner.best() is partial
    tuner.trials = [trial(0.90, 0.7, False), all_fp32]  # INT8 never faster here: tolerance decides
    assert tuner.best() is all_fp32


def test_a_node_left_in_fp32_keeps_float_weights_inside_onnxruntime(tmp_path):
    """onnxruntime's WeightBiasQuantization would give an FP32 Conv fed by a DequantizeLinear per-tensor
    INT8 weights at session creation; the per-channel input DQ edgekit writes must keep it float."""
    import onnxruntime as ort

    p = conv_model(tmp_path / "conv.onnx")
    prep = tmp_path / "prep.onnx"
    static.preprocess(p, prep)
    data = Dataset({"x": np.random.default_rng(5).normal(size=(64, 1, 16, 16)).astype(np.float32)})
    # 7-bit weights (reduce_range): with 8, an AVX2-only CPU's VPMADDUBSW saturates in the integer conv1,
    # and the comparison below with the float simulation would measure that instead of conv2's weights
    info = static.quantize(prep, tmp_path / "q.onnx", data,
                           QuantSpec(exclude_nodes=("conv2", "relu2"), reduce_range=True),
                           calib_size=64, input_names=["x"], use_cache=False)
    assert info["fp32_nodes_protected"] == 1
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # where the transformer runs
    so.optimized_model_filepath = str(tmp_path / "q.optimized.onnx")
    ort.InferenceSession(str(tmp_path / "q.onnx"), so, providers=["CPUExecutionProvider"])
    fast = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    opt = onnx.load(str(tmp_path / "q.optimized.onnx"))
    conv2 = [n for n in opt.graph.node if n.op_type in ("Conv", "FusedConv") and "conv2" in n.name]
    assert conv2, [n.name for n in opt.graph.node]
    weight_of = {n.output[0]: n for n in opt.graph.node}
    assert all(weight_of.get(n.input[1]) is None or weight_of[n.input[1]].op_type != "DequantizeLinear"
               for n in conv2), "conv2 got quantized weights"
    # and numerically: the optimised session equals the unoptimised float simulation of the same file
    so2 = ort.SessionOptions()
    so2.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(tmp_path / "q.onnx"), so2, providers=["CPUExecutionProvider"])
    x = np.asarray(data.inputs["x"][:16])
    np.testing.assert_allclose(fast.run(None, {"x": x})[0], plain.run(None, {"x": x})[0], rtol=1e-3, atol=1e-3)


def test_passing_candidates_within_noise_of_the_fastest_tie_on_accuracy_then_order(tmp_path):
    # replays re-time every trial: a 1% speed difference must not decide between candidates, so the
    # winner stays the same from run to run; a real speed difference still wins
    from edgekit.quant.tuning import SPEED_TIE, Trial

    tuner = _tuner(tmp_path, tmp_path / "unused.onnx", None)

    def trial(metric, speedup, fp32_ms=10.0):
        return Trial("t", QuantSpec(), tmp_path / "t.onnx", metric=metric, speedup=speedup, fp32_ms=fp32_ms,
                     latency_ms=fp32_ms / speedup, passed=True)

    a, b = trial(0.990, 2.00), trial(0.995, 2.00 * (1 - SPEED_TIE / 2))
    tuner.trials = [a, b]
    assert tuner.best() is b  # as fast within noise, more accurate
    tuner.trials = [trial(0.99, 2.0), trial(0.99, 2.01)]
    assert tuner.best() is tuner.trials[0]  # same accuracy, same speed: the earlier one, every time
    fast = trial(0.990, 3.0)
    tuner.trials = [b, fast]
    assert tuner.best() is fast
    # ranked by each trial's own ratio to FP32: the later trial ran on a busier host (FP32 slower too)
    quiet, busy = trial(0.99, 2.0, fp32_ms=10.0), trial(0.99, 2.6, fp32_ms=16.0)
    tuner.trials = [quiet, busy]
    assert quiet.latency_ms < busy.latency_ms and tuner.best() is busy
