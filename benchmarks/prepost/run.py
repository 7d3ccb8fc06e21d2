"""edgekit.prepost kernels vs OpenCV, torch and NumPy, side by side in one process (issue 8).

    python benchmarks/prepost/run.py [--rounds 15] [--json out.json]

Each job is timed interleaved: every round runs every implementation back to back (in a shuffled
order), so load from other processes hits them alike, and gives each the same time (calls until
20 ms have passed, after warm-up: compilation is not timed). Per implementation: the best and the
median round (per call), and the median calls per round.
Also checks the outputs agree (max abs diff in pixels, identical NMS indices, identical top-k)
and measures Numba compile time on a cold cache vs the first call on a warm cache (two fresh
processes). Prints a Markdown section for RESULTS.md. Only the ratios mean much on a busy host.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edgekit import prepost as pp  # noqa: E402
from edgekit.prepost.boxes import _nms_numpy, _prepare  # noqa: E402


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "load_avg_at_start": os.getloadavg(),
            "python": platform.python_version(), "numpy": np.__version__, "numba": pp.NUMBA_VERSION}


def timed_round(f, round_s: float) -> tuple:
    """(ms per call, calls) for calls of f until round_s has passed (at least one). A fixed time rather
    than a call count sized once: one slow sizing call on a busy host gave one row 1 call per round
    and its twin, the same kernel, 44, and best-of-1-call is another statistic than best-of-44."""
    n, t0 = 0, time.perf_counter()
    while True:
        f()
        n += 1
        took = time.perf_counter() - t0
        if took >= round_s:
            return took / n * 1e3, n


def interleaved(fns: dict, rounds: int, min_round_s: float = 0.02) -> dict:
    """{name: {"best_ms", "median_ms", "calls_per_round"}} from `rounds` interleaved rounds.

    Every implementation gets the same time per round (min_round_s; one call if a call takes longer),
    so "best" and "median" are the same statistic for each row; the order is shuffled every round (a
    rotation keeps neighbours: the row after a 100 ms NumPy call measured 1.3-1.9x slower than its twins).
    Callables are warmed first: compilation is not timed."""
    for f in fns.values():
        f()
        f()
    names, order = list(fns), np.random.default_rng(0)
    times, calls = {n: [] for n in names}, {n: [] for n in names}
    for _ in range(rounds):
        for name in order.permutation(names):
            ms, n = timed_round(fns[name], min_round_s)
            times[name].append(ms)
            calls[name].append(n)
    return {n: {"best_ms": float(np.min(t)), "median_ms": float(np.median(t)),
                "calls_per_round": int(np.median(calls[n]))} for n, t in times.items()}


def one_thread(f):
    """Run f with Numba limited to one thread (what a kernel gets next to a busy ONNX Runtime pool)."""
    import numba

    def g():
        prev = numba.get_num_threads()
        numba.set_num_threads(1)
        try:
            return f()
        finally:
            numba.set_num_threads(prev)
    return g


def bench_resize(rounds):
    import cv2

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    mean, std = [123.675, 116.28, 103.53], 58.0
    op = pp.ResizeNormalize((224, 224), mean, std)  # what the runner holds: parameters checked once

    def cv_resize_numpy():
        r = cv2.resize(img, (224, 224), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        return np.ascontiguousarray(((r - mean) / std).transpose(2, 0, 1))[None]

    fns = {
        "edgekit numba": lambda: op(img),
        "edgekit numba (functional API)": lambda: pp.resize_normalize(img, (224, 224), mean, std),
        "edgekit numba, 1 thread": one_thread(lambda: op(img)),
        "cv2.dnn.blobFromImage": lambda: cv2.dnn.blobFromImage(img, 1 / std, (224, 224), mean),
        "cv2.resize + NumPy": cv_resize_numpy,
        "NumPy twin": lambda: pp.resize_normalize(img, (224, 224), mean, std, backend="numpy"),
    }
    t = interleaved(fns, rounds)
    ours = op(img)
    blob = cv2.dnn.blobFromImage(img, 1 / std, (224, 224), mean)
    ref = cv2.resize(img, (224, 224), interpolation=cv2.INTER_LINEAR).astype(np.float32).transpose(2, 0, 1)
    check = {"max_abs_diff_vs_cv2_resize_pixels": float(np.abs(ours[0] * std + np.reshape(mean, (3, 1, 1)) - ref).max()),
             "max_abs_diff_vs_blobFromImage_pixels": float(np.abs(ours - blob).max() * std)}
    return {"job": "resize 1080x1920x3 uint8 -> 224x224, normalise, NCHW float32", "times": t, "check": check,
            "ours": "edgekit numba", "baselines": ["cv2.dnn.blobFromImage", "cv2.resize + NumPy", "NumPy twin"]}


def bench_nms(rounds):
    import cv2

    rng = np.random.default_rng(0)
    n = 10000
    c = rng.uniform(0, 1000, (n, 2))
    wh = rng.uniform(10, 100, (n, 2))
    boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)
    scores = rng.random(n).astype(np.float32)
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
    slist = scores.tolist()
    prep = _prepare(boxes, scores, 0.5, None, None, None)
    fns = {
        "edgekit numba": lambda: pp.nms(boxes, scores, 0.5),
        "NumPy vectorised (the twin)": lambda: _nms_numpy(*prep),
        "cv2.dnn.NMSBoxes": lambda: cv2.dnn.NMSBoxes(xywh, slist, 0.0, 0.5),
    }
    t = interleaved(fns, max(3, rounds // 3), min_round_s=0.0)
    ours = pp.nms(boxes, scores, 0.5)
    ref = pp.nms(boxes, scores, 0.5, backend="numpy")
    cvk = np.asarray(cv2.dnn.NMSBoxes(xywh, slist, 0.0, 0.5)).ravel()
    check = {"kept": int(len(ours)), "identical_to_numpy": bool(np.array_equal(ours, ref)),
             "identical_to_cv2": bool(np.array_equal(ours, cvk)), "cv2_kept": int(len(cvk))}
    return {"job": "NMS, 10,000 random boxes (centres U(0,1000), sides U(10,100)), IoU 0.5", "times": t,
            "check": check, "ours": "edgekit numba", "baselines": ["NumPy vectorised (the twin)", "cv2.dnn.NMSBoxes"]}


def numpy_topk(x, k):
    """Softmax + top-k as NumPy does it best: argpartition, then sort only the k (ties among them to the
    lower index, as edgekit's kernels; a tie at the k-th place may pick another index, hence the index
    check). edgekit's own NumPy twin sorts the whole row, so it is not the fair baseline for a small k."""
    m = x.max(1, keepdims=True)
    e = np.exp(x - m)
    part = np.argpartition(-x, k - 1, axis=1)[:, :k]
    order = np.lexsort((part, -np.take_along_axis(x, part, 1)), axis=1)
    idx = np.take_along_axis(part, order, 1)
    return np.take_along_axis(e, idx, 1) / e.sum(1, keepdims=True), idx


def bench_softmax(rounds):
    import torch

    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (64, 1000)).astype(np.float32)
    xt = torch.from_numpy(x)

    def with_torch():
        v, i = torch.topk(torch.softmax(xt, 1), 5)
        return v.numpy(), i.numpy()

    fns = {"edgekit numba": lambda: pp.softmax_topk(x, 5),
           "edgekit numba, 1 thread": one_thread(lambda: pp.softmax_topk(x, 5)),
           "torch.softmax + torch.topk": with_torch,
           "NumPy argpartition + sort of k": lambda: numpy_topk(x, 5),
           "NumPy twin (full argsort of each row)": lambda: pp.softmax_topk(x, 5, backend="numpy")}
    t = interleaved(fns, rounds)
    p, i = pp.softmax_topk(x, 5)
    tp, ti = with_torch()
    _, ni = numpy_topk(x, 5)
    _, twi = pp.softmax_topk(x, 5, backend="numpy")
    check = {"identical_indices_vs_torch": bool(np.array_equal(i, ti)), "max_abs_diff_probs": float(np.abs(p - tp).max()),
             "identical_indices_vs_numpy_argpartition": bool(np.array_equal(i, ni)),
             "identical_indices_vs_numpy_twin": bool(np.array_equal(i, twi)), "torch_threads": torch.get_num_threads()}
    return {"job": "softmax + top-5, 64 x 1000 float32", "times": t, "check": check, "ours": "edgekit numba",
            "baselines": ["torch.softmax + torch.topk", "NumPy argpartition + sort of k",
                          "NumPy twin (full argsort of each row)"]}


def bench_compile():
    res = pp.cold_and_warm()
    return {"job": "Numba compile: cold cache (compile) vs warm cache (load), fresh process each",
            "per_op": {name: {"cold_compile_s": res["cold"]["ops"][name]["compile_s"],
                              "cold_first_call_ms": res["cold"]["ops"][name]["first_call_s"] * 1e3,
                              "warm_load_s": res["warm"]["ops"][name]["compile_s"],
                              "warm_first_call_ms": res["warm"]["ops"][name]["first_call_s"] * 1e3,
                              "cache": [res["cold"]["ops"][name]["kernels"][k]["cache"] + "/" +
                                        res["warm"]["ops"][name]["kernels"][k]["cache"]
                                        for k in res["cold"]["ops"][name]["kernels"]]}
                       for name in res["cold"]["ops"]},
            "cold_total_s": res["cold"]["compile_s"], "warm_total_s": res["warm"]["compile_s"],
            "threads": res["cold"].get("threads")}


def markdown(res) -> str:
    m = res["machine"]
    out = [f"## Run {res['when']}", "",
           f"Command: `{res['command']}`  ",
           f"Machine: {m['cpu']}, {m['cores']} cores (load average at start {', '.join(f'{v:.1f}' for v in m['load_avg_at_start'])}, "
           f"at the end {', '.join(f'{v:.1f}' for v in res['load_avg_at_end'])}); "
           f"Python {m['python']}, NumPy {m['numpy']}, Numba {m['numba']}; threads: {res['threads']}", ""]
    for key in ("resize", "nms", "softmax"):
        b = res[key]
        out += [f"### {b['job']}", "", "| implementation | best ms/call | median ms/call | calls/round | "
                "ours faster by (best / median) |", "|---|---:|---:|---:|---:|"]
        ob, om = b["times"][b["ours"]]["best_ms"], b["times"][b["ours"]]["median_ms"]
        for name, t in b["times"].items():
            ratio = "" if name.startswith("edgekit") else f"{t['best_ms'] / ob:.1f}x / {t['median_ms'] / om:.1f}x"
            out.append(f"| {name} | {t['best_ms']:.4f} | {t['median_ms']:.4f} | {t['calls_per_round']} | {ratio} |")
        out += ["", "Checks: " + ", ".join(f"{k} = {v}" for k, v in b["check"].items()), ""]
    c = res.get("compile")
    if c is None:
        return "\n".join(out)
    out += [f"### {c['job']}", "", "| op | cold: compile s | cold: first call ms | warm: cache load s | warm: first call ms | cache |",
            "|---|---:|---:|---:|---:|---|"]
    for name, o in c["per_op"].items():
        out.append(f"| {name} | {o['cold_compile_s']:.2f} | {o['cold_first_call_ms']:.2f} | {o['warm_load_s']:.3f} | "
                   f"{o['warm_first_call_ms']:.2f} | {', '.join(o['cache'])} |")
    out += [f"| **total** | **{c['cold_total_s']:.2f}** | | **{c['warm_total_s']:.3f}** | | |", ""]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--skip-compile", action="store_true", help="skip the cold/warm compile measurement")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for Numba, torch and OpenCV alike (default: each library's own default)")
    a = ap.parse_args()
    if a.threads:
        import cv2
        import numba
        import torch

        numba.set_num_threads(a.threads)
        torch.set_num_threads(a.threads)
        cv2.setNumThreads(a.threads)
    for k in pp.kernel_names():  # compile (or load) before any timing
        for serial in pp._jit.variants(k):
            pp._jit.get(k, serial)
    res = {"when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": "python benchmarks/prepost/run.py " + " ".join(sys.argv[1:]), "machine": machine(),
           "threads": a.threads or "library defaults"}
    res["resize"] = bench_resize(a.rounds)
    res["nms"] = bench_nms(a.rounds)
    res["softmax"] = bench_softmax(a.rounds)
    if not a.skip_compile:
        res["compile"] = bench_compile()
    res["load_avg_at_end"] = os.getloadavg()
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    print(markdown(res))


if __name__ == "__main__":
    main()
