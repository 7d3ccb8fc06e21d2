"""Post-training static INT8 with onnxruntime.quantization: pre-process, calibrate (cached), quantize."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import CalibrationError, EdgekitError
from ..fsutil import sha256_file
from ..onnxutil import node_attrs
from . import cache as qcache
from . import ort_limits
from .spec import QuantSpec

CALIB_BATCH = 16
PERCENTILE = 99.999


def ensure_node_names(model) -> int:
    """onnxruntime's quantizer addresses nodes by name (nodes_to_exclude): give unnamed nodes one."""
    seen, fixed = set(), 0
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
            fixed += 1
        seen.add(n.name)
    return fixed


def preprocess(src, dest) -> list:
    """onnxruntime's quantization pre-processing (symbolic shape inference + graph optimisation).

    Returns notes; if symbolic shape inference cannot handle the graph, it retries with ONNX's
    own shape inference only, and says so.
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    notes = []
    src, dest = Path(src).resolve(), Path(dest).resolve()
    model_in, note = _below_opset_11(src, dest.with_name(dest.stem + ".opset11.onnx"))
    if note:
        notes.append(note)
    try:
        # symbolic shape inference dumps "sym_shape_infer_temp.onnx" (+ external data) into the
        # working directory when it gives up; keep that out of the user's folder
        with quiet(), _scratch_cwd():
            quant_pre_process(model_in, str(dest), skip_symbolic_shape=False)
    except Exception as e:  # symbolic shape inference rejects some exported graphs
        notes.append(f"symbolic shape inference failed ({type(e).__name__}); used ONNX shape inference only")
        try:
            with quiet(), _scratch_cwd():
                quant_pre_process(model_in, str(dest), skip_symbolic_shape=True)
        except Exception as e2:
            raise EdgekitError(f"{Path(src).name}: onnxruntime quantization pre-processing failed: "
                               f"{type(e2).__name__}: {_first_line(e2)}") from None
    m = onnx.load(str(dest))
    dead = zero_dead_channels(m)
    if dead:
        notes.append(f"{dead} dead output channels (weights < {DEAD_REL:g} of their layer's largest) set to "
                     "exactly 0 so their per-channel scale cannot overflow the int32 bias")
    renamed = keep_io_dims(m, onnx.load(str(src), load_external_data=False))
    typed = untyped_tensor_types(m)
    if typed:
        notes.append(f"{typed} intermediate tensor(s) after an op with no type inference (ai.onnx.ml's Scaler is "
                     "one) typed from one run of the model, so that they are calibrated and quantized")
    unshared = unshare_biases(m)
    if ensure_node_names(m) or dead or renamed or typed or unshared:
        onnx.save(m, str(dest))
    return notes


BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}


def unshare_biases(model) -> int:
    """Give each Conv/Gemm bias that another input also reads its own copy; returns how many.

    Pre-processing merges identical initializers, and a layer's bias is quantized to int32 at its own
    input x weight scale under the initializer's name: a zero bias shared with an Add made QOperator's
    QLinearAdd read int32 ("Type 'tensor(int32)' of input parameter (b2_quantized) ... is invalid"; ConvNeXt,
    MobileViT, Swin and Wav2Vec2 with random weights, whose biases start at zero), and two convs sharing one bias both had the first one's scale
    (QOperator: a mean error of 14.8 on outputs of scale 53, tests/test_quant_graph.py)."""
    import onnx

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    uses: dict = {}
    for n in g.node:
        for name in n.input:
            if name in inits:
                uses[name] = uses.get(name, 0) + 1
    taken = set(inits) | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    copies = 0
    for n in g.node:
        k = BIAS_INPUT.get(n.op_type)
        if k is None or len(n.input) <= k or uses.get(n.input[k], 0) < 2:
            continue
        old = n.input[k]
        new, i = f"{old}_{n.name or n.op_type}", 1
        while new in taken:
            new, i = f"{old}_{n.name or n.op_type}_{i}", i + 1
        t = onnx.TensorProto()
        t.CopyFrom(inits[old])
        t.name = new
        g.initializer.append(t)
        taken.add(new)
        n.input[k] = new
        uses[old] -= 1
        copies += 1
    return copies


def untyped_tensor_types(model) -> int:
    """Give the intermediate tensors that no shape inference typed a type, read from one run of the model
    on zeros; returns how many. onnxruntime's calibration only collects tensors it has a type for: after
    skl2onnx's Scaler (ai.onnx.ml, no type inference) no activation of an MLP had one, so every candidate
    quantized its weights alone, and the Softmax range step failed ("Only an existing tensor can be
    modified"). Types depend on no value, so zeros of each input's dtype and shape (dynamic dims 1) do."""
    import numpy as np
    import onnx
    from onnx import helper

    g = model.graph
    known = {v.name for v in list(g.value_info) + list(g.input) + list(g.output)} | {i.name for i in g.initializer}
    missing = [o for n in g.node for o in n.output if o and o not in known]
    if not missing or any(i.data_location == onnx.TensorProto.EXTERNAL for i in g.initializer):
        return 0
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in missing)
    init = {i.name for i in g.initializer}
    try:
        import onnxruntime as ort

        feeds = {}
        for v in g.input:
            if v.name in init:
                continue
            t = v.type.tensor_type
            if not v.type.HasField("tensor_type"):
                return 0
            shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in t.shape.dim]
            feeds[v.name] = np.zeros(shape, helper.tensor_dtype_to_np_dtype(t.elem_type))

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 3
        sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
        got = dict(zip(missing, sess.run(missing, feeds)))
    except Exception:  # a graph that does not run on zeros keeps its gaps, as before
        return 0
    n = 0
    for t in missing:
        a = got.get(t)
        if isinstance(a, np.ndarray) and a.dtype.kind in "fiub":
            g.value_info.append(helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(a.dtype),
                                                              [None] * a.ndim))
            n += 1
    return n


def _below_opset_11(src: Path, scratch: Path):
    """(the path to give quant_pre_process: src, or the graph converted into scratch; a note or None).
    For opset <= 10 onnxruntime's pre-processing rewrites Upsample into Resize still under the old opset,
    then asks ONNX's version converter for 11,
    which has no adapter for a Resize at 9 ("No Adapter From Version $9 for Resize"): every INT8 and FP16
    run of an opset-9 model with an Upsample failed. Converting the untouched graph first (Upsample 9 -> 10
    -> Resize 11 is a path the converter has) skips that step of theirs."""
    import onnx
    from onnx import version_converter

    m = onnx.load(str(src), load_external_data=False)
    old = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    if old is None or old > 10:
        return str(src), None
    m = onnx.load(str(src))
    try:
        up = version_converter.convert_version(m, 11)
        onnx.checker.check_model(up, full_check=True)
    except Exception as e:
        raise EdgekitError(f"{src.name}: opset {old} cannot be converted to opset 11, which onnxruntime's "
                           f"quantization needs: {type(e).__name__}: {_first_line(e)}; re-export the model "
                           "at opset 13 or later") from None
    onnx.save(up, str(scratch))
    return str(scratch), f"opset {old} raised to 11 (onnx version converter) for onnxruntime's quantization"


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else ""


# per-channel QDQ needs DequantizeLinear's axis attribute, which arrived in opset 13
PER_CHANNEL_OPSET = 13


def raise_opset(path, version: int = PER_CHANNEL_OPSET) -> tuple[bool, str | None]:
    """Convert the model at path to `version` in place when its default-domain opset is lower. Returns
    (per-channel possible, a note saying what was done or why it could not be; None when nothing was needed).
    Below opset 13 a per-channel candidate was an invalid graph onnxruntime refused to load (INVALID_GRAPH on
    the int32 bias's DequantizeLinear), and with the ISA-aware default per-channel, `--no-tune` failed outright."""
    import onnx
    from onnx import version_converter

    m = onnx.load(str(path))
    old = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    if old is None or old >= version:
        return True, None
    try:
        up = version_converter.convert_version(m, version)
        onnx.checker.check_model(up)
    except Exception as e:
        return False, (f"opset {old}: could not be converted to opset {version} ({type(e).__name__}); "
                       f"per-channel INT8 needs opset {version}, so weights are quantized per tensor")
    onnx.save(up, str(path))
    return True, (f"opset {old} raised to {version} for INT8 (onnx version converter): per-channel QDQ "
                  f"needs DequantizeLinear's axis, new in opset {version}; the INT8 file is opset {version}")


def keep_io_dims(model, source) -> int:
    """Give the model's inputs and outputs back the dimension names of `source`. Symbolic shape inference
    renames a dim it derived through arithmetic (a Resize: 'floor(1.0*batch)'), so the INT8 file's output
    was no longer 'batch' like its input and the FP32 file's; anything matching axes by name saw two. Only
    a symbolic dim that was symbolic in the source too is renamed back. Returns how many changed."""
    ref = {v.name: v for v in [*source.graph.input, *source.graph.output]}
    changed = 0
    for v in [*model.graph.input, *model.graph.output]:
        r = ref.get(v.name)
        if r is None or not v.type.HasField("tensor_type") or not r.type.HasField("tensor_type"):
            continue
        dims, rdims = v.type.tensor_type.shape.dim, r.type.tensor_type.shape.dim
        if len(dims) != len(rdims):
            continue
        for d, rd in zip(dims, rdims):
            if d.HasField("dim_param") and rd.HasField("dim_param") and d.dim_param != rd.dim_param:
                d.dim_param = rd.dim_param
                changed += 1
    return changed


# A channel whose weights are this small next to its layer's largest contributes nothing in FP32, but its
# per-channel scale (max|w|/127) makes bias_scale = input_scale * weight_scale tiny, and the int32 bias
# then clamps at 2**31: the channel outputs garbage. BatchNorm folding leaves such channels (gamma ~ 0).
DEAD_REL = 1e-5


def zero_dead_channels(model, rel: float = DEAD_REL) -> int:
    """Set near-zero output channels of Conv/ConvTranspose/Gemm weights to exactly 0; returns how many."""
    from onnx import numpy_helper

    init = {i.name: i for i in model.graph.initializer}
    users = {}
    for n in model.graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    total = 0
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 2 or n.input[1] not in init or users[n.input[1]] != 1:
            continue
        w = numpy_helper.to_array(init[n.input[1]])
        if w.ndim < 2 or w.dtype != np.float32:
            continue
        trans_b = node_attrs(n).get("transB", 0)
        axis = 0 if n.op_type == "Conv" or trans_b else 1
        wa = np.moveaxis(w, axis, 0)
        amax = np.abs(wa.reshape(wa.shape[0], -1)).max(axis=1)
        dead = (amax > 0) & (amax < rel * amax.max())
        if not dead.any():
            continue
        wa = wa.copy()
        wa[dead] = 0
        init[n.input[1]].CopyFrom(numpy_helper.from_array(np.moveaxis(wa, 0, axis).astype(np.float32), n.input[1]))
        total += int(dead.sum())
    return total


FLOAT_WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm")


def _input_channels(node, w) -> int | None:
    a = node_attrs(node)
    if node.op_type == "Conv":
        return int(w.dims[1]) * int(a.get("group", 1))
    if node.op_type == "ConvTranspose":
        return int(w.dims[0])
    if a.get("transA", 0) or len(w.dims) != 2:
        return None
    return int(w.dims[1] if a.get("transB", 0) else w.dims[0])


def keep_fp32_nodes_float(model) -> int:
    """Stop onnxruntime from quantizing the weights of nodes left in FP32; returns how many were protected.

    onnxruntime's WeightBiasQuantization graph transformer (optimisation level basic and up) gives every
    Conv/ConvTranspose/Gemm whose input comes from a per-tensor DequantizeLinear and whose weight is a float
    initializer a *per-tensor* INT8 weight, silently: a node kept in FP32 for accuracy then runs with
    worse weights than the INT8 candidate had (EfficientNet-Lite0, first depthwise conv in FP32: top-1
    agreement 0.59 instead of 0.87). The transformer only matches a scalar input scale, so such a node gets
    its own DequantizeLinear with the same scale and zero point repeated per channel (axis 1): identical
    values, no match. A node with a single input channel cannot be protected this way.
    """
    from onnx import helper, numpy_helper

    init = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    new_nodes, done = [], 0
    for node in model.graph.node:
        if node.op_type not in FLOAT_WEIGHT_OPS or len(node.input) < 2 or node.input[1] not in init:
            continue
        w = init[node.input[1]]
        dq = producer.get(node.input[0])
        if w.data_type != 1 or dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 2:
            continue
        if dq.input[1] not in init or (len(dq.input) > 2 and dq.input[2] and dq.input[2] not in init):
            continue
        scale = numpy_helper.to_array(init[dq.input[1]])
        c = _input_channels(node, w)
        if scale.size != 1 or not c or c < 2:
            continue
        base = f"{node.name or node.output[0]}_float_input"
        names = [dq.input[0], base + "_scale"]
        extra = [numpy_helper.from_array(np.full(c, scale.reshape(()), scale.dtype), base + "_scale")]
        if len(dq.input) > 2 and dq.input[2]:
            zp = numpy_helper.to_array(init[dq.input[2]])
            extra.append(numpy_helper.from_array(np.full(c, zp.reshape(()), zp.dtype), base + "_zero_point"))
            names.append(base + "_zero_point")
        model.graph.initializer.extend(extra)
        new_nodes.append((node, helper.make_node("DequantizeLinear", names, [base], base + "_dq", axis=1)))
        node.input[0] = base
        done += 1
    for node, dq_node in new_nodes:  # keep topological order: each new DQ right before its consumer
        idx = list(model.graph.node).index(node)
        model.graph.node.insert(idx, dq_node)
    return done


@contextlib.contextmanager
def _scratch_cwd():
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="edgekit-prep-") as d:
        os.chdir(d)
        try:
            yield
        finally:
            os.chdir(old)


class DatasetReader:
    """onnxruntime CalibrationDataReader over a Dataset, in batches, over the first `limit` samples.

    len() and set_range() are in batches: quantize_static's strided mode (CalibStridedMinMax)
    then calls collect_data once per stride, so histogram calibrators (entropy, percentile)
    merge as they go instead of holding every activation of every sample at once.
    """

    def __init__(self, dataset, input_names, limit: int, batch_size: int = CALIB_BATCH):
        self.ds, self.names, self.limit, self.bs = dataset, list(input_names), limit, batch_size
        self.n_batches = (limit + batch_size - 1) // batch_size
        self.set_range(0, self.n_batches)

    def __len__(self):
        return self.n_batches

    def set_range(self, start_index: int, end_index: int):
        self._i, self._end = start_index, min(end_index, self.n_batches)

    def get_next(self):
        if self._i >= self._end:
            return None
        a, b = self._i * self.bs, min((self._i + 1) * self.bs, self.limit)
        self._i += 1
        return {k: np.ascontiguousarray(v[a:b]) for k, v in self.ds.inputs.items() if k in self.names}

    def __iter__(self):
        return self

    def __next__(self):
        r = self.get_next()
        if r is None:
            raise StopIteration
        return r


def whole_batches(model, n: int) -> int:
    """n rounded down to whole batches where the graph fixes its batch: it cannot take a short last one."""
    fixed = fixed_batch(model)
    if not fixed:
        return n
    if n < fixed:
        raise CalibrationError(f"the model's batch is fixed at {fixed}, but only {n} calibration samples were given")
    return n - n % fixed


def batch_size_for(model_path) -> int:
    """Static graphs with a fixed leading dim get that batch size; dynamic ones get CALIB_BATCH."""
    return fixed_batch(model_path) or CALIB_BATCH


def fixed_batch(model) -> int | None:
    """The first graph input's fixed leading dimension, or None when it is dynamic (a path or a ModelProto)."""
    import onnx

    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    init = {i.name for i in m.graph.initializer}
    for v in m.graph.input:
        if v.name in init:
            continue
        dims = v.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
    return None


_MEMO: dict = {}


def _model_sha(path) -> str:
    st = Path(path).stat()
    k = ("m", str(path), st.st_mtime_ns, st.st_size)
    if k not in _MEMO:
        _MEMO[k] = sha256_file(path)
    return _MEMO[k]


def _data_sha(ds, n) -> str:
    k = ("d", id(ds), len(ds), n)  # a Dataset is not mutated after reading; hashing it once per run is enough
    if k not in _MEMO:
        _MEMO[k] = qcache.data_hash(ds, n)
    return _MEMO[k]


def _qtype(t: str):
    from onnxruntime.quantization import QuantType

    return QuantType.QUInt8 if t == "u8" else QuantType.QInt8


def _method(m: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[m]


def calibration_options(spec: QuantSpec) -> dict:
    opts = {"CalibTensorRangeSymmetric": bool(spec.symmetric_activation)}
    if spec.method == "percentile":
        opts["CalibPercentile"] = PERCENTILE
    return opts


def float64_nodes(model_path) -> list:
    """Names of the nodes that read or write float64 tensors (a model that ends in .double()): INT8 has
    no float64 form, and onnxruntime's quantizer, which calibrates float32 tensors only, failed outright on
    a Softmax over one ("Only an existing tensor can be modified"). They stay as they are."""
    import onnx
    from onnx import TensorProto

    m = onnx.load(str(model_path), load_external_data=False)
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*m.graph.input, *m.graph.output, *m.graph.value_info] if v.type.HasField("tensor_type")}
    types.update({i.name: i.data_type for i in m.graph.initializer})
    return [n.name for n in m.graph.node
            if n.name and any(types.get(t) == TensorProto.DOUBLE for t in [*n.input, *n.output] if t)]


def quantize(prep_path, dest, calib, spec: QuantSpec, *, calib_size: int, input_names, cache_root=None,
             use_cache: bool = True, keep_removable_activations: bool = False, only_nodes=None,
             overrides: dict | None = None, calib_model=None, extra_options: dict | None = None,
             _nonfinite_retry: bool = False) -> dict:
    """Quantize the pre-processed model at prep_path into dest. Returns {"calibration": "cached"|"computed", ...}.

    overrides: onnxruntime TensorQuantOverrides (the weight ranges GPTQ rounding pinned), if any.
    calib_model: the model whose activation ranges may stand in for this one's (the same graph with only
    some weights rounded differently): the calibration cache is keyed on it, so they are computed once.
    extra_options: further onnxruntime quantize_static extra_options (they win over edgekit's).
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static

    calib_opts = calibration_options(spec)
    n = whole_batches(prep_path, min(calib_size, len(calib)))
    key_opts = {**calib_opts, "op_types": sorted(spec.op_types)}
    if extra_options:  # they can change what is calibrated, so they key the cache too
        key_opts["extra"] = {k: repr(v) for k, v in extra_options.items()}
    key = qcache.cache_key(_model_sha(calib_model or prep_path), _data_sha(calib, n), spec.method, key_opts)
    cpath = qcache.cache_path(key, cache_root) if use_cache else None
    hit = cpath is not None and cpath.is_file()
    tmp_cache, scratch = None, None
    if cpath is not None and not hit:
        tmp_cache = cpath.with_name(f".{cpath.name}.{os.getpid()}.tmp")
    elif cpath is None:
        # the ranges are still written (to a scratch file) so they can be checked for unusable ones
        scratch = tempfile.mkdtemp(prefix="edgekit-ranges-")
        tmp_cache = Path(scratch) / "ranges.json"
    extra = {**calib_opts, "ActivationSymmetric": bool(spec.symmetric_activation),
             "WeightSymmetric": True, "QDQKeepRemovableActivations": keep_removable_activations}
    if overrides:
        extra["TensorQuantOverrides"] = overrides
    extra.update(extra_options or {})
    reader = None if hit else DatasetReader(calib, input_names, n, batch_size_for(prep_path))
    if reader is not None and spec.method != "minmax":
        # one collect per batch (the option applies to every method, despite its name): histograms merge
        # as they go, and a short last batch cannot make onnxruntime stack ragged arrays
        extra["CalibStridedMinMax"] = 1
    float_ln = [n for n in ort_limits.unquantizable(prep_path, spec) if n not in spec.exclude_nodes]
    t0 = time.perf_counter()
    try:
        with quiet():
            quantize_static(str(prep_path), str(dest), reader,
                            quant_format=QuantFormat.QDQ if spec.format == "qdq" else QuantFormat.QOperator,
                            op_types_to_quantize=list(spec.op_types) or None, per_channel=spec.per_channel,
                            reduce_range=spec.reduce_range, activation_type=_qtype(spec.activation_type),
                            weight_type=_qtype(spec.weight_type),
                            nodes_to_exclude=list(spec.exclude_nodes) + float64_nodes(prep_path) + float_ln or None,
                            nodes_to_quantize=list(only_nodes) if only_nodes else None,
                            calibrate_method=_method(spec.method), extra_options=extra,
                            calibration_cache_path=str(cpath if hit else tmp_cache))
        if cpath is not None and tmp_cache is not None and tmp_cache.exists():
            os.replace(tmp_cache, cpath)  # publish the ranges only once complete
        qm = onnx.load(str(dest))
        ranges = cpath if cpath is not None else tmp_cache
        wide = set(unusable_ranges(ranges)) & quantized_tensors(qm) if ranges.is_file() else set()
        bad = sorted(set(nonfinite_tensors(qm)) | wide)
    except Exception as e:
        # onnxruntime's quantizer can fail outright on an infinite range (numpy truth-value errors)
        ranges = cpath if hit else tmp_cache
        bad = unusable_ranges(ranges) if ranges is not None and ranges.is_file() else []
        if not bad or _nonfinite_retry:
            _cleanup(tmp_cache, scratch)
            if isinstance(e, EdgekitError):
                raise
            raise EdgekitError(f"{Path(prep_path).name}: static quantization ({spec.name()}) failed: "
                               f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        qm = None
    try:
        if bad and not _nonfinite_retry:
            _cleanup(tmp_cache, scratch)
            # e.g. an attention mask filled with -inf or float32's minimum: its range has no INT8 scale, and
            # onnxruntime writes scale=inf, which zeroes the tensor. The nodes on it stay float instead.
            touching = nodes_touching(prep_path, bad)
            info = quantize(prep_path, dest, calib, spec.replace(exclude_nodes=tuple(dict.fromkeys(
                                list(spec.exclude_nodes) + touching))),
                            calib_size=calib_size, input_names=input_names, cache_root=cache_root,
                            use_cache=use_cache, keep_removable_activations=keep_removable_activations,
                            only_nodes=only_nodes, overrides=overrides, calib_model=calib_model,
                            extra_options=extra_options, _nonfinite_retry=True)
            info["float_for_nonfinite_range"] = {"tensors": bad, "nodes": touching}
            return info
        if bad:
            raise EdgekitError(f"{Path(prep_path).name}: tensors {', '.join(bad[:5])} have no finite INT8 range "
                               f"even with the nodes on them left in float")
        protected = keep_fp32_nodes_float(qm)
        if protected:
            onnx.save(qm, str(dest))
    except EdgekitError:
        raise
    except Exception as e:
        raise EdgekitError(f"{Path(prep_path).name}: static quantization ({spec.name()}) failed: "
                           f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    finally:
        _cleanup(tmp_cache, scratch)
    info = {"calibration": "cached" if hit else "computed", "calib_samples": n, "cache_key": key,
            "fp32_nodes_protected": protected,
            "seconds": round(time.perf_counter() - t0, 3)}
    if float_ln:
        info["float_for_onnxruntime"] = float_ln
    return info


# a range beyond this is a sentinel (a mask's -inf or float32's lowest), not data: INT8 over it is all zero point
SENTINEL = 1e30


def unusable_ranges(path) -> list:
    """Tensors whose calibrated range (onnxruntime's range file) is non-finite or sentinel-wide."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    try:
        data = load_tensors_data(path)
    except Exception:
        return []
    bad = []
    for name, td in data.items():
        try:
            lo, hi = (np.asarray(v, dtype=np.float64) for v in td.range_value)
        except AttributeError:
            continue
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))) or max(np.abs(lo).max(initial=0),
                                                                          np.abs(hi).max(initial=0)) >= SENTINEL:
            bad.append(name)
    return sorted(bad)


def _cleanup(tmp_cache, scratch):
    if tmp_cache is not None and tmp_cache.exists():
        tmp_cache.unlink()
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)


def quantized_tensors(qm) -> set:
    """Tensors the quantized graph converts to INT8 (QDQ: QuantizeLinear inputs; QOperator: `<tensor>_scale`)."""
    names = {n.input[0] for n in qm.graph.node if n.op_type == "QuantizeLinear"}
    return names | {i.name[: -len("_scale")] for i in qm.graph.initializer if i.name.endswith("_scale")}


def nonfinite_tensors(qm) -> list:
    """Tensors a quantized graph gives a non-finite scale (QDQ: QuantizeLinear's scale input; QOperator:
    the `<tensor>_scale` initializers onnxruntime names)."""
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in qm.graph.initializer}
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)
    bad = [n.input[0] for n in qm.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 1
           and n.input[1] in inits and not np.all(np.isfinite(numpy_helper.to_array(inits[n.input[1]])))]
    bad += [k[: -len("_scale")] for k, i in inits.items()
            if k.endswith("_scale") and i.data_type in floats and not np.all(np.isfinite(numpy_helper.to_array(i)))]
    return sorted(set(bad))


def nodes_touching(model_path, tensors) -> list:
    """Names of the nodes of the (pre-processed) model that produce or read any of the tensors."""
    import onnx

    want = set(tensors)
    m = onnx.load(str(model_path), load_external_data=False)
    return [n.name for n in m.graph.node if n.name and (want & set(n.input) or want & set(n.output))]


@contextlib.contextmanager
def quiet():
    """onnxruntime.quantization logs advice through the root logger on every call and print()s
    "Collecting tensor data and making histogram ..." per batch: mute both (edgekit shows its own
    progress; sixteen of those lines buried the notes), so `--json` stdout stays pure JSON."""
    import io

    root = logging.getLogger()
    old = root.level
    root.setLevel(max(old, logging.ERROR))
    try:
        # a constant tensor (range 0) makes onnxruntime divide by a zero scale; the graph it writes is
        # checked for non-finite scales afterwards, so numpy's RuntimeWarning is only noise
        with contextlib.redirect_stdout(io.StringIO()), np.errstate(divide="ignore", invalid="ignore"):
            yield
    finally:
        root.setLevel(old)
