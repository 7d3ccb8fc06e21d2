"""Which onnxruntime.transformers fusions make a dynamic-INT8 transformer fastest: all 16 on/off mixes.

    python benchmarks/quantize/fusion_grid.py [--model minilm] [--seconds 40] [--repeats 2]

Exports the zoo model to FP32 ONNX, runs onnxruntime's pre-processing, then for every mix of the four
fusions (SkipLayerNormalization, BiasGelu, Attention, EmbedLayerNormalization) fuses and quantizes
dynamically as edgekit does (per-channel S8 weights, activation MatMuls too). Times all of them, FP32,
onnxruntime's quantize_dynamic default and edgekit's own fusion choice interleaved in one process
(2 threads, spinning off), `repeats` times, and scores each on the zoo eval set. Writes
fusion_grid.json and appends a section to RESULTS.md. Only ratios are meaningful on a shared host.
"""
from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FUSIONS = ("enable_skip_layer_norm", "enable_bias_gelu", "enable_attention", "enable_embed_layer_norm")
SHORT = ("skipLN", "biasGelu", "attention", "embedLN")


def _main(work: Path, argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    a = ap.parse_args(argv)

    import onnx
    from onnxruntime.quantization import quantize_dynamic
    from onnxruntime.transformers.fusion_options import FusionOptions

    from edgekit import zoo
    from edgekit.evaluate import Evaluator
    from edgekit.hostinfo import cpu_info
    from edgekit.quant import dynamic, static
    from edgekit.quant.spec import QuantSpec
    from edgekit.quant.timing import interleaved
    from edgekit.stages.export import export_module

    src = zoo.load(a.model)
    fp32 = work / "fp32.onnx"
    export_module(src.module, src, fp32, data=src.calib)
    prep = work / "prep.onnx"
    static.preprocess(fp32, prep)
    spec = QuantSpec(mode="int8-dynamic", per_channel=True)
    paths = {"fp32": fp32}
    with static.quiet():
        quantize_dynamic(str(prep), str(work / "ort_dynamic.onnx"))
    paths["ort_dynamic"] = work / "ort_dynamic.onnx"
    dynamic.quantize(prep, work / "unfused.int8.onnx", spec)
    paths["edgekit unfused"] = work / "unfused.int8.onnx"
    if dynamic.fuse_transformer(prep, work / "edgekit.fused.onnx"):
        dynamic.quantize(work / "edgekit.fused.onnx", work / "edgekit.int8.onnx", spec)
        paths["edgekit fused (default)"] = work / "edgekit.int8.onnx"
    for bits in itertools.product((True, False), repeat=len(FUSIONS)):
        fo = FusionOptions("bert")
        for k, b in zip(FUSIONS, bits):
            setattr(fo, k, b)
        if "enable_bias_skip_layer_norm" in vars(fo):
            fo.enable_bias_skip_layer_norm = bits[0]
        tag = "+".join(s for s, b in zip(SHORT, bits) if b) or "none"
        f = work / f"f_{len(paths)}.onnx"
        if not dynamic.fuse_transformer(prep, f, options=fo):
            # no Attention fused: the same as "unfused" plus whatever else fused; quantize the plain
            # optimizer output anyway so every mix has a row
            from onnxruntime.transformers.optimizer import optimize_model

            nh, hidden = dynamic.attention_shape(onnx.load(str(prep), load_external_data=False))
            with static.quiet():
                optimize_model(str(prep), model_type="bert", num_heads=nh, hidden_size=hidden, opt_level=0,
                               optimization_options=fo).save_model_to_file(str(f))
        q = work / f"q_{len(paths)}.onnx"
        dynamic.quantize(f, q, spec)
        paths[tag] = q

    feeds = {k: v[:1] for k, v in src.calib.take(1).inputs.items()}
    ratios = {k: [] for k in paths}
    ms = {k: [] for k in paths}
    for _ in range(a.repeats):
        lat = interleaved(paths, feeds, min_runs=60, min_seconds=a.seconds, warmup=5, max_seconds=4 * a.seconds,
                          threads=2, spinning=False)
        for k in paths:
            ms[k].append(round(lat[k]["p50_ms"], 3))
            ratios[k].append(round(lat[k]["p50_ms"] / lat["fp32"]["p50_ms"], 3))
    ev = Evaluator(src.eval, src.task, fp32)
    rows = []
    for k, p in paths.items():
        m = ev(p)
        rows.append({"variant": k, "p50_ms": ms[k], "ratio_vs_fp32": ratios[k], "metric": m["name"],
                     "value": round(m["value"], 4), "n": m["n"]})
    info = cpu_info()
    cmd = "python benchmarks/quantize/fusion_grid.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(a.out)
    (out / "fusion_grid.json").write_text(json.dumps({"model": a.model, "cpu": info, "rows": rows}, indent=2) + "\n")
    lines = [f"## {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC: dynamic INT8 fusion grid ({a.model})", "",
             f"Command: `{cmd.strip()}`  ",
             f"Machine: {info['model']}, {info['cores']} cores, ISA {', '.join(info['isa'])} (shared: compare "
             f"ratios only). Batch 1, p50, every variant interleaved in one process, 2 threads, spinning off, "
             f"{a.repeats} rounds of >= {a.seconds:.0f} s.", "",
             "| variant (fusions run before quantize_dynamic) | latency vs FP32, per round | metric | value |",
             "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {' / '.join(f'{x:.3f}x' for x in r['ratio_vs_fp32'])} | "
                     f"{r['metric']} (n={r['n']}) | {r['value']:.4f} |")
    text = "\n".join(lines) + "\n\n"
    with open(out / "RESULTS.md", "a") as f:
        f.write(text)
    print(text)


def main(argv=None):
    # the exported and quantized models matter only during the run: removed at the end, failed or not
    with tempfile.TemporaryDirectory(prefix="fusion-grid-") as d:
        return _main(Path(d), argv)


if __name__ == "__main__":
    main()
