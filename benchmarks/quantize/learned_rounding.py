"""Probe: does learning each weight's rounding end to end, with the FP32 model as teacher, beat GPTQ?

    python benchmarks/quantize/learned_rounding.py [--steps 200] [--out benchmarks/quantize/learned_rounding.json]

A negative result kept so it can be re-checked, not an edgekit feature. The QDQ graph onnxruntime
writes for zoo:efficientnet-lite0 (U8S8, per-channel, percentile calibration on the 200 calibration
crops) is run in torch exactly as quantized (every QuantizeLinear/DequantizeLinear pair as fake
quantization with its own scale and zero point), and each INT8 weight chooses between the two integers
around its FP32 value through AdaRound's soft variable (Nagel et al., 2020), trained to reproduce the
FP32 logits (normalised MSE, no labels) on the calibration + train crops (588; 20% held out to pick the
checkpoint) — end to end rather than AdaRound's layer by layer, since the error to undo is the one that
builds up through the network. Scales, zero points and the graph stay as written, so speed does too.
Run from round-to-nearest and from edgekit's GPTQ integers; scored by top-1 agreement with FP32 on the
480 eval crops (never seen in training). Needs the efficientnet extra. ~8 min per start on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgekit.onnxutil import node_attrs  # noqa: E402
from effnet_onnx import export_preprocessed  # noqa: E402

# what onnxruntime's static QDQ graph of EfficientNet-Lite0 is made of (ReLU6 may stay as Clip)
SUPPORTED = {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm", "Add", "Clip", "GlobalAveragePool", "Flatten",
             "Reshape"}


ZETA, GAMMA = 1.1, -0.1  # AdaRound's stretch of the sigmoid, so 0 and 1 are reachable
H_MARGIN = 0.05  # how far from the rounding boundary a starting h sits


class Unsupported(ValueError):
    """The graph holds something this interpreter does not run; fine-tuning is not possible."""


@dataclass
class FinetuneResult:
    applied: bool
    reason: str
    steps: int = 0
    seconds: float = 0.0
    weights: int = 0  # integer tensors trained
    changed: float = 0.0  # share of integer weights that moved
    holdout_before: dict = field(default_factory=dict)
    holdout_after: dict = field(default_factory=dict)
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _np(t):
    from onnx import numpy_helper

    return numpy_helper.to_array(t)


_QRANGE = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127), np.dtype(np.int32): (-2**31, 2**31 - 1),
           np.dtype(np.uint16): (0, 65535), np.dtype(np.int16): (-32768, 32767)}


def _qrange(dtype) -> tuple:
    try:
        return _QRANGE[np.dtype(dtype)]
    except KeyError:
        raise Unsupported(f"quantized type {np.dtype(dtype)}") from None


def _bshape(scale: np.ndarray, axis: int | None, rank: int) -> tuple:
    """Shape that broadcasts a per-axis scale/zero point against a tensor of the given rank."""
    if scale.ndim == 0:
        return ()
    axis = axis % rank
    return tuple(scale.size if i == axis else 1 for i in range(rank))


class QDQModule:
    """The QDQ graph as a torch computation with trainable integer weights (built lazily: torch import)."""

    def __init__(self, model, fp32_weights: dict | None = None):
        import torch

        self.model = model
        g = model.graph
        bad = sorted({n.op_type for n in g.node if n.op_type not in SUPPORTED or n.domain not in ("", "ai.onnx")})
        if bad:
            raise Unsupported("operators " + ", ".join(bad))
        self.init = {i.name: _np(i) for i in g.initializer}
        self.nodes = [(n, node_attrs(n)) for n in g.node]
        self.outputs = [o.name for o in g.output]
        # trainable: the 8-bit weights behind a DequantizeLinear whose FP32 original is known
        self.params: dict = {}  # initializer name -> (soft variable v, lower integer, scale, zero point, lo, hi)
        for n, a in self.nodes:
            if n.op_type != "DequantizeLinear" or n.input[0] not in self.init:
                continue
            q = self.init[n.input[0]]
            if q.dtype.kind not in "iu" or q.ndim == 0:
                continue
            s = self.init[n.input[1]].astype(np.float32)
            zp = self.init[n.input[2]] if len(n.input) > 2 and n.input[2] else np.zeros_like(s, dtype=q.dtype)
            lo, hi = _qrange(q.dtype)
            bs = _bshape(s, a.get("axis", 1), q.ndim)
            zpf = zp.astype(np.float64).reshape(bs)
            w0 = (fp32_weights or {}).get(n.input[0][:-len("_quantized")] if n.input[0].endswith("_quantized") else None)
            if q.dtype.itemsize > 1 or w0 is None or w0.shape != q.shape:
                continue  # biases (int32) and weights without their FP32 original keep their integers
            # AdaRound: each weight may take one of two neighbouring integers, chosen by a soft variable h;
            # the pair brackets the FP32 value, and the start reproduces the graph's own integers (which
            # may be GPTQ's rather than the nearest), with h as close to the FP32 value as that allows
            x = w0.astype(np.float64) / s.reshape(bs).astype(np.float64)
            qi = q.astype(np.float64) - zpf
            lo_i = np.floor(x)
            base = np.where(qi < lo_i, qi, np.where(qi > lo_i + 1, qi - 1, lo_i))
            frac = np.clip(x - base, 0.0, 1.0)
            up = qi > base  # the graph's integer is the upper one of the pair
            h0 = np.where(up, np.maximum(frac, 0.5 + H_MARGIN), np.minimum(frac, 0.5 - H_MARGIN))
            v = -np.log((ZETA - GAMMA) / (h0 - GAMMA) - 1)
            self.params[n.input[0]] = (torch.nn.Parameter(torch.from_numpy(v.astype(np.float32))),
                                       torch.from_numpy(base.astype(np.float32)), torch.from_numpy(s.reshape(bs)),
                                       torch.from_numpy(zpf.astype(np.float32)), lo, hi)

    # ------------------------------------------------------------------ running
    def parameters(self):
        return [p[0] for p in self.params.values()]

    def __call__(self, feeds: dict) -> list:
        import torch

        env = dict(feeds)
        for n, a in self.nodes:
            ins = [self._get(env, i) if i else None for i in n.input]
            out = self._run(n, a, ins)
            if not isinstance(out, (list, tuple)):
                out = [out]
            for name, v in zip(n.output, out):
                env[name] = v
        return [env[o] if isinstance(env[o], torch.Tensor) else torch.as_tensor(env[o]) for o in self.outputs]

    def _get(self, env, name):
        import torch

        if name in env:
            return env[name]
        if name in self.init:
            v = self.init[name]
            t = torch.from_numpy(np.ascontiguousarray(v)) if v.dtype.kind == "f" else v
            env[name] = t
            return t
        raise Unsupported(f"tensor {name} has no producer")

    soft = True

    @staticmethod
    def _soft(v):
        import torch

        return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def regulariser(self, beta: float):
        """AdaRound's push of every soft rounding towards 0 or 1 (mean over weights)."""
        import torch

        tot, cnt = 0.0, 0
        for v, *_ in self.params.values():
            h = self._soft(v)
            tot = tot + torch.sum(1 - torch.abs(2 * h - 1) ** beta)
            cnt += v.numel()
        return tot / cnt

    @staticmethod
    def _ste_round(x):
        import torch

        return x + (torch.round(x) - x).detach()

    def _run(self, n, a, ins):
        import torch
        import torch.nn.functional as F

        op = n.op_type
        if op == "DequantizeLinear":
            if n.input[0] in self.params:
                v, base, s, zp, lo, hi = self.params[n.input[0]]
                q = torch.clamp(base + (self._soft(v) if self.soft else (v >= 0).float()) + zp, lo, hi)
                return (q - zp) * s
            x, s, zp = ins[0], ins[1], ins[2] if len(ins) > 2 else None
            if not isinstance(x, torch.Tensor):  # a constant integer tensor that is not trained
                x = torch.from_numpy(np.asarray(x).astype(np.float32))
            s_np = np.asarray(s.numpy() if isinstance(s, torch.Tensor) else s, np.float32)
            bs = _bshape(s_np, a.get("axis", 1), x.dim())
            zpv = 0.0 if zp is None else torch.from_numpy(np.asarray(zp, np.float32).reshape(bs))
            return (x - zpv) * torch.from_numpy(s_np.reshape(bs))
        if op == "QuantizeLinear":
            x, s = ins[0], ins[1]
            zp = ins[2] if len(ins) > 2 and ins[2] is not None else np.uint8(0)
            zp_np = np.asarray(zp)
            lo, hi = _qrange(zp_np.dtype)
            s_np = np.asarray(s.numpy() if isinstance(s, torch.Tensor) else s, np.float32)
            bs = _bshape(s_np, a.get("axis", 1), x.dim())
            q = self._ste_round(x / torch.from_numpy(s_np.reshape(bs))) + torch.from_numpy(
                zp_np.astype(np.float32).reshape(bs))
            return torch.clamp(q, lo, hi)  # stays float: the next DequantizeLinear reads it
        if op == "Conv":
            if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise Unsupported(f"Conv {n.name}: auto_pad")
            x, w = ins[0], ins[1]
            nd = w.dim() - 2
            pads = list(a.get("pads", [0] * 2 * nd))
            strides, dil = a.get("strides", [1] * nd), a.get("dilations", [1] * nd)
            if pads[:nd] != pads[nd:]:
                pad = []
                for i in reversed(range(nd)):
                    pad += [pads[i], pads[i + nd]]
                x, pads = F.pad(x, pad), [0] * 2 * nd
            conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(nd)
            if conv is None:
                raise Unsupported(f"Conv {n.name}: {nd}-D")
            return conv(x, w, ins[2] if len(ins) > 2 else None, stride=list(strides), padding=list(pads[:nd]),
                        dilation=list(dil), groups=a.get("group", 1))
        if op == "Gemm":
            x, w = ins[0], ins[1]
            if a.get("transA", 0):
                x = x.t()
            if a.get("transB", 0):
                w = w.t()
            y = a.get("alpha", 1.0) * (x @ w)
            return y + a.get("beta", 1.0) * ins[2] if len(ins) > 2 and ins[2] is not None else y
        if op == "Add":
            return ins[0] + ins[1]
        if op == "Clip":
            lo = float(ins[1]) if len(ins) > 1 and ins[1] is not None else None
            hi = float(ins[2]) if len(ins) > 2 and ins[2] is not None else None
            return torch.clamp(ins[0], lo, hi)
        if op == "GlobalAveragePool":
            return ins[0].mean(dim=tuple(range(2, ins[0].dim())), keepdim=True)
        if op == "Flatten":
            ax = a.get("axis", 1)
            return ins[0].reshape(int(np.prod(ins[0].shape[:ax])), -1)
        if op == "Reshape":
            shape = [int(v) for v in np.asarray(ins[1]).tolist()]
            if not a.get("allowzero", 0):
                shape = [ins[0].shape[i] if v == 0 else v for i, v in enumerate(shape)]
            return ins[0].reshape(shape)
        raise Unsupported(op)

    # ------------------------------------------------------------------ writing back
    def integer_weights(self) -> dict:
        """initializer name -> the trained integers, in the initializer's own dtype."""
        import torch

        out = {}
        with torch.no_grad():
            for name, (v, base, s, zp, lo, hi) in self.params.items():
                q = torch.clamp(base + (v >= 0).float() + zp, lo, hi).numpy()
                out[name] = q.astype(self.init[name].dtype)
        return out

    def save(self, dest) -> float:
        """Write the model with the trained integers; returns the share of integer weights that changed."""
        import onnx
        from onnx import numpy_helper

        new = self.integer_weights()
        moved = total = 0
        for i, t in enumerate(self.model.graph.initializer):
            if t.name in new:
                old = self.init[t.name]
                moved += int(np.count_nonzero(new[t.name] != old))
                total += old.size
                self.model.graph.initializer[i].CopyFrom(numpy_helper.from_array(new[t.name], t.name))
        onnx.save(self.model, str(dest))
        return moved / max(total, 1)


def finetune(qdq_path, fp32_path, data, dest, *, input_names, steps: int = 300, lr: float = 0.01, batch: int = 16,
             reg: float = 0.01, warmup: float = 0.2, beta=(20.0, 2.0), holdout: float = 0.2, limit: int = 1024,
             eval_every: int = 50, seed: int = 0, score=None, progress=None) -> FinetuneResult:
    """Learn qdq_path's weight rounding so its outputs match fp32_path's on `data`; write dest if better.

    `data` is a Dataset (inputs by name, sliceable); a `holdout` share of it is kept out of training
    and decides whether the result is kept (and which checkpoint's rounding is). `score(outputs_ref,
    outputs)` -> float, higher is better (default: negative mean squared error over all outputs).
    """
    import onnx
    import torch
    from onnx import numpy_helper

    from edgekit.onnxutil import session

    t0 = time.perf_counter()
    model = onnx.load(str(qdq_path))
    fp32 = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(fp32_path)).graph.initializer}
    mod = QDQModule(model, fp32)  # raises Unsupported before any work
    params = mod.parameters()
    if not params:
        return FinetuneResult(False, "no integer weight has its FP32 original in the FP32 model")
    n = min(len(data), limit)
    if n < 8:
        return FinetuneResult(False, f"only {n} inputs: too few to fine-tune and check")
    feeds_np = {k: np.asarray(data.inputs[k][:n]) for k in input_names}
    teacher = session(fp32_path)
    ref = [np.concatenate(parts) for parts in zip(*(teacher.run(None, {k: v[i:i + 32] for k, v in feeds_np.items()})
                                                    for i in range(0, n, 32)))]
    order = np.random.default_rng(seed).permutation(n)
    n_hold = max(4, int(round(n * holdout)))
    hold, train = order[:n_hold], order[n_hold:]
    score = score or (lambda r, o: -float(np.mean([np.mean((a - b) ** 2) for a, b in zip(r, o)])))
    norm = [torch.from_numpy(np.maximum(r.var(axis=0, keepdims=True), 1e-8).astype(np.float32)) for r in ref]

    def evaluate() -> float:
        mod.soft = False
        outs = []
        with torch.no_grad():
            for i in range(0, n_hold, 32):
                idx = hold[i:i + 32]
                outs.append([o.numpy() for o in mod({k: torch.from_numpy(v[idx]) for k, v in feeds_np.items()})])
        mod.soft = True
        return score([r[hold] for r in ref], [np.concatenate(p) for p in zip(*outs)])

    def rounding():
        return [(p.detach() >= 0).clone() for p in params]

    with torch.no_grad():
        start_state = rounding()
    torch.manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    first = evaluate()
    result = FinetuneResult(False, "", weights=len(params), holdout_before={"score": first})
    best, best_state = first, start_state
    rng = np.random.default_rng(seed + 1)
    batch = min(batch, len(train))
    perm, pos = rng.permutation(train), 0
    for step in range(1, steps + 1):
        if pos + batch > len(perm):
            perm, pos = rng.permutation(train), 0
        idx = np.sort(perm[pos:pos + batch])
        pos += batch
        outs = mod({k: torch.from_numpy(v[idx]) for k, v in feeds_np.items()})
        rec = sum(torch.mean((o - torch.from_numpy(r[idx])) ** 2 / nv) for o, r, nv in zip(outs, ref, norm))
        frac = step / steps
        if frac > warmup:
            b = beta[1] + (beta[0] - beta[1]) * (1 - (frac - warmup) / (1 - warmup))
            loss = rec + reg * mod.regulariser(b)
        else:
            loss = rec
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress:
            progress(step, float(rec.detach()))
        if step % eval_every == 0 or step == steps:
            s = evaluate()
            result.history.append({"step": step, "loss": float(rec.detach()), "holdout": s})
            if s > best:
                best, best_state = s, rounding()
    with torch.no_grad():
        for p, b in zip(params, best_state):
            p.copy_(torch.where(b, torch.ones_like(p), -torch.ones_like(p)))
    result.steps, result.holdout_after = steps, {"score": best}
    if best <= first:
        result.reason = "learned rounding did not beat the post-training rounding on the held-out inputs"
    else:
        result.changed = mod.save(dest)
        result.applied, result.reason = True, "held-out score improved"
    result.seconds = time.perf_counter() - t0
    return result


def _agreement(ref, out) -> float:
    return float((ref[0].argmax(1) == out[0].argmax(1)).mean())


class _Rows:
    def __init__(self, x):
        self.inputs = {"input": x}

    def __len__(self):
        return len(self.inputs["input"])


def _main(work: Path, argv=None) -> int:
    import datetime as dt

    import onnxruntime as ort

    from edgekit.hostinfo import cpu_info
    from edgekit.quant import gptq, static
    from edgekit.quant.spec import QuantSpec
    from edgekit.zoo import efficientnet_lite0 as E

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "learned_rounding.json"))
    ap.add_argument("--check-only", action="store_true",
                    help="only compare the torch run of the QDQ graphs with onnxruntime's (seconds, prints)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    ds = E.datasets()
    train = _Rows(np.concatenate([np.asarray(ds["calib"].inputs["input"][:]), np.asarray(ds["train"].inputs["input"][:])]))
    ev = np.asarray(ds["eval"].inputs["input"][:])
    import torch

    prep = export_preprocessed(work)

    def top1(path):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate([s.run(None, {"input": ev[i:i + 32]})[0] for i in range(0, len(ev), 32)]).argmax(1)

    ref = top1(prep)
    spec = QuantSpec(mode="int8", format="qdq", activation_type="u8", weight_type="s8", per_channel=True,
                     method="percentile")
    rtn = work / "rtn.onnx"
    static.quantize(prep, rtn, ds["calib"], spec, calib_size=200, input_names=["input"])
    info = gptq.apply(prep, work / "gptq_fp.onnx", ds["calib"], ["input"], per_channel=True, reduce_range=False,
                      limit=200)
    gq = work / "gptq.onnx"
    static.quantize(work / "gptq_fp.onnx", gq, ds["calib"], spec.replace(weight_rounding="gptq"), calib_size=200,
                    input_names=["input"], overrides=info["overrides"])
    # the probe means something only if torch runs the QDQ graph as onnxruntime does
    import onnx

    checks = {}
    fp = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(prep)).graph.initializer}
    for name, path in (("round-to-nearest", rtn), ("gptq", gq)):
        mod = QDQModule(onnx.load(str(path)), fp)
        mod.soft = False
        with torch.no_grad():
            mine = mod({"input": torch.from_numpy(ev[:32])})[0].numpy()
        theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": ev[:32]})[0]
        checks[name] = {"max_abs_logit_diff": float(np.abs(mine - theirs).max()), "logit_std": float(theirs.std()),
                        "top1_same": float((mine.argmax(1) == theirs.argmax(1)).mean())}
        print(f"torch vs onnxruntime, {name}, 32 eval crops: {checks[name]}", flush=True)
    if a.check_only:
        return 0
    rows = []
    for name, path in (("round-to-nearest", rtn), ("gptq", gq)):
        before = float((top1(path) == ref).mean())
        dest = work / f"{name}_learned.onnx"
        r = finetune(path, prep, train, dest, input_names=["input"], steps=a.steps, lr=a.lr, score=_agreement)
        after = float((top1(dest) == ref).mean()) if r.applied else before
        rows.append({"start": name, "eval_before": before, "eval_after": after, **r.to_dict()})
        print(f"{name}: eval top-1 agreement {before:.4f} -> {after:.4f} (held-out {r.holdout_before['score']:.4f} "
              f"-> {r.holdout_after.get('score', float('nan')):.4f}; {r.reason}; {r.seconds:.0f} s)", flush=True)
    cpu = cpu_info()
    out = {"when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": shlex.join(["python", "benchmarks/quantize/learned_rounding.py",
                                  *(sys.argv[1:] if argv is None else argv)]),
           "machine": f"{cpu.get('model', 'unknown CPU')}, {cpu.get('cores', '?')} cores",
           "train_inputs": len(train), "eval_inputs": len(ev), "steps": a.steps, "lr": a.lr, "torch_vs_ort": checks,
           "rows": rows,
           "seconds": round(time.perf_counter() - t0, 1)}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


def main(argv=None) -> int:
    # the exported and quantized models matter only during the run: removed at the end, failed or not
    with tempfile.TemporaryDirectory(prefix="learned-rounding-") as d:
        return _main(Path(d), argv)


if __name__ == "__main__":
    sys.exit(main())
