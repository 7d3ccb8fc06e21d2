"""What `edgekit prune` and `edgekit distill` do outside the pipeline: load the model and data,
run the stage, and write OUTDIR (ONNX files, the pruned weights, JSON, manifest) atomically."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..artifact import Manifest, StageRecord, host_info, versions
from ..context import RunContext
from ..errors import UsageError
from ..fsutil import write_json_atomic
from ..outdir import check_output, discard, publish, staging_dir
from ..progress import task
from ..source import student_provenance


def load(model, *, weights=None, trust_pickle=False, calib=None, eval_path=None, train=None, input_shape=None,
         seed=0, preprocess=None, task=None, tokenizer=None):
    """(SourceModel, calib, eval, train) as the compress pipeline reads them: the input shape learned from
    the data (image folders included), --preprocess (a JSON spec or file) as compress takes it, else the
    pixel scaling an image folder implies, recorded in
    source.preprocess (run_in_dir writes it to the manifest) and noted on stderr."""
    from ..artifact import data_records
    from ..calibration import read_dataset
    from ..evaluate import check_training_labels
    from ..loader import apply_task
    from ..pipeline import check_data_paths, declare_prepost, imply_prepost, load_model, model_prepost

    declared, folder_where = model_prepost(preprocess, model)  # a bad spec is refused before the model loads
    check_data_paths((calib, eval_path, train))
    src, _ = load_model(model, (calib, eval_path, train), declared=declared, weights=weights,
                        trust_pickle=trust_pickle, input_shape=input_shape, seed=seed, tokenizer=tokenizer)
    declare_prepost(src, declared, model, **({"where": folder_where} if folder_where else {}))
    apply_task(src, task)  # before the --train labels are checked against the task
    for note in imply_prepost(src, calib, eval_path, train):
        print(f"edgekit: note: {note}", file=sys.stderr)

    def data(path, labels):
        return read_dataset(path, src.inputs, labels=labels, tokenizer=src.tokenizer, preprocess=src.preprocess)

    # without --eval the calibration file is the evaluation data: its labels, if any, score the result
    c = data(calib, not eval_path and src.eval is None) if calib else src.calib
    e = data(eval_path, True) if eval_path else src.eval
    t = data(train, True) if train else src.train
    check_training_labels(src, t)
    src.load_settings = {"weights": weights, "trust_pickle": trust_pickle, "calib": _abs(calib),
                         "eval": _abs(eval_path), "train": _abs(train), "input_shape": input_shape}
    src.data = data_records(calib=(calib, c), eval=(eval_path, e), train=(train, t))
    if e is None and c is None:
        # --train alone: the result's accuracy cost would have nothing to be measured on
        raise UsageError(f"{model}: no evaluation data; pass --eval (or --calib) so the accuracy cost can be measured")
    if e is None and c is not None and c.has_labels:
        e, c = c, c.without_labels()  # pruning and distillation train on the inputs, as with --eval given
    return src, c, e or c, t or c


def scored_on_calib_note(eval_path, train_path, src, evalset) -> str | None:
    """Without --eval, prune and distill score their result on the --calib samples, which they also learn from
    unless --train is given: the note saying so (kept in the record, printed with the results), else None."""
    if eval_path or src.eval is not None or evalset is None:
        return None
    how = "against their labels" if evalset.labels is not None else "by agreement with the original model"
    also = "" if train_path else (", the same samples pruning and distillation learn from; give --eval to score "
                                  "held-out data")
    return f"no --eval: the results are scored on the {len(evalset)} --calib samples {how}{also}"


def _abs(path):
    """Data paths as absolute, as `edgekit quantize` records them: the manifest is read from other folders."""
    return str(Path(path).resolve()) if path else path


def targets(names) -> list:
    from ..targets import DEFAULT_TARGET, load_targets

    return load_targets(names or (DEFAULT_TARGET,))


def run_in_dir(output, overwrite: bool, source, calib, evalset, train, target_list, seed, work, *, settings: dict):
    """work(ctx) -> (module, kind, section_name, section_dict, extra_files(staging)->list).

    Exports the source (fp32) and the result, evaluates both on the eval set, writes the manifest."""
    from ..evaluate import Evaluator, with_drop
    from ..pipeline import _seed
    from ..stages.export import export_module

    out = check_output(output, overwrite)
    staging = staging_dir(out)
    try:  # from the folder's creation on: a SIGTERM while host facts are read must not leave it behind
        man = Manifest(source=source.provenance(), versions=versions(), host=host_info(),
                       prepost=source.preprocess or {}, data=dict(source.data),
                       settings={**source.load_settings, **settings, "targets": [t.name for t in target_list]})
        if (settings.get("distill") or {}).get("student"):
            man.source["student"] = student_provenance(settings["distill"]["student"])
        _seed(seed)
        ctx = RunContext(outdir=staging, source=source, manifest=man, calib=calib, eval=evalset, train=train,
                         targets=target_list, seed=seed)
        t0 = time.perf_counter()
        module, kind, section, info, extra = work(ctx)
        man.stages.append(StageRecord(section, "done", seconds=round(time.perf_counter() - t0, 2)))
        with task("exporting to ONNX"):
            data = calib or evalset
            fp32 = export_module(source.module, source, staging / "model.fp32.onnx", kind="fp32", data=data,
                                 eval_data=evalset)
            var = export_module(module, source, staging / f"model.{kind}.onnx", kind=kind, data=data, stage=section,
                                parent=fp32.path, eval_data=evalset)
        ev = Evaluator(evalset, source.task, staging / fp32.path, tags=source.entity_tags)
        fp32.metrics = ev(staging / fp32.path)
        var.metrics = with_drop(ev(staging / var.path), fp32.metrics)
        man.artifacts += [fp32, var]
        if section == "pruning":
            man.pruning = info
        write_json_atomic(staging / f"{section}.json", info)
        files = [fp32.path, var.path, f"{section}.json", "manifest.json"] + list(extra(staging, module) or [])
        man.write(staging)
        publish(staging, out, overwrite=overwrite)
    except BaseException:
        discard(staging)
        raise
    return man, files


def save_weights(module, spec: str, meta: dict):
    """extra-files callback writing the pruned/distilled weights as plain tensors + structure."""
    from . import serialize

    def write(staging: Path, _module=None):
        serialize.save(module, staging / "pruned.pt", spec=absolute_spec(spec), meta=meta)
        return ["pruned.pt"]

    return write


def absolute_spec(spec: str) -> str:
    """file.py:factory with the file's absolute path: pruned.pt is used from other folders (`--student
    out/p1/pruned.pt`), where the path as typed named no file. Other specs (zoo:NAME) unchanged."""
    path, _, factory = (spec or "").rpartition(":")
    if factory and path.endswith(".py") and Path(path).is_file():
        return f"{Path(path).resolve()}:{factory}"
    return spec
