"""What an INT8 file spends besides its weights, and what compacting it (edgekit/quant/compact.py) takes off:
file sizes as a share of the FP32 file, and latency of the file as onnxruntime's quantizer wrote it against the
compacted one, timed interleaved in one process (compacting renames; it must not change speed or outputs).

Models: edgekit's export (`edgekit compress ... --quantize none`) of a 19k-parameter digits-sized CNN, the
three models of benchmarks/export (ShuffleNet-like, tiny ViT, ConvNeXt-like) and a wider CNN of 0.6M
parameters, where the weights dominate anyway. Each is quantized with the ISA-aware default candidate (static
QDQ, what `edgekit quantize --no-tune` writes) on 64 seeded random inputs: sizes and speed do not depend on the
weights' values. Batch 1, one intra-op thread. Writes compact.json beside this file.

    python benchmarks/quantize/compact.py
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROUNDS = 3000
EXTRA = '''

class SmallCNN(nn.Module):
    def __init__(self, c=(16, 32, 48)):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(1, c[0], 3, padding=1), nn.BatchNorm2d(c[0]), nn.ReLU(),
                               nn.Conv2d(c[0], c[1], 3, padding=1), nn.BatchNorm2d(c[1]), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(c[1], c[2], 3, padding=1), nn.BatchNorm2d(c[2]), nn.ReLU(),
                               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c[2], 10))

    def forward(self, x):
        return self.f(x)


def cnn19k():
    torch.manual_seed(0)
    return SmallCNN().eval()


def cnn600k():
    torch.manual_seed(0)
    return SmallCNN((64, 128, 256)).eval()
'''


def _models_source() -> str:
    spec = importlib.util.spec_from_file_location("export_run", HERE.parent / "export" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.MODELS + EXTRA


def _quantized(d: Path, name: str, x: np.ndarray) -> dict:
    from edgekit.config import QuantizeConfig
    from edgekit.dataset import Dataset
    from edgekit.quant import compact, isa, static
    from edgekit.stages.quantize import base_spec

    out = d / f"ek-{name}"
    subprocess.run([sys.executable, "-m", "edgekit", "compress", f"{d / 'models.py'}:{name}", "--calib",
                    str(d / "x.npy"), "--quantize", "none", "--no-profile", "-o", str(out)], check=True,
                   capture_output=True)
    fp32 = out / "model.fp32.onnx"
    prep, raw, small = d / f"{name}.prep.onnx", d / f"{name}.raw.onnx", d / f"{name}.compact.onnx"
    static.preprocess(fp32, prep)
    facts = isa.target_facts(None)
    spec, _ = base_spec(QuantizeConfig(), isa.choose(facts["isa"], arch=facts["arch"], providers=facts["providers"]))
    static.quantize(prep, raw, Dataset({"x": x}), spec, calib_size=len(x), input_names=["x"], use_cache=False)
    shutil.copyfile(raw, small)
    info = compact.compact_file(small, prep, {"x": x[:1]})
    return {"files": {"fp32": fp32, "int8 as quantized": raw, "int8 compacted": small}, "spec": spec.name(),
            "compacted": info}


def _interleaved(files: dict) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in files.items()}
    x = np.random.default_rng(1).random((1, 1, 8, 8)).astype(np.float32)
    outs = {k: s.run(None, {"x": x})[0] for k, s in sess.items()}
    for s in sess.values():
        for _ in range(300):
            s.run(None, {"x": x})
    times = {k: [] for k in sess}
    for _ in range(ROUNDS):
        for k, s in sess.items():
            t = time.perf_counter()
            s.run(None, {"x": x})
            times[k].append(time.perf_counter() - t)
    fp32_bytes = Path(files["fp32"]).stat().st_size
    res = {k: {"bytes": Path(p).stat().st_size, "share_of_fp32": round(Path(p).stat().st_size / fp32_bytes, 3),
               "p50_us": round(float(np.median(times[k])) * 1e6, 1)} for k, p in files.items()}
    res["compacted_equals_as_quantized"] = bool(np.array_equal(outs["int8 as quantized"], outs["int8 compacted"]))
    return res


def main() -> None:
    from edgekit.artifact import host_info, versions

    res = {"command": "python benchmarks/quantize/compact.py", "host": host_info(), "versions": versions(),
           "settings": {"batch": 1, "intra_op_threads": 1, "rounds_interleaved": ROUNDS, "calib_samples": 64},
           "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "models.py").write_text(_models_source())
        x = np.random.default_rng(0).random((64, 1, 8, 8)).astype(np.float32)
        np.save(d / "x.npy", x)
        for name in ("cnn19k", "shufflenet", "vit", "convnext", "cnn600k"):
            q = _quantized(d, name, x)
            r = _interleaved(q["files"])
            r["spec"], r["names_shortened"] = q["spec"], (q["compacted"] or {}).get("names_shortened")
            r["p50_ratio_compacted_over_as_quantized"] = round(
                r["int8 compacted"]["p50_us"] / r["int8 as quantized"]["p50_us"], 3)
            res["models"][name] = r
            print(name, json.dumps(r))
    (HERE / "compact.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
