"""What does stopping onnxruntime's thread spinning after each run cost a deployed model, and how close
do models timed side by side (edgekit profile) come to it?

    python benchmarks/profile/deploy_spinning.py [--processes 6] [--seconds 2] [--gap-ms 5] [--out benchmarks/profile]

edgekit's session config (runner.SESSION_CONFIG, what the shipped runner and every edgekit timing use)
sets `session.force_spinning_stop`: the pool threads stop spin-waiting when Run() returns, so an idle
session does not burn a core beside the one being timed (spinning.py). A deployed model running alone
pays for it instead: the next Run() must wake the threads. This times each model alone, in fresh
processes, with edgekit's config and with the same config but spinning left on after the run
(onnxruntime's default), in back-to-back processes of alternating order:
  - back to back: Run() after Run(), the worst case for the stop (the threads had just gone to sleep);
  - paced: a `--gap-ms` sleep between runs (a frame-paced loop), where the default's threads may have
    stopped spinning on their own too.
Then each model's FP32 and INT8 side by side in one fresh process, as `edgekit profile` times them
(runner.bench_models), `--processes` times per setting, the settings' processes alternating:
  - settled (edgekit's default): spinning left on, each switch waits for the idle model's threads;
  - stopped (the speed gate's setting): every session stops its threads when a run returns;
each p50 against the same model's deployed loop (alone, spinning left on, back to back) above.
Models: zoo:digits-cnn (FP32 and onnxruntime's U8S8 QDQ, 0.2-0.5 ms: where a wake-up is a large share)
and zoo:efficientnet-lite0 (FP32 and U8S8 QDQ, a few ms), batch 1, onnxruntime's default threads.
Appends a section to RESULTS.md beside this file and writes deploy_spinning.json. Needs the
efficientnet extra. Run it on an idle host.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent / "quantize"))

CONFIGS = ("edgekit (spinning stopped after each run)", "spinning left on after each run")


def timed(path: str, feeds_npz: str, seconds: float, stop: bool, gap_ms: float) -> dict:
    """p50 ms of one model in this (fresh) process with edgekit's session config, spinning stopped after
    each run or not: back to back, then with gap_ms between runs."""
    from edgekit.runner.edgekit_runner import open_session

    with np.load(feeds_npz) as z:
        feeds = {k: z[k] for k in z.files}
    s = open_session(path, config={"session.force_spinning_stop": "1" if stop else "0"})
    for _ in range(10):
        s.run(None, feeds)
    out = {}
    for mode, gap in (("back to back", 0.0), ("paced", gap_ms / 1e3)):
        t, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            if gap:
                time.sleep(gap)
            t0 = time.perf_counter()
            s.run(None, feeds)
            t.append(time.perf_counter() - t0)
        out[mode] = float(np.median(t)) * 1e3
    return out


def per_model(path: str, feeds: dict, *, processes: int, seconds: float, gap_ms: float) -> dict:
    """{config: [each process's {mode: p50 ms}]}, the two configs' processes back to back, alternating."""
    from spinning import FEEDS, fresh_processes

    return fresh_processes(__file__, {c: ["--timed", path, FEEDS, seconds, int(c == CONFIGS[0]), gap_ms]
                                      for c in CONFIGS}, feeds, processes)


SIDE = ("settled", "stopped")


def side_by_side(paths: list, feeds_npz: str, seconds: float, settle: bool) -> dict:
    """{path: p50 ms} of the models timed side by side in this (fresh) process by edgekit's profiler loop."""
    from edgekit.runner.edgekit_runner import bench_models

    with np.load(feeds_npz) as z:
        feeds = {k: z[k] for k in z.files}
    res = bench_models({p: p for p in paths}, [feeds], min_seconds=seconds, max_seconds=3 * seconds, op_runs=0,
                       settle=settle)
    return {p: r["p50_ms"] for p, r in res.items()}


def side_rows(pair: str, fp32: str, int8: str, feeds: dict, alone: dict, *, processes: int, seconds: float) -> list:
    """One row per setting: the pair's side-by-side p50s against their deployed loops' (alone: {path: p50})."""
    from spinning import FEEDS, fresh_processes

    runs = fresh_processes(__file__, {s: ["--side", s, fp32, int8, FEEDS, seconds] for s in SIDE}, feeds, processes)
    paths = {"fp32": fp32, "int8": int8}
    ref = {k: alone[p] for k, p in paths.items()}
    rows = []
    for s in SIDE:
        per_process = {k: [r[p] for r in runs[s]] for k, p in paths.items()}
        p50 = {k: float(np.median(v)) for k, v in per_process.items()}
        rows.append({"model": pair, "setting": s, "p50_ms": p50, "alone_p50_ms": ref,
                     "vs_alone": {k: p50[k] / ref[k] for k in p50}, "int8_vs_fp32": p50["int8"] / p50["fp32"],
                     "alone_int8_vs_fp32": ref["int8"] / ref["fp32"],
                     "per_process_ms": {k: [round(t, 4) for t in v] for k, v in per_process.items()}})
    return rows


def _models(work: Path) -> dict:
    """{label: (path, feeds)}: FP32 and onnxruntime's U8S8 QDQ per-channel of both zoo models."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgekit import zoo
    from edgekit.quant import static
    from edgekit.stages.export import export_module
    from effnet_onnx import calibration_reader, probe_inputs

    def u8s8(src, dst, reader):
        with static.quiet():
            quantize_static(str(src), str(dst), reader, quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
        return dst

    digits = zoo.load("digits-cnn")
    fp32 = work / "digits.fp32.onnx"
    export_module(digits.module, digits, fp32, data=digits.calib)
    one = next(digits.calib.batches(1))
    out = {"digits-cnn FP32": (fp32, one),
           "digits-cnn U8S8 QDQ": (u8s8(fp32, work / "digits.u8s8.onnx",
                                        static.DatasetReader(digits.calib, digits.calib.names, 64, 1)), one)}
    prep, cal, x = probe_inputs(work)
    out["efficientnet-lite0 FP32"] = (prep, {"input": x})
    out["efficientnet-lite0 U8S8 QDQ"] = (u8s8(prep, work / "effnet.u8s8.onnx", calibration_reader(cal)),
                                          {"input": x})
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--timed"]:
        print(json.dumps(timed(argv[1], argv[2], float(argv[3]), argv[4] == "1", float(argv[5]))))
        return 0
    if argv[:1] == ["--side"]:
        print(json.dumps(side_by_side(argv[2:4], argv[4], float(argv[5]), argv[1] == SIDE[0])))
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("--processes", type=int, default=6, help="fresh processes per model and config")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing per process and mode")
    ap.add_argument("--gap-ms", type=float, default=5.0, help="sleep between runs in the paced mode")
    ap.add_argument("--out", default=str(HERE))
    a = ap.parse_args(argv)
    from spinning import record, stamp

    t0 = time.perf_counter()
    rows, side, deployed = [], [], {}
    with tempfile.TemporaryDirectory(prefix="edgekit-deploy-") as d:
        models = _models(Path(d))
        for label, (path, feeds) in models.items():
            runs = per_model(str(path), feeds, processes=a.processes, seconds=a.seconds, gap_ms=a.gap_ms)
            for mode in ("back to back", "paced"):
                stop = [r[mode] for r in runs[CONFIGS[0]]]
                spin = [r[mode] for r in runs[CONFIGS[1]]]
                ratios = [s / p for s, p in zip(stop, spin)]  # each from two back-to-back processes
                rows.append({"model": label, "mode": mode, "p50_ms_stop": float(np.median(stop)),
                             "p50_ms_spin": float(np.median(spin)), "stop_vs_spin": float(np.median(ratios)),
                             "pair_ratios": [round(r, 4) for r in ratios]})
                if mode == "back to back":  # the deployed loop the side-by-side rows compare with
                    deployed[str(path)] = rows[-1]["p50_ms_spin"]
        for pair in dict.fromkeys(k.split()[0] for k in models):
            (fp32, feeds), (int8, _) = models[f"{pair} FP32"], models[f"{pair} U8S8 QDQ"]
            side += side_rows(pair, str(fp32), str(int8), feeds, deployed, processes=a.processes, seconds=a.seconds)
    out = {**stamp("deploy_spinning.py", argv), "processes": a.processes, "gap_ms": a.gap_ms, "rows": rows,
           "side_by_side": side, "seconds": round(time.perf_counter() - t0, 1)}
    lines = [f"## {out['when']}: the deployed cost of stopping thread spinning after each run (batch 1)", "",
             f"Command: `{out['command']}`  ", f"Machine: {out['machine']}. onnxruntime's default threads; "
             f"each model alone in {a.processes} fresh processes per config, the two configs' processes back to "
             "back; ratio: the median over those process pairs.", "",
             "| model | loop | p50 ms, edgekit (stopped) | p50 ms, spinning left on | stopped / left on | range over pairs |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        loop = r["mode"] if r["mode"] == "back to back" else f"paced ({a.gap_ms:g} ms sleep between runs)"
        lines.append(f"| {r['model']} | {loop} | {r['p50_ms_stop']:.3f} | {r['p50_ms_spin']:.3f} | "
                     f"{r['stop_vs_spin']:.3f}x | {min(r['pair_ratios']):.3f}-{max(r['pair_ratios']):.3f} |")
    lines += ["", f"Side by side (FP32 and INT8 in one fresh process, runner.bench_models, {a.processes} processes per "
              "setting) against the deployed loop (alone, spinning left on, back to back; the table above):", "",
              "| model | setting | FP32 p50 ms | vs deployed | INT8 p50 ms | vs deployed | INT8 / FP32 | deployed INT8 / FP32 |",
              "|---|---|---|---|---|---|---|---|"]
    for r in side:
        lines.append(f"| {r['model']} | {r['setting']} | {r['p50_ms']['fp32']:.3f} | {r['vs_alone']['fp32']:.3f}x | "
                     f"{r['p50_ms']['int8']:.3f} | {r['vs_alone']['int8']:.3f}x | {r['int8_vs_fp32']:.3f}x | "
                     f"{r['alone_int8_vs_fp32']:.3f}x |")
    record(Path(a.out), "deploy_spinning.json", out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
