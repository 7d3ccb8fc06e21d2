"""`edgekit quantize model.onnx --calib ... [--eval ...] -o out/`: the quantize stage on its own."""
from __future__ import annotations

import click

from .common import CONTEXT_SETTINGS, console, echo_json, json_option, output_option, settle_task, task_option


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
                  overwrite=False, weight_rounding="auto", bias_correction="auto", preprocess=None, task=None,
                  tokenizer=None):
    """The library call behind the command; returns the Manifest.

    Everything that can be checked cheaply (model, OUTDIR, target, data) is checked before any
    work; the run is then built in a staging folder beside OUTDIR and swapped in only once it is
    complete, so a failure never leaves a partial OUTDIR or touches an earlier run.
    """
    import contextlib
    import dataclasses
    import sys

    from ..artifact import data_records
    from ..calibration import IMPLIED_NOTE, read_dataset, with_implied_prepost
    from ..evaluate import SCORED_ON_LABELS
    from ..quant.fidelity import held_out
    from ..data_size import small_data_notes
    from ..config import QuantizeConfig, Tolerance
    from ..errors import CalibrationError, UsageError
    from ..loader import check_precision, load_onnx
    from ..run_checks import check_rows_follow_batch
    from ..outdir import check_output, discard, publish, staging_dir
    from ..quant.static import fixed_batch

    src_model = load_onnx(model)
    if tokenizer:  # sentences (.txt) -> this model's inputs, at its fixed sequence length
        from ..text_tokenizer import load_tokenizer

        src_model.tokenizer = load_tokenizer(tokenizer, src_model.inputs)
    dtype = "float16" if check_precision(model, mode, option="--mode") == "float16" else "float32"
    out = check_output(output, overwrite)
    cfg = QuantizeConfig(mode=mode, calibrate_method=method, format=fmt, per_channel=per_channel,
                         max_trials=max_trials, tune=tune, calib_size=calib_size, weight_rounding=weight_rounding,
                         bias_correction=bias_correction)
    tol = Tolerance.parse(tolerance)
    tgt = _load_target(target)
    if preprocess:
        from ..pipeline import _prepost_where, _read_prepost, declare_prepost

        # how an image folder becomes this model's input; run once on a sample, as compress does, since it
        # ships in the manifest and a step that cannot run would fail on the device for every input
        declare_prepost(src_model, _read_prepost(preprocess), model, where=_prepost_where(preprocess))
    before = src_model.preprocess
    src_model.preprocess = with_implied_prepost(src_model.preprocess, src_model.inputs, calib, eval_path)
    if src_model.preprocess != before:
        click.echo(f"edgekit: note: {IMPLIED_NOTE}", err=True)
    # without --eval, the calibration file's labels (if any) score the samples INT8 does not calibrate on
    calib_ds = read_dataset(calib, src_model.inputs, labels=not eval_path, preprocess=src_model.preprocess,
                            tokenizer=src_model.tokenizer) if calib else None
    eval_ds = read_dataset(eval_path, src_model.inputs, labels=True, preprocess=src_model.preprocess,
                           tokenizer=src_model.tokenizer) if eval_path else None
    held = None
    if calib_ds is not None and calib_ds.has_labels:
        held, same = held_out(calib_ds, calib_size if mode == "int8" else None)
        calib_ds = calib_ds.without_labels()  # calibration takes the inputs only, as with --eval given
    # printed already: recorded, not echoed again
    task_notes = settle_task(src_model, task, eval_ds if held is None else held, distills=False, probe=calib_ds)
    if held is not None and held.labels is not None and src_model.task in SCORED_ON_LABELS:
        eval_ds = held
        which = ("calibration samples, the same ones INT8 calibrates on" if same else
                 f"calibration samples not used for calibrating ({held.source})" if mode == "int8" else
                 f"samples of {held.source}")
        told = f"no --eval: scored against the labels of {len(held)} {which}"
        click.echo(f"edgekit: note: {told}", err=True)
        task_notes.append(told)
    if calib_ds is None and mode == "int8":
        raise UsageError("quantize: --calib is required for static INT8 (use --mode int8-dynamic without it)")
    record_notes = small_data_notes(src_model.task, calib_ds, eval_ds, tolerance=tol, static_int8=mode == "int8",
                                    calib_size=calib_size)
    small = list(record_notes)
    record_notes = task_notes + record_notes
    check_rows_follow_batch(model, eval_ds if eval_ds is not None else calib_ds, where=model)
    batch = fixed_batch(model)
    timing_ds = calib_ds if calib_ds is not None else eval_ds
    if batch and timing_ds is not None and len(timing_ds) < batch:
        raise CalibrationError(f"{timing_ds.source}: {len(timing_ds)} samples, fewer than the model's fixed batch "
                               f"of {batch}")
    if batch and calib_ds is not None and mode == "int8":
        # calibration feeds whole batches only: a partial last one is rejected by the graph's fixed batch
        want = min(calib_size, len(calib_ds))
        calib_size = want // batch * batch
        if calib_size == 0:
            raise UsageError(f"--calib-size {want} is smaller than the model's fixed batch of {batch}")
        if calib_size < want:
            record_notes.append(f"calibrated on the first {calib_size} of {want} samples: the model's fixed "
                                f"batch of {batch} takes whole batches only")
    cfg = dataclasses.replace(cfg, calib_size=calib_size)
    settings = _settings(cfg, tolerance=str(tol), target=target, calib=calib, eval_path=eval_path,
                         preprocess=preprocess, calib_ds=calib_ds, tokenizer=tokenizer)
    settings["task"] = task or "auto"
    data = data_records(calib=(calib, calib_ds), eval=(eval_path, eval_ds))
    staging = staging_dir(out)
    try:
        # onnxruntime's calibrators print progress to stdout, which --json keeps for the manifest
        with contextlib.redirect_stdout(sys.stderr):
            man = _quantize_in(staging, model, src_model, cfg, tol, tgt, calib_ds, eval_ds, dtype, record_notes,
                               echo=small, settings=settings, data=data)
        man.write(staging)
        publish(staging, out, overwrite=overwrite)
    except BaseException:
        discard(staging)
        raise
    for note in small:  # after the run: beside its results, and not before a one-line error
        click.echo(f"edgekit: note: {note}", err=True)
    return man


def _settings(cfg, *, tolerance, target, calib, eval_path, preprocess, calib_ds, tokenizer=None) -> dict:
    """Every option that shapes the result, at the value the run used: a replay with these gives the same
    file (--no-tune runs one candidate whatever --max-trials says; only static INT8 calibrates, on at most
    the samples there are, in whole batches of a fixed-batch model)."""
    calibrated = cfg.mode == "int8" and calib_ds is not None
    return {"mode": cfg.mode, "method": cfg.calibrate_method, "format": cfg.format, "per_channel": cfg.per_channel,
            "weight_rounding": cfg.weight_rounding, "bias_correction": cfg.bias_correction, "tolerance": tolerance,
            "target": target, "calib": _abs(calib), "eval": _abs(eval_path), "preprocess": preprocess,
            "tokenizer": _abs_spec(tokenizer), "tune": cfg.tune, "max_trials": cfg.max_trials if cfg.tune else 1,
            "calib_size": min(cfg.calib_size, len(calib_ds)) if calibrated else None}


def _quantize_in(staging, model, src_model, cfg, tol, tgt, calib_ds, eval_ds, dtype, record_notes, *, settings,
                 data=None, echo=None):
    import math
    import time
    from pathlib import Path

    from ..artifact import Manifest, StageRecord, host_info, shape_text, versions
    from ..calibration import labels_hint
    from ..context import RunContext
    from ..data_size import small_data_notes
    from ..errors import CalibrationError, EdgekitError
    from ..evaluate import LABELLED_TASKS, SCORED_ON_LABELS, Evaluator
    from ..loader import copy_model
    from ..onnxutil import graph_facts
    from ..quant.fidelity import fidelity_evaluator, sanity_evaluator
    from ..stages import quantize as stage

    name = Path(model).name
    fp32_path = staging / name
    copy_model(model, fp32_path)
    facts = graph_facts(fp32_path)
    labelled = eval_ds is not None and eval_ds.labels is not None
    notes = []
    if labelled and src_model.task in SCORED_ON_LABELS:
        evaluator = Evaluator(eval_ds, src_model.task, fp32_path, tags=src_model.entity_tags)
    elif eval_ds is not None:
        # every --eval sample, as compress scores them: the 500 cap is for calibration data standing in
        evaluator, _ = fidelity_evaluator(fp32_path, eval_ds, task=src_model.task, limit=None)
        n = len(evaluator.ds)
        if labelled:
            out0 = facts["outputs"][0]
            why = f"--task {src_model.task}" if src_model.task_given else \
                f"output {out0['name']!r} is {shape_text(out0.get('shape'))}, not [N, C] class scores with C >= 2"
            notes.append(f"--eval labels ignored: {why}; fidelity to FP32 on {n} --eval samples")
        else:
            notes.append(f"--eval has no labels: fidelity to FP32 on {n} samples")
    elif calib_ds is not None:
        # dynamic INT8 and FP16 calibrate nothing, so every calibration sample is fair to score on
        evaluator, note = fidelity_evaluator(fp32_path, calib_ds, task=src_model.task,
                                             calib_size=cfg.calib_size if cfg.mode == "int8" else None)
        notes.append(note)
        # what is scored is this slice, not --eval: 44 held-out samples at 1% went without the small-data note
        few = [f"{evaluator.ds.source}: {n}; or give --eval" for n in
               small_data_notes(evaluator.task, None, evaluator.ds, tolerance=tol, static_int8=False)]
        record_notes = [*record_notes, *few]
        if echo is not None:
            echo += few
    else:
        evaluator, note = sanity_evaluator(fp32_path, src_model.inputs)
        evaluator.task = src_model.task  # --task, or the same guess from the output's shape
        eval_ds = evaluator.ds  # the quantize stage times its candidates on these
        notes.append(note)
        # the trial metrics and the reason quote the random-input fidelity: say so wherever they appear
        record_notes = [*record_notes, note]
    parent = stage.Artifact(kind="fp16" if dtype == "float16" else "fp32", path=name, parent="source",
                            stage="input", params=facts["params"], opset=facts["opset"], inputs=facts["inputs"],
                            outputs=facts["outputs"], notes=notes)
    parent.refresh_file_facts(staging)
    parent.metrics = evaluator(fp32_path)
    ref = parent.metrics.get("value")
    if ref is None or not math.isfinite(ref):
        raise EdgekitError(f"{name}: the model gives NaN or infinite outputs on {evaluator.ds.source}, so nothing "
                           "can be compared with it")
    if evaluator.labelled and ref == 0 and src_model.task in LABELLED_TASKS:
        # tolerances are relative to this value: at 0 every candidate would "pass" or divide by zero
        raise CalibrationError(f"{eval_ds.source}: the model gets none of the {len(eval_ds)} labels right "
                               f"(accuracy 0); check {labels_hint(eval_ds)}")
    man = Manifest(source=src_model.provenance(), versions=versions(), host=host_info(), settings=settings,
                   data=data or {})
    man.prepost = src_model.preprocess or {}  # ships in the bundle, so the device pre-processes alike
    man.artifacts.append(parent)
    ctx = RunContext(outdir=staging, source=src_model, manifest=man, calib=calib_ds, eval=eval_ds,
                     targets=[tgt] if tgt is not None else [], tolerance=tol, evaluate=evaluator)
    t0 = time.perf_counter()
    art = stage.run(parent, ctx, cfg)
    man.stages.append(StageRecord("quantize", "done", seconds=round(time.perf_counter() - t0, 2)))
    if art is not None:
        man.artifacts.append(art)
        q = man.quantization.get(parent.path, {})
        q.setdefault("notes", []).extend(record_notes)
        art.notes.extend(record_notes)
        pick = art if q.get("recommend") else parent
        reason = q.get("reason", "")
        if pick is parent:  # the stage's reason describes the candidate ("FP16 within tolerance ..."), not the pick
            reason = f"{parent.kind.upper()} kept: {art.kind.upper()} was not both within tolerance and faster ({reason})"
        tname = q.get("isa", {}).get("target", "host")
        gate = (q.get("speed_gate") or {}).get(tname) or {}
        speed = 1.0 if pick is parent else (1 / gate["ratio"] if gate.get("ratio") else None)
        # the keys compress's recommendations have, so report and readers of the schema take both alike
        man.recommended[_recommended_for(tname)] = {
            "status": "ok", "path": pick.path, "kind": pick.kind, "reason": reason, "speedup_vs_fp32": speed,
            "rejected": [] if pick is art else [f"{art.path}: {q.get('reason', '')}"]}
    return man


def _recommended_for(name: str) -> str:
    """No --target means this CPU with the runtime's default threads, which is what the default target of
    compress (x86-laptop) is on an x86-64 host: named so, a quantize run and a compress run on one machine
    are compared by edgekit report (a 'host' target matched nothing, and no target of that name exists)."""
    import platform

    from ..targets import DEFAULT_TARGET

    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return DEFAULT_TARGET if name == "host" and x86 and DEFAULT_TARGET == "x86-laptop" else name


@click.command("quantize", context_settings=CONTEXT_SETTINGS)
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib", type=click.Path(), help="Calibration data: .npy, .npz (one array per input), a folder "
              "of images or .wav clips, or a .txt/.jsonl of sentences.")
@click.option("--eval", "eval_path", type=click.Path(), help="Eval data: .npz with the inputs and 'y' labels "
              "(top-1 accuracy); without labels, fidelity to the FP32 outputs. Without --eval, the --calib samples "
              "INT8 does not calibrate on are scored: on its labels if it has them, else by fidelity.")
@click.option("--mode", type=click.Choice(["int8", "int8-dynamic", "fp16"]), default="int8", show_default=True)
@click.option("--method", type=click.Choice(["auto", "minmax", "entropy", "percentile"]), default="auto",
              show_default=True, help="Calibration method (auto: tuning tries all three).")
@click.option("--weight-rounding", type=click.Choice(["auto", "nearest", "gptq"]), default="auto", show_default=True,
              help="INT8 weight rounding: nearest, or gptq (error-compensated on the calibration inputs; "
                   "auto tries both and keeps the more accurate).")
@click.option("--bias-correction", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Move each quantized layer's bias so its output means match FP32 on the calibration data "
                   "(auto: tried when the default misses the tolerance; static QDQ only).")
@click.option("--preprocess", help="Pre-processing spec (JSON text or file) for an image-folder --calib/--eval, "
              "e.g. '{\"pre\": [{\"op\": \"resize_normalize\", \"layout\": \"NHWC\", ...}]}'.")
@click.option("--tokenizer", help="For .txt/.jsonl sentence data: file.py:function (sentences -> dict of input arrays) or a "
              "tokenizer.json (or a folder holding one), padded to the model's sequence length (else 128).")
@click.option("--format", "fmt", type=click.Choice(["qdq", "qoperator"]), default="qdq", show_default=True)
@click.option("--per-channel/--per-tensor", default=None, help="Weight granularity (default: ISA-aware, tuned).")
@click.option("--tolerance", default="1%", show_default=True, help="Largest accepted metric drop: '1%' "
              "relative or '0.5pt' absolute; a bare number is a percentage.")
@click.option("--target", default=None, help="Target profile NAME or PATH (default: this host's CPU).")
@click.option("--max-trials", type=int, default=12, show_default=True, help="Tuning trial budget.")
@click.option("--no-tune", is_flag=True, help="One candidate from the defaults; no tuning or fallback.")
@click.option("--calib-size", type=int, default=256, show_default=True, help="Calibration samples used.")
@task_option
@click.option("--overwrite", is_flag=True, help="Replace an existing run in the output directory.")
@output_option()
@json_option
def quantize(model, calib, eval_path, mode, method, weight_rounding, bias_correction, preprocess, tokenizer, fmt,
             per_channel, tolerance, target, max_trials, no_tune, calib_size, task, overwrite, output, as_json):
    """Quantize an ONNX MODEL (INT8 static/dynamic or FP16), tuned to stay within --tolerance and
    recommended only if it measures faster than FP32."""
    man = quantize_file(model, calib=calib, eval_path=eval_path, output=output, mode=mode, method=method, fmt=fmt,
                        per_channel=per_channel, tolerance=tolerance, target=target, max_trials=max_trials,
                        tune=not no_tune, calib_size=calib_size, overwrite=overwrite,
                        weight_rounding=weight_rounding, bias_correction=bias_correction, preprocess=preprocess,
                        task=task, tokenizer=tokenizer)
    if as_json:
        echo_json(man.to_dict())
        return
    from ..report.fmt import metric_units
    from ..stdio import markup_safe as ms

    c = console()
    for a in man.artifacts:
        m = a.metrics or {}
        c.print(f"{ms(a.path)}: {a.kind}, {a.bytes / 1024:.1f} KiB, {m.get('name')} {m.get('value', float('nan')):.4f}"
                f"{metric_units(m)}")
    for q in man.quantization.values():
        c.print(("recommended: " if q.get("recommend") else "not recommended: ") + ms(q.get("reason", "")))


def _abs_spec(spec):
    """A file.py:function or path spec with its file part absolute."""
    from ..config import map_spec

    return map_spec(spec, _abs)


def _abs(path):
    """Data paths as absolute: the manifest is read later from other folders (bundle's self-test input)."""
    from pathlib import Path

    return str(Path(path).resolve()) if path else path
