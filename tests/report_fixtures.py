"""A small real edgekit output directory for the report tests, built in a few seconds.

A seeded CNN trained on scikit-learn's digits, exported to ONNX, quantized with onnxruntime (two
real trials), pruned per layer with torch's pruning utilities for a real sensitivity curve, and
timed with onnxruntime on this CPU (interleaved runs, real operator profile, real pre/post timing).
The final latencies come from edgekit.profile.profile_models (x86-laptop, and nvidia-gpu, which
this host reports as unavailable with its reason).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from edgekit.artifact import Artifact, Manifest, StageRecord, host_info, versions
from edgekit.fsutil import sha256_file

CPU = "x86-laptop"
GPU = "nvidia-gpu"


def _data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _model(seed):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def _train(net, x, y, epochs):
    import torch

    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        for i in range(0, len(xt), 200):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[i:i + 200]), yt[i:i + 200]).backward()
            opt.step()
    return net


def _acc_torch(net, x, y):
    import torch

    with torch.no_grad():
        return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def _session(path, threads=1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # a shared 2-core host: no spin-waits
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _acc_onnx(path, x, y):
    s = _session(path, threads=1)
    out = s.run(None, {s.get_inputs()[0].name: x})[0]
    return float((out.argmax(1) == y).mean())


def _pre(raw):  # raw uint8-like 8x8 image in [0, 16] -> NCHW float
    return (raw.astype(np.float32) / 16.0)[None, None]


def _post(logits):
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    return int(p.argmax(1)[0]), float(p.max())


class _PrePost:
    def preprocess(self, raw):
        return _pre(raw)

    def postprocess(self, outputs):
        return _post(outputs[0])


def _quantize(src, dest, x_cal, per_channel):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": x_cal[i:i + 1]} for i in range(len(x_cal))])

        def get_next(self):
            return next(self.it, None)

    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's "consider pre-processing" hint
    quantize_static(str(src), str(dest), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _sensitivity(net, x, y, ratios=(0.3, 0.6, 0.9)):
    import copy

    import torch
    from torch.nn.utils import prune

    base = _acc_torch(net, x, y)
    out = []
    for name, mod in net.named_modules():
        if not isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            continue
        for r in ratios:
            n2 = copy.deepcopy(net)
            prune.l1_unstructured(dict(n2.named_modules())[name], "weight", amount=r)
            m = _acc_torch(n2, x, y)
            out.append({"layer": f"{type(mod).__name__.lower()}.{name}", "ratio": r, "metric": m, "drop": base - m})
    return out


def _global_prune(net, ratio):
    import torch
    from torch.nn.utils import prune

    params = [(m, "weight") for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=ratio)
    for m, n in params:
        prune.remove(m, n)
    return net


def _export(net, dest):
    import torch

    net.eval()
    torch.onnx.export(net, (torch.zeros(1, 1, 8, 8),), str(dest), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False)


def _artifact(outdir, kind, name, parent, params, metric, fp32_metric):
    from edgekit.evaluate import with_drop

    a = Artifact(kind=kind, path=name, parent=parent, params=params, opset=17,
                 stage={"fp32": "export", "pruned": "prune"}.get(kind, "quantize"))
    a.refresh_file_facts(outdir)
    m = {"name": "accuracy", "value": metric, "n": 397}
    a.metrics = with_drop(m, fp32_metric)
    return a


def make_run(outdir, *, seed=0, threads=1, prune_ratio=0.5, epochs=12, runs=60, sensitivity=True) -> Path:
    """Build a real OUTDIR (ONNX files + manifest.json); returns its path."""
    import torch

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 busy cores: torch's thread pool spin-waits and slows training 10x+
    try:
        return _make_run(outdir, seed, threads, prune_ratio, epochs, runs, sensitivity)
    finally:
        torch.set_num_threads(before)


def _make_run(outdir, seed, threads, prune_ratio, epochs, runs, sensitivity):
    import copy

    import torch

    t_all = time.perf_counter()
    xtr, ytr, xte, yte = _data()
    net = _train(_model(seed), xtr, ytr, epochs).eval()
    _export(net, outdir / "model.fp32.onnx")
    stages = [StageRecord("load", "done", seconds=0.1)]
    prune_info = {}
    arts = []
    fp32_acc = _acc_onnx(outdir / "model.fp32.onnx", xte, yte)
    nparams = sum(p.numel() for p in net.parameters())
    arts.append(_artifact(outdir, "fp32", "model.fp32.onnx", "source", nparams, fp32_acc, None))
    fp32_metric = arts[0].metrics
    if prune_ratio:
        t0 = time.perf_counter()
        sens = _sensitivity(net, xte, yte) if sensitivity else []
        steps = []
        for r in sorted({0.25, prune_ratio, 0.75}):
            pn = _global_prune(copy.deepcopy(net), r)
            nz = int(sum((p != 0).sum() for p in pn.parameters()))
            steps.append({"ratio": r, "params": nz, "macs": None, "latency_ms": None, "metric": _acc_torch(pn, xte, yte)})
        pruned = _train(_global_prune(copy.deepcopy(net), prune_ratio), xtr, ytr, 1).eval()
        with torch.no_grad():  # keep the zeros after the fine-tune step
            _global_prune(pruned, prune_ratio)
        _export(pruned, outdir / "model.pruned.onnx")
        nz = int(sum((p != 0).sum() for p in pruned.parameters()))
        arts.append(_artifact(outdir, "pruned", "model.pruned.onnx", "model.fp32.onnx", nz,
                              _acc_onnx(outdir / "model.pruned.onnx", xte, yte), fp32_metric))
        prune_info = {"sensitivity": sens, "steps": steps, "method": "l1-unstructured", "ratio": prune_ratio}
        stages.append(StageRecord("prune", "done", seconds=round(time.perf_counter() - t0, 3)))
    else:
        stages.append(StageRecord("prune", "skipped", "pruning is off (--prune RATIO to enable)"))
    stages.append(StageRecord("distill", "skipped", "distillation is off"))
    stages.append(StageRecord("export", "done", seconds=0.4))
    t0 = time.perf_counter()
    x_cal = xtr[:64]
    trials = []
    tmp = outdir / ".work"
    tmp.mkdir(exist_ok=True)
    cands = {}
    for pc in (False, True):
        name = f"qdq u8s8 minmax {'per-channel' if pc else 'per-tensor'}"
        p = tmp / f"q{int(pc)}.onnx"
        _quantize(outdir / "model.fp32.onnx", p, x_cal, pc)
        cands[name] = p
    from edgekit.profile import profile_models

    timing = profile_models({"fp32": str(outdir / "model.fp32.onnx"), **{k: str(v) for k, v in cands.items()}},
                            CPU, inputs=[{"x": x_cal[i:i + 1]} for i in range(8)], warmup=2, min_runs=20,
                            min_seconds=0.1, max_seconds=3, threads=threads, op_profile=False)
    for name, p in cands.items():
        m = _acc_onnx(p, xte, yte)
        drop = (fp32_acc - m) / fp32_acc
        trials.append({"name": name, "phase": "grid", "config": {"per_channel": "per-channel" in name},
                       "metric": m, "drop_rel": drop, "latency_ms": timing[name]["p50_ms"],
                       "fp32_ms": timing["fp32"]["p50_ms"], "speedup": timing["fp32"]["p50_ms"] / timing[name]["p50_ms"],
                       "passed": drop <= 0.01, "fp32_nodes": []})
    best = max(trials, key=lambda t: (t["passed"], t["speedup"]))
    cands[best["name"]].replace(outdir / "model.int8.onnx")
    arts.append(_artifact(outdir, "int8", "model.int8.onnx", "model.fp32.onnx", nparams, best["metric"], fp32_metric))
    quant = {"model.fp32.onnx": {"isa": {"choice": "u8s8", "target": CPU}, "trials": trials, "sensitivity": [],
                                 "speed_gate": {}, "tolerance": "1%", "reference": fp32_acc, "chosen": best["name"],
                                 "recommend": best["passed"], "reason": f"'{best['name']}' chosen"}}
    stages.append(StageRecord("quantize", "done", seconds=round(time.perf_counter() - t0, 3)))
    stages.append(StageRecord("evaluate", "done", seconds=0.2))
    t0 = time.perf_counter()
    raw = list((xte[:16] * 16).astype(np.uint8)[:, 0])
    feeds = [{"x": _pre(r)} for r in raw]
    models = {a.path: str(outdir / a.path) for a in arts}
    lat = profile_models(models, CPU, inputs=feeds, warmup=3, min_runs=runs, min_seconds=0.2, max_seconds=5,
                         threads=threads, prepost={"pipeline": _PrePost(), "raw": raw})
    gpu = profile_models(models, GPU, inputs=feeds, min_runs=5, min_seconds=0.0)  # no GPU here: unavailable
    for a in arts:
        a.latency[CPU] = lat[a.path]
        a.latency[GPU] = gpu[a.path]
    stages.append(StageRecord("profile", "done", seconds=round(time.perf_counter() - t0, 3)))
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    ok = [a for a in arts if a.metrics["value"] >= fp32_acc * 0.99]
    best_a = min(ok, key=lambda a: a.latency[CPU]["p50_ms"])
    sp = arts[0].latency[CPU]["p50_ms"] / best_a.latency[CPU]["p50_ms"]
    recommended = {CPU: {"status": "ok", "path": best_a.path, "kind": best_a.kind, "speedup_vs_fp32": sp,
                         "reason": f"fastest within tolerance (1%) on {CPU}: p50 {best_a.latency[CPU]['p50_ms']:.3f} ms"},
                   GPU: {"status": "unavailable", "reason": arts[0].latency[GPU].get("reason", "")}}
    stages.append(StageRecord("report", "done", seconds=0.0))
    m = Manifest(source={"spec": "tests:digits-tiny", "kind": "python", "seed": seed},
                 settings={"prune": prune_ratio, "quantize": "int8", "tolerance": "1%", "threads": threads},
                 stages=stages, artifacts=arts, recommended=recommended, quantization=quant, pruning=prune_info,
                 profile={CPU: {"address": "local", "arch": "x86_64"}, GPU: {"address": "local", "arch": "x86_64"}},
                 versions=versions(), host=host_info())
    m.stages[-1].seconds = round(time.perf_counter() - t_all, 3)
    m.write(outdir)
    for a in arts:  # the manifest's hashes must match the files
        assert a.sha256 == sha256_file(outdir / a.path)
    return outdir


_RUNS = {}


def two_runs(tmp_path_factory):
    """Runs A (pruned + int8, 1 thread) and B (int8 only, 2 threads, other seed), built once per session."""
    if "ab" not in _RUNS:
        base = tmp_path_factory.mktemp("report-runs")
        _RUNS["ab"] = (make_run(base / "runA", threads=1, seed=0),
                       make_run(base / "runB", threads=2, seed=1, prune_ratio=0, runs=40))
    return _RUNS["ab"]
