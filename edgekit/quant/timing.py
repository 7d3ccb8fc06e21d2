"""Latency for tuning trials and the speed gate: models timed interleaved in one process.

Uses edgekit.profile.profile_models when present (the shared profiler); otherwise a small
interleaved loop here (the profiler's blocks). Interleaving (a few runs of A, of B, of A, ...) makes a
busy machine slow both models alike, so the ratio stays meaningful when absolute numbers drift.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# ops that compute in integer arithmetic once onnxruntime has fused the Q/DQ pattern
INT8_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearSigmoid",
            "QLinearLeakyRelu", "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearConcat",
            "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere", "QAttention", "QEmbedLayerNormalization",
            "QOrderedMatMul", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
            "DynamicQuantizeLSTM", "NhwcQLinearConv", "QLinearConvTranspose"}
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
# ops that only move or reshape data: they run on int8 tensors when fed int8, and cost ~nothing
LAYOUT_OPS = {"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Gather",
              "Concat", "Slice", "Split", "Expand", "Cast", "Constant", "ReorderInput", "ReorderOutput",
              "MaxPool"}


SPIN_OFF = {"session.intra_op.allow_spinning": "0"}


@contextlib.contextmanager
def session_config(extra: dict):
    """Every session edgekit opens inside the block also gets these config entries (the speed gate
    re-times a busy host with spinning off). Not thread-safe: timing is single-threaded."""
    from ..runner.edgekit_runner import SESSION_CONFIG

    keep = dict(SESSION_CONFIG)
    SESSION_CONFIG.update(extra)
    try:
        yield
    finally:
        SESSION_CONFIG.clear()
        SESSION_CONFIG.update(keep)


def _session(path, threads=None, providers=("CPUExecutionProvider",), profile_prefix=None, spinning=True):
    from ..runner.edgekit_runner import open_session

    # on a host shared with other jobs, worker threads that spin-wait between ops fight the scheduler
    # and the timing measures the neighbours; blocking waits keep ratios stable
    config = None if spinning else SPIN_OFF
    return open_session(path, list(providers), threads, profile_prefix, config=config)


def interleaved(paths: dict, feeds: dict, *, min_runs: int = 20, min_seconds: float = 0.3, warmup: int = 3,
                max_seconds: float = 30.0, threads=None, providers=("CPUExecutionProvider",),
                spinning: bool = True) -> dict:
    """{label: {"status": "ok", "p50_ms", "p90_ms", "mean_ms", "runs"}}; labels take turns in the
    profiler's short blocks (runner.timed_loop), not run by run. Alternating every run started each run
    on caches the other models had just flushed: EfficientNet-Lite0's INT8 read 0.558x FP32 latency that
    way and 0.458x in blocks, same sessions (benchmarks/profile/spinning.py)."""
    from ..runner.edgekit_runner import SESSION_CONFIG, timed_loop

    sess = {k: _session(p, threads, providers, spinning=spinning) for k, p in paths.items()}
    config = {**SESSION_CONFIG, **({} if spinning else SPIN_OFF)}
    fd = {k: {i.name: feeds[i.name] for i in s.get_inputs()} for k, s in sess.items()}
    fns = {k: (lambda i, s=s, f=fd[k]: s.run(None, f)) for k, s in sess.items()}
    times = timed_loop(fns, warmup=warmup, min_runs=min_runs, min_seconds=min_seconds, max_seconds=max_seconds)
    out = {}
    for k, t in times.items():
        a = np.asarray(t)
        out[k] = {"status": "ok", "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
                  "mean_ms": float(a.mean()), "runs": int(len(a)), "provider": sess[k].get_providers()[0],
                  "session_config": config}
    return out


def measure(paths: dict, target, feeds: dict, *, min_runs: int = 20, min_seconds: float = 0.3,
            op_profile: bool = True) -> dict:
    """Latency of several models on the target, interleaved. Prefers the shared profiler when it exists."""
    try:
        from ..profile import profile_models
    except ImportError:
        profile_models = None
    if profile_models is not None and target is not None:
        # settle=False: every session stops spinning when a run returns, the setting the gate's noise and
        # margins were measured with (a deployed-like profile waits up to SETTLE_MAX_S at every switch)
        res = profile_models(dict(paths), target, inputs=[feeds], min_runs=min_runs, min_seconds=min_seconds,
                             op_profile=op_profile, settle=False)
        return {k: dict(v) for k, v in res.items()}
    from .isa import target_facts

    facts = target_facts(target)
    providers = [p for p in facts["providers"] if p == "CPUExecutionProvider"] or None
    if providers is None or (facts["arch"] and facts["arch"] not in ("", _host_arch())):
        reason = (f"target {facts['name']} ({facts['arch'] or '?'}, {', '.join(facts['providers'])}) cannot be "
                  "timed on this host")
        return {k: {"status": "unavailable", "reason": reason} for k in paths}
    # spinning off: trial timings and the gate compare models, and spin-waiting workers on a shared host
    # turn a 30 ms model into a 1.5 s one, at random (measured on MiniLM while other jobs ran)
    return interleaved(paths, feeds, min_runs=min_runs, min_seconds=min_seconds, threads=facts["threads"],
                       spinning=False)


def balanced(paths: dict, target, feeds: dict, *, pairs: int, min_runs: int, min_seconds: float,
             using=None) -> list:
    """2 * pairs measurements of the same models, each in fresh sessions, the order in which the sessions
    are created reversed every other time; stops early at one that is not a usable timing.

    Which session is created second matters: a transformer timed against a copy of itself measured 3%
    faster as the second-created session (median of 16 fresh pairs, both ways round), which is as large
    as the speed gate's margin, and the gate always created INT8 second. Sessions of one pair also
    differ from those of the next by several percent (the same pair re-timed 0.95-1.07), so a ratio is
    only as good as the number of independent session pairs behind it. using: the measuring function
    (default measure).
    """
    labels = list(paths)
    out = []
    for i in range(2 * pairs):
        order = labels if i % 2 == 0 else labels[::-1]
        res = (using or measure)({k: paths[k] for k in order}, target, feeds, min_runs=min_runs,
                                 min_seconds=min_seconds, op_profile=False)
        out.append(res)
        if not usable(res):
            break
    return out


# other processes' CPU use, in cores, above which a timing is repeated with thread spinning off
BUSY_CORES = 0.5


@dataclass
class HostTimed:
    """What timed_on_host measured: the measurements kept, how busy the rest of the host was during the
    first (cores; None where unknown or not local), the note when they were re-timed, and how long the
    kept timing took."""
    chunks: list
    busy: float | None
    note: str | None
    seconds: float


def timed_on_host(run, target) -> HostTimed:
    """run() (a list of measurements, as `balanced` gives), timed again with thread spinning off when other
    processes used BUSY_CORES or more of this process's CPUs while it ran. Spin-waiting pool threads
    compete with the neighbours for the cores: with one CPU-bound neighbour, EfficientNet-Lite0's FP32
    slowed and INT8 did not (0.40x FP32 latency against 0.49x idle; spinning off 0.485x,
    benchmarks/profile/spinning.py). Blocking waits measure the models. Only a local target's timing is
    judged (a remote device's load is not this host's), and only a real one (not emulated or failed)."""
    from ..hostinfo import cpu_busy_seconds, other_cores

    local = getattr(target, "address", "local") == "local"
    before = cpu_busy_seconds() if local else None
    t0 = time.perf_counter()
    chunks = run()
    seconds = time.perf_counter() - t0
    busy = other_cores(before, cpu_busy_seconds() if local else None, seconds)
    first = chunks[0] if chunks else {}
    spun = any(v.get("session_config", {}).get("session.intra_op.allow_spinning") != "0" for v in first.values())
    if busy is None or busy < BUSY_CORES or not spun or not all(map(usable, chunks)):
        return HostTimed(chunks, busy, None, seconds)
    note = (f"other processes used {busy:.2f} cores while timing: re-timed with thread spinning off, "
            "which the neighbours do not distort")
    with session_config(SPIN_OFF):
        t0 = time.perf_counter()
        chunks = run()
        seconds = time.perf_counter() - t0
    return HostTimed(chunks, busy, note, seconds)


def usable(res: dict) -> bool:
    """A measurement every model of which is a real timing (not unavailable, failed or emulated)."""
    return all(v.get("status") == "ok" and not v.get("emulated") and v.get("p50_ms") for v in res.values())


def order_balanced_ratios(chunks: list, num: str, den: str) -> list:
    """p50(num) / p50(den) per pair of measurements that created the sessions both ways round (their
    geometric mean), so the creation-order effect cancels within each value."""
    r = [c[num]["p50_ms"] / c[den]["p50_ms"] if usable(c) else None for c in chunks]
    return [float(np.sqrt(r[i] * r[i + 1])) for i in range(0, len(r) - 1, 2) if r[i] and r[i + 1]]


def median_interval(xs, confidence: float = 0.95) -> tuple:
    """(low, median, high, coverage): the distribution-free interval for the median from order statistics
    (the sign test's); with too few values for `confidence`, the full range and its true coverage."""
    from math import comb

    a = sorted(float(x) for x in xs)
    n = len(a)
    if n == 0:
        raise ValueError("no values")
    med = float(np.median(a))

    def coverage(k):  # P(x_(k) <= median <= x_(n-k+1)) for k >= 1
        return 1.0 - 2.0 * sum(comb(n, i) for i in range(k)) / 2.0 ** n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return a[k - 1], med, a[n - k], coverage(k)


def _host_arch() -> str:
    import platform

    return platform.machine()


def op_profile(path, feeds: dict, *, runs: int = 10, threads=None, providers=("CPUExecutionProvider",)) -> dict:
    """Per-node time and provider from onnxruntime's profiler: {"nodes": [{name, op_type, provider, ms}], ...},
    parsed as `edgekit profile` parses it: the first run (allocation, kernel selection) left out and each
    node's median over the rest. Summing all runs with the first gave one speed gate's "still FP32: Sqrt
    55%" on a small net where Sqrt takes under 1% in every later run."""
    from ..runner.edgekit_runner import parse_ort_profile

    with tempfile.TemporaryDirectory(prefix="edgekit-prof-") as d:
        s = _session(path, threads, providers, profile_prefix=os.path.join(d, "p"))
        fd = {i.name: feeds[i.name] for i in s.get_inputs()}
        for _ in range(runs + 1):
            s.run(None, fd)
        events = json.loads(Path(s.end_profiling()).read_text())
    prof = parse_ort_profile(events, skip_runs=1)
    return {"nodes": prof["nodes"], "runs": prof["runs"]}


def classify(nodes: list) -> dict:
    """Split an INT8 model's executed nodes into int8 compute, Q/DQ overhead, layout and FP32 compute."""
    groups = {"int8": defaultdict(float), "qdq": defaultdict(float), "layout": defaultdict(float),
              "fp32": defaultdict(float)}
    counts = defaultdict(int)
    for n in nodes:
        op = n["op_type"]
        g = "int8" if op in INT8_OPS else "qdq" if op in QDQ_OPS else "layout" if op in LAYOUT_OPS else "fp32"
        groups[g][op] += n["ms"]
        counts[op] += 1
    total = sum(n["ms"] for n in nodes) or 1e-12
    out = {}
    for g, d in groups.items():
        out[g] = [{"op_type": op, "ms": round(ms, 4), "share": round(ms / total, 4), "nodes": counts[op]}
                  for op, ms in sorted(d.items(), key=lambda kv: -kv[1])]
    return out
