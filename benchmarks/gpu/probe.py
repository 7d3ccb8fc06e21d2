"""Does onnxruntime-gpu run on this machine's GPU, and what does it need first? Prints one JSON object.

Each way of opening a CUDA session runs in a fresh process, since a library loaded once stays loaded:
  bare          import onnxruntime, open the session (what a script does)
  torch_first   import torch (a CUDA build loads its CUDA libraries), then the session
  edgekit       edgekit's own open_session + check_active (what every edgekit command does)
  *_trt         the same with TensorRT listed first, as the nvidia-gpu target does
The model is a Conv (cuDNN) and a MatMul (cuBLAS), so both libraries must load for the session to run.

    python benchmarks/gpu/probe.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
import numpy as np
mode, path = sys.argv[1], sys.argv[2]
if mode == "torch_first":
    import torch
    torch.cuda.is_available()
import onnxruntime as ort
res = {"mode": mode}
prov = ["CUDAExecutionProvider", "CPUExecutionProvider"]
if mode.endswith("_trt"):  # TensorRT first, as the nvidia-gpu target lists it
    prov = ["TensorrtExecutionProvider"] + prov
t = time.perf_counter()
try:
    if mode.startswith("edgekit"):
        from edgekit.runner import edgekit_runner as r
        s = r.open_session(path, prov)
        res["edgekit_check"] = r.check_active(s, prov, ["CUDAExecutionProvider"])
        res["preload_said"] = r._GPU_LIBS[0] if r._GPU_LIBS else None
    else:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        s = ort.InferenceSession(path, so, providers=prov)
    res["session_s"] = round(time.perf_counter() - t, 3)
    res["active"] = s.get_providers()
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    y = s.run(None, {"x": x})[0]
    res["ran"] = True
    res["out_shape"] = list(y.shape)
except Exception as e:
    res["error"] = f"{type(e).__name__}: {e}"[:500]
print(json.dumps(res))
"""


def tiny_model(path: str) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    m = numpy_helper.from_array(rng.standard_normal((8 * 30 * 30, 10)).astype(np.float32), "m")
    shape = numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["f"]), helper.make_node("MatMul", ["f", "m"], ["y"])]
    g = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w, m, shape])
    # IR 10: an onnx newer than the installed onnxruntime writes an IR version it refuses
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)


def main() -> int:
    import onnxruntime as ort

    out = {"onnxruntime": ort.__version__, "available": ort.get_available_providers(),
           "cuda_version": getattr(ort, "cuda_version", None)}
    try:
        out["build_info"] = ort.get_build_info()
    except Exception:  # older onnxruntime
        pass
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "probe.onnx")
        tiny_model(path)
        runs = []
        for mode in ("bare", "torch_first", "edgekit", "bare_trt", "edgekit_trt"):
            p = subprocess.run([sys.executable, "-c", CHILD, mode, path], capture_output=True, text=True, timeout=300)
            lines = p.stdout.strip().splitlines()
            try:
                # anything printed before the result line went to stdout from onnxruntime itself
                runs.append({**json.loads(lines[-1]), "other_stdout": lines[:-1][-8:], "stderr": p.stderr[-600:]})
            except (ValueError, IndexError):
                runs.append({"mode": mode, "rc": p.returncode, "stdout": p.stdout[-500:], "stderr": p.stderr[-800:]})
        out["sessions"] = runs
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
