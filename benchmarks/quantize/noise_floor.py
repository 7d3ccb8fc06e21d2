"""How far the FP32 model agrees with itself when its input moves within its own 8-bit rounding.

    python benchmarks/quantize/noise_floor.py [--draws 8] [--out benchmarks/quantize/noise_floor.json]

A photo is stored as 8-bit pixels: the scene that produced pixel value v could have been anywhere in
[v - 0.5, v + 0.5]. For each eval crop of zoo:efficientnet-lite0 the FP32 ONNX model is run on the crop
plus uniform noise of +-0.5 pixel (seeded, `--draws` times). Two figures come out:

- the **noise floor**: FP32's top-1 agreement with itself under that noise, per draw. An INT8 model
  cannot be expected to agree with FP32 more closely than FP32 agrees with itself on the same scene
  re-digitised;
- the **noise-stable crops**: those whose FP32 top-1 never changed over the draws. On them the
  reference label is decided by the image; on the others it is a coin toss between near-tied classes.

The selection looks only at the FP32 model and the data, never at a quantized model. run.py scores every
variant on both the full eval set and the noise-stable crops.
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

SEED = 20261201
DRAWS = 8


def _logits(session, x, input_name: str, batch: int = 32) -> np.ndarray:
    return np.concatenate([session.run(None, {input_name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def stability(fp32_path, x: np.ndarray, pixel: float, *, input_name: str = "input", draws: int = DRAWS,
              seed: int = SEED) -> dict:
    """Run FP32 on x and on `draws` copies of x + U(-0.5, 0.5) * pixel (pixel = one 8-bit step in the
    model's input units). Returns {stable: bool mask, agreement: per-draw top-1 agreement with the clean run}."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(str(fp32_path), so, providers=["CPUExecutionProvider"])
    top = _logits(s, x, input_name).argmax(1)
    rng = np.random.default_rng(seed)
    flips = np.zeros(len(x), bool)
    agreement = []
    for _ in range(draws):
        noise = ((rng.random(x.shape, dtype=np.float32) - 0.5) * pixel).astype(np.float32)
        moved = _logits(s, x + noise, input_name).argmax(1) != top
        flips |= moved
        agreement.append(round(1.0 - float(moved.mean()), 4))
    return {"stable": ~flips, "agreement": agreement}


def effnet_pixel() -> float:
    """One 8-bit pixel step in zoo:efficientnet-lite0's input units ((v - mean) / std)."""
    from edgekit.zoo import efficientnet_lite0 as E

    stds = set(E.STD)
    if len(stds) != 1:
        raise ValueError("per-channel std: give a per-channel pixel step")
    return 1.0 / stds.pop()


def _main(work: Path) -> int:
    from edgekit.hostinfo import cpu_info
    from edgekit.zoo import efficientnet_lite0 as E

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from effnet_onnx import export_preprocessed

    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=DRAWS)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "noise_floor.json"))
    a = ap.parse_args()
    t0 = time.perf_counter()
    ev = E.datasets()["eval"]
    x = np.asarray(ev.inputs["input"][:])
    prep = export_preprocessed(work)
    r = stability(prep, x, effnet_pixel(), draws=a.draws)
    labels = ev.extra["crops"]
    out = {"command": " ".join(["python benchmarks/quantize/noise_floor.py", *sys.argv[1:]]),
           "cpu": cpu_info()["model"], "n_eval": len(x), "draws": a.draws, "seed": SEED,
           "noise": "uniform +-0.5 pixel (one 8-bit step), in the model's input units",
           "fp32_self_agreement_per_draw": r["agreement"],
           "fp32_self_agreement_mean": round(float(np.mean(r["agreement"])), 4),
           "n_stable": int(r["stable"].sum()),
           "unstable_crops": [lab for lab, ok in zip(labels, r["stable"]) if not ok],
           "seconds": round(time.perf_counter() - t0, 1)}
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "unstable_crops"}, indent=2))
    return 0


def main() -> int:
    # the exported and quantized models matter only during the run: removed at the end, failed or not
    with tempfile.TemporaryDirectory(prefix="noise-floor-") as d:
        return _main(Path(d))


if __name__ == "__main__":
    raise SystemExit(main())
