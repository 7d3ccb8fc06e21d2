"""Tasks beyond single-label classification, end to end through `edgekit compress` (prune 0.5, distil, INT8):
a MobileNet-like CNN distilled from 240 unlabelled samples (early stopping on 60 held out), a multi-label MLP
(--task multi-label, micro F1) and a segmentation net (--task segmentation, mean IoU beside pixel accuracy).
Models are trained here on scikit-learn's digits in seconds (seeded). Writes results.json beside this file.

    python benchmarks/tasks/run.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import models  # noqa: E402


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    idx = np.random.default_rng(0).permutation(len(x))
    return x[idx], d.target[idx]


def _train(net, xs, loss_fn, epochs):
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    n = len(xs[0])
    for _ in range(epochs):
        net.train()
        for b in torch.randperm(n).split(64):
            loss = loss_fn(net, *[t[b] for t in xs])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def _prepare(d: Path) -> dict:
    x, y = _digits()
    torch.manual_seed(0)
    runs = {}
    # MobileNet-like: trained on 1200 labelled digits; compressed with 300 unlabelled calibration samples only
    net = _train(models.mobile(), (torch.from_numpy(x[:1200]), torch.from_numpy(y[:1200])),
                 lambda m, a, b: F.cross_entropy(m(a), b), 40)
    torch.save(net.state_dict(), d / "mobile.pt")
    np.savez(d / "mobile.calib.npz", x=x[:300])
    np.savez(d / "mobile.eval.npz", x=x[1200:], y=y[1200:])
    runs["mobile"] = ["--calib", "mobile.calib.npz", "--eval", "mobile.eval.npz", "--train", "mobile.calib.npz"]
    # multi-label: 4 yes/no labels per digit
    flat = x.reshape(len(x), -1)
    ml = np.stack([y % 2 == 0, y >= 5, np.isin(y, (2, 3, 5, 7)), y % 3 == 0], 1).astype(np.int64)
    net = _train(models.multilabel(), (torch.from_numpy(flat[:1200]), torch.from_numpy(ml[:1200]).float()),
                 lambda m, a, b: F.binary_cross_entropy_with_logits(m(a), b), 60)
    torch.save(net.state_dict(), d / "multilabel.pt")
    np.savez(d / "multilabel.calib.npz", x=flat[:300])
    np.savez(d / "multilabel.train.npz", x=flat[:1200], y=ml[:1200])
    np.savez(d / "multilabel.eval.npz", x=flat[1200:], y=ml[1200:])
    runs["multilabel"] = ["--calib", "multilabel.calib.npz", "--eval", "multilabel.eval.npz", "--train",
                          "multilabel.train.npz", "--task", "multi-label"]
    # segmentation: a class per pixel
    masks = np.digitize(x[:, 0], [0.2, 0.6]).astype(np.int64)
    net = _train(models.seg(), (torch.from_numpy(x[:1000]), torch.from_numpy(masks[:1000])),
                 lambda m, a, b: F.cross_entropy(m(a), b), 10)
    torch.save(net.state_dict(), d / "seg.pt")
    np.save(d / "seg.calib.npy", x[:200])
    np.savez(d / "seg.train.npz", x=x[:1000], y=masks[:1000])
    np.savez(d / "seg.eval.npz", x=x[1000:1400], y=masks[1000:1400])
    runs["seg"] = ["--calib", "seg.calib.npy", "--eval", "seg.eval.npz", "--train", "seg.train.npz",
                   "--task", "segmentation"]
    return runs


def main():
    from edgekit.artifact import host_info, versions

    res = {"command": "python benchmarks/tasks/run.py", "host": host_info(), "versions": versions(), "runs": {}}
    with tempfile.TemporaryDirectory() as td:
        d = Path(td)
        (d / "models.py").write_text((HERE / "models.py").read_text())
        for name, args in _prepare(d).items():
            cmd = [sys.executable, "-m", "edgekit", "compress", f"models.py:{name}", "--weights", f"{name}.pt", *args,
                   "--prune", "0.5", "-o", f"out_{name}"]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, cwd=d, capture_output=True, text=True, env={**__import__("os").environ,
                                                                               "EDGEKIT_QUIET": "1"})
            if r.returncode:
                raise SystemExit(f"{name}: {r.stderr.strip()}")
            m = json.loads((d / f"out_{name}" / "manifest.json").read_text())
            dist = m["pruning"]["distill"]
            res["runs"][name] = {
                "command": "edgekit " + " ".join(cmd[3:]), "seconds": round(time.perf_counter() - t0, 1),
                "artifacts": {a["path"]: {k: a["metrics"].get(k) for k in
                                          ("name", "value", "pixel_accuracy", "pixel_agreement")
                                          if a["metrics"].get(k) is not None} | {"kind": a["kind"]}
                              for a in m["artifacts"]},
                "distill": {"epochs_run": dist["epochs_run"], "best_epoch": dist["best_epoch"],
                            "epochs_allowed": dist["settings"]["epochs"], "loss": dist["loss"],
                            "held_out": dist["eval"]["n"]},
                "recommended": {t: v.get("path") for t, v in m["recommended"].items()},
            }
            print(name, json.dumps(res["runs"][name]["artifacts"]), file=sys.stderr)
    (HERE / "results.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
