"""The export stage: a torch module -> a checked, numerically verified ONNX file."""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..dataset import Dataset
from ..errors import EdgekitError, InputError
from ..fsutil import atomic_path
from ..loader import PROBE_BATCH
from ..onnxutil import graph_facts, session
from ..source import SourceModel
from ..stdio import native_stderr_muted
from ..verify import check_outputs

ATOL, RTOL = 1e-4, 1e-4
VERIFY_SAMPLES = 16


def _fixed_batch(source: SourceModel) -> int | None:
    """The batch a model declares fixed (forward() hard-codes it), or None when it is dynamic."""
    dims = [s.shape[0] for s in source.inputs if s.shape]
    return dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None


def _example_args(source: SourceModel, data: Dataset | None):
    import torch

    want = _fixed_batch(source) or 2
    if data is not None and len(data) >= want:
        feeds = data.take(want).inputs
        return tuple(torch.from_numpy(np.array(feeds[s.name])) for s in source.inputs)  # memmaps are read-only
    args = []
    for s in source.inputs:
        shape = [2 if isinstance(d, str) else d for d in s.shape]
        args.append(torch.zeros(shape, dtype=getattr(torch, s.dtype)))
    return tuple(args)


def export_module(module, source: SourceModel, dest, *, kind: str = "fp32", data: Dataset | None = None,
                  opset: int | None = None, parent: str | None = "source", stage: str = "export") -> Artifact:
    """Export `module` to dest (atomically), run the ONNX checker and compare with PyTorch on real inputs."""

    dest = Path(dest)
    opset = opset or source.opset
    data = data if data is not None else (source.calib or source.eval)
    args = _example_args(source, data)
    module = module.eval()
    with atomic_path(dest) as tmp:
        try:
            _export(module, source, args, tmp, opset)
            verify = verify_against_torch(module, source, tmp, data, where=dest.name)
            if _length_axes(source):
                verify["other_length"] = verify_against_torch(module, source, tmp, data, where=dest.name,
                                                              shorten=True)
        except Exception as e:  # onnxruntime's own errors too: a Reshape to the traced length fails to run
            if not _length_axes(source):
                raise
            # the graph does not follow another length (a traced Python loop over it, a reshape to the
            # calibration length): export it fixed, as it would have been without the loader's probe
            source = fixed_length(source, args)
            _export(module, source, args, tmp, opset)
            verify = verify_against_torch(module, source, tmp, data, where=dest.name)
            verify["fixed_length"] = (f"sequence length fixed to the data's ({', '.join(s.name for s in source.inputs)}): "
                                      f"the graph did not run or match at another length: {short_reason(e)}")
    facts = graph_facts(dest)
    art = Artifact(kind=kind, path=dest.name, parent=parent, stage=stage, params=facts["params"],
                   opset=facts["opset"], inputs=facts["inputs"], outputs=facts["outputs"], verify=verify,
                   notes=[verify["fixed_length"]] if "fixed_length" in verify else [])
    art.refresh_file_facts(dest.parent)
    return art


# calls in forward() that torch's TorchScript exporter cannot convert, whose failure reads as an internal
# C++ error ("vector::_M_range_check: __n (which is 0) >= this->size()"): name the cause and the way out
_UNEXPORTABLE = {
    "pack_padded_sequence": "run the RNN on the padded batch (and mask the padding) instead of packing it",
    "pack_sequence": "run the RNN on the padded batch (and mask the padding) instead of packing it",
}


def _export_hint(module) -> str:
    import inspect

    try:
        src = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return ""
    for call, fix in _UNEXPORTABLE.items():
        if call + "(" in src:
            return f" (forward() calls {call}, which torch's ONNX exporter cannot convert: {fix})"
    return ""


def without_parametrizations(module):
    """A copy of `module` with every torch.nn.utils.parametrize parametrization baked into its tensor.
    spectral_norm's power iteration (aten::vdot) has no ONNX export, and the graph would recompute a
    constant weight on every run anyway; in eval mode the baked tensor is what forward() uses, so the
    check against the original module still holds. The user's module is left as it is."""
    from torch.nn.utils import parametrize

    if not any(parametrize.is_parametrized(m) for m in module.modules()):
        return module
    import copy

    import torch

    baked = copy.deepcopy(module).eval()
    for m in list(baked.modules()):
        if not parametrize.is_parametrized(m):
            continue
        with torch.no_grad():
            values = {name: getattr(m, name).detach().clone() for name in m.parametrizations.keys()}
        # by hand, not remove_parametrizations(): that deletes the property from the Parametrized class,
        # which the deep copy shares with the user's module (whose forward then lost its weight)
        m.__class__ = type(m).__bases__[0]
        del m._modules["parametrizations"]
        for name, v in values.items():
            m._parameters[name] = torch.nn.Parameter(v, requires_grad=False)
    return baked


def _export(module, source: SourceModel, args, tmp, opset: int) -> None:
    import onnx
    import torch

    module = without_parametrizations(module)

    # a failed attempt (edgekit then retries at a fixed length) makes torch dump its IR graph through
    # C++'s std::cout, which Python cannot redirect: onto stdout, and into --json. Sent to std::cerr
    # instead, it is muted with the rest of the exporter's native output
    with contextlib.suppress(Exception):
        torch._C._jit_set_onnx_log_output_stream("stderr")
    # torch's fused MHA fast path (nn.TransformerEncoderLayer in eval mode) has no ONNX export
    with warnings.catch_warnings(), torch.no_grad(), _mha_fastpath(False), native_stderr_muted():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(_data_inputs_only(module, len(args)), args, str(tmp),
                              input_names=[s.name for s in source.inputs],
                              output_names=list(source.outputs), dynamic_axes=source.dynamic_axes or None,
                              opset_version=opset, dynamo=False, do_constant_folding=True)
        except Exception as e:
            raise EdgekitError(f"{source.spec}: ONNX export failed: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}{_export_hint(module)}") from None
    try:
        onnx.checker.check_model(str(tmp))
    except onnx.checker.ValidationError as e:
        raise EdgekitError(f"{Path(tmp).name}: exported graph fails the ONNX checker: {str(e).splitlines()[0]}") from None
    _pin_placeholder_dims(tmp, source)


def _pin_placeholder_dims(path, source: SourceModel) -> None:
    """Give output dims torch named on its own ('Resizeoutput_dim_1', 'Concatboxes_dim_1') their value
    when onnxruntime's symbolic shape inference finds it constant. The INT8 file (whose pre-processing runs
    that inference) declared [batch, 4, 24, 24] where the FP32 file said [batch, Resizeoutput_dim_1, ...]:
    two shapes for one model. Dims that depend on a dynamic input stay symbolic."""
    import onnx

    declared = {v for axes in (source.dynamic_axes or {}).values() for v in axes.values()}
    m = onnx.load(str(path), load_external_data=False)  # shapes only: large weights stay where they are
    loose = [(i, j) for i, o in enumerate(m.graph.output) for j, d in enumerate(o.type.tensor_type.shape.dim)
             if d.HasField("dim_param") and d.dim_param not in declared]
    if not loose:
        return
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        from ..quant.static import quiet

        with quiet():
            inferred = SymbolicShapeInference.infer_shapes(m, auto_merge=True)
    except Exception:  # the inference gives up on some graphs: the names stay, as before
        return
    if inferred is None:
        return
    changed = False
    for i, j in loose:
        d = inferred.graph.output[i].type.tensor_type.shape.dim
        if j < len(d) and d[j].HasField("dim_value") and d[j].dim_value > 0:
            m.graph.output[i].type.tensor_type.shape.dim[j].dim_value = d[j].dim_value
            changed = True
    if changed:
        onnx.save(m, str(path))


def _length_axes(source: SourceModel) -> dict:
    """{input name: axis} of the inputs' dynamic axes besides the batch (the loader's sequence length)."""
    names = {s.name for s in source.inputs}
    return {n: a for n, axes in source.dynamic_axes.items() if n in names for a in axes if a != 0}


def fixed_length(source: SourceModel, args) -> SourceModel:
    """source with only its batch axis dynamic, the other axes fixed to the export's example `args`."""
    import dataclasses

    dyn = {n: {a: v for a, v in axes.items() if a == 0} for n, axes in source.dynamic_axes.items()}
    seq = _length_axes(source)
    inputs = [s if s.name not in seq else
              type(s)(s.name, [*s.shape[:seq[s.name]], int(a.shape[seq[s.name]]), *s.shape[seq[s.name] + 1:]], s.dtype)
              for s, a in zip(source.inputs, args)]
    return dataclasses.replace(source, dynamic_axes=dyn, inputs=inputs)


def _data_inputs_only(module, n_inputs: int):
    """module, or a wrapper taking just its data inputs when forward() has further parameters with
    defaults: the TorchScript exporter appends those defaults to the example args (a float default became
    a graph input; a keyword-only one a positional argument forward() refused)."""
    import inspect

    import torch

    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return module
    if len(params) <= n_inputs and not any(p.kind == p.KEYWORD_ONLY for p in params):
        return module

    class DataInputsOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner  # node names gain an /inner prefix, on these models only

        def forward(self, *xs):
            return self.inner(*xs)

    return DataInputsOnly(module).train(module.training)


@contextlib.contextmanager
def _mha_fastpath(enabled: bool):
    import torch

    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    old = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(old)


def verify_against_torch(module, source: SourceModel, onnx_path, data: Dataset | None, *, where: str,
                         shorten: bool = False) -> dict:
    """shorten: compare at half the data's sequence length, to check a graph exported with it dynamic."""
    import torch

    fixed = _fixed_batch(source)
    want = fixed or VERIFY_SAMPLES
    if data is not None and len(data) >= (fixed or 1):
        feeds = data.take(want).inputs
        n = len(data.take(want))
        origin = data.source or "data"
    else:
        feeds = {s.name: a.numpy() for s, a in zip(source.inputs, _example_args(source, None))}
        n, origin = fixed or 2, "generated zeros"
    feeds = {s.name: np.array(feeds[s.name], order="C") for s in source.inputs}  # a writable copy: memmaps are read-only
    if shorten:
        for name, axis in _length_axes(source).items():
            feeds[name] = np.ascontiguousarray(np.take(feeds[name], range(feeds[name].shape[axis] // 2), axis=axis))
        origin += ", half sequence length"
    with torch.no_grad():
        try:
            ref = module(*[torch.from_numpy(feeds[s.name]) for s in source.inputs])
        except Exception as e:
            # the model ran at the loader's probe batch and fails at this one: a mismatch between the
            # model and the data (an [N] array that broadcasts against [N, C] only when N == C), not an
            # edgekit fault, so one line naming the data rather than "internal error: RuntimeError"
            shapes = ", ".join(f"{s.name}{list(feeds[s.name].shape)}" for s in source.inputs)
            raise InputError(f"{origin}: forward() failed on {n} samples ({shapes}): {type(e).__name__}: "
                             f"{short_reason(e)} (it ran on the loader's {PROBE_BATCH}: does the model, or an input, depend "
                             "on the batch size? every input must hold one row per sample)") from None
    ref = [r.numpy() for r in (ref if isinstance(ref, (tuple, list)) else [ref])]
    got = session(onnx_path).run(None, feeds)
    res = check_outputs(ref, got, list(source.outputs), atol=ATOL, rtol=RTOL, where=where)
    res.update({"against": "pytorch", "n": n, "data": origin})
    return res


def short_reason(e: Exception, limit: int = 200) -> str:
    """One readable line from an exception; onnxruntime's status messages carry a source path and a C++
    signature between the failing node and the actual reason, which a cut at 160 characters kept instead
    of the reason ("... Status Message: /onnxruntime_")."""
    import re

    text = " ".join(str(e).split()) or type(e).__name__
    m = re.search(r"running (\w+) node\. Name:'([^']*)' Status Message: (.*)", text)
    if m:
        op, node, rest = m.groups()
        # "<path>:<line> <signature> <check> was false. <reason>": keep what follows the check
        reason = rest.split(" was false. ", 1)[1] if " was false. " in rest else re.sub(r"^\S+:\d+ \S+ ", "", rest)
        text = f"{op} node {node!r}: {reason}"
    return text if len(text) <= limit else text[:limit - 3].rsplit(" ", 1)[0] + "..."
