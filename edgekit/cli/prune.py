"""`edgekit prune MODEL --ratio R -o OUT`: structured pruning (+ distillation) on its own."""
from __future__ import annotations

import click

from ..stdio import markup_safe
from .common import CONTEXT_SETTINGS, console, echo_json, json_option, output_option, settle_task, task_option


@click.command("prune", context_settings=CONTEXT_SETTINGS)
@click.argument("model")
@click.option("--weights", type=click.Path(dir_okay=False), help="state_dict file for a file.py:factory model.")
@click.option("--trust-pickle", is_flag=True, help="Allow --weights to be a pickled full model (runs code from the file).")
@click.option("--calib", type=click.Path(), help="Example/calibration inputs (.npy, .npz, a folder of images or .wav clips, .txt, .jsonl).")
@click.option("--eval", "eval_path", type=click.Path(), help="Eval data (.npz with 'y' labels for accuracy); without it, --calib (on its labels, if it has them).")
@click.option("--train", type=click.Path(), help="Training data for distillation (labels optional).")
@click.option("--input-shape", help="Input shape when it cannot be inferred, e.g. 1,3,224,224.")
@click.option("--preprocess", help="Pre/post-processing spec (JSON text or file): how --calib/--eval/--train "
              "images become the model's input, recorded in the manifest for the device runner.")
@click.option("--tokenizer", help="For .txt/.jsonl sentence data: file.py:function (sentences -> dict of input arrays) or a "
              "tokenizer.json (or a folder holding one), padded to the model's sequence length (else 128).")
@click.option("--ratio", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Fraction of channels removed (FFN width for transformers).")
@click.option("--head-ratio", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Fraction of attention heads removed (transformers).")
@click.option("--method", type=click.Choice(["l1", "l2", "bn", "taylor"]), default="l1", show_default=True,
              help="Channel importance criterion.")
@click.option("--global", "global_pruning", is_flag=True, help="Rank channels across layers (default: per layer).")
@click.option("--ignore", multiple=True, help="Module name never pruned (repeatable); the first conv and the "
              "output layer are always kept.")
@click.option("--channel-multiple", type=click.IntRange(1), help="Round kept channels to a multiple of N "
              "(default: the target's, else 8).")
@click.option("--steps", type=click.IntRange(1), default=1, show_default=True, help="Iterative prune -> distill steps.")
@click.option("--sensitivity", is_flag=True, help="Measure per-layer sensitivity, write sensitivity.json/.csv/.png "
              "and set per-layer ratios for the same parameter budget.")
@click.option("--target-latency", help="Search the ratio for a measured ONNX latency: '0.6x' or '2.5ms'.")
@click.option("--sparsity", type=click.Choice(["unstructured", "2:4"]), help="Zero weights instead of removing "
              "channels (smaller compressed size only; not faster on ONNX Runtime CPU).")
@click.option("--distill/--no-distill", default=True, show_default=True, help="Distill from the original afterwards.")
@click.option("--epochs", type=click.IntRange(0), default=30, show_default=True, help="Distillation epochs in total (at least one per --steps step; raised with a note).")
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Distillation learning rate (AdamW).")
@click.option("--target", "targets", multiple=True, help="Target name or TOML file (latency and channel multiple).")
@task_option
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTDIR (only after this run succeeds).")
@output_option()
@json_option
def prune(model, weights, trust_pickle, calib, eval_path, train, input_shape, preprocess, tokenizer, ratio, head_ratio, method,
          global_pruning, ignore, channel_multiple, steps, sensitivity, target_latency, sparsity, distill, epochs,
          lr, targets, task, seed, overwrite, output, as_json):
    """Prune MODEL (zoo:NAME, file.py:factory or a HuggingFace model folder) and write OUTDIR: model.fp32.onnx,
    model.pruned.onnx (model.distilled.onnx after distillation, model.sparse.onnx with --sparsity), pruned.pt (weights +
    pruned structure, loadable with torch.load(weights_only=True)), pruning.json and manifest.json.

    \b
    Examples:
      edgekit prune zoo:digits-cnn --ratio 0.5 -o out/pruned
      edgekit prune zoo:digits-cnn --target-latency 0.6x -o out/fast
      edgekit prune zoo:digits-cnn --ratio 0.5 --sensitivity --no-distill -o out/sens
    """
    from ..config import DistillConfig, PruneConfig
    from ..pipeline import _seed
    from ..pruning import outputs
    from ..stages import prune as stage
    from .compress import _shape

    shape = _shape(None, None, input_shape)
    pcfg = PruneConfig(ratio=ratio, head_ratio=head_ratio, method=method, global_pruning=global_pruning,
                       ignore=tuple(ignore), channel_multiple=channel_multiple, steps=steps, sensitivity=sensitivity,
                       target_latency=target_latency, sparsity=sparsity or "none")
    if not pcfg.enabled:
        raise click.UsageError("nothing to prune: pass --ratio, --head-ratio, --target-latency or --sparsity")
    dcfg = DistillConfig(enabled=distill, epochs=epochs, lr=lr)
    _seed(seed)
    src, c, e, t = outputs.load(model, weights=weights, trust_pickle=trust_pickle, calib=calib, eval_path=eval_path,
                                train=train, input_shape=shape, seed=seed, preprocess=preprocess, task=task,
                                tokenizer=tokenizer)
    task_notes = settle_task(src, task, e, t, distills=distill, probe=c)
    scored = [n for n in [outputs.scored_on_calib_note(eval_path, train, src, e)] if n]
    settings = {"model": model, "task": task or "auto", "prune": vars(pcfg), "distill": vars(dcfg), "seed": seed,
                "preprocess": preprocess, "tokenizer": tokenizer}

    told = list(task_notes)

    def work(ctx):
        res = stage.run(src, ctx, pcfg, dcfg, distill_enabled=distill)
        # task notes were printed already; all are kept in the record, and the untold ones printed with the results
        res.info["notes"] = task_notes + scored + list(res.info.get("notes") or [])
        told.extend(res.told)
        extra = outputs.save_weights(res.module, src.spec, {"kind": res.kind, "ratio": res.info.get("ratio")})

        def files(staging, module):
            names = extra(staging)
            return names + list(res.info.get("sensitivity_files", {}).values())

        return res.module, res.kind, "pruning", res.info, files

    man, files = outputs.run_in_dir(output, overwrite, src, c, e, t, outputs.targets(targets), seed, work,
                                    settings=settings)
    if as_json:
        echo_json({"output": output, "files": files, "pruning": man.pruning,
                   "artifacts": [a.to_dict() for a in man.artifacts]})
        return
    _summary(man, output, told)


def _summary(man, output, told=()):
    from rich.table import Table

    p = man.pruning
    c = console()
    if p.get("sparsity"):
        # no prune steps to tabulate: weights were zeroed in place
        sp = p["sparsity"]
        c.print(f"edgekit prune -> {markup_safe(output)}: {markup_safe(p.get('method'))}: {sp.get('zeros', 0):,} of {sp.get('total', 0):,} "
                f"weights zero ({sp.get('sparsity', 0):.1%}) in {len(p.get('sparse_layers', []))} layers; compressed "
                f"size {p.get('compressed_bytes_before', 0) / 1024:.1f} -> {p.get('compressed_bytes_after', 0) / 1024:.1f} KiB")
        _artifacts_and_notes(c, man, p, told)
        return
    tab = Table(title=f"edgekit prune -> {markup_safe(output)}")
    for col in ("step", "ratio", "params", "MACs", "latency ms", p.get("metric_name", "metric")):
        tab.add_column(markup_safe(col), justify="right")
    for s in p.get("steps", []):
        lat = f"{s['latency_ms']:.3f}" if s.get("latency_ms") is not None else "-"
        tab.add_row(str(s["step"]), f"{s['ratio']:.2f}", f"{s['params']:,}", f"{s['macs']:,}", lat, f"{s['metric']:.4f}")
    c.print(tab)
    _artifacts_and_notes(c, man, p, told)


def _artifacts_and_notes(c, man, p, told=()):
    for a in man.artifacts:
        m = a.metrics or {}
        c.print(f"{markup_safe(a.path)}: {a.params:,} params, {a.bytes / 1024:.1f} KiB, {markup_safe(m.get('name'))} "
                f"{m.get('value', 0):.4f}")
    for n in p.get("notes", []):  # notes name data files and layers: text, not markup
        if n in told:  # printed on stderr as it arose
            continue
        c.print(f"note: {markup_safe(n)}")
