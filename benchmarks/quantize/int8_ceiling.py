"""How fast can onnxruntime run EfficientNet-Lite0 in INT8 on this host at all? (speed only)

    python benchmarks/quantize/int8_ceiling.py [--seconds 12] [--out benchmarks/quantize]

Issue 3 asks for <= 0.55x FP32 latency at batch 1 on 2 cores. This measures the fastest INT8 graphs
onnxruntime's own quantizer writes for zoo:efficientnet-lite0, whatever their accuracy, against FP32:
  - S8S8 QDQ, per-channel, MinMax (onnxruntime's default), U8S8 QDQ and U8S8 QOperator (per-channel);
  - U8S8 QDQ with the stem conv and the first depthwise conv left in FP32 (the structure of edgekit's
    fastest fallback candidate: the 3-channel stem runs slower in INT8 than in FP32), and with the stem
    and all 16 depthwise convs in FP32 (the layer kind INT8 does not speed up, see below);
at batch 1, interleaved in one process, with 1 and 2 intra-op threads and thread spinning off and on
(edgekit measures with spinning off: spin-waiting workers on a shared host measure the neighbours).
Then, from onnxruntime's profiler (2 threads, spinning off), FP32 vs U8S8 QDQ time per layer kind
(stem, depthwise, expand, project, head conv, classifier, the rest), convs matched in execution order.
Writes int8_ceiling.json and appends a section to RESULTS.md. Only ratios are meaningful on a shared host.
Needs the efficientnet extra.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

STEM, DW0 = "/_conv_stem/Conv", "/_blocks.0/_depthwise_conv/Conv"


def _kind(node: str) -> str:
    for key, kind in (("_conv_stem", "stem conv"), ("_depthwise_conv", "depthwise conv"), ("_expand_conv", "expand conv"),
                      ("_project_conv", "project conv"), ("_conv_head", "head conv"), ("_fc", "classifier")):
        if key in node:
            return kind
    return "other"


from effnet_onnx import calibration_reader, probe_inputs  # noqa: E402


def _main(work: Path, argv=None) -> int:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgekit.hostinfo import cpu_info
    from edgekit.quant import sensitivity, static
    from edgekit.runner.edgekit_runner import open_session

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=12.0, help="timing per configuration")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    prep, cal, x = probe_inputs(work)
    variants = {"fp32": prep}
    # a conv goes to FP32 with its ReLU6, as edgekit's fallback does
    fused = sensitivity.fused_activations(prep)
    depthwise = [n.name for n in onnx.load(str(prep)).graph.node if "_depthwise_conv" in n.name]
    stem_dw0 = sensitivity.with_activations([STEM, DW0], fused)
    stem_all_dw = sensitivity.with_activations([STEM, *depthwise], fused)
    for name, fmt, act, exclude in (("ort S8S8 QDQ (default)", QuantFormat.QDQ, QuantType.QInt8, []),
                                    ("ort U8S8 QDQ", QuantFormat.QDQ, QuantType.QUInt8, []),
                                    ("ort U8S8 QOperator", QuantFormat.QOperator, QuantType.QUInt8, []),
                                    ("U8S8 QDQ, stem + dw0 FP32", QuantFormat.QDQ, QuantType.QUInt8, stem_dw0),
                                    ("U8S8 QDQ, stem + all depthwise FP32", QuantFormat.QDQ, QuantType.QUInt8,
                                     stem_all_dw)):
        p = work / f"v{len(variants)}.onnx"
        with static.quiet():
            quantize_static(str(prep), str(p), calibration_reader(cal), quant_format=fmt, activation_type=act,
                            weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=exclude)
        variants[name] = p

    rows = []
    for threads in (1, 2):
        for spinning in (False, True):
            spin = {"session.intra_op.allow_spinning": "1" if spinning else "0"}
            sess = {k: open_session(str(p), threads=threads, config=spin) for k, p in variants.items()}
            times = defaultdict(list)
            for s in sess.values():
                for _ in range(5):
                    s.run(None, {"input": x})
            end = time.perf_counter() + a.seconds
            while time.perf_counter() < end:
                for k, s in sess.items():  # interleaved: each variant sees the same load
                    for _ in range(3):
                        t = time.perf_counter()
                        s.run(None, {"input": x})
                        times[k].append(time.perf_counter() - t)
            p50 = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
            row = {"threads": threads, "spinning": spinning, "runs": {k: len(v) for k, v in times.items()},
                   "p50_ms": p50, "vs_fp32": {k: v / p50["fp32"] for k, v in p50.items()}}
            rows.append(row)
            print(f"threads={threads} spinning={'on' if spinning else 'off'}: "
                  + ", ".join(f"{k} {v:.3f}x" for k, v in row["vs_fp32"].items()), flush=True)
            del sess

    # where the time goes, per layer kind: FP32 (NCHWc convs) vs U8S8 QDQ (QLinearConv), same order
    def conv_times(path) -> list:
        s = open_session(str(path), threads=2, profile_prefix=str(work / "prof"),
                         config={"session.intra_op.allow_spinning": "0"})
        runs = 30
        for _ in range(runs):
            s.run(None, {"input": x})
        events = [e for e in json.load(open(s.end_profiling())) if e.get("cat") == "Node"
                  and e["name"].endswith("_kernel_time")]
        per_node = defaultdict(float)
        order = []
        for e in events:
            n = e["name"][: -len("_kernel_time")]
            if n not in per_node:
                order.append((n, e["args"].get("op_name", "")))
            per_node[n] += e["dur"] / runs / 1000
        return [(n, op, per_node[n]) for n, op in order]

    f_nodes = conv_times(prep)
    q_nodes = conv_times(variants["ort U8S8 QDQ"])
    f_conv = [t for t in f_nodes if t[1] in ("Conv", "FusedConv")]
    q_conv = [t for t in q_nodes if t[1] == "QLinearConv"]
    by_kind = defaultdict(lambda: {"fp32_ms": 0.0, "int8_ms": 0.0, "layers": 0})
    matched = len(f_conv) == len(q_conv)
    if matched:
        for (fn, _, ft), (qn, _, qt) in zip(f_conv, q_conv):
            k = by_kind[_kind(qn)]
            k["fp32_ms"] += ft
            k["int8_ms"] += qt
            k["layers"] += 1
    conv_names = {n for n, _, _ in f_conv} | {n for n, _, _ in q_conv}
    for nodes, col in ((f_nodes, "fp32_ms"), (q_nodes, "int8_ms")):
        for n, op, t in nodes:
            if n in conv_names:
                continue
            kind = "classifier" if op in ("Gemm", "QGemm") else "other"
            by_kind[kind][col] += t
    kinds = {k: {**v, "fp32_ms": round(v["fp32_ms"], 4), "int8_ms": round(v["int8_ms"], 4),
                 "ratio": round(v["int8_ms"] / v["fp32_ms"], 3) if v["fp32_ms"] else None}
             for k, v in by_kind.items()}
    cpu = cpu_info()
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = (f"{cpu.get('model', 'unknown CPU')}, {cpu.get('cores', '?')} cores, ISA {', '.join(cpu.get('isa', []))}"
               f" (shared: compare ratios only); onnxruntime {ort.__version__}")
    # the arguments as given, so the record names the run that produced it (--seconds, --out)
    cmd = shlex.join(["python", "benchmarks/quantize/int8_ceiling.py", *(sys.argv[1:] if argv is None else argv)])
    out = {"when": when, "command": cmd, "machine": machine, "batch": 1,
           "rows": rows, "per_kind": kinds, "convs_matched": matched, "seconds": round(time.perf_counter() - t0, 1)}
    outdir = Path(a.out)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "int8_ceiling.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [f"## {when}: INT8 speed ceiling (efficientnet-lite0)", "",
             f"Command: `{cmd}`  ",
             f"Machine: {machine}. Batch 1, p50, all variants interleaved in one process per row.", "",
             "| threads | spinning | " + " | ".join(k for k in variants) + " |",
             "|---|---|" + "---|" * len(variants)]
    for r in rows:
        lines.append(f"| {r['threads']} | {'on' if r['spinning'] else 'off'} | "
                     + " | ".join(f"{r['p50_ms'][k]:.2f} ms ({r['vs_fp32'][k]:.3f}x)" for k in variants) + " |")
    lines += ["", "Per layer kind, 2 threads, spinning off (onnxruntime profiler, ms per run"
              + ("" if matched else "; conv counts differ, convs not matched") + "):", "",
              "| layer kind | layers | FP32 ms | U8S8 QDQ ms | INT8 / FP32 |", "|---|---|---|---|---|"]
    for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]["fp32_ms"]):
        lines.append(f"| {k} | {v['layers'] or ''} | {v['fp32_ms']:.3f} | {v['int8_ms']:.3f} | {v['ratio']} |")
    with open(outdir / "RESULTS.md", "a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    # the exported and quantized models matter only during the run: removed at the end, failed or not
    with tempfile.TemporaryDirectory(prefix="int8-ceiling-") as d:
        return _main(Path(d), argv)


if __name__ == "__main__":
    sys.exit(main())
