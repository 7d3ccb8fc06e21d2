"""`edgekit distill --teacher MODEL --student file.py:factory|pruned.pt -o OUT`: distillation on its own."""
from __future__ import annotations

import click

from ..stdio import markup_safe
from .common import CONTEXT_SETTINGS, console, echo_json, json_option, output_option, settle_task, task_option


@click.command("distill", context_settings=CONTEXT_SETTINGS)
@click.option("--teacher", required=True, help="Teacher model: zoo:NAME, file.py:factory (with --weights) or a "
              "HuggingFace model folder.")
@click.option("--weights", type=click.Path(dir_okay=False), help="state_dict for a file.py:factory teacher.")
@click.option("--trust-pickle", is_flag=True, help="Allow --weights to be a pickled full model, and a "
              "--student .pt to be rebuilt on a model file other than the teacher's (both run code from the file).")
@click.option("--student", required=True, help="file.py:factory (a smaller architecture, fresh weights), a "
              "HuggingFace model folder (a smaller pretrained model, its own weights) or a pruned.pt written by "
              "`edgekit prune` or `edgekit distill` (rebuilt on the architecture it records).")
@click.option("--calib", type=click.Path(), help="Example inputs (.npy, .npz, a folder of images or .wav clips, .txt, .jsonl).")
@click.option("--eval", "eval_path", type=click.Path(), help="Eval data (.npz with 'y' labels for accuracy; "
              "without labels, agreement with the teacher); without it, --calib (on its labels, if it has them).")
@click.option("--train", type=click.Path(), help="Training data (labels optional; unlabelled uses the teacher alone).")
@click.option("--input-shape", help="Input shape when it cannot be inferred, e.g. 1,3,224,224.")
@click.option("--preprocess", help="Pre/post-processing spec (JSON text or file): how --calib/--eval/--train "
              "images become the model's input, recorded in the manifest for the device runner.")
@click.option("--tokenizer", help="For .txt/.jsonl sentence data: file.py:function (sentences -> dict of input arrays) or a "
              "tokenizer.json (or a folder holding one), padded to the model's sequence length (else 128).")
@click.option("--epochs", type=click.IntRange(0), default=None,
              help="Training epochs. [default: 100 for a file.py:factory student, which starts from random "
                   "weights; 30 for a pruned.pt or HuggingFace-folder student, which fine-tunes]")
@click.option("--lr", type=float, default=2e-3, show_default=True, help="AdamW learning rate.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--temperature", type=float, default=4.0, show_default=True, help="Soft-target temperature T.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.7, show_default=True,
              help="Weight of the soft-target loss; 1 - alpha goes to the labels when present.")
@click.option("--schedule", type=click.Choice(["cosine", "onecycle"]), default="cosine", show_default=True)
@click.option("--patience", type=click.IntRange(0), default=None,
              help="Stop after N epochs without a better eval metric (0: never); the best weights are kept. "
                   "[default: 15 for a file.py:factory student, 5 for a pruned.pt or HuggingFace folder]")
@click.option("--feature-layer", "feature_layers", multiple=True, help="Match this layer's features too "
              "('name', or 'student_name=teacher_name'; repeatable).")
@click.option("--feature-weight", type=float, default=0.0, show_default=True, help="Weight of feature matching.")
@task_option
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTDIR (only after this run succeeds).")
@output_option()
@json_option
def distill(teacher, weights, trust_pickle, student, calib, eval_path, train, input_shape, preprocess, tokenizer,
            epochs, lr,
            batch_size, temperature, alpha, schedule, patience, feature_layers, feature_weight, task, seed, overwrite,
            output, as_json):
    """Distill TEACHER into STUDENT and write OUTDIR: model.fp32.onnx (teacher), model.distilled.onnx,
    pruned.pt (student weights + structure), distill.json (history per epoch) and manifest.json.

    \b
    Examples:
      edgekit distill --teacher zoo:digits-cnn --student small.py:build -o out/kd
      edgekit distill --teacher zoo:digits-cnn --student out/pruned/pruned.pt -o out/kd2
    """
    from ..config import DistillConfig
    from ..pipeline import _seed
    from ..pruning import graph, outputs
    from ..stages import distill as stage
    from .compress import _shape

    if epochs == 0 and not student.endswith((".pt", ".pth")):
        # a fresh factory's random weights would ship as model.distilled.onnx
        from ..errors import UsageError

        raise UsageError(f"--epochs 0 with --student {student}: a fresh student would ship its random initial "
                         "weights; give --epochs 1 or more (or a pruned.pt student)")
    if feature_layers and feature_weight <= 0:
        feature_weight = 1.0
    cfg = DistillConfig(enabled=True, epochs=epochs, lr=lr, batch_size=batch_size, temperature=temperature,
                        alpha=alpha, schedule=schedule, patience=patience, feature_layers=tuple(feature_layers),
                        feature_weight=feature_weight, student=student).resolved(stage.fresh_student(student))
    _seed(seed)
    src, c, e, t = outputs.load(teacher, weights=weights, trust_pickle=trust_pickle, calib=calib,
                                eval_path=eval_path, train=train, input_shape=_shape(None, None, input_shape),
                                seed=seed, preprocess=preprocess, task=task, tokenizer=tokenizer)
    task_notes = settle_task(src, task, e, t, probe=c)
    scored = outputs.scored_on_calib_note(eval_path, train, src, e)
    from ..stages.prune import refuse_fixed_batch

    refuse_fixed_batch(src, "distillation")
    settings = {"teacher": teacher, "task": task or "auto", "student": student, "distill": vars(cfg), "seed": seed,
                "preprocess": preprocess, "tokenizer": tokenizer}

    def work(ctx):
        example = graph.example_inputs(src, c or e)
        module = stage.load_student(student, src, example, trust_pickle=trust_pickle)
        params = graph.count(module, example)[1]
        module, info = stage.run(src.module, module, ctx, cfg)
        # task notes were printed already; the scored-on note is printed with the results; both are recorded
        info["notes"] = task_notes + [n for n in [scored] if n] + list(info.get("notes") or [])
        info.update({"student": student, "params_student": params, "params_teacher": graph.count(src.module, example)[1]})
        # the architecture the result holds: a pruned.pt's own base, which may not be the teacher's
        spec = stage.student_base_spec(student, src) if student.endswith((".pt", ".pth")) else student
        return module, "distilled", "distill", info, outputs.save_weights(module, spec, {"kind": "distilled"})

    man, files = outputs.run_in_dir(output, overwrite, src, c, e, t, outputs.targets(()), seed, work,
                                    settings=settings)
    if as_json:
        echo_json({"output": output, "files": files, "artifacts": [a.to_dict() for a in man.artifacts]})
        return
    con = console()
    for a in man.artifacts:
        m = a.metrics or {}
        con.print(f"{markup_safe(a.path)}: {a.params:,} params, {a.bytes / 1024:.1f} KiB, "
                  f"{markup_safe(m.get('name'))} {m.get('value', 0):.4f}")
    if scored:
        con.print(f"note: {markup_safe(scored)}")
    con.print(f"files: {markup_safe(', '.join(files))}")
