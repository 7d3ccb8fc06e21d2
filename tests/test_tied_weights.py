"""A tensor the model shares (a head tied to its embedding) is stored once in the FP32 file: torch's constant
folding wrote its transpose as a second initializer (sweep26 F12: 1,552 params for PyTorch's 912), and
the INT8 builds of such a model are as accurate and as small as before."""
from __future__ import annotations

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from edgekit.artifact import TensorSpec
from edgekit.dataset import Dataset
from edgekit.onnxutil import graph_facts, session
from edgekit.quant import dynamic, static
from edgekit.quant.spec import QuantSpec
from edgekit.source import SourceModel
from edgekit.stages.export import export_module
from edgekit.tied_weights import store_once


class Shared(nn.Module):  # sweep26 m/shared.py: a tied head, one block used twice, a shared buffer
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(40, 16, padding_idx=0)
        self.block = nn.Linear(16, 16)
        self.blocks = nn.ModuleList([self.block, self.block])
        self.head = nn.Linear(16, 40, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("scale", torch.tensor(0.5))
        self.sub = nn.Module()
        self.sub.register_buffer("scale", self.scale)

    def forward(self, ids):
        h = self.emb(ids).mean(1)
        for b in self.blocks:
            h = torch.tanh(b(h)) * self.scale
        return self.head(h * self.sub.scale)


class TiedLM(nn.Module):  # the head is a MatMul on [batch, seq, d], reading the embedding transposed
    def __init__(self, vocab=300, d=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids)
        return self.head(h + self.down(F.gelu(self.up(h))))


def _export(net, ids, path):
    src = SourceModel(spec="test", kind="torch", module=net, task="classification",
                      inputs=[TensorSpec("ids", ["batch", *ids.shape[1:]], "int64")], outputs=["y"],
                      dynamic_axes={"ids": {0: "batch"}, "y": {0: "batch"}})
    return export_module(net, src, path, data=Dataset({"ids": ids}))


def _unique_params(net) -> int:
    return sum(p.numel() for p in net.parameters())  # parameters() yields a tied tensor once


def _copies(path) -> list:
    """Pairs of initializers of which one holds the other's values, as they are or transposed."""
    arrays = [(i.name, numpy_helper.to_array(i)) for i in onnx.load(str(path)).graph.initializer]
    return [(a, b) for k, (a, x) in enumerate(arrays) for b, y in arrays[k + 1:] if x.size > 1 and
            (np.array_equal(x, y) and x.shape == y.shape or x.ndim == 2 and y.shape == x.T.shape and np.array_equal(x.T, y))]


def test_a_tied_head_is_stored_once_and_counted_once(tmp_path):
    torch.manual_seed(0)
    net = Shared().eval()
    ids = np.random.default_rng(0).integers(0, 40, size=(20, 10)).astype(np.int64)
    art = _export(net, ids, tmp_path / "model.fp32.onnx")
    assert _copies(tmp_path / "model.fp32.onnx") == []
    assert art.params == _unique_params(net) == 912  # 1,552 with the transposed copy
    assert art.verify["max_abs_diff"] < 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp32.onnx"]


def test_a_tied_lm_head_runs_as_fast_and_quantizes_as_before(tmp_path):
    # as before: the file torch writes (the transposed copy in place); now: the copy a Transpose node
    torch.manual_seed(0)
    net = TiedLM().eval()
    r = np.random.default_rng(0)
    ids = r.integers(0, 300, size=(64, 12)).astype(np.int64)
    now = tmp_path / "now.onnx"
    art = _export(net, ids, now)
    before = tmp_path / "before.onnx"
    torch.onnx.export(net, (torch.from_numpy(ids[:2]),), str(before), input_names=["ids"], output_names=["y"],
                      dynamic_axes={"ids": {0: "batch"}, "y": {0: "batch"}}, opset_version=art.opset, dynamo=False,
                      do_constant_folding=True)
    assert art.params == _unique_params(net) < graph_facts(before)["params"]
    assert _copies(now) == [] and now.stat().st_size < before.stat().st_size - 300 * 32 * 4 * 0.9
    feeds = {"ids": ids[:16]}
    want = session(before).run(None, feeds)[0]
    np.testing.assert_allclose(session(now).run(None, feeds)[0], want, rtol=1e-5, atol=1e-5)

    calib = Dataset({"ids": ids})
    built = {}
    for name, fp32 in (("before", before), ("now", now)):
        prep = tmp_path / f"{name}.prep.onnx"
        static.preprocess(fp32, prep)
        # the quantizer sees the weight as an initializer again (onnxruntime's optimisation folds the Transpose)
        g = onnx.load(str(prep)).graph
        assert not [n for n in g.node if n.op_type == "Transpose" and n.input[0] in {i.name for i in g.initializer}]
        s8, dyn = tmp_path / f"{name}.int8.onnx", tmp_path / f"{name}.dyn.onnx"
        static.quantize(prep, s8, calib, QuantSpec(), calib_size=64, input_names=["ids"], use_cache=False)
        dynamic.quantize(prep, dyn, QuantSpec(mode="int8-dynamic"))
        built[name] = {k: (p.stat().st_size, session(p).run(None, feeds)[0]) for k, p in (("int8", s8), ("dyn", dyn))}
    for kind in ("int8", "dyn"):
        size, out = built["now"][kind]
        size0, out0 = built["before"][kind]
        assert size <= size0 + 512  # node names and order only
        np.testing.assert_array_equal(out, out0)
        assert (out.argmax(-1) == want.argmax(-1)).mean() > 0.9


def _graph(inits, nodes, inputs=("x",), outputs=("y",)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", 4]) for n in inputs],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", 4]) for n in outputs],
                          [numpy_helper.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_exact_copies_go_and_equal_but_distinct_parameters_stay(tmp_path):
    # onnx::A is an exact copy of a.weight, onnx::B of b.weight's transpose; a.bias and b.bias are two
    # parameters that happen to hold equal values: PyTorch counts both, so both stay; onnx::C equals both
    # of them (whose copy it is cannot be told), so it stays too
    a = nn.Linear(4, 4)
    b = nn.Linear(4, 4)
    with torch.no_grad():
        b.bias.copy_(a.bias)
    net = nn.ModuleDict({"a": a, "b": b})
    wa, wb, bias = (t.detach().numpy().copy() for t in (a.weight, b.weight, a.bias))
    inits = {"a.weight": wa, "b.weight": wb, "a.bias": bias, "b.bias": bias.copy(),
             "onnx::A": wa.copy(), "onnx::B": np.ascontiguousarray(wb.T), "onnx::C": bias.copy()}
    nodes = [helper.make_node("Gemm", ["x", "a.weight", "a.bias"], ["h1"], transB=1),
             helper.make_node("MatMul", ["h1", "onnx::A"], ["h2"]),
             helper.make_node("Gemm", ["h2", "b.weight", "b.bias"], ["h3"], transB=1),
             helper.make_node("MatMul", ["h3", "onnx::B"], ["h4"]),
             helper.make_node("Add", ["h4", "onnx::C"], ["y"])]
    path = tmp_path / "m.onnx"
    onnx.save(_graph(inits, nodes), str(path))
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    want = session(path).run(None, {"x": x})[0]
    assert store_once(path, net) == {"initializers": 2, "bytes": 2 * 16 * 4}
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    assert sorted(i.name for i in m.graph.initializer) == ["a.bias", "a.weight", "b.bias", "b.weight", "onnx::C"]
    np.testing.assert_array_equal(session(path).run(None, {"x": x})[0], want)


class Weight(nn.Module):  # a module whose parameter is called plain "weight"
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))


def test_an_initializer_that_is_also_a_graph_input_is_left_alone(tmp_path):
    # a graph input with a default value can be fed another one: it is no copy to drop
    net = Weight()
    w = net.weight.detach().numpy().copy()
    model = _graph({"weight": w, "onnx::W": w.copy()},
                   [helper.make_node("MatMul", ["x", "weight"], ["h"]), helper.make_node("MatMul", ["h", "onnx::W"], ["y"])],
                   inputs=("x", "onnx::W"))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert store_once(path, net) == {"initializers": 0, "bytes": 0}
    assert len(onnx.load(str(path)).graph.initializer) == 2


def test_a_file_with_external_data_is_left_as_it_is(tmp_path):
    # loading it would pull the data inline, and a file that needed external data does not fit inline
    torch.manual_seed(0)
    net = Shared().eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(net, (torch.randint(0, 40, (2, 10)),), str(path), dynamo=False, do_constant_folding=True)
    onnx.save(onnx.load(str(path)), str(path), save_as_external_data=True, location="m.data", size_threshold=0)
    size = path.stat().st_size
    assert store_once(path, net) == {"initializers": 0, "bytes": 0}
    assert path.stat().st_size == size and (tmp_path / "m.data").is_file()


def test_int8_and_fp16_builds_report_the_networks_parameters(tmp_path):
    """The quantizer's pre-processing folds the tied Transpose back into a copy (INT8 1,568, FP16 1,552 counted
    from their files); the network is the same, so every build reports PyTorch's 912."""
    import json

    from tests.cliutil import run_cli

    (tmp_path / "m.py").write_text(
        "import torch, torch.nn as nn\n"
        "class M(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.emb = nn.Embedding(40, 16)\n"
        "        self.head = nn.Linear(16, 40, bias=False)\n"
        "        self.head.weight = self.emb.weight\n"
        "    def forward(self, ids):\n"
        "        return self.head(torch.tanh(self.emb(ids).mean(1)))\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return M()\n")
    np.save(tmp_path / "ids.npy", np.random.default_rng(0).integers(0, 40, size=(32, 10)).astype(np.int64))
    counts = {}
    for mode in ("int8", "fp16"):
        out = tmp_path / mode
        assert run_cli(["compress", f"{tmp_path / 'm.py'}:build", "--calib", str(tmp_path / "ids.npy"),
                        "--quantize", mode, "--no-profile", "-o", str(out)]) == 0
        arts = json.loads((out / "manifest.json").read_text())["artifacts"]
        counts.update({a["kind"]: a["params"] for a in arts})
        assert graph_facts(out / f"model.{mode}.onnx")["params"] > 640  # the file holds the copy
    assert counts == {"fp32": 640, "int8": 640, "fp16": 640}
