"""Opening a CUDA session the way every edgekit command does. On a machine with an NVIDIA GPU and
onnxruntime-gpu the session must really run on the GPU; elsewhere edgekit must say why it does not."""
import json
import shutil
import subprocess
import sys

import onnxruntime as ort

CHILD = r"""
import json, sys
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
rng = np.random.default_rng(0)
w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
m = numpy_helper.from_array(rng.standard_normal((4 * 6 * 6, 5)).astype(np.float32), "m")
shape = numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape")
nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Reshape", ["c", "shape"], ["f"]),
         helper.make_node("MatMul", ["f", "m"], ["y"])]
g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], [w, m, shape])
path = sys.argv[1]
# IR 10: an onnx newer than the installed onnxruntime writes an IR version it refuses
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
from edgekit.runner import edgekit_runner as r
prov = ["CUDAExecutionProvider", "CPUExecutionProvider"]
s = r.open_session(path, prov)
x = rng.standard_normal((1, 3, 8, 8)).astype(np.float32)
y = s.run(None, {"x": x})[0]
cpu = r.open_session(path).run(None, {"x": x})[0]
print(json.dumps({"torch_loaded": "torch" in sys.modules, "active": s.get_providers(),
                  "why": r.check_active(s, prov, ["CUDAExecutionProvider"]),
                  "max_abs_diff": float(np.abs(y - cpu).max()), "scale": float(np.abs(cpu).max())}))
"""


def _gpu_present() -> bool:
    smi = shutil.which("nvidia-smi")
    return bool(smi) and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def test_a_cuda_session_runs_on_the_gpu_where_there_is_one_and_says_why_not_elsewhere(tmp_path):
    # a fresh process that never imports torch: a CUDA build of torch would load the CUDA libraries itself,
    # hiding whether edgekit's own session gets them; stdout must hold only the result (--json relies on it)
    p = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "m.onnx")], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.splitlines()
    assert len(lines) == 1, p.stdout
    res = json.loads(lines[0])
    assert not res["torch_loaded"]
    assert res["max_abs_diff"] <= 1e-3 * max(1.0, res["scale"])  # the GPU computes what the CPU does
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "onnxruntime-gpu not installed" in res["why"] and res["active"] == ["CPUExecutionProvider"]
    elif _gpu_present():
        assert res["why"] is None and res["active"][0] == "CUDAExecutionProvider", res
    else:  # onnxruntime-gpu without a GPU, or without its libraries: the reason, never a silent CPU run
        assert res["why"].startswith(("no CUDA device", "CUDAExecutionProvider cannot load")), res
