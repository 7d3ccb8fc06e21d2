"""The export stage: a torch module -> a checked, numerically verified ONNX file."""
from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..dataset import Dataset
from ..errors import EdgekitError, InputError, NumericsError
from ..fsutil import atomic_path
from ..loader import PROBE_BATCH
from ..module_copy import clone
from ..onnxutil import graph_facts, session
from ..source import SourceModel
from ..stdio import native_stderr_muted
from ..tied_weights import store_once
from ..verify import check_outputs, rule
from . import embedding_bags, export_symbolics, gemm_bn_fold, reparam, shape_fold

# element-wise |onnx - torch| <= ATOL * (the output's median |value|) + RTOL * |torch| (verify.rule)
ATOL, RTOL = 1e-3, 1e-4
VERIFY_SAMPLES = 16
EVAL_SAMPLES = 8  # eval inputs checked besides the calibration ones: other data than the trace saw
TRACE_BATCH = 2  # the batch _example_args traces at, unless the model fixes its own
_NOTED: set = set()  # tracer notes already printed: pruning exports the same model many times


def _fixed_batch(source: SourceModel) -> int | None:
    """The batch a model declares fixed (forward() hard-codes it), or None when it is dynamic."""
    dims = [s.shape[0] for s in source.inputs if s.shape]
    return dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None


def _example_args(source: SourceModel, data: Dataset | None):
    import torch

    want = _fixed_batch(source) or TRACE_BATCH
    if data is not None and len(data) >= want:
        feeds = data.take(want).inputs
        return tuple(torch.from_numpy(np.array(feeds[s.name])) for s in source.inputs)  # memmaps are read-only
    args = []
    for s in source.inputs:
        shape = [2 if isinstance(d, str) else d for d in s.shape]
        args.append(torch.zeros(shape, dtype=getattr(torch, s.dtype)))
    return tuple(args)


def export_module(module, source: SourceModel, dest, *, kind: str = "fp32", data: Dataset | None = None,
                  opset: int | None = None, parent: str | None = "source", stage: str = "export",
                  eval_data: Dataset | None = None) -> Artifact:
    """Export `module` to dest (atomically), run the ONNX checker and compare with PyTorch on real inputs:
    the first samples of `data`, batch 1, a batch other than the trace's, and a few of `eval_data`."""

    dest = Path(dest)
    opset = opset or source.opset
    data = data if data is not None else (source.calib or source.eval)
    eval_data = eval_data if eval_data is not None else source.eval
    args = _example_args(source, data)
    module = module.eval()
    exported, folded_note = with_blocks_folded(module, source, args)
    # errors name the user's model: the staging file (model.fp32.onnx) is deleted with the failed run
    check = dict(where=source.spec if kind == "fp32" else f"{source.spec} ({kind} model)",
                 eval_data=None if eval_data is data else eval_data,
                 torch_name="PyTorch" if kind == "fp32" else f"the {kind} model in PyTorch")
    warned: list = []
    with atomic_path(dest) as tmp:
        try:
            verify = _export_checked(exported, module, source, args, tmp, opset, data, check, warned)
        except Exception as e:  # onnxruntime's own errors too: a Reshape to the traced length fails to run
            if not _length_axes(source):
                _raise_with_warnings(e, warned)
            # the graph does not follow another length (a traced Python loop over it, a reshape to the
            # calibration length): export it fixed, as it would have been without the loader's probe
            source = fixed_length(source, args)
            try:
                verify = _export_checked(exported, module, source, args, tmp, opset, data, check, warned)
            except Exception as e2:
                _raise_with_warnings(e2, warned)
            verify["fixed_length"] = (f"sequence length fixed to the data's ({', '.join(s.name for s in source.inputs)}): "
                                      f"the graph did not run or match at another length: "
                                      f"{short_reason(getattr(e, 'reason', e))}")
    verify["compared_with"] = f"{source.spec} in PyTorch" if kind == "fp32" else (
        f"the {kind} model in PyTorch, which this file was exported from (not the source model: what "
        f"{'pruning' if kind == 'pruned' else 'distillation'} cost is measured by the metrics)")
    notes = [verify[k] for k in ("fixed_length", "shapes_unfolded") if k in verify]
    if folded_note:
        notes.append(folded_note)
        if folded_note not in _NOTED:
            _NOTED.add(folded_note)
            print(f"edgekit: note: {folded_note}", file=sys.stderr)
    if warned:
        notes.append(_tracer_note(source, warned, verify))
        if notes[-1] not in _NOTED:
            _NOTED.add(notes[-1])
            print(f"edgekit: note: {notes[-1]}", file=sys.stderr)
    facts = graph_facts(dest)
    # PyTorch's count, as every pruning table and distill.json give it: the file's own count differs where
    # the exporter folds a BatchNorm into the conv before it (6,186 parameters -> 6,090 initializer elements)
    art = Artifact(kind=kind, path=dest.name, parent=parent, stage=stage, params=torch_parameter_count(exported),
                   opset=facts["opset"], inputs=facts["inputs"], outputs=facts["outputs"], verify=verify,
                   notes=notes)
    art.refresh_file_facts(dest.parent)
    return art


def with_blocks_folded(module, source: SourceModel, args, *, when: str = "for export",
            then: str = "the ONNX file is checked against the unfolded model") -> tuple:
    """(the module to export, a note or None): module with its re-parameterisable blocks folded
    (stages/reparam.py) when the folded copy gives module's outputs on the trace's inputs, else module."""
    import torch

    try:
        folded, blocks = reparam.fold(module)
    except Exception as e:  # the model's own folding code
        return module, (f"{source.spec}: exported with its training-time branches: folding them failed: "
                        f"{type(e).__name__}: {short_reason(e)}")
    if not blocks:
        return module, None
    methods = ", ".join(sorted({m for _, m in blocks}))
    outs = []
    with torch.no_grad():
        for m in (module, folded):
            try:
                o = m(*[a.clone() for a in args])
            except Exception as e:
                if m is module:
                    raise  # the model itself: the export reports it
                return module, (f"{source.spec}: exported with its training-time branches: the model with "
                                f"{len(blocks)} block(s) folded ({methods}()) fails to run: {type(e).__name__}: "
                                f"{short_reason(e)}")
            outs.append([t.numpy() for t in (o if isinstance(o, (tuple, list)) else [o])])
    try:
        check_outputs(outs[0], outs[1], list(source.outputs), atol=ATOL, rtol=RTOL, where=source.spec,
                      between="from the unfolded model")
    except NumericsError as e:
        return module, (f"{source.spec}: exported with its training-time branches: folding {len(blocks)} "
                        f"block(s) ({methods}()) changed the outputs: {short_reason(e)}")
    return folded, (f"{source.spec}: {len(blocks)} block(s) re-parameterised {when} with their own "
                    f"{methods}() (e.g. {blocks[0][0]}): the parallel training branches folded into the layers "
                    f"they equal in eval mode; {then}")


def torch_parameter_count(module) -> int:
    """Elements of the module's parameters as exported (a parametrization baked into one weight, not its
    g and v), a tensor shared by several modules (a head tied to its embedding) counted once, as
    tied_weights finds shared storage."""
    sizes = {}
    for _, p in without_parametrizations(module).named_parameters(remove_duplicate=False):
        key = (p.untyped_storage().data_ptr(), p.storage_offset(), tuple(p.shape), tuple(p.stride()), p.dtype)
        sizes[key] = p.numel()
    return sum(sizes.values())


def _raise_with_warnings(e: Exception, warned: list):
    """Re-raise e; an edgekit error gains torch's tracer warnings, the likely cause of a mismatch."""
    if isinstance(e, EdgekitError) and warned:
        raise type(e)(f"{e}; torch warned while tracing: {_warnings_text(warned)}") from None
    raise e


def _warnings_text(warned: list, limit: int = 3) -> str:
    more = f" (and {len(warned) - limit} more)" if len(warned) > limit else ""
    return "; ".join(warned[:limit]) + more


def _tracer_note(source: SourceModel, warned: list, verify: dict) -> str:
    batches = [str(b) for b in verify.get("batches", [])]
    checked = ", ".join(batches[:-1]) + " and " + batches[-1] if len(batches) > 1 else "".join(batches)
    data = ", ".join(dict.fromkeys(c["data"] for c in verify.get("checks", [])))
    return (f"{source.spec}: torch warned while tracing forward(): {_warnings_text(warned)}. The ONNX graph keeps "
            f"what those lines computed for the {verify.get('traced_batch')} traced samples; it matched PyTorch at "
            f"batch {checked} on {data}, but inputs that take another path there will differ")


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
    import torch

    baked = clone(module).eval()
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


def _export_checked(exported, module, source: SourceModel, args, tmp, opset: int, data, check: dict,
                    warned: list) -> dict:
    """Export to tmp with its shape arithmetic folded (shape_fold.py) and verify it against PyTorch (at
    another length too, where the source has one); the verify record. A folded graph that fails the check
    is exported again unfolded, with a note: the fold exists for speed, never at the cost of a model that
    exports. `warned` gets the tracer's warnings, also when this raises."""
    warned[:], folded = _export(exported, source, args, tmp, opset, fold_shapes=True)
    try:
        verify = _verified(module, source, tmp, data, check)
    except Exception as e:
        if not folded:
            raise
        warned[:], _ = _export(exported, source, args, tmp, opset, fold_shapes=False)
        verify = _verified(module, source, tmp, data, check)
        verify["shapes_unfolded"] = (f"shape arithmetic left unfolded: the graph with it folded failed its check: "
                                     f"{short_reason(getattr(e, 'reason', e))}")
        return verify
    if folded:
        verify["shape_nodes_folded"] = folded
    return verify


def _verified(module, source: SourceModel, path, data, check: dict) -> dict:
    """verify_against_torch at the traced length, and at another where the source has a length axis."""
    verify = verify_against_torch(module, source, path, data, **check)
    if _length_axes(source):
        other = verify_against_torch(module, source, path, data, shorten=True, **check)
        verify["other_length"] = {k: v for k, v in other.items() if k not in ("against", "rule", "atol", "rtol")}
    return verify


def _export(module, source: SourceModel, args, tmp, opset: int, *, fold_shapes: bool = True) -> tuple[list, int]:
    """Write the ONNX file; return (torch's tracer warnings, one line each ('file:line (code) message'),
    the shape-arithmetic nodes folded away)."""
    import onnx
    import torch

    module = without_parametrizations(module)
    export_symbolics.register()

    # a failed attempt (edgekit then retries at a fixed length) makes torch dump its IR graph through
    # C++'s std::cout, which Python cannot redirect: onto stdout, and into --json. Sent to std::cerr
    # instead, it is muted with the rest of the exporter's native output
    with contextlib.suppress(Exception):
        torch._C._jit_set_onnx_log_output_stream("stderr")
    # torch's fused MHA fast path (nn.TransformerEncoderLayer in eval mode) has no ONNX export
    with warnings.catch_warnings(record=True) as caught, torch.no_grad(), _mha_fastpath(False), \
            embedding_bags.as_gathers(module), native_stderr_muted():
        # recorded, not shown: the exporter's deprecation chatter goes, a TracerWarning (a Python branch
        # or int() on a tensor, frozen into the graph) is the one signal that the trace may not generalise
        warnings.simplefilter("always")
        exported = _data_inputs_only(module, len(args))
        try:
            torch.onnx.export(exported, args, str(tmp),
                              input_names=[s.name for s in source.inputs],
                              output_names=list(source.outputs), dynamic_axes=source.dynamic_axes or None,
                              opset_version=opset, dynamo=False, do_constant_folding=True)
        except Exception as e:
            raise EdgekitError(f"{source.spec}: ONNX export failed: {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}{_export_hint(module)}") from None
    # constant folding wrote a tied weight (and a weight read through .t()) once more, transposed
    store_once(tmp, exported)
    gemm_bn_fold.fold_file(tmp)
    try:
        onnx.checker.check_model(str(tmp))
    except onnx.checker.ValidationError as e:
        raise EdgekitError(f"{Path(tmp).name}: exported graph fails the ONNX checker: {str(e).splitlines()[0]}") from None
    folded = shape_fold.fold_file(tmp) if fold_shapes else 0
    _pin_placeholder_dims(tmp, source)
    return _tracer_warnings(caught), folded


def _tracer_warnings(caught) -> list:
    import linecache
    import os

    import torch
    from torch.jit import TracerWarning

    torch_dir = os.path.dirname(torch.__file__) + os.sep
    out = []
    for w in caught:
        if not issubclass(w.category, TracerWarning):
            continue
        if w.filename.startswith(torch_dir):
            continue  # torch's own argument checks (F.embedding's padding_idx), nothing the user can change
        where = os.path.relpath(w.filename) if not os.path.relpath(w.filename).startswith("..") else w.filename
        code = linecache.getline(w.filename, w.lineno).split("  #")[0].strip()  # without an inline comment
        text = f"{where}:{w.lineno}" + (f" ({code})" if code else "") + f" {str(w.message).split('. ')[0].strip()}"
        if text not in out:
            out.append(text)
    return out


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
                         shorten: bool = False, eval_data: Dataset | None = None,
                         torch_name: str = "PyTorch") -> dict:
    """Compare the ONNX file with `module` on the first samples of `data`, then at batch 1, at a batch other
    than the trace's and on a few samples of `eval_data`: a trace freezes a Python branch on the data or
    on the batch size, which the trace's own inputs never show. shorten: only the first check, at half
    the data's sequence length, to check a graph exported with it dynamic."""
    try:
        sess = session(onnx_path)
    except Exception as e:  # torch's exporter wrote a graph onnxruntime refuses (an op on a type it lacks)
        raise EdgekitError(f"{where}: torch's ONNX exporter wrote a graph onnxruntime cannot load: "
                           f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    traced = _fixed_batch(source) or TRACE_BATCH
    checks, skipped, per = [], [], {}
    for i, (feeds, case) in enumerate(_cases(source, data, None if shorten else eval_data, shorten=shorten)):
        if shorten:
            for name, axis in _length_axes(source).items():
                feeds[name] = np.ascontiguousarray(np.take(feeds[name], range(feeds[name].shape[axis] // 2),
                                                           axis=axis))
            case["data"] += ", half sequence length"
        what = _described(case, traced)
        ref = _torch_outputs(module, source, feeds, case, first=i == 0)
        if isinstance(ref, str):
            skipped.append(f"batch {case['batch']} on {case['data']}: {ref}")
            continue
        problem = _unfit_feeds(sess, feeds) if i else ""  # the first check's data is the trace's: it must run
        if problem:
            skipped.append(f"{case['data']}: {problem}")
            continue
        try:
            got = sess.run(None, feeds)
        except Exception as e:
            hint = "" if case["batch"] == traced else (
                " (the graph fixed the traced batch size: does forward() make it a Python number, "
                "e.g. int(x.shape[0]), or hard-code it? if forward() runs only one fixed batch size B, pass "
                "--input-shape B,...)")
            err = NumericsError(f"{where}: the exported graph fails to run on {what}: {short_reason(e)}{hint}")
            err.reason = short_reason(e)
            raise err from None
        try:
            res = check_outputs(ref, got, list(source.outputs), atol=ATOL, rtol=RTOL, where=where,
                                between=f"from {torch_name} on {what}")
        except NumericsError:
            _check_deterministic(module, source, feeds, case, ref, where=where, what=what, torch_name=torch_name)
            raise
        checks.append({**case, "max_abs_diff": res["max_abs_diff"]})
        for name, rec in res["per_output"].items():
            if rec["max_diff_over_limit"] >= per.get(name, {}).get("max_diff_over_limit", -1.0):
                per[name] = {**rec, "batch": case["batch"], "data": case["data"]}
    main = checks[0]
    out = {"against": "pytorch", "rule": rule(ATOL, RTOL), "atol": ATOL, "rtol": RTOL,
           "max_abs_diff": max(c["max_abs_diff"] for c in checks), "per_output": per,
           "n": main["batch"], "data": main["data"],
           "traced_batch": traced, "batches": sorted({c["batch"] for c in checks}), "checks": checks}
    if skipped:
        out["not_checked"] = skipped
    return out


def _check_deterministic(module, source: SourceModel, feeds: dict, case: dict, ref: list, *, where: str,
                         what: str, torch_name: str) -> None:
    """After a mismatch: raise a NumericsError saying so when forward() itself gives other outputs for the
    same input. A model with dropout left on (F.dropout(x, p, training=True), Monte-Carlo dropout) was
    reported as an export mismatch ("outputs differ from PyTorch ... 160 of 160 values out of tolerance"),
    which sent the user looking for an exporter bug; no graph can match it, and every score would be noise."""
    again = _torch_outputs(module, source, feeds, case, first=False)
    if isinstance(again, str):
        return
    try:
        check_outputs(ref, again, list(source.outputs), atol=ATOL, rtol=RTOL, where=where)
    except NumericsError as e:
        diff = max(float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
                   for a, b in zip(ref, again) if a.shape == b.shape and a.dtype.kind in "fc")
        reason = (f"forward() is not deterministic: two {torch_name} runs on the same {what} differ (max|diff| "
                  f"{diff:.3g}); is dropout or sampling active in eval mode (F.dropout(x, p, training=True), "
                  "torch.rand in forward())? edgekit checks and scores the model against itself, so it must give "
                  "one output per input")
        err = NumericsError(f"{where}: {reason}")
        err.reason = reason
        raise err from e


def _cases(source: SourceModel, data: Dataset | None, eval_data: Dataset | None, *, shorten: bool) -> list:
    """[(feeds, {data, samples, batch})]: the data's first samples, then (unless shorten) batch 1, a
    batch besides 1 and the trace's (repeating samples when the data holds no more), and eval samples."""
    fixed = _fixed_batch(source)
    if data is not None and len(data) >= (fixed or 1):
        first = data.take(fixed or VERIFY_SAMPLES).inputs
        origin = data.source or "data"
    else:
        first = {s.name: a.numpy() for s, a in zip(source.inputs, _example_args(source, None))}
        origin = "generated zeros"
    first = {s.name: np.array(first[s.name], order="C") for s in source.inputs}  # memmaps are read-only
    n = len(next(iter(first.values())))
    cases = [(first, {"data": origin, "samples": _span(n), "batch": n})]
    if shorten:
        return cases
    if not fixed:
        if n > 1:
            cases.append(({k: v[:1].copy() for k, v in first.items()}, {"data": origin, "samples": "0", "batch": 1}))
        if n in (1, TRACE_BATCH):
            b = TRACE_BATCH + 1
            idx = np.arange(b) % n
            cases.append(({k: v[idx] for k, v in first.items()},
                          {"data": origin, "samples": f"{_span(n)} repeated", "batch": b}))
    if eval_data is not None and len(eval_data) >= (fixed or 1):
        ev = eval_data.take(fixed or EVAL_SAMPLES)
        feeds = {s.name: np.array(ev.inputs[s.name], order="C") for s in source.inputs}
        m = len(next(iter(feeds.values())))
        cases.append((feeds, {"data": eval_data.source or "eval data", "samples": _span(m), "batch": m}))
    return cases


def _span(n: int) -> str:
    return "0" if n == 1 else f"0-{n - 1}"


def _described(case: dict, traced: int) -> str:
    """'d/x16.npy (samples 0-15 as one batch of 16; traced at batch 2)', for errors."""
    many = "-" in case["samples"]
    return (f"{case['data']} (sample{'s' if many else ''} {case['samples']} "
            f"{'as one batch of ' if many else 'at batch '}{case['batch']}; traced at batch {traced})")


def _torch_outputs(module, source: SourceModel, feeds: dict, case: dict, *, first: bool):
    """forward() on its own copy of feeds (it may change its inputs in place: x.mul_(2) doubled what
    onnxruntime was then given) -> list of arrays; for a check after the first, a failure is returned as
    text (the check is skipped: the model does not run there in PyTorch either)."""
    import torch

    with torch.no_grad():
        try:
            ref = module(*[torch.from_numpy(feeds[s.name].copy()) for s in source.inputs])
        except Exception as e:
            if not first:
                return f"forward() fails in PyTorch: {type(e).__name__}: {short_reason(e)}"
            # the model ran at the loader's probe batch and fails at this one: a mismatch between the
            # model and the data (an [N] array that broadcasts against [N, C] only when N == C), not an
            # edgekit fault, so one line naming the data rather than "internal error: RuntimeError"
            shapes = ", ".join(f"{s.name}{list(feeds[s.name].shape)}" for s in source.inputs)
            raise InputError(f"{case['data']}: forward() failed on {case['batch']} samples ({shapes}): "
                             f"{type(e).__name__}: {short_reason(e)} (it ran on the loader's {PROBE_BATCH}: does "
                             "the model, or an input, depend on the batch size? every input must hold one row "
                             "per sample)") from None
    return [r.numpy() for r in (ref if isinstance(ref, (tuple, list)) else [ref])]


def _unfit_feeds(sess, feeds: dict) -> str:
    """Why feeds do not fit the graph's fixed input dims ('' when they do): eval data of another sequence
    length than a graph exported at a fixed one."""
    for i in sess.get_inputs():
        got = feeds[i.name].shape
        want = i.shape
        if len(got) != len(want) or any(isinstance(w, int) and w != g for w, g in zip(want, got)):
            return f"input {i.name} is {list(got)}, the graph takes {want}"
    return ""


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
