"""edgekit INT8 vs onnxruntime's own quantize_static / quantize_dynamic defaults vs FP32, side by side.

    python benchmarks/quantize/run.py [digits-cnn minilm efficientnet-lite0] [--out benchmarks/quantize]

For each zoo model: export FP32 ONNX, run edgekit's quantize stage (tuning + fallback + speed
gate), run onnxruntime's defaults on the same pre-processed model and calibration data, then
time every variant interleaved in one process (batch 1) and score each on the zoo eval set.
Writes results.json and appends a section to RESULTS.md; only ratios are meaningful on a busy host.
A model that fails stops the run with exit 1 before anything is written, so a failure never appends an
empty section nor drops that model's recorded entry. The working models live in a temporary folder that is
removed at the end. --threads sets onnxruntime's intra-op threads for the latency table (default: its own
default); the section header records what was used.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "profile"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


DEFAULT_TOLERANCE = {"digits-cnn": "1%", "minilm": "1%", "efficientnet-lite0": "2%"}
# label-free image models: scored (and tuned) on the eval crops whose FP32 top-1 is decided by the image,
# i.e. does not move when the pixels move within their own 8-bit rounding (noise_floor.py); every variant
# is also scored on the full eval set, and FP32's own agreement under that noise is recorded beside it
NOISE_STABLE_EVAL = {"efficientnet-lite0"}


def noise_stable_eval(name: str, fp32, full):
    """(the noise-stable subset of `full` as a Dataset, its record) for a model in NOISE_STABLE_EVAL."""
    import numpy as np

    from edgekit.dataset import Dataset
    from noise_floor import DRAWS, SEED, effnet_pixel, stability

    x = np.asarray(full.inputs["input"][:])
    r = stability(fp32, x, effnet_pixel())
    keep = r["stable"]
    labels = [lab for lab, ok in zip(full.extra.get("crops", []), keep) if ok]
    sub = Dataset({"input": x[keep]}, None, f"{full.source}: the {int(keep.sum())} whose FP32 top-1 is stable under "
                  f"+-0.5 pixel input noise ({DRAWS} seeded draws)", {"crops": labels})
    return sub, {"n_full": len(x), "n_stable": int(keep.sum()), "draws": DRAWS, "seed": SEED,
                 "fp32_self_agreement_per_draw": r["agreement"]}


def bench(name: str, *, max_trials: int, runs: int, seconds: float, tolerance: str = "1%",
          stable_eval: bool = True, threads=None, alone_processes: int = 0) -> dict:
    # the exported, quantized and reference models are only needed while timing and scoring them
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as d:
        return _bench(name, Path(d), max_trials=max_trials, runs=runs, seconds=seconds, tolerance=tolerance,
                      stable_eval=stable_eval, threads=threads, alone_processes=alone_processes)


def _bench(name: str, out: Path, *, max_trials: int, runs: int, seconds: float, tolerance: str,
           stable_eval: bool, threads, alone_processes: int) -> dict:
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    from edgekit import zoo
    from edgekit.artifact import Manifest
    from edgekit.config import QuantizeConfig, Tolerance
    from edgekit.context import RunContext
    from edgekit.evaluate import Evaluator
    from edgekit.hostinfo import cpu_info
    from edgekit.quant import dynamic, static
    from edgekit.quant.timing import interleaved
    from edgekit.stages import quantize as stage
    from edgekit.stages.export import export_module

    t0 = time.perf_counter()
    src = zoo.load(name)
    fp32 = out / "model.fp32.onnx"
    art = export_module(src.module, src, fp32, data=src.calib)
    full_eval, noise = src.eval, None
    if stable_eval and name in NOISE_STABLE_EVAL:
        src.eval, noise = noise_stable_eval(name, fp32, full_eval)
    ev = Evaluator(src.eval, src.task, fp32)
    ev_full = Evaluator(full_eval, src.task, fp32) if noise else None
    art.metrics = ev(fp32)
    ctx = RunContext(outdir=out, source=src, manifest=Manifest(), calib=src.calib, eval=src.eval, evaluate=ev,
                     tolerance=Tolerance.parse(tolerance))
    q = stage.run(art, ctx, QuantizeConfig(max_trials=max_trials))
    rec = ctx.manifest.quantization[art.path]
    # onnxruntime's defaults, same pre-processed graph and calibration samples
    prep = out / "prep.onnx"
    static.preprocess(fp32, prep)
    names = [i.name for i in src.inputs]
    n = min(256, len(src.calib))
    with static.quiet():
        quantize_static(str(prep), str(out / "ort_static.onnx"),
                        static.DatasetReader(src.calib, names, n, static.batch_size_for(prep)))
        quantize_dynamic(str(prep), str(out / "ort_dynamic.onnx"))
    paths = {"fp32": fp32, "edgekit": out / q.path, "ort_static": out / "ort_static.onnx",
             "ort_dynamic": out / "ort_dynamic.onnx"}
    # a reference, not a contender: FP32 with the same attention fusion edgekit runs before dynamic INT8,
    # so the table shows how much of the INT8 speed-up is the fusion and how much is INT8
    if q.settings.get("fuse_transformer") and dynamic.fuse_transformer(prep, out / "fp32_fused.onnx"):
        paths["fp32_fused (reference)"] = out / "fp32_fused.onnx"
    feeds = {k: v[:1] for k, v in src.calib.take(1).inputs.items()}
    span = dict(min_runs=runs, min_seconds=seconds, warmup=10, max_seconds=max(60.0, 4 * seconds), threads=threads)
    lat = interleaved(paths, feeds, spinning=False, **span)
    # onnxruntime's own spinning, stopped when each run returns: edgekit's session config, as the speed
    # gate, `edgekit profile` and a deployed model run (benchmarks/profile/spinning.py)
    lat_spin = interleaved(paths, feeds, spinning=True, **span)
    solo = {}
    if alone_processes:
        from spinning import alone_p50, paired_ratios

        from edgekit.quant.timing import median_interval

        solo = alone_p50({k: paths[k] for k in ("fp32", "edgekit")}, feeds, processes=alone_processes,
                         seconds=min(seconds, 4.0), threads=threads)
    rows = {}
    for k, p in paths.items():
        m = ev(p)
        if ev_full is not None:
            full = ev_full(p)
            m_full = {"value_full_eval": round(full["value"], 4), "n_full_eval": full["n"]}
        else:
            m_full = {}
        if k in solo:
            m_full.update({"p50_ms_alone": round(solo[k][0], 4), "alone_p50s_ms": [round(t, 4) for t in solo[k][1]],
                           "alone_pair_ratios": [round(r, 4) for r in paired_ratios(solo[k][1], solo["fp32"][1])]})
            lo, mid, hi, cov = median_interval(m_full["alone_pair_ratios"])
            m_full.update({"ratio_vs_fp32_alone": round(mid, 3), "ratio_vs_fp32_alone_interval": [round(lo, 3), round(hi, 3)],
                           "ratio_vs_fp32_alone_confidence": round(cov, 4)})
        rows[k] = {**m_full, "p50_ms": round(lat[k]["p50_ms"], 4), "ratio_vs_fp32": round(lat[k]["p50_ms"] / lat["fp32"]["p50_ms"], 3),
                   "p50_ms_spinning": round(lat_spin[k]["p50_ms"], 4),
                   "ratio_vs_fp32_spinning": round(lat_spin[k]["p50_ms"] / lat_spin["fp32"]["p50_ms"], 3),
                   "metric": m["name"], "value": round(m["value"], 4), "n": m["n"], "bytes": p.stat().st_size,
                   "size_vs_fp32": round(p.stat().st_size / fp32.stat().st_size, 3)}
    return {"model": name, "tolerance": tolerance, "notes": rec.get("notes", []), "chosen": rec.get("chosen"), "recommend": rec.get("recommend"),
            "tolerance_met": rec.get("tolerance_met"), "reason": rec.get("reason"), "isa": rec["isa"]["choice"],
            "trials": len(rec["trials"]), "fp32_nodes": len(q.settings.get("exclude_nodes", [])),
            "speed_gate": {k: {kk: v.get(kk) for kk in ("fp32_ms", "int8_ms", "ratio", "passed")}
                           for k, v in rec["speed_gate"].items()},
            # the timings behind each speed-up too (a trial's two session pairs, the runoff's), so a pick can be
            # re-read from this file
            "trial_log": [{"name": t["name"], "phase": t["phase"], "metric": t["metric"], "speedup": t["speedup"],
                           "fp32_nodes": len(t["fp32_nodes"]), "error": t["error"],
                           **{k: t[k] for k in ("speedup_range", "trial_speedup", "runoff_speedups", "timing_note")
                              if t.get(k) is not None}} for t in rec["trials"]],
            "sensitivity_worst": rec.get("sensitivity", [])[:10],
            "variants": rows, "threads": threads_used(threads), "seconds": round(time.perf_counter() - t0, 1), "cpu": cpu_info()["model"],
            "eval_data": src.eval.source, "noise_floor": noise}


def threads_used(threads) -> str:
    """The intra-op thread count the latency table ran with, as recorded in results.json and RESULTS.md."""
    if threads:
        return f"{threads} thread{'' if threads == 1 else 's'}"
    return f"onnxruntime's default intra-op threads ({os.cpu_count()} CPUs here)"


def speedups(r: dict) -> list:
    """Both timings of the chosen INT8 file, each named: the quantize stage's speed gate and this table."""
    lines = []
    for target, g in r["speed_gate"].items():
        if g.get("ratio"):
            quoted = f"{1 / g['ratio']:.2f}x faster than FP32" in (r.get("reason") or "")
            lines.append(f"Speed-up, speed gate ({target}; the quantize stage's own interleaved session pairs, "
                         f"before the table): INT8 {g['ratio']:.3f}x FP32 latency = {1 / g['ratio']:.2f}x faster"
                         + (" (the speed-up quoted above)." if quoted else ".") + "  ")
    v = r["variants"].get("edgekit")
    for key, how in (("ratio_vs_fp32", "all variants interleaved, spinning off"),
                     ("ratio_vs_fp32_spinning", "all variants interleaved, spinning stopped after each run"),
                     ("ratio_vs_fp32_alone", "each alone in fresh processes, onnxruntime defaults")):
        if v and v.get(key):
            ci = v.get(key + "_interval")
            n = len(v.get("alone_pair_ratios") or ())
            lines.append(f"Speed-up, this benchmark's table ({how}, p50): INT8 {v[key]:.3f}x FP32 latency = "
                         f"{1 / v[key]:.2f}x faster" + (
                             f" (the median of {n} ratios of back-to-back FP32 and INT8 processes, "
                             f"{v[key + '_confidence']:.1%} interval {ci[0]:.3f}-{ci[1]:.3f}x; largest "
                             f"{max(v['alone_pair_ratios']):.3f}x)" if ci else "") + ".  ")
    return lines + [""] if lines else []


def to_markdown(results: list, cmd: str) -> str:
    from edgekit.hostinfo import cpu_info

    info = cpu_info()
    threads = {r.get("threads", "") for r in results}
    lines = [f"## {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC", "",
             f"Command: `{cmd}`  ",
             f"Machine: {info['model']}, {info['cores']} cores, ISA {', '.join(info['isa'])} (shared: "
             f"compare ratios only). Latency: batch 1, p50, {', '.join(sorted(threads))}, timed three ways: all "
             "variants interleaved in one process with thread spinning off (spin-waiting workers on a busy host "
             "measure the neighbours), the same with onnxruntime's spinning stopped after each run (edgekit's "
             "session config: how the speed gate, `edgekit profile` and a deployed model run), and FP32 and "
             "edgekit's INT8 each alone in fresh processes with onnxruntime's default session options (the "
             "median of the processes' p50s).", ""]
    for r in results:
        lines += [f"### {r['model']}", "",
                  f"edgekit chose **{r['chosen']}** after {r['trials']} trials (ISA default {r['isa']}; "
                  f"{r['fp32_nodes']} nodes kept FP32; tolerance {r.get('tolerance', '1%')}); recommended: "
                  f"{r['recommend']}. Quantize stage: {r['reason']}", "",
                  *speedups(r),
                  f"Eval: {r['eval_data']}", ""]
        nf = r.get("noise_floor")
        if nf:
            lines += [f"Noise floor: FP32 agrees with itself on {min(nf['fp32_self_agreement_per_draw']):.4f}-"
                      f"{max(nf['fp32_self_agreement_per_draw']):.4f} of all {nf['n_full']} crops when their pixels "
                      f"move within their 8-bit rounding (+-0.5, {nf['draws']} draws); {nf['n_stable']} crops never "
                      "change top-1 and are the eval set above (tuning included); the last column scores all "
                      f"{nf['n_full']}.", ""]
        full = " all crops |" if nf else ""
        lines += ["| variant | p50 ms, spinning off | vs FP32 | p50 ms, spinning stopped after each run | vs FP32 | "
                  "p50 ms alone | vs FP32 | metric | value | size vs FP32 |" + full,
                  "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if nf else "")]
        for k, v in r["variants"].items():
            spin = (f"{v['p50_ms_spinning']:.3f} | {v['ratio_vs_fp32_spinning']:.3f}x"
                    if "p50_ms_spinning" in v else "- | -")
            solo = f"{v['p50_ms_alone']:.3f} | {v['ratio_vs_fp32_alone']:.3f}x" if "p50_ms_alone" in v else "- | -"
            lines.append(f"| {k} | {v['p50_ms']:.3f} | {v['ratio_vs_fp32']:.3f}x | {spin} | {solo} | "
                         f"{v['metric']} (n={v['n']}) | {v['value']:.4f} | {v['size_vs_fp32']:.2f} |"
                         + (f" {v['value_full_eval']:.4f} |" if nf else ""))
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=["digits-cnn", "minilm", "efficientnet-lite0"])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    ap.add_argument("--max-trials", type=int, default=12)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=8.0)
    # the floor per model: digits-cnn 1% relative, MiniLM cosine >= 0.99 and EfficientNet agreement
    # >= 0.98 against a reference of 1.0 (the metric is fidelity to FP32), i.e. 1% and 2%
    ap.add_argument("--tolerance", action="append", default=[], metavar="MODEL=TOL",
                    help="per-model tolerance, e.g. efficientnet-lite0=2%%")
    ap.add_argument("--full-eval", action="store_true",
                    help="tune and score EfficientNet-Lite0 on all eval crops, not only the noise-stable ones")
    ap.add_argument("--threads", type=int, default=None,
                    help="onnxruntime intra-op threads for the latency table (default: onnxruntime's own)")
    ap.add_argument("--alone", type=int, default=6, metavar="N",
                    help="also time FP32 and edgekit's INT8 each alone in N fresh processes (0: skip)")
    a = ap.parse_args(argv)
    os.environ.setdefault("EDGEKIT_QUIET", "1")
    tol = {**DEFAULT_TOLERANCE, **dict(t.split("=", 1) for t in a.tolerance)}
    results = []
    for m in a.models:
        # a failed model (a missing optional package included) is not a result: recording the others
        # would append a section without it and drop its earlier entry from results.json
        try:
            results.append(bench(m, max_trials=a.max_trials, runs=a.runs, seconds=a.seconds,
                                 tolerance=tol.get(m, "1%"), stable_eval=not a.full_eval, threads=a.threads,
                                 alone_processes=a.alone))
        except Exception as e:
            print(f"benchmarks/quantize/run.py: {m}: {type(e).__name__}: {e}; nothing recorded", file=sys.stderr)
            return 1
    out = Path(a.out)
    # results.json holds the latest run of every model: a run of some models keeps the others' entries
    try:
        kept = [r for r in json.loads((out / "results.json").read_text()) if r.get("model") not in a.models]
    except (OSError, ValueError):
        kept = []
    (out / "results.json").write_text(json.dumps(kept + results, indent=2) + "\n")
    cmd = "python benchmarks/quantize/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = to_markdown(results, cmd.strip())
    with open(out / "RESULTS.md", "a") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
