"""The export folds the shape arithmetic that torch's TorchScript exporter writes for a dynamic batch
(Shape -> Gather -> Div -> Unsqueeze -> Concat before each Reshape): onnxruntime ran those chains on every
call, 1.38x a ShuffleNet-like model's latency at batch 1 (benchmarks/export). The folded graph must still
follow every batch and length the unfolded one did."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from edgekit.artifact import TensorSpec
from edgekit.dataset import Dataset
from edgekit.source import SourceModel
from edgekit.stages import shape_fold
from edgekit.stages.export import export_module


class Shuffle(nn.Module):
    """chunk, a branch, concat and a channel shuffle by the input's own shape: ShuffleNet v2's unit."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, self.branch(b)], 1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(x.mean((2, 3)))


class Heads(nn.Module):
    """Attention-style reshapes of a [batch, length, d] input: split into heads by the input's batch and length
    and back (both copied from the input: 0), and a flatten of batch and length into rows (one unknown: -1)."""

    def __init__(self, d=8, heads=2):
        super().__init__()
        self.emb = nn.Embedding(20, d)
        self.proj, self.out = nn.Linear(d, d), nn.Linear(d, d)
        self.h = heads

    def forward(self, ids):
        x = self.emb(ids)
        n, s, d = x.shape
        q = self.proj(x).view(n, s, self.h, d // self.h).transpose(1, 2)  # [n, h, s, d/h]
        att = torch.softmax(q @ q.transpose(2, 3), -1) @ q
        x = att.transpose(1, 2).reshape(n, s, d)
        # [batch * length, d] and back: the way back has two unknowns (batch, length) against one inferred
        # dim ([batch * length, d] does not say them apart), so that Reshape keeps its chain
        return self.out(x.reshape(n * s, d)).view(n, s, d)


def _image_source():
    return SourceModel(spec="shuffle.py:build", kind="torch", task="classification",
                       inputs=[TensorSpec("x", ["batch", 1, 8, 8], "float32")], outputs=["y"],
                       dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})


def _run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _follows_torch(net, path, x, batches):
    for batch in batches:
        with torch.no_grad():
            want = net(x[:batch]).numpy()
        np.testing.assert_allclose(_run(path, {"x": x[:batch].numpy()}), want, rtol=1e-4, atol=1e-5)


def _exported(net, x, tmp_path):
    """(the export's artifact, its graph, its op types) of net traced on x, an image batch."""
    art = export_module(net, _image_source(), tmp_path / "m.onnx", data=Dataset({"x": x.numpy()}))
    g = onnx.load(str(tmp_path / "m.onnx")).graph
    return art, g, [n.op_type for n in g.node]


def test_a_channel_shuffle_exports_without_shape_arithmetic_and_follows_any_batch(tmp_path):
    torch.manual_seed(0)
    net = Shuffle().eval()
    x = torch.randn(32, 1, 8, 8)
    art, g, ops = _exported(net, x, tmp_path)
    assert "Shape" not in ops and "Gather" not in ops and "Unsqueeze" not in ops, ops
    assert art.verify["shape_nodes_folded"] > 0 and "shapes_unfolded" not in art.verify
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    targets = [inits[n.input[1]].tolist() for n in g.node if n.op_type == "Reshape"]
    assert targets == [[0, 2, 4, 8, 8], [0, 8, 8, 8]], targets  # the batch copied from the input, the rest known
    _follows_torch(net, tmp_path / "m.onnx", x, (1, 3, 7))


def test_attention_reshapes_keep_the_dynamic_length_and_a_flatten_infers_its_rows(tmp_path):
    torch.manual_seed(0)
    net = Heads().eval()
    ids = np.random.default_rng(0).integers(0, 20, (16, 6)).astype(np.int64)
    src = SourceModel(spec="heads.py:build", kind="torch", task="regression",
                      inputs=[TensorSpec("ids", ["batch", "length"], "int64")], outputs=["y"],
                      dynamic_axes={"ids": {0: "batch", 1: "length"}, "y": {0: "batch", 1: "length"}})
    art = export_module(net, src, tmp_path / "m.onnx", data=Dataset({"ids": ids}))
    assert "other_length" in art.verify and "fixed_length" not in art.verify  # still follows another length
    g = onnx.load(str(tmp_path / "m.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    targets = sorted(inits[n.input[1]].tolist() for n in g.node if n.op_type == "Reshape" and n.input[1] in inits)
    assert targets == [[-1, 8], [0, 0, 2, 4], [0, 0, 8]], targets
    assert sum(n.op_type == "Reshape" for n in g.node) == 4  # the way back from rows is left as it is
    for batch, length in ((1, 6), (3, 11), (2, 1)):
        x = np.random.default_rng(batch).integers(0, 20, (batch, length)).astype(np.int64)
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(_run(tmp_path / "m.onnx", {"ids": x}), want, rtol=1e-4, atol=1e-5)


def _graph(nodes, inputs, outputs, inits=()):
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                          opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def _i64(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def test_a_target_with_two_unknowns_is_left_as_it_is_and_still_runs(tmp_path):
    # [batch, length, 6] -> [length, batch, 6]: neither symbol is at its own position, so 0 cannot copy them
    # and one -1 cannot stand for both
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "length", 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["length", "batch", 6])
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i1"], ["len"], axis=0),
             helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
             helper.make_node("Concat", ["len", "b", "six"], ["t"], axis=0),
             helper.make_node("Reshape", ["x", "t"], ["y"])]
    m = _graph(nodes, [x], [y], [_i64("i0", [0]), _i64("i1", [1]), _i64("six", [6])])
    assert shape_fold.fold(m) == 0
    assert [n.op_type for n in m.graph.node] == ["Shape", "Gather", "Gather", "Concat", "Reshape"]


def test_integer_division_truncates_and_negative_indices_count_from_the_end(tmp_path):
    # [batch, 12] -> [batch, -7 / 2 + 6, ...]: onnxruntime's integer Div truncates toward zero (-3, not -4)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 12])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 4])
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "last"], ["d"], axis=0),  # 12, by index -1
             helper.make_node("Div", ["minus7", "two"], ["q"]),  # -3
             helper.make_node("Add", ["q", "six"], ["three"]),  # 3
             helper.make_node("Div", ["d", "three"], ["four"]),
             helper.make_node("Concat", ["zero", "three", "four"], ["t"], axis=0),
             helper.make_node("Reshape", ["x", "t"], ["y"])]
    m = _graph(nodes, [x], [y], [_i64("last", [-1]), _i64("minus7", [-7]), _i64("two", [2]), _i64("six", [6]),
                                 _i64("zero", [0])])
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    xs = np.arange(24, dtype=np.float32).reshape(2, 12)
    before = _run(path, {"x": xs})
    assert shape_fold.fold_file(path) > 0
    g = onnx.load(str(path)).graph
    assert [n.op_type for n in g.node] == ["Reshape"]
    assert numpy_helper.to_array({i.name: i for i in g.initializer}[g.node[0].input[1]]).tolist() == [0, 3, 4]
    assert before.shape == (2, 3, 4)
    np.testing.assert_array_equal(_run(path, {"x": xs}), before)


def test_an_expand_to_the_inputs_own_batch_broadcasts_by_one(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3, 4])
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "one"], ["b"]),
             helper.make_node("Concat", ["b", "three", "four"], ["t"], axis=0),
             helper.make_node("Expand", ["x", "t"], ["y"])]
    m = _graph(nodes, [x], [y], [_i64("zero", [0]), _i64("one", [1]), _i64("three", [3]), _i64("four", [4])])
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    assert shape_fold.fold_file(path) > 0
    g = onnx.load(str(path)).graph
    assert [n.op_type for n in g.node] == ["Expand"]
    for batch in (1, 5):
        xs = np.random.default_rng(batch).random((batch, 1, 4)).astype(np.float32)
        np.testing.assert_array_equal(_run(path, {"x": xs}), np.broadcast_to(xs, (batch, 3, 4)))


def _broken_fold(real):
    """The fold, then a wrong constant in the first Reshape's target: what a bug in the fold would give."""
    def broken(path):
        removed = real(path)
        m = onnx.load(str(path))
        inits = {i.name: i for i in m.graph.initializer}
        reshape = next(n for n in m.graph.node if n.op_type == "Reshape")
        wrong = numpy_helper.to_array(inits[reshape.input[1]]).copy()
        wrong[1], wrong[2] = wrong[2], wrong[1]  # [0, 4, 2, 8, 8]: runs, but shuffles the channels wrongly
        inits[reshape.input[1]].CopyFrom(numpy_helper.from_array(wrong, reshape.input[1]))
        onnx.save(m, str(path))
        return removed
    return broken


def test_a_folded_graph_that_fails_its_check_is_exported_unfolded_with_a_note(tmp_path, monkeypatch):
    monkeypatch.setattr(shape_fold, "fold_file", _broken_fold(shape_fold.fold_file))
    torch.manual_seed(0)
    net = Shuffle().eval()
    x = torch.randn(32, 1, 8, 8)
    art = export_module(net, _image_source(), tmp_path / "m.onnx", data=Dataset({"x": x.numpy()}))
    assert "shape_nodes_folded" not in art.verify
    assert "left unfolded" in art.verify["shapes_unfolded"] and art.verify["shapes_unfolded"] in art.notes
    assert "Shape" in [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    _follows_torch(net, tmp_path / "m.onnx", x, (3,))


def test_a_value_a_subgraph_reads_is_kept(tmp_path):
    # the If's branch reads the Shape output by name: the chain must stay although no node input names it
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, [2])
    out = helper.make_tensor_value_info("o", TensorProto.INT64, [2])
    then = helper.make_graph([helper.make_node("Identity", ["s"], ["o"])], "then", [], [out])
    other = helper.make_graph([helper.make_node("Identity", ["s"], ["o"])], "else", [], [out])
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "one"], ["four"], axis=0),
             helper.make_node("Greater", ["four", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    m = _graph(nodes, [x], [y], [_i64("one", 1), _i64("zero", 0)])
    shape_fold.fold(m)
    assert "Shape" in [n.op_type for n in m.graph.node]
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    assert _run(path, {"x": np.zeros((3, 4), np.float32)}).tolist() == [3, 4]


class Attention(nn.Module):
    """nn.MultiheadAttention (batch first) over the rows of an image: torch's attention splits q, k and v with
    unflatten (a Slice of the shape, by bounds a Mod computes) and scales by sqrt(the last dim of a shape)."""

    def __init__(self, d=16):
        super().__init__()
        self.inp = nn.Linear(8, d)
        self.attn = nn.MultiheadAttention(d, 4, batch_first=True)
        self.fc = nn.Linear(d, 3)

    def forward(self, x):
        t = self.inp(x.reshape(x.shape[0], 8, 8))
        a, _ = self.attn(t, t, t, need_weights=False)
        return self.fc((t + a).mean(1))


def test_multihead_attention_exports_without_any_shape_node(tmp_path):
    torch.manual_seed(0)
    net = Attention().eval()
    x = torch.randn(16, 1, 8, 8)
    art, _, ops = _exported(net, x, tmp_path)
    # the batch times the heads is one -1; its Reshape's output then gives the head size a later Shape read
    assert "Shape" not in ops and "Mod" not in ops and "Slice" not in ops, ops
    assert art.verify["shape_nodes_folded"] >= 100
    _follows_torch(net, tmp_path / "m.onnx", x, (1, 3))


def test_mod_equal_where_and_constant_of_shape_are_read(tmp_path):
    # target = Where(Equal(v, -1), ones, v) with v = [batch, -(7 mod -3) * ..., ...]: torch's expand(-1) picks
    # dims this way; Mod takes the divisor's sign (7 mod -3 = -2), fmod the dividend's (7 fmod -3 = 1)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 6])
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
             helper.make_node("Mod", ["seven", "minus3"], ["m"]),  # -2
             helper.make_node("Neg", ["m"], ["two"]),  # 2
             helper.make_node("Mod", ["seven", "minus3"], ["f"], fmod=1),  # 1
             helper.make_node("Mul", ["f", "six"], ["six2"]),  # 6
             helper.make_node("Concat", ["b", "two", "six2"], ["v"], axis=0),
             helper.make_node("ConstantOfShape", ["three"], ["ones"], value=_i64("one", [1])),
             helper.make_node("Equal", ["v", "minus1"], ["is_minus1"]),  # [False (a dim is not -1), False, False]
             helper.make_node("Where", ["is_minus1", "ones", "v"], ["t"]),
             helper.make_node("Reshape", ["x", "t"], ["y"])]
    m = _graph(nodes, [x], [y], [_i64("i0", [0]), _i64("seven", [7]), _i64("minus3", [-3]), _i64("six", [6]),
                                 _i64("three", [3]), _i64("minus1", [-1])])
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    assert shape_fold.fold_file(path) > 0
    g = onnx.load(str(path)).graph
    assert [n.op_type for n in g.node] == ["Reshape"]
    assert numpy_helper.to_array({i.name: i for i in g.initializer}[g.node[0].input[1]]).tolist() == [0, 2, 6]
    xs = np.random.default_rng(0).random((3, 2, 6)).astype(np.float32)
    np.testing.assert_array_equal(_run(path, {"x": xs}), xs)


def _torchscript_export(net, path, x):
    """The ONNX file a user brings: torch's TorchScript exporter with a dynamic batch, shape chains and all."""
    torch.onnx.export(net, (x[:2],), str(path), input_names=["x"], output_names=["y"], dynamo=False,
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17)


def test_an_onnx_source_is_folded_when_onnxruntime_gives_its_outputs(tmp_path):
    from click.testing import CliRunner

    from edgekit.cli import cli

    torch.manual_seed(0)
    net = Shuffle().eval()
    x = torch.randn(24, 1, 8, 8)
    _torchscript_export(net, tmp_path / "user.onnx", x)
    np.save(tmp_path / "calib.npy", x.numpy())
    before = (tmp_path / "user.onnx").read_bytes()
    r = CliRunner().invoke(cli, ["compress", str(tmp_path / "user.onnx"), "--calib", str(tmp_path / "calib.npy"),
                                 "--quantize", "none", "--no-profile", "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    out = tmp_path / "out" / "model.fp32.onnx"
    assert "Shape" not in [n.op_type for n in onnx.load(str(out)).graph.node]
    assert (tmp_path / "user.onnx").read_bytes() == before  # the user's file is not touched
    notes = json.loads((tmp_path / "out" / "manifest.json").read_text())["artifacts"][0]["notes"]
    assert any("shape arithmetic folded" in n for n in notes), notes
    for batch in (1, 5):
        feeds = {"x": x[:batch].numpy()}
        np.testing.assert_allclose(_run(out, feeds), _run(tmp_path / "user.onnx", feeds), rtol=1e-5, atol=1e-6)


def test_an_onnx_source_whose_fold_changes_its_outputs_is_copied_as_it_is(tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = Shuffle().eval()
    x = torch.randn(24, 1, 8, 8)
    src = tmp_path / "user.onnx"
    _torchscript_export(net, src, x)
    dest = tmp_path / "copy.onnx"
    dest.write_bytes(src.read_bytes())
    with monkeypatch.context() as m:
        m.setattr(shape_fold, "fold_file", _broken_fold(shape_fold.fold_file))
        removed, why = shape_fold.fold_checked(dest, Dataset({"x": x.numpy()}), atol=1e-3, rtol=1e-4)
    assert removed == 0 and why.startswith("shape arithmetic left unfolded: the folded graph did not give")
    assert dest.read_bytes() == src.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))  # no folded copy left behind
    removed, why = shape_fold.fold_checked(dest, Dataset({"x": x.numpy()}), atol=1e-3, rtol=1e-4)
    assert removed > 0 and why is None


def test_a_slice_with_step_zero_is_not_read(tmp_path):
    # Python's slice() raises on step 0; the fold must leave such a graph to onnxruntime's own error
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "two", "zero", "zero"], ["t"]),
             helper.make_node("Reshape", ["x", "t"], ["y"])]
    m = _graph(nodes, [x], [y], [_i64("zero", [0]), _i64("two", [2])])
    assert shape_fold.fold(m) == 0
    assert [n.op_type for n in m.graph.node] == ["Shape", "Slice", "Reshape"]
