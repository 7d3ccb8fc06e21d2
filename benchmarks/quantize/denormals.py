"""What flushing denormals to zero does to MiniLM, FP32 and edgekit's dynamic INT8, on real and full inputs.

    python benchmarks/quantize/denormals.py [--seconds 15]

Exports zoo:minilm, builds edgekit's dynamic INT8 (attention fused, per-channel), then times FP32 and
INT8 with and without onnxruntime's `session.set_denormal_as_zero`, interleaved in one process (2 threads,
spinning off), on one real calibration sentence (padded to 128) and on 128 random tokens without
padding; plus the per-op time of attention (QAttention / Softmax) from onnxruntime's profiler, and the
largest output difference the setting makes on the 400 eval sentences. Writes denormals.json and
appends a section to RESULTS.md. Only ratios are meaningful on a shared host.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _main(work: Path, argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    a = ap.parse_args(argv)

    from edgekit import zoo
    from edgekit.hostinfo import cpu_info
    from edgekit.quant import dynamic, static
    from edgekit.quant.spec import QuantSpec
    from edgekit.runner.edgekit_runner import open_session
    from edgekit.stages.export import export_module

    src = zoo.load("minilm")
    fp32 = work / "fp32.onnx"
    export_module(src.module, src, fp32, data=src.calib)
    prep, fused, int8 = work / "prep.onnx", work / "fused.onnx", work / "int8.onnx"
    static.preprocess(fp32, prep)
    if not dynamic.fuse_transformer(prep, fused):
        raise SystemExit("minilm: attention did not fuse")
    dynamic.quantize(fused, int8, QuantSpec(mode="int8-dynamic", per_channel=True))

    off = {"session.set_denormal_as_zero": "0", "session.intra_op.allow_spinning": "0"}
    on = {"session.intra_op.allow_spinning": "0"}  # edgekit's SESSION_CONFIG sets the flush
    sess = {(m, flush): open_session(p, threads=2, config=on if flush else off)
            for m, p in (("fp32", fp32), ("int8", int8)) for flush in (False, True)}
    real = {k: v[:1] for k, v in src.calib.take(1).inputs.items()}
    rnd = {"input_ids": np.random.default_rng(0).integers(1000, 20000, (1, 128)).astype(np.int64),
           "attention_mask": np.ones((1, 128), np.int64)}
    rows = {}
    for feed_name, feeds in (("real sentence, padded", real), ("128 random tokens, no padding", rnd)):
        for s in sess.values():
            for _ in range(5):
                s.run(None, feeds)
        times = {k: [] for k in sess}
        t0 = time.perf_counter()
        r = 0
        while time.perf_counter() - t0 < a.seconds or r < 30:
            for k in (list(sess) if r % 2 == 0 else list(sess)[::-1]):
                t = time.perf_counter()
                sess[k].run(None, feeds)
                times[k].append((time.perf_counter() - t) * 1000)
            r += 1
        p50 = {k: float(np.percentile(v, 50)) for k, v in times.items()}
        attn = {}
        for (m, flush) in sess:
            with tempfile.TemporaryDirectory() as d:
                s = open_session(int8 if m == "int8" else fp32, threads=2, config=on if flush else off,
                                 profile_prefix=os.path.join(d, "p"))
                for _ in range(20):
                    s.run(None, feeds)
                events = json.loads(Path(s.end_profiling()).read_text())
            per = defaultdict(float)
            for e in events:
                if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
                    per[e["args"].get("op_name", "?")] += e.get("dur", 0) / 1000.0 / 20
            attn[f"{m} flush={flush}"] = {op: round(per[op], 3) for op in ("QAttention", "Softmax") if op in per}
        rows[feed_name] = {
            "p50_ms": {f"{m} flush={f}": round(v, 3) for (m, f), v in p50.items()},
            "int8_vs_fp32": {"flush off": round(p50[("int8", False)] / p50[("fp32", False)], 3),
                             "flush on": round(p50[("int8", True)] / p50[("fp32", True)], 3)},
            "attention_ms_per_run": attn}
    x = {k: np.asarray(v) for k, v in src.eval.inputs.items()}
    diff = {}
    for m in ("fp32", "int8"):
        outs = [np.concatenate([sess[(m, f)].run(None, {k: v[i:i + 32] for k, v in x.items()})[0]
                                for i in range(0, len(x["input_ids"]), 32)]) for f in (False, True)]
        diff[m] = float(np.abs(outs[0] - outs[1]).max())
    info = cpu_info()
    cmd = "python benchmarks/quantize/denormals.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = {"command": cmd.strip(), "cpu": info, "rows": rows, "max_abs_output_diff_flush_on_vs_off": diff,
           "n_eval": int(len(x["input_ids"]))}
    Path(a.out, "denormals.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"## {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC: denormals (minilm)", "",
             f"Command: `{cmd.strip()}`  ",
             f"Machine: {info['model']}, {info['cores']} cores, ISA {', '.join(info['isa'])} (shared: compare ratios "
             f"only). Batch 1, p50, the four sessions interleaved in one process, 2 threads, spinning off.", "",
             "| input | FP32 off / on (ms) | INT8 off / on (ms) | INT8 vs FP32, off / on | attention ms per run, INT8 off / on |",
             "|---|---|---|---|---|"]
    for feed_name, r in rows.items():
        p, at = r["p50_ms"], r["attention_ms_per_run"]
        lines.append(f"| {feed_name} | {p['fp32 flush=False']:.2f} / {p['fp32 flush=True']:.2f} | "
                     f"{p['int8 flush=False']:.2f} / {p['int8 flush=True']:.2f} | "
                     f"{r['int8_vs_fp32']['flush off']:.3f}x / {r['int8_vs_fp32']['flush on']:.3f}x | "
                     f"{at['int8 flush=False']} / {at['int8 flush=True']} (FP32: {at['fp32 flush=False']} / "
                     f"{at['fp32 flush=True']}) |")
    lines += ["", f"Largest output difference, flush on vs off, over the {out['n_eval']} eval sentences: "
              f"FP32 {diff['fp32']:.2e}, INT8 {diff['int8']:.2e}.", "", ""]
    text = "\n".join(lines)
    with open(Path(a.out) / "RESULTS.md", "a") as f:
        f.write(text)
    print(text)


def main(argv=None):
    # the exported and quantized models matter only during the run: removed at the end, failed or not
    with tempfile.TemporaryDirectory(prefix="denormals-") as d:
        return _main(Path(d), argv)


if __name__ == "__main__":
    main()
