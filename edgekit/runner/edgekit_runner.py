#!/usr/bin/env python3
"""edgekit device runner: a single file that needs only numpy and onnxruntime.

One runner, three places: edgekit's own profiler imports its functions in-process, the
arm64-emulated target runs it under qemu, and flashed bundles run it on devices over SSH.
Every subcommand prints one JSON object on stdout.

    bench    --model [LABEL=]M ... [--inputs X.npz] [--batch N] [--threads N] [--warmup N]
             [--min-runs N --min-seconds S --max-seconds S | --runs N] [--op-runs N]
             [--providers JSON] [--outputs OUT.npz]
    run      --model M --inputs X.npz --out Y.npz
    selftest --bundle DIR      (DIR/bundle.json: model, selftest{inputs, expected, atol}); exit 1 on mismatch

Several --model are timed interleaved (round-robin, alternating who goes first) so that a busy
machine slows them alike and their ratio stays meaningful.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time

import numpy as np

RUNNER_VERSION = 1
# Every session flushes denormal floats to zero. Attention over a padded sequence pushes softmax into
# the denormal range, where each x86 float op costs ~100 cycles: on MiniLM with a 15-token sentence
# padded to 128, the INT8 QAttention layers took 6.8 ms against 2.9 ms unpadded, and flushing took the
# whole INT8 model from 16.1 to 11.8 ms, FP32 unchanged, outputs identical on 400 sentences
# (benchmarks/quantize/denormals.py). Values below 1.2e-38 carry no signal in inference; the same
# setting is used for every model edgekit times, so comparisons stay like for like.
SESSION_CONFIG = {"session.set_denormal_as_zero": "1"}
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}
_SEQ_DIM = re.compile(r"seq|len|token|time|step|word", re.I)
SEQ_DEFAULT = 128


# ---------------------------------------------------------------- statistics (the only copy)

def summarize(samples_ms, batch: int = 1) -> dict:
    """Latency statistics of timed runs (ms); throughput in inferences (samples) per second."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no timed runs")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    mean = float(a.mean())
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": mean,
            "std_ms": float(a.std(ddof=1)) if a.size > 1 else 0.0, "min_ms": float(a.min()),
            "max_ms": float(a.max()), "throughput": float(batch * 1000.0 / mean) if mean > 0 else None,
            "runs": int(a.size)}


def current_rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_mb() -> float | None:
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20
    except (ImportError, OSError):
        return None


def cpu_model() -> str:
    """This machine's CPU as /proc/cpuinfo names it (x86 "model name"; ARM implementer/part)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                fields.setdefault(k.strip().lower(), v.strip())
    except OSError:
        pass
    if fields.get("model name"):
        return fields["model name"]
    arm = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72",
           "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1", "0xd42": "Cortex-A78AE",
           "0xd4f": "Neoverse-V2"}
    part = fields.get("cpu part", "")
    return arm.get(part, f"{platform.machine()} part {part}" if part else platform.machine())


# ---------------------------------------------------------------- sessions and inputs

def provider_status(providers, required=None) -> tuple[list, list, str | None]:
    """(usable [(name, opts)], missing [names], reason-if-a-required-one-is-missing)."""
    import onnxruntime as ort

    avail = set(ort.get_available_providers())
    names = [n for n, _ in providers]
    required = names if required is None else list(required)
    usable = [(n, o) for n, o in providers if n in avail]
    missing = [n for n in names if n not in avail]
    bad = [n for n in missing if n in required]
    if not bad:
        return usable, missing, None
    return usable, missing, _missing_reason(bad[0], avail)


def _missing_reason(name: str, avail) -> str:
    import onnxruntime as ort

    ver = getattr(ort, "__version__", "?")
    if name in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        if "CUDAExecutionProvider" not in avail:
            return (f"onnxruntime-gpu not installed (onnxruntime {ver} offers {', '.join(sorted(avail))}; "
                    f"{name} needs `pip install onnxruntime-gpu` and an NVIDIA GPU)")
        return f"{name} is not available in onnxruntime {ver} (TensorRT libraries missing?)"
    return f"{name} is not available in onnxruntime {ver} on {platform.machine()} (has {', '.join(sorted(avail))})"


def session_options(threads=None, config=None):
    """onnxruntime SessionOptions as edgekit runs every model: quiet, SESSION_CONFIG (+ config), threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    # fatal only: a failing kernel also logs its error in colour on stderr before raising it, and every
    # caller turns the exception into its own one-line message
    so.log_severity_level = 4
    for k, v in {**SESSION_CONFIG, **(config or {})}.items():
        so.add_session_config_entry(k, v)
    if threads:
        so.intra_op_num_threads = int(threads)
    return so


def open_session(path, providers=None, threads=None, profile_prefix=None, config=None):
    """An onnxruntime session for a model file (or its bytes); providers: names or (name, options) pairs
    (default CPU); config: extra session config entries."""
    import onnxruntime as ort

    so = session_options(threads, config)
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    providers = [(p, {}) if isinstance(p, str) else p for p in providers or ["CPUExecutionProvider"]]
    src = path if isinstance(path, bytes) else str(path)
    return keep_fp_env(lambda: ort.InferenceSession(src, so, providers=[n for n, _ in providers],
                                                    provider_options=[dict(o) for _, o in providers]))


_LIBM = []  # [the C maths library] once looked up, or [None] where there is none


def _libm():
    # find_library runs ldconfig in a subprocess: once per process, not once per session
    if not _LIBM:
        import ctypes
        import ctypes.util

        try:
            _LIBM.append(ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6"))
        except OSError:
            _LIBM.append(None)
    return _LIBM[0]


def keep_fp_env(create):
    """create(), then give the calling thread back its floating-point environment (MXCSR / FPCR).

    With set_denormal_as_zero and an explicit thread count, onnxruntime also sets flush-to-zero on the
    thread that creates the session; that would silently change the caller's numpy and torch arithmetic
    for the rest of the process. The pool threads keep it, and they are where the time goes.
    """
    import ctypes

    libm = _libm()
    env = ctypes.create_string_buffer(512)  # larger than any fenv_t
    try:
        if libm is None or libm.fegetenv(env) != 0:
            return create()
    except AttributeError:  # no C99 fenv here: nothing to restore with
        return create()
    try:
        return create()
    finally:
        libm.fesetenv(env)


def check_active(sess, providers, required) -> str | None:
    """Why the session is not what was asked (onnxruntime drops an unusable GPU provider quietly), or None."""
    active = sess.get_providers()
    for n in required:
        if n not in active:
            if n in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
                return (f"no CUDA device: onnxruntime created the session without {n} "
                        f"(active: {', '.join(active)}; is an NVIDIA GPU with CUDA/cuDNN present?)")
            return f"{n} could not be initialised (active: {', '.join(active)})"
    return None


class BatchConflict(ValueError):
    """The batch asked for is not the one a fixed-batch model was exported with."""


class InputsNeeded(ValueError):
    """Generated inputs would need a size nobody can know (a symbolic H or W): real inputs are required."""


def _fmt_shape(shape) -> str:
    return "[" + ", ".join("?" if d is None or d == "" else str(d) for d in shape) + "]"


def _fixed(d) -> bool:
    return isinstance(d, int) and d > 0


def fixed_batch(ins) -> int | None:
    """The batch a fixed-batch model always runs (axis 0 of its inputs, as exported), or None if dynamic.

    One input with a dynamic axis 0 makes the model dynamic (an [N, ...] input next to a [1, ...] state);
    rank-1 inputs count only when there is nothing else, as a fixed [1] there is usually a scalar knob.
    """
    firsts = [inp.shape[0] for inp in ins if len(inp.shape) >= 1]
    if not firsts or not all(_fixed(d) for d in firsts):
        return None
    return max([inp.shape[0] for inp in ins if len(inp.shape) >= 2] or firsts)


def batch_conflict(ins, batch: int) -> str | None:
    """Why `batch` cannot run on this model (its batch is fixed at another value), or None."""
    fixed = fixed_batch(ins)
    if fixed is None or batch == fixed:
        return None
    inp = next(i for i in ins if len(i.shape) >= 1 and i.shape[0] == fixed)
    return (f"the model has a fixed batch of {fixed} (input {inp.name!r} is {_fmt_shape(inp.shape)}); "
            f"cannot run batch {batch}")


def run_batch(ins, batch: int = 1) -> int:
    """The batch a run actually processes, which is what throughput must be computed from.

    A fixed-batch model always runs its own batch. batch 1 is the default everywhere (--batch, single
    samples in fit_feeds, cmd_run, selftest), so it stands for "the model's own"; any other batch that
    differs is refused rather than timed at one batch and reported as another.
    """
    fixed = fixed_batch(ins)
    if fixed is None:
        return batch
    if batch not in (1, fixed):
        raise BatchConflict(batch_conflict(ins, batch))
    return fixed


def feed_shapes(ins, batch: int = 1) -> dict:
    """{input name: shape} for generated inputs: axis 0 the run's batch, sequence-like dims SEQ_DEFAULT.

    Any other symbolic dim (an image's height and width) has no size that works for every model, and a
    guess of 1 breaks every convolution: InputsNeeded names the input and its dims instead.
    """
    b = run_batch(ins, batch)
    shapes = {}
    for inp in ins:
        shape, unknown = [], []
        for i, d in enumerate(inp.shape):
            if _fixed(d):
                shape.append(d)
            elif i == 0:
                shape.append(b)
            elif _SEQ_DIM.search(str(d or "")) or (i == 1 and re.search(r"ids|mask|seq|token", inp.name, re.I)):
                shape.append(SEQ_DEFAULT)
            else:
                unknown.append(str(d) if d else f"axis {i}")
        if unknown:
            raise InputsNeeded(f"input {inp.name!r} {_fmt_shape(inp.shape)} has symbolic dims "
                               f"{', '.join(unknown)} whose size cannot be guessed; pass real inputs "
                               "(--inputs FILE.npz)")
        shapes[inp.name] = shape
    return shapes


def make_feeds(sess, batch: int = 1, seed: int = 0) -> dict:
    """Seeded inputs of the right shape and dtype (see feed_shapes)."""
    rng = np.random.default_rng(seed)
    ins = sess.get_inputs()
    shapes = feed_shapes(ins, batch)
    feeds = {}
    for inp in ins:
        dtype = ORT_DTYPES.get(inp.type)
        if dtype is None:
            raise ValueError(f"input {inp.name!r} has type {inp.type}, which cannot be generated; pass inputs")
        shape = shapes[inp.name]
        lname = inp.name.lower()
        if dtype.startswith("float"):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == "bool" or "mask" in lname:
            feeds[inp.name] = np.ones(shape, dtype=dtype)
        elif "type" in lname or "segment" in lname or "position" in lname:
            feeds[inp.name] = np.zeros(shape, dtype=dtype)
        else:
            # token ids and other integers: 0 and 1 are inside every embedding table (a 50-row one
            # rejects id 85) and every Gather axis; a kernel's speed does not depend on which row it reads
            feeds[inp.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def castable(src, dst) -> bool:
    """Safe casts plus float -> narrower float and integer/bool -> any number; never float -> integer,
    which truncates ids silently. The rule of edgekit.calibration._castable (this file cannot import it)."""
    src, dst = np.dtype(src), np.dtype(dst)
    if np.can_cast(src, dst, casting="safe"):
        return True
    return (src.kind == "f" and dst.kind == "f") or (src.kind in "iub" and dst.kind in "iuf")


def fit_feeds(sess, feeds: dict, batch: int = 1) -> dict:
    """Real data shaped for this session: pick its inputs by name (or the only one), cast, set the batch."""
    out = {}
    ins = sess.get_inputs()
    b = run_batch(ins, batch)
    for inp in ins:
        arr = feeds.get(inp.name)
        if arr is None and len(ins) == 1 and len(feeds) == 1:
            arr = next(iter(feeds.values()))
        if arr is None:
            raise ValueError(f"inputs lack {inp.name!r} (have {', '.join(sorted(feeds))})")
        arr = np.asarray(arr)
        dtype = ORT_DTYPES.get(inp.type)
        if dtype and arr.dtype != dtype:
            if not castable(arr.dtype, dtype):
                raise ValueError(f"input {inp.name!r} has dtype {arr.dtype}; the model wants {dtype} "
                                 "and that cast would lose information")
            arr = arr.astype(dtype)
        if arr.ndim != len(inp.shape):
            raise ValueError(f"input {inp.name!r}: got rank {arr.ndim}, model wants {list(inp.shape)}")
        for ax, (got, want) in enumerate(zip(arr.shape[1:], inp.shape[1:]), start=1):
            if _fixed(want) and got != want:
                raise ValueError(f"input {inp.name!r}: got shape {list(arr.shape)}, model wants "
                                 f"{_fmt_shape(inp.shape)} (axis {ax}: {got} != {want})")
        d0 = inp.shape[0] if inp.shape else None
        want = d0 if _fixed(d0) else b
        if arr.ndim and arr.shape[0] != want:
            reps = -(-want // arr.shape[0])
            arr = np.concatenate([arr] * reps, axis=0)[:want]
        if _fixed(d0) and b != d0 and b != 1:
            raise ValueError(f"input {inp.name!r} has a fixed batch of {d0}; cannot run batch {b}")
        out[inp.name] = np.ascontiguousarray(arr)
    return out


# ---------------------------------------------------------------- ONNX Runtime profiler output

def parse_ort_profile(events, skip_runs: int = 1) -> dict:
    """Per-node kernel times and providers from onnxruntime's profiler JSON (a list of trace events).

    The first `skip_runs` model runs (allocation, kernel selection) are left out; each node's
    time is its median over the remaining runs, so one preempted run on a busy machine does not
    skew the breakdown. Returns {"runs", "nodes": [{name, op_type, provider, ms}],
    "op_breakdown": {op_type: ms per run}, "providers_by_node": {provider: node count}}.
    """
    import bisect

    starts = sorted(e.get("ts", 0) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    counted = max(1, len(starts) - skip_runs)
    per: dict = {}  # (node, op, provider) -> {run index: us}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        args = e.get("args", {})
        key = (e["name"][: -len("_kernel_time")], args.get("op_name", "?"), args.get("provider", "?"))
        run = bisect.bisect_right(starts, e.get("ts", 0)) - 1 if starts else 0
        runs = per.setdefault(key, {})
        if run >= skip_runs or not starts:
            runs[run] = runs.get(run, 0.0) + float(e.get("dur", 0))
    nodes = []
    for (n, op, prov), runs in per.items():
        vals = list(runs.values()) + [0.0] * max(0, counted - len(runs))  # a run without the node: 0
        nodes.append({"name": n, "op_type": op, "provider": prov,
                      "ms": float(np.median(vals)) / 1000.0 if vals else 0.0})
    nodes.sort(key=lambda x: -x["ms"])
    ops: dict = {}
    by_prov: dict = {}
    for n in nodes:
        ops[n["op_type"]] = ops.get(n["op_type"], 0.0) + n["ms"]
        by_prov[n["provider"]] = by_prov.get(n["provider"], 0) + 1
    return {"runs": counted, "nodes": nodes, "providers_by_node": by_prov,
            "op_breakdown": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}


def op_profile(path, feeds: dict, *, providers=None, threads=None, runs: int = 10) -> dict:
    """Run a profiling session (apart from the timed ones: the profiler adds overhead) and parse it."""
    with tempfile.TemporaryDirectory(prefix="edgekit-prof-") as d:
        sess = open_session(path, providers, threads, profile_prefix=os.path.join(d, "p"))
        for _ in range(runs + 1):
            sess.run(None, feeds)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    return parse_ort_profile(events, skip_runs=1)


# ---------------------------------------------------------------- interleaved timing

def timed_loop(fns: dict, *, warmup=5, min_runs=30, min_seconds=1.0, max_seconds=30.0) -> dict:
    """Call fns[label](i) round-robin until every label has min_runs and min_seconds passed (or max_seconds)."""
    labels = list(fns)
    for i in range(warmup):
        for k in labels:
            fns[k](i)
    times = {k: [] for k in labels}
    clock = time.perf_counter
    t_start = clock()
    r = 0
    while True:
        for k in (labels if r % 2 == 0 else labels[::-1]):  # alternate who goes first
            t0 = clock()
            fns[k](r)
            times[k].append((clock() - t0) * 1000.0)
        r += 1
        elapsed = clock() - t_start
        if (r >= min_runs and elapsed >= min_seconds) or elapsed >= max_seconds:
            return times


def bench_models(models: dict, inputs=None, *, providers=None, required=None, threads=None, batch=1,
                 warmup=5, min_runs=30, min_seconds=1.0, max_seconds=30.0, op_runs=10,
                 keep_outputs=False) -> dict:
    """Measure several ONNX models interleaved in this process: {label: measurement or status}.

    inputs: list of feed dicts (cycled through), or None to generate them per model.
    providers: [(name, options)] in preference order; required: names that must be active.
    """
    import onnxruntime as ort

    providers = [(n, dict(o)) for n, o in (providers or [("CPUExecutionProvider", {})])]
    usable, missing, reason = provider_status(providers, required)
    if reason:
        return {k: {"status": "unavailable", "reason": reason} for k in models}
    required = [n for n, _ in providers] if required is None else list(required)
    res, sess, feeds, batches = {}, {}, {}, {}
    notes = {}
    usable = _drop_failing_optional(models, usable, required, threads, missing, notes)
    _warm_runtime(models, usable, threads)
    for label, path in models.items():
        try:
            rss0 = current_rss_mb()
            t0 = time.perf_counter()
            s = open_session(path, usable, threads)
            why = check_active(s, usable, required)
            if why:
                res[label] = {"status": "unavailable", "reason": why}
                continue
            try:
                batches[label] = run_batch(s.get_inputs(), batch)
            except BatchConflict as e:  # not a broken model: this batch does not exist for it
                res[label] = {"status": "unavailable", "reason": str(e)}
                continue
            fl = [fit_feeds(s, f, batch) for f in inputs] if inputs else [make_feeds(s, batch)]
            first = s.run(None, fl[0])
            cold = (time.perf_counter() - t0) * 1000.0
            rss1 = current_rss_mb()
        except Exception as e:  # a model that cannot load or run is reported, the others still measured
            res[label] = {"status": "failed", "reason": _one_line(e)}
            continue
        sess[label], feeds[label] = s, fl
        res[label] = {"status": "ok", "provider": s.get_providers()[0], "providers_active": s.get_providers(),
                      "providers_missing": missing, "cold_start_ms": cold, **notes,
                      "rss_delta_mb": (rss1 - rss0) if rss0 is not None and rss1 is not None else None}
        if keep_outputs:
            res[label]["_outputs"] = {o.name: v for o, v in zip(s.get_outputs(), first)}
    if sess:
        fns = {k: (lambda i, s=s, fl=feeds[k]: s.run(None, fl[i % len(fl)])) for k, s in sess.items()}
        times = timed_loop(fns, warmup=warmup, min_runs=min_runs, min_seconds=min_seconds,
                           max_seconds=max_seconds)
        peak = peak_rss_mb()
        for k, t in times.items():
            res[k].update(summarize(t, batches[k]))
            res[k]["samples_ms"] = [round(x, 5) for x in t]
            res[k]["peak_rss_mb"] = peak  # this process's peak, all models loaded; rss_delta_mb is per model
    for k in list(sess):
        if op_runs:
            try:
                prof = op_profile(models[k], feeds[k][0], providers=usable, threads=threads, runs=op_runs)
            except Exception as e:
                res[k]["op_profile_error"] = f"{type(e).__name__}: {e}"
                continue
            main = res[k]["provider"]
            res[k]["op_breakdown"] = prof["op_breakdown"]
            res[k]["op_runs"] = prof["runs"]
            res[k]["providers_by_node"] = prof["providers_by_node"]
            res[k]["fallback_nodes"] = sum(c for p, c in prof["providers_by_node"].items() if p != main)
            res[k]["nodes"] = prof["nodes"]
    for k in sess:  # facts about a measurement; an unavailable/failed entry keeps only its reason
        res[k]["threads"] = threads
        res[k]["batch"] = batches[k]  # what ran, not what was asked: a fixed-batch model runs its own
        res[k]["onnxruntime"] = ort.__version__
        res[k]["session_config"] = dict(SESSION_CONFIG)
        res[k]["machine"] = platform.machine()
        res[k]["device_cpu"] = cpu_model()
    return res


def _one_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def _drop_failing_optional(models, usable, required, threads, missing: list, notes: dict) -> list:
    """An optional provider (TensorRT without its libraries) that breaks session creation is dropped,
    and said so in the results; a required one is never dropped (the session then fails or is unavailable)."""
    optional = [n for n, _ in usable if n not in required]
    if not optional:
        return usable
    path = next(iter(models.values()))
    try:
        open_session(path, usable, threads)
        return usable
    except Exception as e:
        kept = [(n, o) for n, o in usable if n in required]
        try:
            open_session(path, kept, threads)
        except Exception:
            return usable  # not the optional provider's fault: let each model report its own failure
        missing.extend(optional)
        notes["providers_note"] = f"{', '.join(optional)} failed to initialise ({_one_line(e)}); ran without it"
        return kept


def _warm_runtime(models: dict, providers, threads) -> None:
    """Create and drop one session first: onnxruntime's one-time set-up (thread pools, provider
    libraries) then lands in no model's cold start, so cold starts compare like for like."""
    for path in models.values():
        try:
            open_session(path, providers, threads)
            return
        except Exception:
            continue


# ---------------------------------------------------------------- command line

def _load_npz(path) -> list:
    """An .npz of inputs: keys NAME (one sample) or NAME with a leading sample axis is not guessed."""
    with np.load(path, allow_pickle=False) as z:
        return [{k: z[k] for k in z.files if k not in ("y", "labels")}]


def _labelled(specs) -> dict:
    out = {}
    for i, s in enumerate(specs):
        label, sep, path = s.partition("=")
        if not sep or os.path.exists(s):
            label, path = (os.path.splitext(os.path.basename(s))[0] if len(specs) == 1 else f"m{i}"), s
        out[label] = path
    return out


def cmd_bench(a) -> int:
    models = _labelled(a.model)
    inputs = _load_npz(a.inputs) if a.inputs else None
    if a.runs:
        a.min_runs, a.min_seconds, a.max_seconds = a.runs, 0.0, 1e9
    providers = json.loads(a.providers) if a.providers else None
    if providers is not None:
        providers = [(p["name"], p.get("options", {})) if isinstance(p, dict) else (p, {}) for p in providers]
    required = a.required.split(",") if a.required else None
    res = bench_models(models, inputs, providers=providers, required=required, threads=a.threads,
                       batch=a.batch, warmup=a.warmup, min_runs=a.min_runs, min_seconds=a.min_seconds,
                       max_seconds=a.max_seconds, op_runs=a.op_runs, keep_outputs=bool(a.outputs))
    if a.outputs:
        flat = {f"{k}::{n}": v for k, r in res.items() for n, v in r.pop("_outputs", {}).items()}
        np.savez(a.outputs, **flat)
    if not a.keep_nodes:
        for r in res.values():
            r.pop("nodes", None)
    if len(models) == 1 and not a.always_dict:
        out = next(iter(res.values()))
    else:
        out = {"status": "ok" if all(r["status"] == "ok" for r in res.values()) else "partial", "results": res}
    print(json.dumps(out))
    return 0 if any(r["status"] == "ok" for r in res.values()) else 1


def cmd_run(a) -> int:
    sess = open_session(a.model, threads=a.threads)
    feeds = fit_feeds(sess, _load_npz(a.inputs)[0], 1) if a.inputs else make_feeds(sess)
    outs = sess.run(None, feeds)
    np.savez(a.out, **{o.name: v for o, v in zip(sess.get_outputs(), outs)})
    print(json.dumps({"status": "ok", "out": a.out, "outputs": {o.name: list(v.shape) for o, v in
                                                               zip(sess.get_outputs(), outs)}}))
    return 0


def compare(got: dict, expected: dict, atol: float) -> tuple[bool, dict]:
    """Max abs difference per output; ok when every output is within atol (and shapes match)."""
    diffs, ok = {}, True
    for name, want in expected.items():
        have = got.get(name)
        if have is None:
            return False, {"reason": f"output {name!r} missing"}
        if have.shape != want.shape:
            return False, {"reason": f"output {name!r} has shape {list(have.shape)}, expected {list(want.shape)}"}
        if want.dtype.kind in "fc":
            d = float(np.max(np.abs(have.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
        else:
            d = float(np.max(np.abs(have.astype(np.int64) - want.astype(np.int64)))) if want.size else 0.0
        diffs[name] = d
        ok = ok and d <= atol
    return ok, {"max_abs_diff": diffs}


def cmd_selftest(a) -> int:
    root = a.bundle
    try:
        with open(os.path.join(root, "bundle.json")) as f:
            meta = json.load(f)
        st = meta["selftest"]
        sess = open_session(os.path.join(root, meta["model"]), threads=a.threads)
        with np.load(os.path.join(root, st["inputs"]), allow_pickle=False) as z:
            feeds = fit_feeds(sess, {k: z[k] for k in z.files}, 1)
        with np.load(os.path.join(root, st["expected"]), allow_pickle=False) as z:
            expected = {k: z[k] for k in z.files}
        t0 = time.perf_counter()
        outs = sess.run(None, feeds)
        ms = (time.perf_counter() - t0) * 1000.0
    except Exception as e:
        print(json.dumps({"ok": False, "reason": f"{type(e).__name__}: {e}"}))
        return 1
    atol = float(st.get("atol", 1e-4))
    ok, info = compare({o.name: v for o, v in zip(sess.get_outputs(), outs)}, expected, atol)
    rep = {"ok": ok, "atol": atol, "run_ms": ms, "provider": sess.get_providers()[0],
           "machine": platform.machine(), **info}
    if not ok and "reason" not in rep:
        worst = max(info["max_abs_diff"].items(), key=lambda kv: kv[1])
        rep["reason"] = f"output {worst[0]!r} differs by {worst[1]:.3g} > atol {atol:g}"
    print(json.dumps(rep))
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="edgekit_runner", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="time one or more models (interleaved)")
    b.add_argument("--model", action="append", required=True, help="[LABEL=]PATH; repeat to interleave")
    b.add_argument("--inputs", help=".npz with one array per input name")
    b.add_argument("--batch", type=int, default=1, help="a fixed-batch model runs its own batch; any other "
                   "value than 1 or that batch is refused")
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--warmup", type=int, default=5)
    b.add_argument("--min-runs", type=int, default=30)
    b.add_argument("--min-seconds", type=float, default=1.0)
    b.add_argument("--max-seconds", type=float, default=30.0)
    b.add_argument("--runs", type=int, default=None, help="exactly N timed runs (overrides the three above)")
    b.add_argument("--op-runs", type=int, default=0, help="profiled runs for the per-operator breakdown")
    b.add_argument("--providers", help='JSON list of names or {"name", "options"}')
    b.add_argument("--required", help="comma-separated providers that must be active")
    b.add_argument("--outputs", help="save each model's outputs for the first input here (.npz, LABEL::NAME)")
    b.add_argument("--keep-nodes", action="store_true", help="include per-node times")
    b.add_argument("--always-dict", action="store_true", help="{results: {label: ...}} even for one model")
    r = sub.add_parser("run", help="run a model once and save its outputs")
    r.add_argument("--model", required=True)
    r.add_argument("--inputs")
    r.add_argument("--out", required=True)
    r.add_argument("--threads", type=int, default=None)
    s = sub.add_parser("selftest", help="check a bundle's model against its expected outputs")
    s.add_argument("--bundle", required=True)
    s.add_argument("--threads", type=int, default=None)
    a = ap.parse_args(argv)
    try:
        return {"bench": cmd_bench, "run": cmd_run, "selftest": cmd_selftest}[a.cmd](a)
    except Exception as e:  # one JSON line, whatever went wrong
        print(json.dumps({"status": "failed", "ok": False, "reason": f"{type(e).__name__}: {e}"}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
