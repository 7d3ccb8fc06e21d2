"""Fold an inference-mode BatchNormalization into the Gemm next to it, in the exported ONNX graph.

torch's exporter folds a BatchNorm into the Conv before it, but not into a Linear: a tabular MLP's
Linear -> BatchNorm1d -> ReLU, or a BatchNorm1d that normalises the raw features before the first Linear,
stayed a BatchNormalization node that onnxruntime runs on its own (no Gemm + BatchNormalization fusion).
In an INT8 model it also stood between the Gemm and its ReLU, so the Gemm's output was quantized,
dequantized for the float BatchNormalization and quantized again ("still FP32: BatchNormalization 9%" of a
wine-data MLP's INT8 time). Both are affine per feature, so the pair is one Gemm:

  after:  y = (alpha A'B' + beta C) * s + t          -> B' * (alpha s) by column, C' = beta C s + t
  before: y = alpha (x s + t) B' + beta C            -> B' * (alpha s) by row,    C' = alpha t B' + beta C

with s = scale / sqrt(var + eps) and t = bias - mean s. The export stage then checks the folded file
against PyTorch, as every export is checked.
"""
from __future__ import annotations

import numpy as np

from ..onnxutil import consumers


def _attr(node, name: str, default):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _subgraph_names(graph) -> set:
    """Tensor names read inside If / Loop / Scan bodies: a use that consumers() does not see."""
    import onnx

    out: set = set()
    for n in graph.node:
        for a in n.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for g in subs:
                out.update(i for m in g.node for i in m.input)
                out |= _subgraph_names(g)
    return out


class _Graph:
    def __init__(self, model):
        from onnx import numpy_helper

        self.model, self.graph = model, model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.arrays = {}
        self.users = consumers(self.graph)
        self.outputs = {o.name for o in self.graph.output}
        self.hidden_uses = _subgraph_names(self.graph)
        self._np = numpy_helper
        self._ranks = None

    def rank(self, tensor: str) -> int | None:
        """The tensor's rank by ONNX shape inference (run once, on a copy), None where it is not known."""
        if self._ranks is None:
            import onnx

            self._ranks = {}
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model)
            except Exception:  # a graph the inference rejects: no MatMul is folded
                return None
            g = inferred.graph
            for v in list(g.value_info) + list(g.input) + list(g.output):
                t = v.type.tensor_type
                if t.HasField("shape"):
                    self._ranks[v.name] = len(t.shape.dim)
        return self._ranks.get(tensor)

    def array(self, name):
        if name not in self.inits:
            return None
        if name not in self.arrays:
            self.arrays[name] = self._np.to_array(self.inits[name])
        return self.arrays[name]

    def only_user(self, tensor: str, node) -> bool:
        us = self.users.get(tensor, [])
        return (len(us) == 1 and us[0] is node and tensor not in self.outputs and tensor not in self.hidden_uses)

    def new_init(self, base: str, value: np.ndarray) -> str:
        name, i = f"{base}/bn_folded", 1
        while name in self.inits:
            name, i = f"{base}/bn_folded_{i}", i + 1
        t = self._np.from_array(value.astype(np.float32), name)
        self.graph.initializer.append(t)
        self.inits[name] = t
        return name


def _bn_affine(g: _Graph, bn):
    """(s, t) of an inference BatchNormalization with constant float32 parameters, else None."""
    if bn.op_type != "BatchNormalization" or len(bn.output) != 1 or len(bn.input) != 5 or _attr(bn, "training_mode", 0):
        return None
    arrays = [g.array(i) for i in bn.input[1:]]
    if any(a is None or a.dtype != np.float32 or a.ndim != 1 for a in arrays):
        return None
    scale, bias, mean, var = (a.astype(np.float64) for a in arrays)
    s = scale / np.sqrt(var + float(_attr(bn, "epsilon", 1e-5)))
    return s, bias - mean * s


def _gemm_parts(g: _Graph, gemm):
    """(B' as [K, N] float64, C as [N] float64 or zeros, alpha, beta) of a Gemm with a constant B that only
    it reads and a constant C that broadcasts over rows, or of a MatMul of a matrix by such a B (a Linear
    without bias); None otherwise."""
    if gemm.op_type not in ("Gemm", "MatMul") or len(gemm.input) < 2:
        return None
    b = g.array(gemm.input[1])
    if b is None or b.dtype != np.float32 or b.ndim != 2 or len(g.users.get(gemm.input[1], [])) != 1:
        return None
    if gemm.op_type == "MatMul":
        # a rank-3 MatMul's features are its last axis, a BatchNormalization's axis 1: not one per feature
        if g.rank(gemm.input[0]) != 2:
            return None
        return b.astype(np.float64), np.zeros(b.shape[1]), 1.0, 1.0
    bt = b.astype(np.float64).T if _attr(gemm, "transB", 0) else b.astype(np.float64)
    n = bt.shape[1]
    c = np.zeros(n)
    if len(gemm.input) > 2 and gemm.input[2]:
        ca = g.array(gemm.input[2])
        if ca is None or ca.dtype != np.float32 or ca.size not in (1, n) or (ca.ndim == 2 and ca.shape[0] != 1) \
                or ca.ndim > 2:
            return None
        c = np.broadcast_to(ca.astype(np.float64).reshape(-1), (n,)).copy()
    return bt, c, float(_attr(gemm, "alpha", 1.0)), float(_attr(gemm, "beta", 1.0))


def _set_gemm(g: _Graph, gemm, b_kn: np.ndarray, c: np.ndarray) -> None:
    """gemm (a MatMul becomes one) computes A B + C with these B ([K, N] as its transB lays it out) and C."""
    import onnx

    trans_b = _attr(gemm, "transB", 0)
    b_name = g.new_init(gemm.input[1], b_kn.T if trans_b else b_kn)
    c_name = g.new_init(gemm.input[2] if len(gemm.input) > 2 and gemm.input[2] else f"{gemm.name or 'gemm'}.bias", c)
    g.users[b_name] = g.users[c_name] = [gemm]  # a second BatchNormalization on its other side may fold too
    gemm.op_type = "Gemm"
    keep = [a for a in gemm.attribute if a.name not in ("alpha", "beta")]
    del gemm.attribute[:]
    gemm.attribute.extend(keep)
    gemm.attribute.extend([onnx.helper.make_attribute("alpha", 1.0), onnx.helper.make_attribute("beta", 1.0)])
    ins = [gemm.input[0], b_name, c_name]
    del gemm.input[:]
    gemm.input.extend(ins)


def fold(model) -> list:
    """Fold each foldable Gemm / BatchNormalization pair of `model` (an onnx ModelProto, changed in place);
    returns the folded BatchNormalization nodes' names."""
    g = _Graph(model)
    producer = {o: n for n in g.graph.node for o in n.output}
    gone, folded = set(), []
    for bn in list(g.graph.node):
        affine = _bn_affine(g, bn)
        if affine is None:
            continue
        s, t = affine
        before = producer.get(bn.input[0])
        after = g.users.get(bn.output[0], [])
        if before is not None and g.only_user(bn.input[0], bn) \
                and (parts := _gemm_parts(g, before)) and parts[0].shape[1] == s.size:
            bt, c, alpha, beta = parts
            _set_gemm(g, before, bt * (alpha * s)[None, :], beta * c * s + t)
            before.output[0] = bn.output[0]
            producer[bn.output[0]] = before
        elif len(after) == 1 and g.only_user(bn.output[0], after[0]) and after[0].input[0] == bn.output[0] \
                and not _attr(after[0], "transA", 0) \
                and bn.input[0] not in g.hidden_uses \
                and (parts := _gemm_parts(g, after[0])) and parts[0].shape[0] == s.size:
            gemm = after[0]
            bt, c, alpha, beta = parts
            _set_gemm(g, gemm, bt * (alpha * s)[:, None], alpha * (t @ bt) + beta * c)
            gemm.input[0] = bn.input[0]
            g.users[bn.input[0]] = [gemm if u is bn else u for u in g.users.get(bn.input[0], [])]
        else:
            continue
        gone.add(id(bn))
        folded.append(bn.name or bn.output[0])
    if not folded:
        return []
    for bn in [n for n in g.graph.node if id(n) in gone]:
        g.graph.node.remove(bn)
    used = {i for n in g.graph.node for i in n.input} | g.hidden_uses | {o.name for o in g.graph.output} \
        | {i.name for i in g.graph.input}  # an initializer listed as an input stays: removed, it would be required
    for init in [i for i in g.graph.initializer if i.name not in used]:
        g.graph.initializer.remove(init)
    return folded


def fold_file(path) -> list:
    """fold() on the ONNX file at path, rewritten when anything folds; a file with external data is left as
    it is (loading it here would write its weights inline)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer):
        return []
    if not any(n.op_type == "BatchNormalization" for n in model.graph.node):
        return []
    done = fold(model)
    if done:
        onnx.save(model, str(path))
    return done
