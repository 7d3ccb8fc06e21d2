"""`edgekit quantize model.onnx --calib ... [--eval ...] -o out/`: the quantize stage on its own."""
from __future__ import annotations

import click

from .common import CONTEXT_SETTINGS, console, echo_json, json_option, output_option


def _load_target(name):
    if not name:
        return None
    from .. import targets as T  # written by the targets work; the error below names what is missing

    for fn in ("load_target", "get_target", "resolve", "load"):
        if hasattr(T, fn):
            return getattr(T, fn)(name)
    from ..errors import TargetError

    raise TargetError(f"--target {name}: edgekit.targets has no loader")


def quantize_file(model, *, calib, eval_path=None, output, mode="int8", method="auto", fmt="qdq",
                  per_channel=None, tolerance="1%", target=None, max_trials=12, tune=True, calib_size=256,
                  overwrite=False, weight_rounding="auto"):
    """The library call behind the command; returns the Manifest."""
    import shutil
    import time
    from pathlib import Path

    from ..artifact import Manifest, StageRecord, host_info, versions
    from ..calibration import read_dataset
    from ..config import QuantizeConfig, Tolerance
    from ..context import RunContext
    from ..errors import UsageError
    from ..evaluate import Evaluator
    from ..fsutil import atomic_path
    from ..loader import load_onnx
    from ..onnxutil import graph_facts
    from ..quant.fidelity import fidelity_evaluator
    from ..stages import quantize as stage

    src_model = load_onnx(model)
    out = Path(output)
    if (out / "manifest.json").exists() and not overwrite:
        raise UsageError(f"{out}: already holds an edgekit run (manifest.json); pass --overwrite to replace it")
    cfg = QuantizeConfig(mode=mode, calibrate_method=method, format=fmt, per_channel=per_channel,
                         max_trials=max_trials, tune=tune, calib_size=calib_size, weight_rounding=weight_rounding)
    tol = Tolerance.parse(tolerance)
    calib_ds = read_dataset(calib, src_model.inputs) if calib else None
    eval_ds = read_dataset(eval_path, src_model.inputs, labels=True) if eval_path else None
    if calib_ds is None and mode == "int8":
        raise UsageError("quantize: --calib is required for static INT8 (use --mode int8-dynamic without it)")
    out.mkdir(parents=True, exist_ok=True)
    name = Path(model).name
    fp32_path = out / name
    if Path(model).resolve() != fp32_path.resolve():
        with atomic_path(fp32_path) as tmp:
            shutil.copyfile(model, tmp)
    notes = []
    if eval_ds is not None and eval_ds.labels is not None and src_model.task == "classification":
        evaluator = Evaluator(eval_ds, "classification", fp32_path)
    else:
        evaluator, note = fidelity_evaluator(fp32_path, eval_ds if eval_ds is not None else calib_ds,
                                             calib_size=None if eval_ds is not None else cfg.calib_size)
        notes.append(note if eval_ds is None else f"--eval has no labels: fidelity to FP32 on {len(eval_ds)} samples")
    facts = graph_facts(fp32_path)
    parent = stage.Artifact(kind="fp32", path=name, parent="source", stage="input", params=facts["params"],
                            opset=facts["opset"], inputs=facts["inputs"], outputs=facts["outputs"], notes=notes)
    parent.refresh_file_facts(out)
    parent.metrics = evaluator(fp32_path)
    man = Manifest(source=src_model.provenance(), versions=versions(), host=host_info(),
                   settings={"mode": mode, "method": method, "format": fmt, "tolerance": str(tol),
                             "target": target, "calib": calib, "eval": eval_path, "max_trials": max_trials})
    man.artifacts.append(parent)
    tgt = _load_target(target)
    ctx = RunContext(outdir=out, source=src_model, manifest=man, calib=calib_ds, eval=eval_ds,
                     targets=[tgt] if tgt is not None else [], tolerance=tol, evaluate=evaluator)
    t0 = time.perf_counter()
    art = stage.run(parent, ctx, cfg)
    man.stages.append(StageRecord("quantize", "done", seconds=round(time.perf_counter() - t0, 2)))
    if art is not None:
        man.artifacts.append(art)
        q = man.quantization.get(parent.path, {})
        pick = art if q.get("recommend") else parent
        man.recommended[q.get("isa", {}).get("target", "host")] = {"path": pick.path, "kind": pick.kind,
                                                                   "reason": q.get("reason", "")}
    man.write(out)
    return man


@click.command("quantize", context_settings=CONTEXT_SETTINGS)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib", type=click.Path(), help="Calibration data: .npy, .npz (one array per input), a folder "
              "of images, or a .txt of sentences.")
@click.option("--eval", "eval_path", type=click.Path(), help="Eval data: .npz with the inputs and 'y' labels "
              "(top-1 accuracy); without labels or without --eval, fidelity to the FP32 outputs.")
@click.option("--mode", type=click.Choice(["int8", "int8-dynamic", "fp16"]), default="int8", show_default=True)
@click.option("--method", type=click.Choice(["auto", "minmax", "entropy", "percentile"]), default="auto",
              show_default=True, help="Calibration method (auto: tuning tries all three).")
@click.option("--weight-rounding", type=click.Choice(["auto", "nearest", "gptq"]), default="auto", show_default=True,
              help="INT8 weight rounding: nearest, or gptq (error-compensated on the calibration inputs; "
                   "auto tries both and keeps the more accurate).")
@click.option("--format", "fmt", type=click.Choice(["qdq", "qoperator"]), default="qdq", show_default=True)
@click.option("--per-channel/--per-tensor", default=None, help="Weight granularity (default: ISA-aware, tuned).")
@click.option("--tolerance", default="1%", show_default=True, help="Largest accepted metric drop: '1%' "
              "relative or '0.5pt' absolute.")
@click.option("--target", default=None, help="Target profile NAME or PATH (default: this host's CPU).")
@click.option("--max-trials", type=int, default=12, show_default=True, help="Tuning trial budget.")
@click.option("--no-tune", is_flag=True, help="One candidate from the defaults; no tuning or fallback.")
@click.option("--calib-size", type=int, default=256, show_default=True, help="Calibration samples used.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run in the output directory.")
@output_option()
@json_option
def quantize(model, calib, eval_path, mode, method, weight_rounding, fmt, per_channel, tolerance, target, max_trials,
             no_tune, calib_size, overwrite, output, as_json):
    """Quantize an ONNX MODEL (INT8 static/dynamic or FP16), tuned to stay within --tolerance and
    recommended only if it measures faster than FP32."""
    man = quantize_file(model, calib=calib, eval_path=eval_path, output=output, mode=mode, method=method, fmt=fmt,
                        per_channel=per_channel, tolerance=tolerance, target=target, max_trials=max_trials,
                        tune=not no_tune, calib_size=calib_size, overwrite=overwrite,
                        weight_rounding=weight_rounding)
    if as_json:
        echo_json(man.to_dict())
        return
    c = console()
    for a in man.artifacts:
        m = a.metrics or {}
        c.print(f"{a.path}: {a.kind}, {a.bytes / 1e6:.2f} MB, {m.get('name')} {m.get('value', float('nan')):.4f}")
    for q in man.quantization.values():
        c.print(("recommended: " if q.get("recommend") else "not recommended: ") + q.get("reason", ""))
