"""Store a PyTorch tensor once in its exported ONNX file, however many initializers the exporter wrote for it.

torch.onnx.export's constant folding turns a weight read through .t() (nn.Linear on a [batch, seq, d]
input, a head tied to an embedding) into a second, transposed initializer beside the original: a tied
30k x 768 embedding cost 92 MB more per file, and the parameter count read from the graph exceeded
PyTorch's. A copy becomes a Transpose node on the one stored initializer (or a plain reference to it, when
it is the same bytes). onnxruntime folds that Transpose once when it opens the session, so inference runs as
before, and so does the INT8 stage's pre-processing, whose optimisation pass folds it before the quantizer
sees the graph: the weight is quantized as a MatMul weight, exactly as without this.
"""
from __future__ import annotations

import numpy as np

# files whose weights live in external data are left as they are: rewriting them means rewriting that data
_INLINE = 0  # onnx.TensorProto.DEFAULT data_location


def store_once(path, module) -> dict:
    """Rewrite the ONNX file at path so each tensor of `module` (the module it was exported from) is held by
    one initializer. Returns {"initializers": how many were dropped, "bytes": their size}.

    An initializer stands for a module tensor when it carries one of the tensor's names (every name it has,
    tied ones too), or, unnamed (folded by the exporter), when it holds that tensor's bits or their transpose
    and no other module tensor's: two layers that hold equal values (zero-initialised adapters) are two
    parameters, and their copies are left alone, so the count stays PyTorch's. Unnamed initializers that
    match no module tensor are merged only with exact copies of themselves."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)  # loaded, external data would be saved inline
    graph = model.graph
    if any(i.data_location != _INLINE for i in graph.initializer):
        return {"initializers": 0, "bytes": 0}
    arrays = _Arrays(graph.initializer)
    fixed = _untouchable(graph)
    dropped, saved, transposes = [], 0, []
    for members in _groups(arrays, module):
        keep = members[0]
        for name in members[1:]:
            if name in fixed or keep in fixed:
                continue
            a, k = arrays[name], arrays[keep]
            if _same(a, k):
                _rename_uses(graph, name, keep)
            elif a.ndim == 2 and k.ndim == 2 and _same(a, k.T):
                transposes.append(onnx.helper.make_node("Transpose", [keep], [name], perm=[1, 0],
                                                        name=f"{name}/stored_once_transpose"))
            else:
                continue
            dropped.append(name)
            saved += a.nbytes
    if not dropped:
        return {"initializers": 0, "bytes": 0}
    gone = set(dropped)
    for init in [i for i in graph.initializer if i.name in gone]:
        graph.initializer.remove(init)  # not a rebuilt list: that copies every weight once more
    # first: their inputs are initializers, so the graph stays in topological order
    for node in reversed(transposes):
        graph.node.insert(0, node)
    onnx.save(model, str(path))
    return {"initializers": len(dropped), "bytes": int(saved)}


class _Arrays(dict):
    """{initializer name: numpy array}, converted when first asked for; None for strings and for types numpy
    lacks (bfloat16, float8), which are then compared with nothing and left alone."""

    def __init__(self, initializers):
        super().__init__()
        self.protos = {i.name: i for i in initializers}

    def __missing__(self, name):
        from onnx import numpy_helper

        try:
            a = numpy_helper.to_array(self.protos[name])
        except Exception:
            a = None
        self[name] = a if a is not None and a.dtype.kind in "biufc" else None  # not strings
        return a


def _bits(a):
    """a's bits as unsigned integers (a view, transposed or not): -0.0 is not 0.0, and a NaN equals itself."""
    if a.itemsize in (1, 2, 4, 8):
        return a.view(np.dtype(f"u{a.itemsize}"))
    return np.frombuffer(np.ascontiguousarray(a).tobytes(), np.uint8)


def _same(a, b) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(_bits(a), _bits(b))


_SAMPLES = 64


def _fingerprint(a) -> tuple:
    """(dtype, shape, a few of the values' bits): equal arrays share it; the full comparison comes after."""
    idx = np.linspace(0, a.size - 1, num=min(a.size, _SAMPLES)).astype(np.int64)
    return a.dtype.str, a.shape, _bits(np.asarray(a.flat[idx])).tobytes() if a.size else b""


def _module_tensors(module) -> tuple[dict, dict]:
    """({name: storage key} for every name of every parameter and buffer, {storage key: numpy view})."""
    names, tensors = {}, {}
    for name, t in [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]:
        if t is None:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        names[name] = key
        if key not in tensors:
            try:
                tensors[key] = t.detach().cpu().numpy()
            except (TypeError, RuntimeError):  # bfloat16 and other types numpy lacks
                tensors[key] = None
    return names, tensors


def _groups(arrays: _Arrays, module) -> list:
    """Lists of initializer names that hold one module tensor (or one unnamed constant), each of 2 or more,
    in the file's order; the first of each list is the one kept: a named one where there is one."""
    names, tensors = _module_tensors(module)
    unnamed = [k for k in arrays.protos if k not in names and arrays[k] is not None]
    shapes = {(arrays[k].dtype.str, arrays[k].shape) for k in unnamed}
    # only module tensors of an unnamed initializer's dtype and shape (as stored or transposed) are candidates
    candidates: dict = {}
    for key, a in tensors.items():
        for v in () if a is None else (a, a.T) if a.ndim == 2 else (a,):
            if (v.dtype.str, v.shape) in shapes:
                candidates.setdefault(_fingerprint(v), []).append((key, v))
    owner = {k: names[k] for k in arrays.protos if k in names}
    for k in unnamed:
        a = arrays[k]
        fp = _fingerprint(a)
        keys = {key for key, v in candidates.get(fp, ()) if _same(a, v)}
        # one module tensor with these bits (or their transpose): its copy. None: an exporter constant,
        # grouped with its exact copies. Several: whose copy it is cannot be told, left alone
        if len(keys) == 1:
            owner[k] = keys.pop()
        elif not keys:
            owner[k] = ("constant", fp)
    grouped: dict = {}
    for k in arrays.protos:
        if k in owner:
            grouped.setdefault(owner[k], []).append(k)
    return [sorted(v, key=lambda k: k in names, reverse=True) for v in grouped.values() if len(v) > 1]


def _untouchable(graph) -> set:
    """Initializers that are graph inputs (overridable) or outputs, or that subgraphs read: left as they are."""
    names = {v.name for v in graph.input} | {v.name for v in graph.output}
    for node in graph.node:
        for attr in node.attribute:
            for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= {i for n in g.node for i in n.input} | _untouchable(g)
    return names


def _rename_uses(graph, old: str, new: str) -> None:
    for node in graph.node:
        for j, i in enumerate(node.input):
            if i == old:
                node.input[j] = new
