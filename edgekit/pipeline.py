"""The one orchestrator of `edgekit compress`: an explicit STAGES dict and ORDER tuple.

load -> prune (+ distill) -> export -> quantize -> evaluate -> profile -> report.
Each stage function takes the Run and records a StageRecord; a stage switched off
is recorded as skipped, one that cannot apply (e.g. pruning an ONNX file) as not-applicable.
"""
from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config as cfgmod
from .artifact import Artifact, Manifest, StageRecord, data_records, host_info, versions
from .context import RunContext
from .errors import EdgekitError, UsageError
from .fsutil import atomic_path
from . import run_checks
from .outdir import check_output, discard, publish, staging_dir
from .progress import task


@dataclass
class Run:
    cfg: cfgmod.CompressConfig
    staging: Path
    manifest: Manifest = field(default_factory=Manifest)
    ctx: RunContext | None = None
    torch_variant: tuple | None = None  # (module, kind) from the prune/distill stage
    preprocess_where: str | None = None  # how errors name an inline spec a recipe holds (else _prepost_where)

    def record(self, name, status, reason="", seconds=0.0, **details):
        self.manifest.stages.append(StageRecord(name, status, reason, round(seconds, 3), details))


# ---------------------------------------------------------------- stages

def stage_load(run: Run):
    from .calibration import check_images, read_dataset
    from .data_size import small_data_notes
    from .evaluate import SCORED_ON_LABELS, check_training_labels
    from .loader import apply_task, guessed_task_note
    from .targets import DEFAULT_TARGET, load_targets

    cfg = run.cfg
    targets = load_targets(cfg.targets or (DEFAULT_TARGET,))  # two of one name: refused before the model loads
    declared, folder_where = model_prepost(cfg.preprocess, cfg.model)
    check_data_paths((cfg.calib, cfg.eval, cfg.train))
    src, sample = load_model(cfg.model, (cfg.calib, cfg.eval, cfg.train), declared=declared, weights=cfg.weights,
                             trust_pickle=cfg.trust_pickle, input_shape=cfg.input_shape, seed=cfg.seed,
                             tokenizer=cfg.tokenizer)
    declare_prepost(src, declared, cfg.model, where=folder_where or _spec_where(run))
    apply_task(src, cfg.task)
    if src.kind == "onnx":
        from .loader import check_precision

        src.precision = check_precision(src.onnx_path, cfg.quantize.mode, option="--quantize")
    if src.kind == "onnx" and (cfg.prune.enabled or cfg.distill.student):
        # asked for explicitly: going on without it would hand back a model the user thinks was pruned
        what = "--prune" if cfg.prune.enabled else "--student"
        raise UsageError(f"{what}: {cfg.model} is an ONNX file, and pruning and distillation work on the PyTorch "
                         f"model (pass it as file.py:factory), or drop {what} to quantize the ONNX file")
    implied = imply_prepost(src, cfg.calib, cfg.eval, cfg.train)

    def data(path, labels):
        return read_dataset(path, src.inputs, labels=labels, tokenizer=src.tokenizer, preprocess=src.preprocess)

    # without --eval, the calibration file's labels (if any) score the samples held out of calibrating
    calib = data(cfg.calib, not cfg.eval and src.eval is None) if cfg.calib else src.calib
    check_images(calib, cfg.quantize.calib_size)  # before any stage: the samples INT8 calibrates on
    evalset = data(cfg.eval, True) if cfg.eval else src.eval
    train = data(cfg.train, True) if cfg.train else src.train
    check_training_labels(src, train)
    if cfg.prune.enabled or cfg.distill.student:  # pruning and distillation train on every sample of it
        check_images(train or calib)
    given_eval = evalset  # before a slice of the calibration data stands in for it
    held = None
    if evalset is None and calib is not None:
        from .quant.fidelity import MAX_EVAL, held_out

        k = cfg.quantize.calib_size
        if cfg.quantize.mode != "int8":
            # nothing calibrates on them (dynamic INT8 computes its scales per input): 300 samples scored 44
            evalset, _ = held_out(calib, None)
            held = (f"the {len(evalset)} calibration inputs (--quantize {cfg.quantize.mode} calibrates on none of "
                    "them)" + (f"; at most {MAX_EVAL} are scored: {len(calib) - len(evalset)} more unused; give "
                               "--eval to score more" if len(calib) > len(evalset) else ""))
        elif len(calib) > k:
            # INT8 calibrates on the first calib_size samples: score on the ones it never saw
            evalset, _ = held_out(calib, k)
            unused = len(calib) - k - len(evalset)
            held = (f"{len(evalset)} calibration samples not used for calibrating"
                    + (f" (at most {MAX_EVAL} are scored: {unused} more unused; give --eval to score more)"
                       if unused else ""))
        else:
            evalset = calib
            held = (f"the {len(calib)} calibration inputs, the same ones INT8 calibrates on (give more than {k}, "
                    "or --eval, to hold some out)")
        if calib.has_labels:
            # calibrating, pruning and distilling take the inputs only, as they do when --eval is given
            calib = calib.without_labels()
    # the held-out calibration samples' labels are checked against the task as --eval's would be
    labelled = given_eval if given_eval is not None or evalset is None or not evalset.has_labels else evalset
    notes = [n for n in [guessed_task_note(src, labelled, train, distills=cfg.distill_enabled, probe=calib)] if n]
    if held:
        scored = "scored against the labels of" if evalset.labels is not None and src.task in SCORED_ON_LABELS \
            else "fidelity to FP32 on"
        notes.append(f"no --eval data: metrics are {scored} {held}")
    notes += run_checks.dtype_notes(src.inputs, sample) + run_checks.output_name_notes(src) if src.kind == "torch" \
        else []
    notes += run_checks.post_task_notes(src.task, src.preprocess, _spec_where(run))
    notes += implied + small_data_notes(src.task, calib, evalset, tolerance=cfg.tolerance,
                                        static_int8=cfg.quantize.mode == "int8", calib_size=cfg.quantize.calib_size,
                                        train=train if cfg.train else None)
    for note in notes:  # the metrics' meaning changes: say it where the user reads them, not only in the manifest
        print(f"edgekit: note: {note}", file=sys.stderr)
    if evalset is None:
        raise UsageError(f"{cfg.model}: no evaluation data; pass --eval (or --calib) so the accuracy cost can be measured")
    if cfg.quantize.mode == "int8" and calib is None:
        raise UsageError(f"{cfg.model}: static INT8 needs calibration data; pass --calib PATH (or --quantize int8-dynamic)")
    run.ctx = RunContext(outdir=run.staging, source=src, manifest=run.manifest, calib=calib, eval=evalset,
                         train=train or calib, targets=targets, tolerance=cfg.tolerance, profile=cfg.profile,
                         seed=cfg.seed, trust_pickle=cfg.trust_pickle)
    run.manifest.source = {**src.provenance(), **_student(cfg.distill.student)}
    run.manifest.prepost = src.preprocess or {}
    run.manifest.data = data_records(calib=(cfg.calib, calib), eval=(cfg.eval, given_eval),
                                     train=(cfg.train, train))
    quant = run.manifest.settings.get("quantize")
    if calib is not None and quant is not None:  # at most the samples there are: the value a replay runs with
        quant["calib_size"] = min(cfg.quantize.calib_size, len(calib))
    return {"task": src.task, "inputs": [i.to_dict() for i in src.inputs], "notes": notes,
            "calib": _ds_facts(calib), "eval": _ds_facts(evalset), "train": _ds_facts(train)}


def stage_prune(run: Run):
    cfg = run.cfg
    if run.ctx.source.kind == "onnx":
        return "not-applicable", "the source is an ONNX file: pruning works on PyTorch models"
    if not (cfg.prune.enabled or cfg.distill.student):
        why = "pruning is off (ratio 0; --prune RATIO > 0 to enable)"
        if cfg.train:  # the user's own --train (ctx.train falls back to the calibration data)
            # --train feeds distillation only, which runs on a pruned model or a --student
            why += "; the --train data was not used: it trains a pruned model or a --student"
            print(f"edgekit: note: {why}", file=sys.stderr)
        return "skipped", why
    from .stages import prune as prune_stage

    res = prune_stage.run(run.ctx.source, run.ctx, cfg.prune, cfg.distill, distill_enabled=cfg.distill_enabled)
    run.torch_variant = (res.module, res.kind)
    run.manifest.pruning = res.info
    notes = list(res.info.get("notes") or [])
    if not cfg.prune.enabled:
        notes.insert(0, "nothing pruned: the --student model was distilled from the source")
    told = set(res.told or ())  # printed by the pruning schedule as they arose
    for note in notes:
        if note not in told:
            print(f"edgekit: note: {note}", file=sys.stderr)
    return {"kind": res.kind, "params_before": res.info.get("params_before"), "params_after": res.info.get("params_after"),
            "notes": notes}


def stage_distill(run: Run):
    cfg = run.cfg
    if run.ctx.source.kind == "onnx":
        return "not-applicable", "the source is an ONNX file: distillation trains PyTorch models"
    if not cfg.distill_enabled or run.torch_variant is None:
        return "skipped", "distillation is off (it runs by default after pruning; --distill to force)"
    hist = (run.manifest.pruning or {}).get("distill", {})
    # the training itself ran inside the prune stage's iterative prune -> distill schedule
    how = "prune, then distil, per step" if cfg.prune.enabled else "the --student model, nothing pruned"
    return {"ran_inside": "prune", "best_epoch": hist.get("best_epoch"), "best_metric": hist.get("best_metric"),
            "notes": [f"ran inside the prune stage ({how}): its time is counted there"]}


def stage_export(run: Run):
    from .onnxutil import graph_facts
    from .stages.export import export_module

    src = run.ctx.source
    dest = run.staging / "model.fp32.onnx"
    if src.kind == "onnx":
        from .loader import copy_model
        from .onnxutil import session

        copy_model(src.onnx_path, dest)  # with its external data, which a bare file copy left behind
        notes = ["copied from the source ONNX file"]
        # a TorchScript export with a dynamic batch computes its Reshape targets at run time, as edgekit's own
        # export did before it folded them: the copy runs as fast as edgekit's export would, checked against
        # the source file, as no PyTorch model is here to check it against
        from .stages.export import ATOL, RTOL
        from .stages.shape_fold import fold_checked

        folded, why = fold_checked(dest, run.ctx.calib or run.ctx.eval, atol=ATOL, rtol=RTOL)
        if folded:
            notes[0] = (f"copied from the source ONNX file, its shape arithmetic folded into constants ({folded} "
                        f"nodes fewer; onnxruntime gives the source file's outputs)")
        elif why:
            notes.append(why)
            print(f"edgekit: note: {why}", file=sys.stderr)
        facts = graph_facts(dest)
        held = src.precision  # the load stage's answer: the copy holds what the source holds
        if held:
            # the reference keeps the name every later stage looks for; say what it holds
            what = "float16" if held == "float16" else f"INT8 ({held[6:]} ops)"
            notes.append(f"the source computes in {what}: model.fp32.onnx is that model unchanged, "
                         "the reference every variant is compared with")
            print(f"edgekit: note: {notes[-1]}", file=sys.stderr)
        art = Artifact(kind="fp32", path=dest.name, parent="source", stage="load", params=facts["params"],
                       opset=facts["opset"], inputs=facts["inputs"], outputs=facts["outputs"], notes=notes)
        art.refresh_file_facts(run.staging)
        run.manifest.artifacts.append(art)
        try:  # one session for both checks; a model onnxruntime cannot load is named where it is scored
            sess = session(dest)
        except Exception:
            sess = None
        run_checks.check_rows_follow_batch(dest, run.ctx.eval, where=run.cfg.model, sess=sess)
        run_checks.check_post_fits(run, run.ctx.eval.take(8), where=_spec_where(run), sess=sess)
        return {"artifacts": [art.path], "note": "source is already ONNX",
                "notes": run_checks.label_notes(run, art)}
    with task("exporting to ONNX"):
        # eval samples too: a branch the trace froze on the calibration data shows on other data
        arts = [export_module(src.module, src, dest, kind="fp32", data=run.ctx.calib or run.ctx.eval,
                              eval_data=run.ctx.eval)]
        run_checks.check_post_fits(run, run.ctx.eval.take(8), where=_spec_where(run))  # before more work
        if run.torch_variant is not None:
            module, kind = run.torch_variant
            arts.append(export_module(module, src, run.staging / f"model.{kind}.onnx", kind=kind,
                                      data=run.ctx.calib or run.ctx.eval, stage=kind, eval_data=run.ctx.eval))
            # the pruned model is checked against itself in torch; its parent is the FP32 model
            arts[-1].parent = arts[0].path
    run.manifest.artifacts.extend(arts)
    return {"artifacts": [a.path for a in arts], "max_abs_diff": {a.path: a.verify.get("max_abs_diff") for a in arts},
            "notes": sorted({n for a in arts for n in a.notes}) + run_checks.label_notes(run, arts[0])}


def stage_quantize(run: Run):
    mode = run.cfg.quantize.mode
    if mode == "none":
        return "skipped", "quantization is off (--quantize none)"
    from .stages import quantize as quant_stage

    run.ctx.evaluate = _evaluator(run)
    _fill_metrics(run)  # parents need their metric before the tuning compares against it
    made = []
    for parent in [a for a in run.manifest.artifacts if a.kind in ("fp32", "pruned", "distilled")]:
        art = quant_stage.run(parent, run.ctx, run.cfg.quantize)
        if art is not None:
            run.manifest.artifacts.append(art)
            made.append(art.path)
    return {"mode": mode, "artifacts": made}


def stage_evaluate(run: Run):
    run.ctx.evaluate = run.ctx.evaluate or _evaluator(run)
    with task("evaluating artifacts", total=len(run.manifest.artifacts)):
        _fill_metrics(run)
    fp32 = run.manifest.artifact("fp32")
    from .evaluate import with_drop

    for a in run.manifest.artifacts:
        a.metrics = with_drop(a.metrics, fp32.metrics if a is not fp32 else None)
    return {**{a.path: a.metrics.get("value") for a in run.manifest.artifacts},
            "notes": run_checks.chance_notes(run, fp32)}


def stage_profile(run: Run):
    if not run.cfg.profile.enabled:
        return "skipped", "profiling is off"
    from .profile import profile_models

    p = run.cfg.profile
    feeds = [run.ctx.eval.sample(i) for i in range(min(8, len(run.ctx.eval)))]
    models = {a.path: run.staging / a.path for a in run.manifest.artifacts}
    pipe = None
    if run.manifest.prepost:
        from .prepost import Pipeline

        # end-to-end time next to model time: the declared pre/post steps run as on the device
        pipe = Pipeline.from_spec(run.manifest.prepost)
    summary = {}
    for t in run.ctx.targets:
        with task(f"profiling {len(models)} artifacts on {t.name} (interleaved)"):
            res = profile_models(models, t, inputs=feeds, warmup=p.warmup, min_runs=p.min_runs,
                                 min_seconds=p.min_seconds, max_seconds=p.max_seconds, op_profile=p.op_profile,
                                 prepost=pipe)
        for a in run.manifest.artifacts:
            a.latency[t.name] = res.get(a.path, {"status": "failed", "reason": "not measured"})
        summary[t.name] = {k: v.get("status") for k, v in res.items()}
        run.manifest.profile[t.name] = {"address": t.address, "arch": t.arch}
    statuses = [s for st in summary.values() for s in st.values()]
    if statuses and all(s == "failed" for s in statuses):
        # attempted everywhere and failed everywhere: something is wrong with the artifacts or the runner
        raise EdgekitError("profiling failed on every target: " + "; ".join(
            f"{a.path}@{t}: {a.latency[t].get('reason')}" for a in run.manifest.artifacts for t in a.latency))
    if not any(s == "ok" for s in statuses):
        # targets that are absent or only emulated: the compressed artifacts and their accuracy stand, and
        # each latency entry says why there is no native number (the INT8 speed gate says unavailable too)
        reasons = sorted({f"{t}: {a.latency[t].get('reason', a.latency[t].get('status'))}"
                          for a in run.manifest.artifacts for t in a.latency if a.latency[t].get("status") != "emulated"})
        why = "; ".join(reasons) if reasons else "emulated timings only (not device latency)"
        if reasons:
            print(f"edgekit: note: no native latency measured ({why})", file=sys.stderr)
        return {**summary, "note": f"no native latency: {why}"}
    return summary


def stage_report(run: Run):
    from .recommend import recommend

    run.manifest.recommended = recommend(run.manifest, run.cfg.tolerance, run.ctx.targets)
    # a few real inputs travel with the artifacts: bundles self-test on them, `edgekit profile` times them
    sample = run.ctx.eval.take(8)
    with atomic_path(run.staging / "sample_inputs.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in sample.inputs.items()})
    run.manifest.write(run.staging)
    (run.staging / "compress.toml").write_text(cfgmod.to_toml(run.cfg))
    from .report import write_reports

    # written in the staging folder, named as the OUTDIR it becomes
    write_reports([run.staging], html=run.staging / "report.html", markdown=run.staging / "report.md",
                  json_path=run.staging / "report.json", shown_as=[Path(run.cfg.output).resolve()])
    return {"files": ["manifest.json", "report.md", "report.html", "report.json", "compress.toml", "sample_inputs.npz"]}


STAGES = {
    "load": stage_load,
    "prune": stage_prune,
    "distill": stage_distill,
    "export": stage_export,
    "quantize": stage_quantize,
    "evaluate": stage_evaluate,
    "profile": stage_profile,
    "report": stage_report,
}
ORDER = ("load", "prune", "distill", "export", "quantize", "evaluate", "profile", "report")


# ---------------------------------------------------------------- helpers

def _evaluator(run: Run):
    from .evaluate import Evaluator

    return Evaluator(run.ctx.eval, run.ctx.source.task, run.staging / "model.fp32.onnx", tags=run.ctx.source.entity_tags)


def _fill_metrics(run: Run):
    for a in run.manifest.artifacts:
        if not a.metrics:
            a.metrics = run.ctx.evaluate(run.staging / a.path)


def _ds_facts(ds):
    return None if ds is None else {"n": len(ds), "source": ds.source, "labelled": ds.labels is not None}


def _student(spec) -> dict:
    from .source import student_provenance

    rec = student_provenance(spec)
    return {"student": rec} if rec else {}


def effective_settings(cfg: cfgmod.CompressConfig) -> dict:
    """cfg as the manifest's settings, each value as the run used it: --no-tune runs one candidate
    whatever max_trials says, and distillation's default (enabled: null) is decided here."""
    d = cfg.to_dict()
    if not cfg.quantize.tune:
        d["quantize"]["max_trials"] = 1
    d["distill"]["enabled"] = cfg.distill_enabled
    return d


def _is_torch_file(model: str) -> bool:
    return not model.startswith("zoo:") and not model.lower().endswith(".onnx")


def load_model(model: str, data_paths, *, declared=None, input_shape=None, tokenizer=None, **load_kw):
    """(SourceModel, peeked arrays or None). A PyTorch file's input is learned from the first data given
    (--calib, --eval, --train in that order) unless --input-shape says it: an .npy/.npz's arrays, the
    --tokenizer's output for a .txt's first sentences, or a run on an image folder's first images. Shared by
    compress, prune and distill (load_kw: weights, trust_pickle, seed). tokenizer: a --tokenizer spec, which
    becomes the model's tokenizer (text_tokenizer.load_tokenizer)."""
    from .hf_folder import tokenizer_in
    from .loader import load_source

    tokenizer = tokenizer or tokenizer_in(model)  # a HuggingFace folder's own tokenizer.json
    tok = None
    if tokenizer:
        from .text_tokenizer import load_tokenizer

        tok = load_tokenizer(tokenizer)  # refused before the model loads; rebuilt below for its input length
    from_data = next((p for p in data_paths if p), None)
    sample = _peek_arrays(from_data) if _is_torch_file(model) else None
    if _is_torch_file(model) and sample is None and from_data and not input_shape:
        from .calibration import TEXT_FORMATS

        if tok is not None and Path(from_data).suffix.lower() in TEXT_FORMATS:
            from .calibration import read_dataset
            from .loader import OfferedInputs

            sample = OfferedInputs(read_dataset(from_data, [], tokenizer=tok, limit=2).inputs)
        elif not Path(from_data).is_dir():
            # sentences do not say what tensor the model takes, and the error would otherwise blame
            # missing data that was given
            raise UsageError(f"{from_data}: this data format does not give {model}'s input shape; "
                             "pass --input-shape (e.g. 1,3,224,224)"
                             + (" or a --tokenizer for its sentences"
                                if Path(from_data).suffix.lower() in TEXT_FORMATS else ""))
        else:
            from .audio import is_audio_folder

            load = _load_on_audio if is_audio_folder(from_data) else _load_on_images
            src = load(model, from_data, declared, **load_kw)
            return _with_tokenizer(src, tokenizer), None
    src = load_source(model, input_shape=input_shape, sample_inputs=sample, **load_kw)
    return _with_tokenizer(src, tokenizer), sample


def _with_tokenizer(src, spec):
    """src with the --tokenizer spec's tokenizer, fitted to its inputs (their fixed length), if one was given."""
    if spec:
        from .text_tokenizer import load_tokenizer

        src.tokenizer = load_tokenizer(spec, src.inputs)
    return src


def declare_prepost(src, declared, model: str, where: str = "--preprocess") -> None:
    """The user's --preprocess replaces what the model brings, once its steps are known to run and give the
    model's input (a wrong resize, or a step that cannot run, would otherwise be bundled and fail on the
    device for every input). where: the spec file, or the flag for JSON text, as errors name it."""
    from .prepost import PrepostError
    from .prepost.fit import check_pre_fits

    if declared:
        src.preprocess = declared
        try:
            check_pre_fits(declared, src.inputs, model, where)
        except PrepostError as e:
            raise UsageError(str(e)) from None


def model_prepost(preprocess, model: str) -> tuple:
    """(the declared pre/post spec, the file errors name when it is the model's own): --preprocess, read and
    refused before the model loads, else a HuggingFace folder's preprocessor_config.json (noted on stderr)."""
    if preprocess:
        return _read_prepost(preprocess), None
    from .hf_folder import preprocess_in

    spec, where, note = preprocess_in(model)
    if note:
        print(f"edgekit: note: {note}", file=sys.stderr)
    return spec, where


def _spec_where(run) -> str:
    """How fit errors name the run's spec: the recipe holding it inline, its file, or the flag."""
    return run.preprocess_where or _prepost_where(run.cfg.preprocess)


def _prepost_where(text) -> str:
    """The spec's file as given, for errors; '--preprocess' for JSON text."""
    from .prepost.pipeline import _stat_ok

    return text if text and _stat_ok(Path(text).is_file) else "--preprocess"


def imply_prepost(src, *paths) -> list:
    """Completes src.preprocess with the pixel scaling an image folder among paths is read with, so the
    manifest (and a bundle) records what calibration and scoring used; the note to print, if so."""
    from .calibration import IMPLIED_NOTE, with_implied_prepost

    before = src.preprocess
    src.preprocess = with_implied_prepost(src.preprocess, src.inputs, *paths)
    return [IMPLIED_NOTE] if src.preprocess != before else []


def _load_on_images(model, folder, declared, **load_kw):
    """A PyTorch model whose data is a folder of images: its input is learned by running it on the first
    images, as the declared preprocessing (else 0..1 pixels at the images' own size) gives them, with the
    channel count the preprocessing's mean/std imply first, then the other of 1 and 3."""
    from .calibration import image_samples, required_images, resize_op
    from .errors import CalibrationError, InputError
    from .loader import load_source

    required_images(folder)  # outside the loop: an empty folder is its own error, not "runs on none"
    op = resize_op(declared)
    implied = max(len(op.get("mean") or [0]), len(op.get("std") or [0]))
    first = None
    for channels in dict.fromkeys([implied if implied in (1, 3) else 3, 3, 1]):
        try:
            sample = {"input": image_samples(folder, declared, channels)}
            return load_source(model, sample_inputs=sample, **load_kw)
        except (InputError, CalibrationError) as e:
            first = first or e
    raise UsageError(f"{folder}: {model} runs on none of the images as 1- or 3-channel input ({first}); "
                     "pass --input-shape (e.g. 1,3,224,224) or a --preprocess with the size") from None


def _load_on_audio(model, folder, declared, **load_kw):
    """A PyTorch model whose data is a folder of .wav clips: its input is learned by running it on the first
    clips as a waveform [N, L], else as one channel [N, 1, L] (a Conv1d front end)."""
    from .audio import audio_samples
    from .errors import CalibrationError, InputError
    from .loader import load_source

    wave = audio_samples(folder)  # outside the loop: an empty or unreadable folder is its own error
    first = None
    for sample in ({"input": wave}, {"input": wave[:, None, :]}):
        try:
            return load_source(model, sample_inputs=sample, **load_kw)
        except (InputError, CalibrationError) as e:
            first = first or e
    raise UsageError(f"{folder}: {model} runs on none of the clips as a waveform [N, {wave.shape[1]}] or one "
                     f"channel [N, 1, {wave.shape[1]}] ({first}); pass --input-shape") from None


def _peek_arrays(path):
    """Names, shapes and dtypes of .npy/.npz data, to infer a user model's inputs; the file is read (and
    refused, naming it) by the same reader as later, only without the model's input checks."""
    from .calibration import read_dataset
    from .loader import DataArrays

    if not path or Path(path).suffix.lower() not in (".npy", ".npz", ".csv", ".tsv"):
        return None
    return DataArrays(read_dataset(path, [], labels=False).inputs, source=str(path))


def _read_prepost(text):
    """--preprocess as JSON text or a JSON file: a missing file is named as missing (it was 'not JSON'), and
    JSON text longer than a file name may be is read as text (it was an internal OSError)."""
    from .prepost import PrepostError, validate_spec
    from .prepost.pipeline import read_spec

    try:
        spec, where = read_spec(text, what="--preprocess")
    except PrepostError as e:
        raise UsageError(str(e)) from None
    try:
        validate_spec(spec)
    except ValueError as e:
        raise UsageError(f"{where or '--preprocess'}: {e}") from None
    return spec


def check_data_paths(paths) -> None:
    """A mistyped --calib/--eval/--train is refused before the model loads: a zoo model trained first on
    its first use, for minutes, before the one-line error came."""
    from .calibration import require_data

    for p in paths:
        if p:
            require_data(p)


# ---------------------------------------------------------------- entry points

def run_config(cfg: cfgmod.CompressConfig, *, preprocess_where: str | None = None) -> Manifest:
    if cfg.distill.student:  # its refusals come before the model loads (the stage imports torch)
        from .stages.prune import check_settings

        check_settings(cfg.prune, cfg.distill)
    outdir = check_output(cfg.output, cfg.overwrite)
    staging = staging_dir(outdir)
    try:
        run = Run(cfg, staging, preprocess_where=preprocess_where)
        run.manifest.settings = effective_settings(cfg)
        run.manifest.versions = versions()
        run.manifest.host = host_info()
        _seed(cfg.seed)
        for name in ORDER:
            t0 = time.perf_counter()
            try:
                # third-party libraries print progress to stdout; keep stdout for --json output
                with contextlib.redirect_stdout(sys.stderr):
                    res = STAGES[name](run)
            except EdgekitError:
                run.record(name, "failed", "see the error", time.perf_counter() - t0)
                raise
            if isinstance(res, tuple):
                run.record(name, res[0], res[1], time.perf_counter() - t0)
            else:
                # a stage's notes are its reason: the stage table of report.md/html shows them
                run.record(name, "done", "; ".join((res or {}).get("notes") or []), time.perf_counter() - t0,
                           **(res or {}))
            if name == "report":  # the final manifest includes the report stage's own record
                run.manifest.write(staging)
        publish(staging, outdir, overwrite=cfg.overwrite)
    except BaseException:
        discard(staging)
        raise
    return run.manifest


def _seed(seed: int):
    import random

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass


def _section_example(sec: str) -> str:
    return {"quantize": "'mode': 'fp16'", "prune": "'ratio': 0.5", "distill": "'epochs': 10",
            "profile": "'enabled': False"}.get(sec, "...")


def compress(model: str, *, output: str, config: str | None = None, **settings) -> Manifest:
    """Python API mirroring `edgekit compress`: keyword settings as in CompressConfig / compress.toml.

    tolerance: "1%" (relative, the default) or "0.5pt" (absolute points), as --tolerance takes it; a bare
    number is a percentage (1 means 1%), and one between 0 and 1 (0.01) is refused as ambiguous.
    """
    cfg = resolve(model, output=output, config=config, **settings)
    return run_config(cfg, preprocess_where=_recipe_prepost_where(cfg, config, settings))


def _recipe_prepost_where(cfg, config, settings) -> str | None:
    """A spec written into the recipe as JSON text is named by the recipe in errors found once the model is
    loaded (they said '--preprocess', a flag the user never passed); None for any other spec."""
    if not config or "preprocess" in settings or not cfg.preprocess:
        return None
    return None if _prepost_where(cfg.preprocess) != "--preprocess" else f"{config}: preprocess"


def resolve(model: str, *, output: str, config: str | None = None, **settings):
    """The CompressConfig a compress call stands for: recipe, then keyword settings over it."""
    from .errors import ConfigError

    # the recipe's trust_pickle is dropped either way; the note is only for a run where it is not given here
    base = cfgmod.load_recipe(config, notes=not settings.get("trust_pickle")) if config else {}
    if isinstance(settings.get("targets"), str):
        settings["targets"] = [settings["targets"]]  # one target by name, not its characters
    merged = {**base, **{k: v for k, v in settings.items() if k not in cfgmod._SECTIONS}}
    for sec in cfgmod._SECTIONS:
        if sec in settings or sec in base:
            v = settings.get(sec, {})
            if not isinstance(v, dict):
                # quantize="fp16" would otherwise be dropped and a different run made than the one asked for
                raise ConfigError(f"{sec}={v!r}: settings for {sec} are a dict, e.g. "
                                  f"{sec}={{{_section_example(sec)}}}")
            merged[sec] = {**base.get(sec, {}), **v}
    if not output:
        raise ConfigError("output: an output directory is required")
    merged["model"], merged["output"] = model, str(output)
    return cfgmod.from_dict(merged)
