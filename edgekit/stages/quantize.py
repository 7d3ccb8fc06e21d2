"""The quantize stage: an FP32 ONNX artifact -> INT8 (static or dynamic) or FP16, never silently worse.

Pre-process with onnxruntime, pick ISA-aware defaults for the primary target, tune (INC's loop:
grid, then per-node sensitivity and FP32 fallback) for the fastest candidate within tolerance,
then gate on measured speed. Everything tried is recorded in manifest.quantization[parent].
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..calibration import check_images
from ..config import QuantizeConfig
from ..errors import CalibrationError, EdgekitError, UsageError
from ..fsutil import atomic_path
from ..onnxutil import graph_facts
from ..quant import compact as qcompact, float_weights, fp16, isa as qisa, speed_gate, static
from ..quant.spec import QuantSpec
from ..quant.tuning import Tuner

SUFFIX = {"int8": "int8", "int8-dynamic": "int8-dynamic", "fp16": "fp16"}
GATE_RUNS, GATE_SECONDS = 60, 1.5
TIMING_BATCH = 1


def output_name(parent_path: str, kind: str) -> str:
    """model.fp32.onnx -> model.int8.onnx; model.distilled.onnx -> model.distilled.int8.onnx."""
    stem = parent_path[:-5] if parent_path.endswith(".onnx") else parent_path
    if stem.endswith(".fp32"):
        stem = stem[:-5]
    return f"{stem}.{SUFFIX[kind]}.onnx"


def base_spec(cfg: QuantizeConfig, choice: qisa.IsaChoice) -> tuple[QuantSpec, set]:
    """The starting candidate: the user's explicit settings over the ISA-aware defaults; and what is pinned."""
    pinned = set()
    act, wt = choice.activation_type, choice.weight_type
    if cfg.activation_type != "auto":
        act, pinned = cfg.activation_type, pinned | {"types"}
    if cfg.weight_type != "auto":
        wt, pinned = cfg.weight_type, pinned | {"types"}
    per_channel = choice.per_channel if cfg.per_channel is None else cfg.per_channel
    if cfg.per_channel is not None:
        pinned.add("per_channel")
    method = "minmax" if cfg.calibrate_method == "auto" else cfg.calibrate_method
    if cfg.calibrate_method != "auto":
        pinned.add("method")
    if cfg.format != "qdq":
        pinned.add("format")
    if cfg.op_types:
        pinned.add("op_types")
    if cfg.mode == "int8-dynamic":
        pinned.add("mode")
    rounding = "nearest" if cfg.weight_rounding == "auto" else cfg.weight_rounding
    if cfg.weight_rounding != "auto":
        pinned.add("weight_rounding")
    if cfg.bias_correction != "auto":
        pinned.add("bias_correction")
    spec = QuantSpec(mode="int8-dynamic" if cfg.mode == "int8-dynamic" else "int8", format=cfg.format,
                     method=method, per_channel=per_channel, activation_type=act, weight_type=wt,
                     reduce_range=choice.reduce_range,
                     symmetric_activation=choice.symmetric_activation or (act == "s8" and "types" not in pinned),
                     op_types=cfg.op_types, exclude_nodes=cfg.exclude_nodes,
                     weight_rounding=rounding if cfg.mode == "int8" else "nearest",
                     bias_correction=cfg.bias_correction == "on" and cfg.mode == "int8" and cfg.format == "qdq")
    return spec, pinned


def graph_kind(path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in m.graph.node}
    init = {i.name for i in m.graph.initializer}
    const_matmul = sum(1 for n in m.graph.node if n.op_type in ("MatMul", "Gemm") and any(i in init for i in n.input))
    transformer = const_matmul >= 4 and "Softmax" in ops and not ops & {"Conv", "ConvTranspose"}
    recurrent = bool(ops & {"LSTM", "GRU", "RNN"})
    return {"transformer_like": transformer, "recurrent": recurrent, "ops": sorted(ops)}


def timing_feeds(data, batch: int) -> dict:
    s = data.take(batch)
    return {k: np.ascontiguousarray(v) for k, v in s.inputs.items()}


def run(parent: Artifact, ctx, cfg: QuantizeConfig) -> Artifact | None:
    if cfg.mode == "none":
        return None
    t_start = time.perf_counter()
    src = Path(ctx.outdir) / parent.path
    if not src.is_file():
        raise EdgekitError(f"{src}: the FP32 artifact to quantize does not exist")
    if cfg.mode in ("int8", "int8-dynamic") and (ctx.calib is None or len(ctx.calib) == 0):
        if cfg.mode == "int8":
            raise CalibrationError(f"{parent.path}: static INT8 needs calibration data (--calib)")
    data_for_timing = ctx.calib if ctx.calib is not None and len(ctx.calib) else ctx.eval
    if data_for_timing is None or not len(data_for_timing):
        raise CalibrationError(f"{parent.path}: quantization needs sample inputs (--calib or --eval)")
    check_images(ctx.calib or ctx.eval, cfg.calib_size)  # a broken image there is exit 2, not failed candidates
    evaluate = ctx.evaluate
    if evaluate is None:
        raise EdgekitError("quantize: no evaluator in the run context")
    reference = (parent.metrics or {}).get("value")
    if reference is None:
        reference = float(evaluate(src)["value"])
    facts = qisa.target_facts(ctx.primary_target)
    choice = qisa.choose(facts["isa"], arch=facts["arch"], providers=facts["providers"])
    isa_rec = {**choice.to_dict(), "target": facts["name"]}
    if cfg.mode != "int8" or cfg.format != "qdq":
        # the ISA-aware choice is the static QDQ default: a QOperator, dynamic or FP16 run read as if it used it
        isa_rec["applies_to"] = "static QDQ INT8 (the default); this run: " + (
            cfg.mode if cfg.mode != "int8" else f"static INT8, {cfg.format.upper()} format")
    record = {"isa": isa_rec, "trials": [], "sensitivity": [],
              "speed_gate": {}, "tolerance": str(ctx.tolerance), "reference": reference, "notes": []}
    ctx.manifest.quantization[parent.path] = record

    work = Path(tempfile.mkdtemp(prefix=".quantize-", dir=ctx.outdir))
    try:
        prep = work / "prep.onnx"
        record["notes"] += static.preprocess(src, prep)
        # trials and the speed gate time the batch the model is deployed and profiled at: batch 1 (the
        # profile stage's default) unless the graph fixes its own. Calibration's batch of 16 favoured INT8
        # where batch 1 does not (digits-cnn 0.43x at 16 vs 0.64x at 1; EfficientNet 0.90x vs 0.96x).
        feeds = timing_feeds(data_for_timing, static.fixed_batch(prep) or TIMING_BATCH)
        if cfg.mode == "fp16":
            # a few samples find activations beyond float16's range, which the converter would clamp
            probe = timing_feeds(data_for_timing, fp16.PROBE_SAMPLES) if not static.fixed_batch(prep) else feeds
            return _fp16(parent, ctx, src, prep, feeds, record, reference, t_start, probe)
        spec, pinned = base_spec(cfg, choice)
        gpu = qisa.gpu_provider(facts["providers"])
        if gpu and cfg.mode == "int8":
            _simulate_on_cpu(evaluate, facts["name"], gpu, record)
            # TensorRT parses QDQ only: QOperator (QLinearConv, com.microsoft QGemm) and dynamic INT8 graphs
            # cannot be built into its engine, so they are no candidates however they score
            pinned |= {"format", "mode"}
        elif cfg.mode == "int8" and (why := qisa.host_kernels_differ(facts, ctx.primary_target)):
            _simulate_exact(evaluate, why, record)
            # a QOperator graph has no float form to simulate: it would be scored on the saturating kernels
            if "format" not in pinned:
                spec, pinned = spec.replace(format="qdq"), pinned | {"format"}
        if cfg.mode == "int8":
            per_channel_ok, opset_note = static.raise_opset(prep)
            if opset_note:
                record["notes"].append(opset_note)
                if not per_channel_ok:
                    if spec.per_channel and "per_channel" in pinned:
                        raise UsageError(f"{parent.path}: --per-channel needs opset "
                                           f"{static.PER_CHANNEL_OPSET}; {opset_note}")
                    spec, pinned = spec.replace(per_channel=False), pinned | {"per_channel"}
        gk = graph_kind(prep)
        record["graph"] = {k: v for k, v in gk.items() if k != "ops"}
        if cfg.mode == "int8" and gk["recurrent"] and "mode" not in pinned:
            record["notes"].append("recurrent graph: dynamic INT8 candidates added")
        tuner = Tuner(prep_path=prep, fp32_path=src, workdir=work, calib=ctx.calib or ctx.eval,
                      input_names=[i["name"] if isinstance(i, dict) else i.name for i in parent.inputs]
                      or list(feeds), evaluate=evaluate, reference=reference, tolerance=ctx.tolerance,
                      target=ctx.primary_target, feeds=feeds, calib_size=cfg.calib_size,
                      max_trials=cfg.max_trials if cfg.tune else 1, progress=_progress(parent.path, parent.kind))
        seq_like = gk["transformer_like"] or gk["recurrent"]
        if cfg.tune:
            specs = tuner.grid(spec, pinned=pinned, transformer_like=seq_like)
            if not gk["transformer_like"]:
                specs = [s for s in specs if not s.fuse_transformer]
            elif any(s.fuse_transformer for s in specs) and tuner.fused_path() is None:
                # nn.TransformerEncoder's graph is no BERT to onnxruntime's fusion: two trials of the budget
                # went to "error: graph has no BERT-like attention to fuse"
                specs = [s for s in specs if not s.fuse_transformer]
                record["notes"].append("onnxruntime's attention fusion finds no BERT-like attention in this graph: "
                                       "the fused dynamic INT8 candidates were left out")
            gq = [s for s in specs if s.weight_rounding == "gptq"]
            if gq and specs[0].weight_rounding == "nearest":
                # rounding first (base vs GPTQ), then the rest of the grid on whichever was more accurate
                pair = tuner.run_phase([specs[0], gq[0]], "grid")
                ok = [t for t in pair if t.error is None and t.metric is not None]
                better = max(ok, key=lambda t: t.metric).spec.weight_rounding if ok else "nearest"
                rest = [s for s in specs if s not in (specs[0], gq[0])]
                specs = [s.replace(weight_rounding=better) if s.mode == "int8" else s for s in rest]
            specs = _bias_correction_first(tuner, specs, pinned)
            tuner.run_phase(specs, "grid")
            if not tuner.passing() and tuner.budget_left > 0 and spec.mode == "int8":
                accurate = max((t for t in tuner.trials if t.error is None and t.spec.mode == "int8"),
                               key=lambda t: (t.metric, t.speedup or 0), default=None)
                if accurate is not None:
                    sens_data = ctx.eval if ctx.eval is not None and len(ctx.eval) else ctx.calib
                    tuner.fallback(accurate.spec, sens_data)
        else:
            tuner.run_phase([spec], "fixed")
        return _finish(parent, ctx, cfg, src, tuner, feeds, record, reference, t_start)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _score_as_qdq(evaluate, record: dict, note: str, **facts) -> None:
    """Score the candidates by QDQ arithmetic (dequantize, float op, quantize; graph optimisations off) and
    record it: the target's INT8 kernels compute that, where this host's fused integer kernels would not."""
    if hasattr(evaluate, "simulate_qdq"):
        evaluate.simulate_qdq = True
    record["accuracy_scoring"] = {"simulated": True, "device": "cpu", "graph_optimization": "disable_all", **facts}
    record["notes"].append(note)


def _simulate_on_cpu(evaluate, target: str, provider: str, record: dict) -> None:
    """Score a GPU target's QDQ candidates by the arithmetic the GPU runs (dequantize, float op, quantize),
    not by this CPU's fused integer kernels: on AVX2 those saturate S8S8, and a QDQ CNN that agrees 100% with
    FP32 unfused scored 0.8958 (-10.4%), so tuning rejected it and picked a QOperator TensorRT cannot load."""
    import onnxruntime as ort

    present = provider in ort.get_available_providers()
    absent = "" if present else "; no GPU is present here, so INT8 speed on it is not measured"
    _score_as_qdq(evaluate, record,
                  f"INT8 accuracy for {target} ({provider}) simulated on this host's CPU with onnxruntime graph "
                  "optimisations off (QDQ as dequantize -> float op -> quantize, the arithmetic GPU INT8 follows, not "
                  f"the CPU's integer kernels){absent}; candidates are QDQ only (TensorRT parses QDQ)",
                  gpu_present=present)


def _simulate_exact(evaluate, why: str, record: dict) -> None:
    """Score a CPU target whose INT8 kernels sum exactly (ARM, VNNI) by QDQ arithmetic when this host's
    kernels saturate: an MLP for a Raspberry Pi 5 read 0.8828 on AVX2 kernels where exact QDQ gives 0.9922,
    and tuning then kept every Gemm in FP32 to win back a drop the device never has."""
    _score_as_qdq(evaluate, record,
                  "INT8 accuracy simulated as exact QDQ arithmetic (onnxruntime graph optimisations off), not on "
                  f"this host's integer kernels: {why}; candidates are QDQ only (a QOperator graph has no exact form "
                  "to run)", why=why)


def _bias_correction_first(tuner, specs: list, pinned: set) -> list:
    """Where the grid's leading static QDQ candidate has not passed, try it bias-corrected; the rest of the
    grid keeps whichever of the two was more accurate (as with weight rounding: one decision, then the grid)."""
    from ..quant import bias_correction

    if "bias_correction" in pinned or not bias_correction.has_candidates(tuner.prep_path):
        return specs
    if not tuner.trials and specs and specs[0].mode == "int8" and specs[0].format == "qdq":
        tuner.run_phase(specs[:1], "grid")
        specs = specs[1:]
    done = [t for t in tuner.trials if t.error is None and t.metric is not None and t.spec.mode == "int8"
            and t.spec.format == "qdq" and not t.spec.bias_correction]
    if not done or any(t.passed for t in tuner.trials) or tuner.budget_left <= 0:
        return specs
    lead = max(done, key=lambda t: t.metric)
    (bc,) = tuner.run_phase([lead.spec.replace(bias_correction=True)], "grid") or (None,)
    if bc is None or bc.error is not None or bc.metric is None or bc.metric <= lead.metric:
        return specs
    return [s.replace(bias_correction=True) if s.mode == "int8" and s.format == "qdq" else s for s in specs]


def _progress(name, kind="fp32"):
    import os
    import sys

    # trials are measured against the model they quantize: the distilled model's INT8 against it, not FP32
    ref = "FP32" if kind == "fp32" else name
    within = " (within tolerance)" if kind == "fp32" else f" (within tolerance of {name})"

    def cb(trial):
        if os.environ.get("EDGEKIT_QUIET") == "1":
            return
        m = f"error: {trial.error}" if trial.error else f"{trial.metric:.4f}"
        sp = f", {trial.speedup:.2f}x {ref} speed" if trial.speedup else ""
        print(f"  quantize {name} [{trial.phase}] {trial.name}: {m}{sp}{within if trial.passed else ''}",
              file=sys.stderr)

    return cb


def _gate(src, path, ctx, feeds, cfg) -> dict:
    if not cfg.speed_gate:
        return {}
    return speed_gate.gate(src, path, ctx.primary_target, feeds, min_runs=GATE_RUNS, min_seconds=GATE_SECONDS)


def _finish(parent, ctx, cfg, src, tuner, feeds, record, reference, t_start) -> Artifact:
    tuner.runoff()
    # recorded after the runoff: its re-timed speed-ups and its note belong in the manifest
    record["trials"] = [t.record() for t in tuner.trials]
    record["sensitivity"] = tuner.sensitivity
    record["notes"] += tuner.notes
    best = tuner.best()
    if best is None:
        from ..evaluate import clip

        errs = [f"'{t.name}': {t.error}" for t in tuner.trials if t.error]
        more = f" ({len(errs) - 1} more failed too)" if len(errs) > 1 else ""
        raise EdgekitError(f"{parent.path}: every quantization candidate failed{more}; "
                           f"{clip(errs[0], 400) if errs else 'none was scored'}")
    tol_met = best.passed
    compact_info = {}  # candidate file -> what compacting it took off ({} where it was left as it was)

    def compacted(t):
        # before the gate: the file timed is the file written
        if t.path not in compact_info:
            compact_info[t.path] = qcompact.compact_file(t.path, tuner.prep_path, feeds)
        return t.path

    gate = _gate(src, compacted(best), ctx, feeds, cfg)
    # the short trial timings chose `best`; if the long gate disagrees, try the next-fastest passing ones
    if tol_met and gate and not next(iter(gate.values())).get("passed"):
        # an alternate of the same graph structure runs the same kernels: the gate would only time noise again
        same = best.info.get("structure")
        for alt in sorted((t for t in tuner.passing() if t is not best
                           and (same is None or t.info.get("structure") != same)),
                          key=lambda t: t.latency_ms or float("inf"))[:2]:
            g2 = _gate(src, compacted(alt), ctx, feeds, cfg)
            if next(iter(g2.values())).get("passed"):
                best, gate = alt, g2
                break
    record["speed_gate"] = gate
    gate_rec = next(iter(gate.values())) if gate else {"passed": True, "status": "skipped"}
    _gate_note(gate_rec, record)
    fast = bool(gate_rec.get("passed"))
    kind = best.spec.mode
    if not tol_met:
        drop = ctx.tolerance.format_drop(reference, best.metric) if best.metric is not None else "unknown"
        slow = [t for t in tuner.passing() if t is not best]
        within = (f"no INT8 candidate within tolerance {ctx.tolerance} and faster than FP32 ({len(slow)} within "
                  f"tolerance kept so many nodes in FP32 that they measured no faster)" if slow else
                  f"no INT8 candidate within tolerance {ctx.tolerance}")
        # where the metric held and another output did not, that output is the reason to name: "drops
        # -0.35%" under "no candidate within tolerance" explained nothing
        others = [v for v in (best.info or {}).get("other_outputs_fidelity") or () if v is not None]
        worst = min(others, default=None)
        held = ctx.tolerance.allows(reference, best.metric) if best.metric is not None else False
        what = (f"keeps its metric ({best.metric:.4f} vs FP32 {reference:.4f}), but another output's fidelity to "
                f"FP32 is {worst:.4f}" if held and worst is not None and not ctx.tolerance.allows(1.0, worst)
                else f"drops {drop} ({best.metric:.4f} vs FP32 {reference:.4f})")
        reason = (f"{within} after {len(tuner.trials)} trials; best '{best.name}' {what}; "
                  "this INT8 is not recommended")
    elif not fast and gate_rec.get("status") != "ok":
        # nothing was timed: saying "not faster" would pass off a missing measurement as a result
        reason = ("INT8 speed on " + next(iter(gate), "the target") + " unavailable ("
                  + (gate_rec.get("reason") or "not measured") + "): not recommended without a measured speed-up")
    elif not fast:
        # the gate's interleaved runs are its own measurement, and the latency table's may disagree on a tie
        reason = ("INT8 is not faster than FP32 on " + next(iter(gate), "the target") + " in the speed gate "
                  "(its own interleaved runs, not the latency table's): "
                  + (gate_rec.get("why") or "not measured"))
    else:
        drop = ctx.tolerance.format_drop(reference, best.metric)
        reason = (f"'{best.name}': {best.metric:.4f} vs FP32 {reference:.4f} (drop {drop}, within "
                  f"{ctx.tolerance})" + (f", {1 / gate_rec['ratio']:.2f}x faster than FP32" if gate_rec.get("ratio") else "")
                  + (f" ({speed_gate.interval_text(gate_rec)})" if gate_rec.get("ratio_interval") else ""))
    record.update({"chosen": best.name, "tolerance_met": tol_met, "recommend": bool(tol_met and fast),
                   "reason": reason, "seconds": round(time.perf_counter() - t_start, 2)})
    dest_name = output_name(parent.path, kind)
    compacted(best)  # also where no gate timed it
    if compact_info[best.path]:
        record["compacted"] = compact_info[best.path]
    art = _write(best.path, Path(ctx.outdir) / dest_name, parent, kind, ctx)
    static_qdq = best.spec.mode == "int8" and best.spec.format == "qdq"
    # the samples it was calibrated on (the setting said 256 for a 3-sample set); dynamic and FP16 calibrate
    # on none
    calibrated = (static.whole_batches(tuner.prep_path, min(cfg.calib_size, len(tuner.calib)))
                  if best.spec.mode == "int8" else None)
    art.settings = {**best.spec.to_dict(), "isa_choice": record["isa"]["choice"] if static_qdq else None,
                    "calib_size": calibrated}
    art.notes = [reason] + ([f"kept in FP32: {', '.join(best.spec.exclude_nodes)}"] if best.spec.exclude_nodes else [])
    _numeric_veto(art, record)
    floats = float_weights.note(Path(ctx.outdir) / dest_name, best.spec.mode, best.spec.exclude_nodes) \
        if best.spec.mode in ("int8", "int8-dynamic") else None
    if parent.bytes and art.bytes > parent.bytes:
        # small models: scales, zero points and Q/DQ nodes can outweigh the 4x smaller weights
        art.notes.append(f"the {kind} file is larger than its parent ({art.bytes:,} vs {parent.bytes:,} bytes): "
                         + ("most of its weights stay float (next note), and Q/DQ nodes were added"
                            if floats else "quantization parameters outweigh the weights saved on a model this small"))
    if floats:
        art.notes.append(floats)
    return art


def _write(tmp_path, dest: Path, parent, kind, ctx) -> Artifact:
    from ..evaluate import with_drop
    from ..report.fmt import json_safe

    with atomic_path(dest) as tmp:
        shutil.copyfile(tmp_path, tmp)
    facts = graph_facts(dest)
    # quantization keeps the network, so its parameters are the parent's: the quantizer's pre-processing folds
    # a tied weight's Transpose back into a second initializer, which the FP32 file stores once
    params = parent.params if parent.params is not None else facts["params"]
    art = Artifact(kind=kind, path=dest.name, parent=parent.path, stage="quantize", params=params,
                   opset=facts["opset"], inputs=facts["inputs"], outputs=facts["outputs"])
    art.refresh_file_facts(ctx.outdir)
    ref = getattr(ctx.evaluate, "reference_path", None)
    # the error quantization made is measured against the file quantized: against FP32, a distilled parent's
    # own distance from it (33% for a pruned MobileNet) vetoed an INT8 copy 3% from that parent
    own = Path(ctx.outdir) / parent.path
    against = own if ref is not None and own.is_file() and own.resolve() != Path(ref).resolve() else None
    metrics = ctx.evaluate(dest, numeric=True, **({"numeric_against": against} if against else {}))
    numeric = metrics.pop("numeric", None)
    art.metrics = with_drop(metrics, parent.metrics or None)
    if numeric is not None:
        # the metric alone is blind to a scale error (boxes 15x too small kept top-1 agreement 1.0)
        named = against or ref
        art.verify = {"against": f"{Path(named).name if named else 'FP32'} outputs", "data": metrics.get("data"),
                      "n": metrics.get("n"), "batch": metrics.get("batch"),
                      "rule": "per sample ||got - fp32|| / ||fp32||; median and max over samples",
                      "per_output": json_safe(numeric)}
    return art


def _numeric_veto(art: Artifact, record: dict) -> None:
    """Withdraw a recommendation whose outputs are far from FP32's however the task metric scored them."""
    from ..evaluate import NUMERIC_BLOCK, numeric_problem

    why = numeric_problem((art.verify or {}).get("per_output"))
    if not why:
        return
    art.verify["blocks_recommendation_above"] = NUMERIC_BLOCK
    if record.get("recommend"):
        record["recommend"] = False
        record["reason"] += f"; not recommended: {why}"
    else:
        record["reason"] += f"; {why}"
    art.notes[0] = record["reason"]


def _gate_note(gate_rec: dict, record: dict) -> None:
    """The speed gate's note on how it timed (a busy host re-timed with spinning off) joins the notes."""
    if gate_rec.get("timing_note"):
        record["notes"].append(f"speed gate: {gate_rec['timing_note']}")


def _fp16(parent, ctx, src, prep, feeds, record, reference, t_start, probe_feeds=None) -> Artifact:
    work = prep.parent
    out = work / "fp16.onnx"
    conv = fp16.convert(prep, out, feeds=probe_feeds)
    m = ctx.evaluate(out)
    passed = bool(ctx.tolerance.allows(reference, m["value"]))
    kept = fp16.describe(conv)
    if kept:
        record["notes"].append(kept)
    gate = speed_gate.gate(src, out, ctx.primary_target, feeds, min_runs=GATE_RUNS, min_seconds=GATE_SECONDS)
    g = next(iter(gate.values()))
    record["trials"] = [{"name": "fp16 (io fp32)", "config": {"mode": "fp16", "keep_io_types": True,
                                                                "fp32_nodes": conv.get("fp32_nodes") or []},
                         "metric": m["value"], "drop_rel": (reference - m["value"]) / reference if reference else None,
                         "latency_ms": g.get("int8_ms"), "speedup": (1 / g["ratio"]) if g.get("ratio") else None,
                         "passed": passed, "fp32_nodes": conv.get("fp32_nodes") or []}]
    record["speed_gate"] = gate
    _gate_note(g, record)
    fast = bool(g.get("passed"))
    reason = (f"FP16 drops {ctx.tolerance.format_drop(reference, m['value'])} ({m['value']:.4f} vs FP32 "
              f"{reference:.4f}), {'within' if passed else 'outside'} tolerance {ctx.tolerance}; "
              + (f"{g['ratio']:.2f}x FP32 latency on {next(iter(gate))}" if g.get("ratio") else g.get("reason", "")))
    if not fast and g.get("status") == "ok":
        reason += " (FP16 is meant for GPU targets; CPUs without FP16 arithmetic convert back and forth)"
    record.update({"chosen": "fp16", "tolerance_met": passed, "recommend": bool(passed and fast), "reason": reason,
                   "seconds": round(time.perf_counter() - t_start, 2)})
    art = _write(out, Path(ctx.outdir) / output_name(parent.path, "fp16"), parent, "fp16", ctx)
    art.settings = {"mode": "fp16", "keep_io_types": True, "fp32_nodes": conv.get("fp32_nodes") or []}
    art.notes = [reason] + ([kept] if kept else [])
    _numeric_veto(art, record)
    return art
