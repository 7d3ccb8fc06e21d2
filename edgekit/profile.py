"""Latency of ONNX models on a target: interleaved, with statistics, memory, providers and op times.

No torch import here: `python -m edgekit.profile MODEL...` runs anywhere numpy + onnxruntime do.
The timing loop, statistics and the ONNX Runtime profile parser live in the device runner
(edgekit/runner/edgekit_runner.py), which this module imports in-process for local targets
and runs under qemu for the emulated one: one implementation, three places.

A measurement is {"status": "ok", ...numbers...}; anything that could not be measured is
{"status": "unavailable"|"failed", "reason": ...} with no numbers at all.
"""
from __future__ import annotations

import inspect
import math
import platform
import time

import numpy as np

from .fsutil import per_file_version
from .runner import edgekit_runner as runner

KNOWN_KINDS = ("fp32", "pruned", "distilled", "int8", "int8-dynamic", "fp16", "sparse")
_INT8_HINTS = ("QLinear", "Integer", "QuantizeLinear", "DequantizeLinear", "DynamicQuantize", "QGemm",
               "QAttention")
_ARCH_ALIASES = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64"}
# outputs of the same model on ARM vs x86: FP32 kernels differ in summation order, INT8 ones must not
FP32_ATOL = 1e-4


def host_arch() -> str:
    m = platform.machine().lower()
    return _ARCH_ALIASES.get(m, m)


def host_cpu() -> str:
    from .hostinfo import cpu_info

    return cpu_info()["model"]


def _no_numbers(status: str, reason: str) -> dict:
    return {"status": status, "reason": reason}


def profile_models(models: dict, target, *, inputs=None, warmup=5, min_runs=30, min_seconds=1.0,
                   max_seconds=30.0, op_profile=True, threads=None, batch=1, prepost=None,
                   return_outputs=False, ssh=None, settle=True) -> dict:
    """Measure models ({label: onnx path}) on one target, interleaved in one process.

    inputs: list of feed dicts (real data, cycled) or None to generate them from the models.
    threads: overrides the target's thread count. prepost: a pre/post-processing pipeline
    (see profile_prepost) to time end to end next to the model. return_outputs: include the
    outputs of the first input as "outputs" (numpy arrays; emulated and SSH targets always
    compare them with this host's and record "arm_vs_host"). ssh: edgekit.flash SshOptions for
    ssh:// targets (default: the user's keys and known_hosts). settle: see runner.bench_models.
    """
    from .targets import load_target

    t = load_target(target)
    threads = threads if threads is not None else t.threads
    models = {str(k): str(v) for k, v in models.items()}
    common = {"target": t.name, "emulated": t.emulated, "address": t.address, "arch": t.arch}
    kw = dict(warmup=warmup, min_runs=min_runs, min_seconds=min_seconds, max_seconds=max_seconds,
              threads=threads, batch=batch, settle=settle)
    if t.address == "local":
        if t.arch != host_arch():
            res = {k: _no_numbers("unavailable", f"target {t.name} is {t.arch}; this host is {host_arch()} "
                                  "(use arm64-emulated for ARM correctness, or an ssh:// target for timings)")
                   for k in models}
        else:
            _warm_first_run(models, inputs, t, threads, batch)
            res = runner.bench_models(models, inputs, providers=list(t.providers), required=t.required_providers,
                                      op_runs=10 if op_profile else 1, keep_outputs=return_outputs, **kw)
            for v in res.values():
                if not op_profile:
                    v.pop("op_breakdown", None)
    elif t.address == "emulated":
        from . import emulation

        res = emulation.profile_emulated(models, t, inputs, op_runs=3 if op_profile else 0, **kw)
    else:
        from .profile_remote import profile_ssh

        res = profile_ssh(models, t, inputs, ssh=ssh, op_runs=10 if op_profile else 1, **kw)
    out = {}
    for label, r in res.items():
        if r.get("status") != "ok":
            out[label] = {"status": r.get("status", "failed"), "reason": r.get("reason", "unknown"),
                          "target": t.name}
            continue
        r.pop("machine", None)
        nodes = r.pop("nodes", None)
        if op_profile and nodes:
            r["top_nodes"] = nodes[:10]
        elif not op_profile:  # the device runner keeps a 1-run profile for its fallback count: not a breakdown
            r.pop("op_breakdown", None)
        if "_outputs" in r:
            r["outputs"] = r.pop("_outputs")
        r = {**common, **r}
        dev_cpu = r.pop("device_cpu", None)  # what ran it: the device over SSH, else this host (qemu included)
        r["host_cpu"] = dev_cpu if t.address.startswith("ssh://") else host_cpu()
        r["precision"] = precision_of(label, r, models[label])
        if prepost is not None and t.address == "local":
            r["prepost"] = profile_prepost(models[label], prepost, threads=threads, inputs=inputs,
                                           providers=list(t.providers), batch=r.get("batch", batch),
                                           **{k: kw[k] for k in
                                                                          ("warmup", "min_runs",
                                                                           "min_seconds", "max_seconds")})
        elif prepost is not None:
            r["prepost"] = _no_numbers("unavailable", f"pre/post timing runs on local targets only, not {t.address}")
        if not return_outputs:
            r.pop("outputs", None)
        out[label] = r
    return out


def _warm_first_run(models: dict, inputs, t, threads, batch) -> None:
    """Create, run once and drop a throwaway session before any cold start is timed. The first run in
    a process pays onnxruntime's one-time set-up (tens of ms), which otherwise lands on whichever
    artifact is first: two copies of one model differed tenfold, swapping with their order."""
    usable, _, reason = runner.provider_status(list(t.providers), t.required_providers)
    if reason:
        return  # the target is unavailable: nothing will be timed
    for path in models.values():
        try:
            s = runner.open_session(path, usable, threads)
            s.run(None, runner.fit_feeds(s, inputs[0], batch) if inputs else runner.make_feeds(s, batch))
            return
        except Exception:  # this model reports its own failure when measured; warm up on the next
            continue


def ratio(a: dict, b: dict) -> float | None:
    """p50(a) / p50(b), or None unless both are measurements (never a ratio of a reason)."""
    if not (isinstance(a, dict) and isinstance(b, dict)) or a.get("status") != "ok" or b.get("status") != "ok":
        return None
    if a.get("emulated") != b.get("emulated") or not b.get("p50_ms"):
        return None  # emulated and native timings are never mixed
    return a["p50_ms"] / b["p50_ms"]


def precision_of(label: str, r: dict, path=None) -> str | None:
    """The label when it is an artifact kind; else what the graph at path holds (int8, fp16 or fp32);
    else what the executed ops say (int8 or fp32)."""
    import re

    base = re.sub(r"#\d+$", "", label.rsplit("/", 1)[-1])
    for part in reversed(base.split(".")):  # the last kind names the file's precision: distilled.int8
        if part in KNOWN_KINDS:
            return part
    # the graph, not the op profile: --no-op-profile must not change the precision (and so the ratio
    # baseline), and onnxruntime's CPU kernels run an FP16 model as Cast + FP32 ops
    found = graph_precision(path) if path else None
    if found:
        return found
    ops = r.get("op_breakdown") or {}
    if ops:
        return "int8" if any(h in op for op in ops for h in _INT8_HINTS) else "fp32"
    return None


def graph_precision(path) -> str | None:
    """int8 when the graph has quantized ops, fp16 when most of its float weights (or, without weights, its
    float inputs) are float16, else fp32; None when onnx cannot read it (host side only)."""
    try:
        return _graph_precision(path)
    except OSError:
        return None


@per_file_version  # a sweep asks once per (target, batch, threads) and a big graph loads slowly
def _graph_precision(path) -> str | None:
    try:
        import onnx

        m = onnx.load(path, load_external_data=False)
    except Exception:
        return None
    g = m.graph
    if any(h in n.op_type for n in g.node for h in _INT8_HINTS):
        return "int8"
    half, full = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    count = {half: 0, full: 0}
    tensors = list(g.initializer) + [a.t for n in g.node if n.op_type == "Constant" for a in n.attribute
                                     if a.name == "value"]
    for t in tensors:
        if t.data_type in count:
            count[t.data_type] += int(np.prod(t.dims)) if len(t.dims) else 1
    if not any(count.values()):
        for i in g.input:
            if i.type.tensor_type.elem_type in count:
                count[i.type.tensor_type.elem_type] += 1
    return "fp16" if count[half] > count[full] else "fp32"


def output_tolerance(model_path: str, precision: str | None, reference: dict) -> float:
    """Stated tolerance for ARM vs x86 outputs: FP32 1e-4 x max(1, |ref|); INT8 one output quantum."""
    # finite values only: an inf made the tolerance inf (every finite difference then passed), and a NaN
    # is skipped by max() at random, leaving the tolerance of a unit-scale output
    finite = [np.abs(v[np.isfinite(v)]) for v in reference.values() if v.size and v.dtype.kind == "f"]
    scale = max([1.0] + [float(a.max()) for a in finite if a.size])
    atol = FP32_ATOL * scale
    if precision in ("int8", "int8-dynamic") or precision is None:
        q = _output_quantum(model_path)
        if q:
            atol = max(atol, q * 1.0001)  # one quantization step, plus float rounding of the step itself
    return atol


def _output_quantum(model_path: str) -> float | None:
    """Largest scale of a DequantizeLinear that produces a graph output (needs onnx; host side only)."""
    try:
        import onnx
        from onnx import numpy_helper

        m = onnx.load(model_path, load_external_data=False)
    except Exception:
        return None
    inits = {i.name: i for i in m.graph.initializer}
    outs = {o.name for o in m.graph.output}
    producers = {o: n for n in m.graph.node for o in n.output}
    scales = []
    for name in outs:
        n = producers.get(name)
        # walk back through shape-only ops to the DequantizeLinear that made this output
        while n is not None and n.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose"):
            n = producers.get(n.input[0])
        if n is not None and n.op_type == "DequantizeLinear" and n.input[1] in inits:
            scales.append(float(np.max(numpy_helper.to_array(inits[n.input[1]]))))
    return max(scales) if scales else None


# ---------------------------------------------------------------- pre/post-processing


def profile_prepost(model_path: str, prepost, *, threads=None, providers=None, warmup=5, min_runs=30,
                    min_seconds=1.0, max_seconds=30.0, inputs=None, batch=1) -> dict:
    """Pre-process, model and post-process times, and their end-to-end sum, timed per iteration.

    batch: samples per iteration, as the model-only timing beside it ran: each is pre-processed, the
    model runs them as one batch, and each is post-processed on its own (as the device runner does).
    Times are per iteration (per batch); every part's throughput is samples per second.

    prepost: {"pipeline": P, "raw": [raw inputs]} or a pipeline with .preprocess(raw), .postprocess(outputs)
    and optional .warmup() / .example_input(). preprocess may return a feed dict or one array.
    inputs: model feed dicts (real samples). A pipeline without pre steps has no raw input of its
    own (its "raw" input is the model's input): these are timed, else a generated model input.
    """
    pipe, raw = (prepost.get("pipeline"), prepost.get("raw")) if isinstance(prepost, dict) else (prepost, None)
    origin = "given"
    if raw is None and inputs and callable(getattr(pipe, "raw_from_inputs", None)):
        # the run's real samples, as the first pre step's raw input (token rows): its example ids may not
        # even fit this model's vocabulary, and its length is not the data's
        found = [r for r in (pipe.raw_from_inputs(dict(f)) for f in inputs) if r is not None]
        raw, origin = (found, "model inputs, as raw input") if found else (None, origin)
    if raw is None:
        for attr in ("example_input", "sample_input", "example_raw"):
            if callable(getattr(pipe, attr, None)):
                ex = getattr(pipe, attr)()
                raw, origin = ([ex], "pipeline example") if ex is not None else (None, origin)
                break
    no_pre = getattr(pipe, "pre", None) is not None and not pipe.pre
    if raw is None and no_pre:
        raw, origin = ([dict(f) for f in inputs], "model inputs") if inputs else (None, "generated model input")
    raw = [r for r in raw if r is not None] if raw is not None else None
    if not raw and origin != "generated model input":
        return _no_numbers("unavailable", "no raw input for the pre-processing (pass raw samples)")
    try:
        if callable(getattr(pipe, "warmup", None)):
            pipe.warmup()  # JIT compile outside the timed runs
        sess = runner.open_session(model_path, providers, threads)
        names = [i.name for i in sess.get_inputs()]
        out_names = [o.name for o in sess.get_outputs()]
        # as the device runner calls it: post steps may read model inputs (attention_mask) or outputs by name
        named_post = "feeds" in inspect.signature(pipe.postprocess).parameters

        def post_kw(x):
            return {"feeds": x, "names": out_names} if named_post else {}
        if not raw:  # post steps only and no real sample: the model's own input, generated as bench does
            try:
                raw = [runner.make_feeds(sess)]
            except ValueError as e:  # a symbolic image size, say: nothing to time with
                return _no_numbers("unavailable", f"no model input to time the post-processing with: {e}")

        def feeds_of(x):
            if isinstance(x, dict):
                return runner.fit_feeds(sess, x, 1)
            return runner.fit_feeds(sess, {names[0]: x}, np.asarray(x).shape[0] if np.ndim(x) else 1)

        def batch_of(xs):
            x = _stack([x if isinstance(x, dict) else {names[0]: x} for x in xs])
            return runner.fit_feeds(sess, x, batch)

        def post_each(outs, x):
            n = len(outs[0]) if outs and np.ndim(outs[0]) else 1
            if batch == 1 or n != batch:
                return pipe.postprocess(outs, **post_kw(x))
            for j in range(n):
                rows = [v[j:j + 1] if np.ndim(v) and len(v) == n else v for v in outs]
                pipe.postprocess(rows, **post_kw({k: v[j:j + 1] if np.ndim(v) and len(v) == n else v
                                                  for k, v in x.items()}))

        parts = {"pre": [], "model": [], "post": []}

        def build(i):
            if batch == 1:
                return feeds_of(pipe.preprocess(raw[i % len(raw)]))
            return batch_of([pipe.preprocess(raw[(i * batch + j) % len(raw)]) for j in range(batch)])

        # without pre steps the raw input is the model's feed: what is left to do is edgekit's own feed
        # building (fitting, and at batch > 1 stacking copies), which timed as "pre" gave a post-only spec
        # 23-27% of its end-to-end time in a stage that does not exist; built once here, and pre is 0
        ready = [build(i) for i in range(len(raw) // math.gcd(batch, len(raw)))] if no_pre else None

        def once(i):
            clock = time.perf_counter
            t0 = clock()
            x = ready[i % len(ready)] if ready else build(i)
            t1 = t0 if ready else clock()
            outs = sess.run(None, x)
            t2 = clock()
            post_each(outs, x)
            t3 = clock()
            parts["pre"].append((t1 - t0) * 1e3)
            parts["model"].append((t2 - t1) * 1e3)
            parts["post"].append((t3 - t2) * 1e3)

        e2e = runner.timed_loop({"e2e": once}, warmup=warmup, min_runs=min_runs, min_seconds=min_seconds,
                                max_seconds=max_seconds)["e2e"]
    except Exception as e:
        return _no_numbers("failed", f"{type(e).__name__}: {e}")
    n = len(e2e)
    # every iteration carries `batch` samples: throughput is samples per second, as the model-only timing's,
    # so a reader can set e2e against the model's own figure
    out = {"status": "ok", "e2e": runner.summarize(e2e, batch)}
    for k, v in parts.items():
        out[k] = runner.summarize(v[-n:], batch)  # drop the warm-up calls
    out["spec"] = getattr(pipe, "spec", None) if not callable(getattr(pipe, "spec", None)) else None
    out["raw_input"] = origin
    if origin == "given" and raw and not isinstance(raw[0], dict):  # an image file is decoded: say to what
        out["raw_shape"] = [int(d) for d in np.shape(raw[0])]
    out["batch"] = batch
    return out


def _stack(feeds: list) -> dict:
    """One feed dict from per-sample ones, along axis 0; an input whose samples differ in shape (token
    rows of other lengths) takes the first sample's, which fit_feeds repeats to the batch."""
    out = {}
    for k in feeds[0]:
        vals = [np.asarray(f[k]) for f in feeds]
        same = all(v.ndim and v.shape[1:] == vals[0].shape[1:] for v in vals)
        out[k] = np.concatenate(vals, axis=0) if same else vals[0]
    return out


def main(argv=None) -> int:
    """`python -m edgekit.profile MODEL... [--target NAME]`: JSON on stdout, no click or torch needed."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m edgekit.profile")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--target", default=None)
    ap.add_argument("--min-runs", type=int, default=30)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args(argv)
    from .targets import DEFAULT_TARGET

    res = profile_models({m: m for m in a.models}, a.target or DEFAULT_TARGET, min_runs=a.min_runs,
                         min_seconds=a.min_seconds, threads=a.threads, batch=a.batch)
    from .report.fmt import json_safe

    print(json.dumps(json_safe(res), indent=2, allow_nan=False, default=str))
    return 0 if any(v.get("status") == "ok" for v in res.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
