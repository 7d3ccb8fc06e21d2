"""Do this host's INT8 kernels compute what the QDQ graph says? (EfficientNet-Lite0, no timing.)

    python benchmarks/quantize/kernel_check.py [--out benchmarks/quantize/kernel_check.json]

Builds the 4-node fallback structure edgekit's tuning tries (stem conv and first depthwise conv with their
ReLU6 in FP32; the rest U8S8 QDQ per-channel, percentile ranges, GPTQ-rounded weights, bias-corrected; unlike
tuning, the two FP32 layers keep their GPTQ-rounded weights), then scores its top-1 agreement with FP32 on
the noise-stable eval crops (run.py's eval set) and on all of them, run by onnxruntime at each graph
optimisation level: with optimisations off the Q/DQ pairs run in float (the graph's own arithmetic); from
'extended' on they are fused into integer kernels (QLinearConv, ...). Equal scores at every level mean the
integer kernels agree with the float simulation on this host (a public report, microsoft/onnxruntime#26324,
has QLinearConv output wrong on AMX Xeons). Needs the efficientnet extra: pip install -e ".[efficientnet]".
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from effnet_onnx import batched_logits, eval_setup  # noqa: E402

STEM, DW0 = "/_conv_stem/Conv", "/_blocks.0/_depthwise_conv/Conv"


def _main(work: Path) -> int:
    import onnxruntime as ort

    from edgekit.hostinfo import cpu_info
    from edgekit.quant import bias_correction, gptq, sensitivity, static
    from edgekit.quant.spec import QuantSpec
    from noise_floor import effnet_pixel, stability

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "kernel_check.json"))
    a = ap.parse_args()
    t0 = time.perf_counter()
    cal, x, prep = eval_setup(work)
    stable = stability(prep, x, effnet_pixel())["stable"]

    info = gptq.apply(prep, work / "gptq_fp32.onnx", cal, ["input"], per_channel=True, limit=200)
    four = sensitivity.with_activations([STEM, DW0], sensitivity.fused_activations(prep))
    dest = work / "fallback4.onnx"
    static.quantize(work / "gptq_fp32.onnx", dest, cal, QuantSpec(method="percentile", exclude_nodes=tuple(four)),
                    overrides=info["overrides"], calib_size=200, input_names=["input"], use_cache=False)
    bias_correction.apply(dest, prep, cal, ["input"])

    levels = {"off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}

    def top1(path, level):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = levels[level]
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return batched_logits(s, x).argmax(1)

    ref = top1(prep, "all")
    res = {}
    for level in levels:
        same = top1(dest, level) == ref
        res[level] = {"agree_stable": int(same[stable].sum()), "n_stable": int(stable.sum()),
                      "agreement_stable": round(float(same[stable].mean()), 4),
                      "agreement_all": round(float(same.mean()), 4), "n_all": len(x)}
    out = {"command": " ".join(["python benchmarks/quantize/kernel_check.py", *sys.argv[1:]]),
           "cpu": cpu_info()["model"], "isa": cpu_info().get("isa"), "onnxruntime": ort.__version__,
           "fp32_nodes": four, "seconds": round(time.perf_counter() - t0, 1), "results": res}
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    tmp = Path(tempfile.mkdtemp(prefix="kernel_check_"))
    try:
        sys.exit(_main(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
