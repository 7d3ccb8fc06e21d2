"""Fold the shape arithmetic of a dynamic-batch export into constants.

With a dynamic batch, torch's TorchScript exporter computes each Reshape's target from the input's shape at
run time: x.view(n, g, c // g, h, w) becomes Shape -> Gather -> Div -> Unsqueeze -> Concat -> Reshape, and
x.chunk(2, 1) Slices with bounds computed the same way. onnxruntime cannot fold those chains while a dim is
symbolic, and runs them on every call: 76 of a ShuffleNet-like model's 122 nodes, 1.38x its latency at
batch 1 (benchmarks/export). Every dim in such a chain but the dynamic ones is known when the graph is
written, and a Reshape can say the rest itself: 0 copies the input's dim at that position, and one -1 takes
whatever size is left. So a chain whose value is all known becomes a constant, and a Reshape target whose
only unknowns are a dynamic dim at the input's same position (0) and at most one other (-1) becomes one too.

Values are read by ONNX shape inference (the dims of each Shape's input) and this module's own evaluation of
the integer ops between Shape and its user; a dim is an int, a symbol (the dynamic axis's name, which ONNX
shape inference carries through shape-preserving ops) or unknown. The export stage checks the folded file
against PyTorch at batch 1 and at another batch, as every export is checked, and exports unfolded if that
check fails.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..onnxutil import _subgraph_inputs

_INT_TYPES = {2, 3, 4, 5, 6, 7, 12, 13}  # UINT8 INT8 UINT16 INT16 INT32 INT64 UINT32 UINT64
_TYPES = _INT_TYPES | {9}  # and BOOL: torch's expand(-1) picks dims by Equal / Where
_MAX_ELEMS = 16  # a shape, slice bounds or gather indices; not a tensor of data
_ROUNDS = 8  # a folded Reshape gives its output a known shape, which the next round can read


@dataclass(frozen=True)
class _Val:
    """An integer tensor of rank 0 or 1 in the shape arithmetic: each element an int, a symbol or None."""
    elems: tuple
    scalar: bool
    dtype: int

    def known(self) -> bool:
        return all(isinstance(e, (int, np.integer)) for e in self.elems)


def _attr(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _from_array(a: np.ndarray, dtype: int) -> _Val | None:
    if a.ndim > 1 or a.size > _MAX_ELEMS or dtype not in _TYPES:
        return None
    return _Val(tuple(int(v) for v in a.reshape(-1)), a.ndim == 0, dtype)


def _dims(shape) -> list | None:
    """A tensor's inferred dims (int, symbol or None each), None where its rank is unknown."""
    if shape is None:
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) if d.HasField("dim_param") else None
            for d in shape.dim]


def _arith(op: str, a, b):
    if isinstance(a, int) and isinstance(b, int):
        if op == "Add":
            return a + b
        if op == "Sub":
            return a - b
        if op == "Mul":
            return a * b
        if op == "Div" and b != 0:
            q = abs(a) // abs(b)  # integer Div truncates toward zero (onnxruntime's C++ division)
            return q if (a >= 0) == (b >= 0) else -q
        if op == "Max":
            return max(a, b)
        if op == "Min":
            return min(a, b)
        if op == "Mod" and b != 0:
            return a % b  # the divisor's sign, as Python's %
        if op == "Fmod" and b != 0:
            return int(np.fmod(a, b))  # the dividend's sign
        if op == "Equal":
            return int(a == b)
        return None
    if op == "Equal" and a is not None and b is not None:
        # a dim is never negative: a symbol equals itself and is not -1 (torch's expand(-1) asks that)
        if a == b:
            return 1
        if isinstance(a, int) and a < 0 or isinstance(b, int) and b < 0:
            return 0
        return None
    # a symbol keeps its name only through the identities
    if op in ("Mul", "Div") and b == 1 or op in ("Add", "Sub") and b == 0:
        return a
    if op in ("Mul", "Add") and a == (1 if op == "Mul" else 0):
        return b
    return None


def _evaluate(node, vals: dict, shapes: dict) -> _Val | None:
    """The value of node's first output when it is shape arithmetic this module reads, else None."""
    import onnx
    from onnx import numpy_helper

    op = node.op_type
    ins = [vals.get(i) for i in node.input]
    if op == "Constant":
        t = _attr(node, "value")
        if isinstance(t, onnx.TensorProto):
            return _from_array(numpy_helper.to_array(t), t.data_type)
        for name in ("value_int", "value_ints"):
            if (v := _attr(node, name)) is not None:
                return _from_array(np.array(v, dtype=np.int64), onnx.TensorProto.INT64)
        return None
    if op == "Shape":
        dims = _dims(shapes.get(node.input[0]))
        if dims is None:
            return None
        start, end = _attr(node, "start", 0), _attr(node, "end", None)
        return _Val(tuple(dims[start:end]), False, onnx.TensorProto.INT64)
    if op == "Identity" and ins[0] is not None:
        return ins[0]
    if op == "Cast" and ins[0] is not None:
        to = _attr(node, "to")
        if to == 9:
            return _Val(tuple(int(e != 0) for e in ins[0].elems), ins[0].scalar, to) if ins[0].known() else None
        return _Val(ins[0].elems, ins[0].scalar, to) if to in _INT_TYPES else None
    if op == "Gather" and ins[0] is not None and not ins[0].scalar and len(ins) > 1 and ins[1] is not None \
            and ins[1].known() and _attr(node, "axis", 0) == 0:
        n = len(ins[0].elems)
        if not all(-n <= i < n for i in ins[1].elems):
            return None
        return _Val(tuple(ins[0].elems[i] for i in ins[1].elems), ins[1].scalar, ins[0].dtype)
    if op == "Unsqueeze" and ins[0] is not None and ins[0].scalar:
        axes = ins[1].elems if len(ins) > 1 and ins[1] is not None else tuple(_attr(node, "axes", []) or ())
        return _Val(ins[0].elems, False, ins[0].dtype) if tuple(axes) in ((0,), (-1,)) else None
    if op == "Squeeze" and ins[0] is not None and not ins[0].scalar and len(ins[0].elems) == 1:
        return _Val(ins[0].elems, True, ins[0].dtype)
    if op == "Concat" and _attr(node, "axis") in (0, -1) and ins and all(v is not None and not v.scalar for v in ins):
        return _Val(tuple(e for v in ins for e in v.elems), False, ins[0].dtype)
    if op == "Slice" and ins[0] is not None and not ins[0].scalar and all(v is not None and v.known() for v in ins[1:]) \
            and len(ins) >= 3 and all(len(v.elems) == 1 for v in ins[1:]):
        if len(ins) > 3 and ins[3].elems[0] not in (0, -1):
            return None
        step = ins[4].elems[0] if len(ins) > 4 else 1
        if step == 0:  # invalid in ONNX too: onnxruntime refuses it when the graph runs
            return None
        return _Val(tuple(ins[0].elems[slice(ins[1].elems[0], ins[2].elems[0], step)]), False, ins[0].dtype)
    if op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Mod", "Equal") and len(ins) == 2 \
            and all(v is not None for v in ins):
        if op == "Mod" and _attr(node, "fmod", 0):
            op = "Fmod"
        pairs = _broadcast(*ins)
        if pairs is None:
            return None
        dtype = 9 if op == "Equal" else ins[0].dtype
        return _Val(tuple(_arith(op, x, y) for x, y in pairs), ins[0].scalar and ins[1].scalar, dtype)
    if op == "Where" and len(ins) == 3 and all(v is not None for v in ins) and ins[0].known():
        cond = _broadcast(ins[0], ins[1])
        picks = _broadcast(ins[1], ins[2])
        if cond is None or picks is None or len(cond) != len(picks):
            return None
        return _Val(tuple(a if c else b for (c, _), (a, b) in zip(cond, picks)),
                    all(v.scalar for v in ins), ins[1].dtype)
    if op == "Neg" and ins[0] is not None:
        return _Val(tuple(-e if isinstance(e, int) else None for e in ins[0].elems), ins[0].scalar, ins[0].dtype)
    if op == "Reshape" and ins[0] is not None and len(ins) > 1 and ins[1] is not None and ins[1].known():
        # a shape vector reshaped to [-1], [n] or [] (a scalar): the same elements
        target, n = list(ins[1].elems), len(ins[0].elems)
        if target in ([-1], [n]) or (target == [] and n == 1):
            return _Val(ins[0].elems, target == [], ins[0].dtype)
        return None
    if op == "ConstantOfShape" and ins[0] is not None and ins[0].known() and len(ins[0].elems) <= 1:
        t = _attr(node, "value")
        fill = _from_array(numpy_helper.to_array(t), t.data_type) if isinstance(t, onnx.TensorProto) else None
        if fill is None or len(fill.elems) != 1:
            return None
        n = ins[0].elems[0] if ins[0].elems else 1
        return _Val(fill.elems * n, not ins[0].elems, fill.dtype) if 0 <= n <= _MAX_ELEMS else None
    return None


def _broadcast(a: _Val, b: _Val) -> list | None:
    """Element pairs of two rank <= 1 values under numpy broadcasting, None where they do not broadcast."""
    if len(a.elems) != len(b.elems) and 1 not in (len(a.elems), len(b.elems)):
        return None
    n = max(len(a.elems), len(b.elems))
    ae = a.elems * n if len(a.elems) == 1 else a.elems
    be = b.elems * n if len(b.elems) == 1 else b.elems
    return list(zip(ae, be))


def _unread(dim) -> bool:
    """A dim shape inference could not read: None, or the fresh name it gives one ('unk__3')."""
    return dim is None or isinstance(dim, str) and dim.startswith("unk__")


def _reshape_target(val: _Val, data_dims: list | None, final: bool) -> list | None:
    """A constant Reshape target with val's meaning: a symbol at the data's same position copies it (0),
    and one element left unknown is inferred (-1). None when more than one is unknown, and before the final
    round when a symbol would be inferred only because the data's dims are not read yet: a later round may
    read them (a folded Reshape before this one gives its output a shape) and copy it, which keeps the
    symbol in the shapes after this Reshape for the Reshapes after it."""
    out, unknown = [], 0
    for k, e in enumerate(val.elems):
        if isinstance(e, (int, np.integer)):
            out.append(int(e))
            unknown += e == -1
        elif e is not None and data_dims is not None and k < len(data_dims) and data_dims[k] == e:
            out.append(0)
        elif e is not None and not final and (data_dims is None or k < len(data_dims) and _unread(data_dims[k])):
            return None
        else:
            out.append(-1)
            unknown += 1
    return out if unknown <= 1 else None


def _expand_target(val: _Val, in_dims: list | None) -> list | None:
    """A constant Expand shape with val's meaning: a symbol broadcast against the input's own dim of that
    name is 1 (the input's dim then gives the size). None when any other element is unknown."""
    if in_dims is None:
        return None
    out, lead = [], len(val.elems) - len(in_dims)
    for k, e in enumerate(val.elems):
        if isinstance(e, (int, np.integer)):
            out.append(int(e))
        elif e is not None and k - lead >= 0 and in_dims[k - lead] == e:
            out.append(1)
        else:
            return None
    return out


def _shapes(model) -> dict | None:
    """{tensor name: its TensorShapeProto} by ONNX shape inference, None where the inference rejects the graph."""
    import onnx
    from onnx import helper

    g = model.graph
    # the inference reads a weight's shape, not its values: it runs on a copy whose large initializers are
    # inputs of their shape (MiniLM's fold took 2.8 s with the weights serialised into every round)
    big = [i for i in g.initializer if math.prod(i.dims) > _MAX_ELEMS]
    small = [i for i in g.initializer if math.prod(i.dims) <= _MAX_ELEMS]
    light = helper.make_model(
        helper.make_graph(g.node, g.name, [*g.input, *(helper.make_tensor_value_info(i.name, i.data_type, i.dims)
                                                        for i in big)],
                          g.output, small, value_info=g.value_info),
        opset_imports=model.opset_import, ir_version=model.ir_version)
    try:
        inferred = onnx.shape_inference.infer_shapes(light)
    except Exception:  # a graph the inference rejects is left as it is
        return None
    out = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = t.shape
    for i in g.initializer:
        out[i.name] = onnx.TensorShapeProto(dim=[onnx.TensorShapeProto.Dimension(dim_value=d) for d in i.dims])
    return out


def _fold_round(model, made: dict, final: bool) -> int:
    """One pass: evaluate the shape arithmetic, point its users at constants; returns the inputs changed."""
    from onnx import helper, numpy_helper

    graph = model.graph
    shapes = _shapes(model)
    if shapes is None:
        return 0
    vals: dict = {}
    overridable = {i.name for i in graph.input}  # an initializer listed as an input is a default, not a constant
    for init in graph.initializer:
        if init.name not in overridable and len(init.dims) <= 1 and init.data_type in _TYPES and (not init.dims or init.dims[0] <= _MAX_ELEMS):
            vals[init.name] = _from_array(numpy_helper.to_array(init), init.data_type)
    computed = set()
    for node in graph.node:
        if node.output and node.output[0] and (v := _evaluate(node, vals, shapes)) is not None:
            vals[node.output[0]] = v
            if node.op_type != "Constant":
                computed.add(node.output[0])
    names = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output} | \
        {i.name for i in graph.input}

    def constant(value, dtype: int, base: str) -> str:
        """An initializer holding value (a list, or an int for a scalar), one per value and type."""
        key = (tuple(value) if isinstance(value, list) else value, dtype)
        if key not in made:
            name, i = f"{base}/folded", 1
            while name in names:
                name, i = f"{base}/folded_{i}", i + 1
            names.add(name)
            arr = np.array(value, dtype=helper.tensor_dtype_to_np_dtype(dtype))
            graph.initializer.append(numpy_helper.from_array(arr, name))
            made[key] = name
        return made[key]

    changed = 0
    for node in graph.node:
        for slot, name in enumerate(node.input):
            v = vals.get(name)
            if name not in computed or v is None:
                continue
            target = None
            if v.known():
                target = list(v.elems)
            elif node.op_type == "Reshape" and slot == 1 and not _attr(node, "allowzero", 0):
                target = _reshape_target(v, _dims(shapes.get(node.input[0])), final)
            elif node.op_type == "Expand" and slot == 1:
                target = _expand_target(v, _dims(shapes.get(node.input[0])))
            if target is None:
                continue
            node.input[slot] = constant(target[0] if v.scalar else target, v.dtype, name)
            changed += 1
    return changed


def _drop_dead(graph) -> int:
    """Remove nodes none of whose outputs is read (by a node, a subgraph or the graph's outputs), and the
    initializers nothing reads any more; returns the nodes removed."""
    removed = 0
    while True:
        used = {o.name for o in graph.output}
        for n in graph.node:
            used.update(n.input)
            used |= _subgraph_inputs(n)
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
        removed += len(dead)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output} | {i.name for i in graph.input}
    for n in graph.node:
        used |= _subgraph_inputs(n)
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return removed


def fold(model) -> int:
    """Fold `model`'s shape arithmetic (an onnx ModelProto, changed in place); returns the nodes removed."""
    made: dict = {}
    changed = 0
    for _ in range(_ROUNDS):
        # a final round infers what waited for a dim; the shapes it gives may let the next fold more
        step = _fold_round(model, made, final=False) or _fold_round(model, made, final=True)
        changed += step
        if not step:
            break
    return _drop_dead(model.graph) if changed else 0


def fold_file(path) -> int:
    """fold() on the ONNX file at path, rewritten when anything folds; a file with external data is left as
    it is (loading it here would write its weights inline)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer):
        return 0
    if not any(n.op_type == "Shape" for n in model.graph.node):
        return 0
    try:
        removed = fold(model)
    except Exception:  # a graph this module misreads stays as it is: the fold is for speed, the file still runs
        return 0
    if removed:
        onnx.save(model, str(path))
    return removed


def fold_checked(path, data, *, atol: float, rtol: float) -> tuple[int, str | None]:
    """fold_file() for a file with no PyTorch model to check it against (an ONNX source): the folded copy
    replaces the file at path only when onnxruntime gives its outputs on `data` (up to 8 samples) at batch 1
    and at once, by the export check's rule. Returns (nodes removed, a note when the fold was not kept)."""
    import shutil

    from ..onnxutil import run_batches, session
    from ..verify import check_outputs

    path = Path(path)
    tmp = path.with_name(f".{path.name}.folded.tmp")
    try:
        shutil.copyfile(path, tmp)
        removed = fold_file(tmp)
        if not removed:
            return 0, None
        sample = data.take(min(8, len(data)))
        ref_sess, got_sess = session(path), session(tmp)  # one each for both batch sizes
        names = [o.name for o in ref_sess.get_outputs()]
        for batch in sorted({1, len(sample)}):
            ref = run_batches(path, sample, batch_size=batch, sess=ref_sess)
            got = run_batches(tmp, sample, batch_size=batch, sess=got_sess)
            check_outputs(ref, got, names, atol=atol, rtol=rtol, where=path.name,
                          between="from the source file's with its shape arithmetic folded")
        tmp.replace(path)
        return removed, None
    except Exception as e:  # the fold exists for speed: the file as given still serves
        why = getattr(e, "reason", None) or (str(e).splitlines()[0] if str(e) else type(e).__name__)
        return 0, f"shape arithmetic left unfolded: the folded graph did not give the source file's outputs: {why[:200]}"
    finally:
        tmp.unlink(missing_ok=True)
