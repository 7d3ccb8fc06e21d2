"""What the ONNX export's shape arithmetic costs, and what folding it (edgekit/stages/shape_fold.py) gives back:
edgekit's export against the same TorchScript export without the fold (torch.onnx.export as edgekit calls it:
opset 17, dynamic batch, constant folding) and against torch's dynamo exporter, on three small models, timed
interleaved in one process.

A model that reshapes by its input's shape (ShuffleNet's channel shuffle: x.view(n, g, c // g, h, w); a ViT's
attention heads) gets a Shape -> Gather -> Unsqueeze -> Concat chain before each Reshape from the TorchScript
exporter, which onnxruntime cannot fold while the batch is dynamic; edgekit folds it at export. The
ConvNeXt-like model has no such chain and is the control. Weights are seeded, not trained: latency does not
depend on their values. Batch 1, one intra-op thread. Writes results.json beside this file.

    python benchmarks/export/run.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


def shuffle(x, g):
    n, c, h, w = x.shape
    return x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c // 2
        self.b = nn.Sequential(nn.Conv2d(h, h, 1), nn.BatchNorm2d(h), nn.ReLU(),
                               nn.Conv2d(h, h, 3, padding=1, groups=h), nn.BatchNorm2d(h),
                               nn.Conv2d(h, h, 1), nn.BatchNorm2d(h), nn.ReLU())

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        return shuffle(torch.cat([a, self.b(b)], 1), 2)


class ShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.blocks = nn.Sequential(ShuffleBlock(32), ShuffleBlock(32))
        self.head = nn.Conv2d(32, 64, 1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = F.relu(self.head(self.blocks(self.stem(x))))
        return self.fc(x.mean((2, 3)))


class CNBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.full((c,), 0.1))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXtish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 32, 2, stride=2)
        self.blocks = nn.Sequential(CNBlock(32), CNBlock(32))
        self.norm = nn.LayerNorm(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(self.norm(x.mean((2, 3))))


class TinyViT(nn.Module):
    def __init__(self, d=32):
        super().__init__()
        self.patch = nn.Conv2d(1, d, 2, stride=2)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.zeros(1, 17, d))
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.0, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(d, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        return self.fc(self.enc(t)[:, 0])


def shufflenet():
    torch.manual_seed(0)
    return ShuffleNet().eval()


def convnext():
    torch.manual_seed(0)
    return ConvNeXtish().eval()


def vit():
    torch.manual_seed(0)
    return TinyViT().eval()
'''
ROUNDS = 4000
EDGEKIT = "edgekit (TorchScript exporter, shape arithmetic folded)"
UNFOLDED = "TorchScript exporter as edgekit calls it, unfolded"
DYNAMO = "torch dynamo exporter"


def _exports(d: Path, name: str) -> dict:
    import torch

    x = np.random.default_rng(0).random((64, 1, 8, 8)).astype(np.float32)
    np.save(d / "x.npy", x)
    out = d / f"ek-{name}"
    subprocess.run([sys.executable, "-m", "edgekit", "compress", f"{d / 'models.py'}:{name}", "--calib",
                    str(d / "x.npy"), "--quantize", "none", "--no-profile", "-o", str(out)], check=True,
                   capture_output=True)
    sys.path.insert(0, str(d))
    import models

    unfolded = d / f"torchscript-{name}.onnx"
    torch.onnx.export(getattr(models, name)(), (torch.from_numpy(x[:2]),), str(unfolded), dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                      opset_version=17, do_constant_folding=True)
    dyn = d / f"dynamo-{name}.onnx"
    torch.onnx.export(getattr(models, name)(), (torch.from_numpy(x[:2]),), str(dyn), dynamo=True,
                      input_names=["input"], dynamic_shapes=({0: torch.export.Dim("batch")},))
    return {EDGEKIT: out / "model.fp32.onnx", UNFOLDED: unfolded, DYNAMO: dyn}


def _interleaved(files: dict) -> dict:
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in files.items()}
    x = np.random.default_rng(1).random((1, 1, 8, 8)).astype(np.float32)
    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sess.items()}
    outs = {k: s.run(None, feeds[k])[0] for k, s in sess.items()}
    first = next(iter(outs.values()))
    for s_k, s in sess.items():
        for _ in range(300):
            s.run(None, feeds[s_k])
    times = {k: [] for k in sess}
    for _ in range(ROUNDS):
        for k, s in sess.items():
            t = time.perf_counter()
            s.run(None, feeds[k])
            times[k].append(time.perf_counter() - t)
    res = {}
    for k, p in files.items():
        g = onnx.load(str(p), load_external_data=False).graph
        ops = {}
        for n in g.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
        res[k] = {"p50_us": round(float(np.median(times[k])) * 1e6, 1),
                  "p90_us": round(float(np.percentile(times[k], 90)) * 1e6, 1), "nodes": len(g.node),
                  "shape_ops": sum(ops.get(o, 0) for o in ("Shape", "Gather", "Unsqueeze", "Constant")),
                  "max_abs_diff_vs_first": float(np.max(np.abs(outs[k] - first)))}
    return res


def main() -> None:
    from edgekit.artifact import host_info, versions

    res = {"command": "python benchmarks/export/run.py", "host": host_info(), "versions": versions(),
           "settings": {"batch": 1, "intra_op_threads": 1, "rounds_interleaved": ROUNDS}, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "models.py").write_text(MODELS)
        for name in ("shufflenet", "vit", "convnext"):
            r = _interleaved(_exports(d, name))
            r["ratio_unfolded_over_edgekit_p50"] = round(r[UNFOLDED]["p50_us"] / r[EDGEKIT]["p50_us"], 2)
            r["ratio_edgekit_over_dynamo_p50"] = round(r[EDGEKIT]["p50_us"] / r[DYNAMO]["p50_us"], 2)
            res["models"][name] = r
            print(name, json.dumps(r))
    (HERE / "results.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
