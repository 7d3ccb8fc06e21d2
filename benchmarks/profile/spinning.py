"""Does timing models side by side change their latency? onnxruntime's thread spinning, measured.

    python benchmarks/profile/spinning.py [--seconds 6] [--processes 8] [--out benchmarks/profile]

onnxruntime's pool threads spin-wait between ops by default, and keep spinning after Run() returns.
edgekit times models interleaved in one process, so an idle session's spinning worker competes with
the session being timed. This measures zoo:efficientnet-lite0, FP32 and onnxruntime's U8S8 QDQ (per
channel), batch 1, with onnxruntime's default threads:
  - the reference: each model alone in its own process, onnxruntime's default session options,
    `--processes` processes per model in alternating order, the median of their p50s;
  - edgekit's profiler (profile_models, both models interleaved) with each of three session configs:
    spinning stopped when Run() returns (edgekit's SESSION_CONFIG), spinning left on (onnxruntime's
    default, edgekit's profiler before this benchmark) and spinning off;
  - CPU time the process uses in the 100 ms after one run, per config (a spinning idle worker);
  - in fresh session pairs, each model timed in a block of its own runs against the same sessions
    alternating run by run (the other model evicts the caches between runs), and one default session
    alive at a time;
  - spinning stopped after each run and spinning off again, with `--neighbours` CPU-bound processes
    running beside them (a busy host: the speed gate then re-times with spinning off).
Appends a section to RESULTS.md beside this file and writes spinning.json. Needs the efficientnet extra.
On a busy host every mode that spins measures the neighbours; run it on an idle one.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent / "quantize"))

STOP = {"session.force_spinning_stop": "1"}
MODES = {"spinning stopped after each run (edgekit)": STOP,
         "spinning left on (onnxruntime default)": {"session.force_spinning_stop": "0"},
         "spinning off": {"session.force_spinning_stop": "0", "session.intra_op.allow_spinning": "0"}}


def alone(path: str, feeds_npz: str, seconds: float, threads=None) -> float:
    """p50 ms of one model in this (fresh) process, onnxruntime's default session options (threads: its
    intra-op thread count, else onnxruntime's default)."""
    import onnxruntime as ort

    with np.load(feeds_npz) as z:
        feeds = {k: z[k] for k in z.files}
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = int(threads)
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    for _ in range(10):
        s.run(None, feeds)
    t, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        s.run(None, feeds)
        t.append(time.perf_counter() - t0)
    return float(np.median(t)) * 1e3


FEEDS = object()  # stands for the feeds file in fresh_processes' arguments


def fresh_processes(script, jobs: dict, feeds: dict, processes: int) -> dict:
    """{label: [each process's JSON output]}: `python script *jobs[label]` once per label in each of
    `processes` rounds, one process after another, the order alternating round by round; FEEDS in the
    arguments is a temporary .npz of feeds. A process's own layout and thread placement moved
    EfficientNet-Lite0 FP32 between 3.8 and 5.7 ms, so one process is not a timing."""
    with tempfile.TemporaryDirectory(prefix="edgekit-fresh-") as d:
        f = Path(d) / "feeds.npz"
        np.savez(f, **feeds)
        runs = {k: [] for k in jobs}
        for i in range(processes):
            for k in (list(jobs) if i % 2 == 0 else list(jobs)[::-1]):
                args = [str(f) if x is FEEDS else str(x) for x in jobs[k]]
                r = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=True)
                runs[k].append(json.loads(r.stdout))
    return runs


def alone_p50(models: dict, feeds: dict, *, processes: int, seconds: float, threads=None) -> dict:
    """{label: (median of the per-process p50s, [each process's p50])}: every model alone in `processes`
    fresh processes (fresh_processes)."""
    runs = fresh_processes(__file__, {k: ["--alone", p, FEEDS, seconds, threads or 0] for k, p in models.items()},
                           feeds, processes)
    return {k: (float(np.median(v)), v) for k, v in runs.items()}


def paired_ratios(num: list, den: list) -> list:
    """num[i] / den[i]: alone_p50 runs the two models' i-th processes back to back, so each ratio is
    taken over seconds, not across the drift of the whole run (one run's FP32 processes went from 2.7
    to 5.6 ms as the host slowed, INT8's from 1.1 to 2.7 ms)."""
    return [a / b for a, b in zip(num, den)]


def idle_cpu_ms(path: str, x) -> float:
    """CPU time (all threads) the process spends in the 100 ms sleep after a run, median of 5."""
    from edgekit.runner.edgekit_runner import open_session

    s = open_session(path)
    for _ in range(3):
        s.run(None, {"input": x})
    out = []
    for _ in range(5):
        s.run(None, {"input": x})
        c = time.process_time()
        time.sleep(0.1)
        out.append((time.process_time() - c) * 1e3)
    return float(np.median(out))


def cache_rows(models: dict, x, pairs: int, runs: int = 150) -> list:
    """In `pairs` fresh FP32/INT8 session pairs (edgekit's session config): each model in a block of `runs`
    runs of its own, then the same sessions alternating run by run (what run.py's latency table does,
    so each run starts after the other model has been through the caches); and each model alone in a
    session with onnxruntime's default options (spinning on between runs), one session alive at a time.
    The INT8 / FP32 ratio of each, median over the pairs."""
    import onnxruntime as ort

    from edgekit.runner.edgekit_runner import open_session

    def timed(s, n):
        t = []
        for _ in range(n):
            t0 = time.perf_counter()
            s.run(None, {"input": x})
            t.append(time.perf_counter() - t0)
        return float(np.median(t)) * 1e3

    out = {"blocks": [], "run by run": [], "default": []}
    for _ in range(pairs):
        s = {k: open_session(p) for k, p in models.items()}
        for v in s.values():
            timed(v, 10)
        b = {k: timed(v, runs) for k, v in s.items()}
        t = {k: [] for k in s}
        for r in range(runs):
            for k in (list(s) if r % 2 == 0 else list(s)[::-1]):
                t[k].append(timed(s[k], 1))
        i = {k: float(np.median(v)) for k, v in t.items()}
        del s
        d = {}
        for k, p in models.items():
            one = ort.InferenceSession(p, providers=["CPUExecutionProvider"])
            timed(one, 10)
            d[k] = timed(one, runs)
            del one
        for key, m in (("blocks", b), ("run by run", i), ("default", d)):
            out[key].append((m["fp32"], m["int8"]))
    what = {"blocks": f"one process, same sessions, each model {runs} runs in a row (edgekit's session config)",
            "run by run": "one process, the same sessions alternating run by run",
            "default": "one session alive at a time, onnxruntime's default session options"}
    rows = []
    for key, v in out.items():
        ratios = [q / f for f, q in v]
        rows.append({"mode": f"{what[key]}: median over {pairs} session pairs",
                     "p50_ms": {"fp32": float(np.median([f for f, _ in v])), "int8": float(np.median([q for _, q in v]))},
                     "int8_vs_fp32": float(np.median(ratios)), "pair_ratios": [round(r, 4) for r in ratios]})
    return rows


def _main(work: Path, a) -> dict:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgekit.profile import profile_models
    from edgekit.quant import static
    from edgekit.quant.timing import session_config
    from effnet_onnx import calibration_reader, probe_inputs

    prep, cal, x = probe_inputs(work)
    q = work / "u8s8.onnx"
    with static.quiet():
        quantize_static(str(prep), str(q), calibration_reader(cal), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True)
    models = {"fp32": str(prep), "int8": str(q)}

    ref = alone_p50(models, {"input": x}, processes=a.processes, seconds=a.seconds)
    runs = {k: v[1] for k, v in ref.items()}
    ref = {k: v[0] for k, v in ref.items()}
    pairs = paired_ratios(runs["int8"], runs["fp32"])
    rows = [{"mode": "each model alone in its own process (onnxruntime defaults; ratio: median over process pairs)",
             "p50_ms": ref, "int8_vs_fp32": float(np.median(pairs)), "per_process_p50_ms": runs}]

    for mode, cfg in MODES.items():
        with session_config(cfg):  # every session profile_models opens gets this mode's entries
            res = profile_models(models, "x86-laptop", inputs=[{"input": x}], min_seconds=a.seconds, op_profile=False)
            idle = idle_cpu_ms(models["int8"], x)
        p50 = {k: res[k]["p50_ms"] for k in models}
        rows.append({"mode": f"edgekit profile, interleaved: {mode}", "p50_ms": p50,
                     "int8_vs_fp32": p50["int8"] / p50["fp32"], "idle_cpu_ms_after_run": idle})
    rows += cache_rows(models, x, a.session_pairs)
    if a.neighbours:
        # CPU-bound neighbours, as on a laptop doing other work: what each way of waiting then measures
        code = f"import time\nend = time.time() + {4 * a.seconds + 60}\nwhile time.time() < end: pass"
        hogs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(a.neighbours)]
        try:
            for mode in (next(iter(MODES)), "spinning off"):
                with session_config(MODES[mode]):
                    res = profile_models(models, "x86-laptop", inputs=[{"input": x}], min_seconds=a.seconds,
                                         op_profile=False)
                p50 = {k: res[k]["p50_ms"] for k in models}
                rows.append({"mode": f"edgekit profile, interleaved, {a.neighbours} CPU-bound neighbour "
                                     f"process{'es' if a.neighbours > 1 else ''} running: {mode}",
                             "p50_ms": p50, "int8_vs_fp32": p50["int8"] / p50["fp32"]})
        finally:
            for h in hogs:
                h.kill()
                h.wait()
    return {"rows": rows}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--alone"]:
        print(alone(argv[1], argv[2], float(argv[3]), int(argv[4]) if len(argv) > 4 else None))
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0, help="timing per model and mode")
    ap.add_argument("--processes", type=int, default=8, help="processes per model for the reference")
    ap.add_argument("--session-pairs", type=int, default=6, help="fresh session pairs for the cache rows")
    ap.add_argument("--neighbours", type=int, default=1,
                    help="CPU-bound processes to run beside two more timings (0: none)")
    ap.add_argument("--out", default=str(HERE))
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-spin-") as d:
        out = _main(Path(d), a)
    out.update({**stamp("spinning.py", argv), "seconds": round(time.perf_counter() - t0, 1)})
    lines = [f"## {out['when']}: thread spinning and side-by-side timing (efficientnet-lite0, batch 1)", "",
             f"Command: `{out['command']}`  ", f"Machine: {out['machine']}. onnxruntime's default threads.", "",
             "| how it was timed | FP32 p50 ms | U8S8 QDQ p50 ms | INT8 / FP32 | CPU ms in the 100 ms after a run |",
             "|---|---|---|---|---|"]
    for r in out["rows"]:
        idle = r.get("idle_cpu_ms_after_run")
        lines.append(f"| {r['mode']} | {r['p50_ms']['fp32']:.2f} | {r['p50_ms']['int8']:.2f} | "
                     f"{r['int8_vs_fp32']:.3f}x | {'' if idle is None else f'{idle:.1f}'} |")
    record(Path(a.out), "spinning.json", out, lines)
    return 0


def stamp(script: str, argv) -> dict:
    """when, command and machine of a run of benchmarks/profile/<script>."""
    import onnxruntime as ort

    from edgekit.hostinfo import cpu_info

    cpu = cpu_info()
    return {"when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": shlex.join(["python", f"benchmarks/profile/{script}", *argv]),
            "machine": f"{cpu.get('model', 'unknown CPU')}, {cpu.get('cores', '?')} cores, ISA "
                       f"{', '.join(cpu.get('isa', []))}; onnxruntime {ort.__version__}"}


def record(outdir: Path, json_name: str, out: dict, lines: list) -> None:
    """out as outdir/json_name, and the section's lines appended to outdir/RESULTS.md (and printed)."""
    (outdir / json_name).write_text(json.dumps(out, indent=1) + "\n")
    with open(outdir / "RESULTS.md", "a") as f:
        f.write("\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
