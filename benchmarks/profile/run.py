"""Profiler benchmark: interleaved ratios on this CPU and the cost of ARM emulation.

    python benchmarks/profile/run.py [-o benchmarks/profile/results.json]

Builds seeded models (MatMul chains of depth 4 and 8 = 1x and 2x the work; a small CNN and its
INT8 QDQ twin on real digits), profiles them on x86-laptop and arm64-emulated (if set up),
and records p50s, the interleaved ratios and the emulated/native slowdown. Only the ratios
are meaningful on a shared machine; the emulated figures are never device latency.
"""
import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))


def main(argv=None):
    from profile_models import digits_batches, matmul_chain, quantize_qdq, small_cnn

    from edgekit import emulation
    from edgekit.artifact import host_info, versions
    from edgekit.profile import profile_models, ratio

    ap = argparse.ArgumentParser()
    ap.add_argument("-o", "--output", default=str(HERE / "results.json"))
    a = ap.parse_args(argv)
    # the arguments as given (-o included), so the record names the run that wrote it
    cmd = shlex.join(["python", "benchmarks/profile/run.py", *(sys.argv[1:] if argv is None else argv)])
    out = {"command": cmd, "host": host_info(), "versions": versions(),
           "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cases": {}}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        chains = {"depth4": matmul_chain(d / "c4.onnx", 4), "depth8": matmul_chain(d / "c8.onnx", 8)}
        cnn = small_cnn(d / "cnn.onnx")
        x = digits_batches(64)
        models = {"fp32": cnn, "int8": quantize_qdq(cnn, d / "cnn.int8.onnx", x[:32])}
        feeds = [{"x": x[i:i + 1]} for i in range(8)]
        targets = ["x86-laptop"] + (["arm64-emulated"] if emulation.status()["ready"] else [])
        for tname in targets:
            emu = tname == "arm64-emulated"
            kw = dict(warmup=2, min_runs=10, min_seconds=0.0) if emu else dict(warmup=10, min_runs=200, min_seconds=3.0)
            t0 = time.monotonic()
            rc = profile_models(chains, tname, batch=64, threads=1, **kw)
            rm = profile_models(models, tname, inputs=feeds, threads=1, **kw)
            out["cases"][tname] = {
                "wall_s": round(time.monotonic() - t0, 1),
                "matmul_chains_batch64": {k: _brief(v) for k, v in rc.items()},
                "ratio_depth8_over_depth4": _r(ratio(rc["depth8"], rc["depth4"])),
                "cnn_digits": {k: _brief(v) for k, v in rm.items()},
                "ratio_int8_over_fp32": _r(ratio(rm["int8"], rm["fp32"])),
            }
        if len(targets) == 2:
            e, n = out["cases"]["arm64-emulated"], out["cases"]["x86-laptop"]
            out["emulation_slowdown_p50"] = {
                k: _r(e["cnn_digits"][k]["p50_ms"] / n["cnn_digits"][k]["p50_ms"]) for k in ("fp32", "int8")}
    Path(a.output).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


def _r(v):
    return None if v is None else round(v, 3)


def _brief(v):
    if v.get("status") != "ok":
        return {"status": v["status"], "reason": v.get("reason")}
    keys = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "runs", "cold_start_ms", "emulated", "threads",
            "batch", "provider")
    out = {k: (round(v[k], 4) if isinstance(v[k], float) else v[k]) for k in keys}
    if "arm_vs_host" in v:
        out["arm_vs_host"] = {k: v["arm_vs_host"][k] for k in ("ok", "atol", "max_abs_diff")}
    return out


if __name__ == "__main__":
    main()
