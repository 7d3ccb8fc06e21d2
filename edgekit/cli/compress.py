"""`edgekit compress`: the whole pipeline on one model."""
from __future__ import annotations

import click

from ..report.fmt import metric_units, pct
from ..stdio import markup_safe
from .common import CONTEXT_SETTINGS, echo_json, task_option


def _shape(ctx, param, value):
    if value is None:
        return None
    import re

    # as shapes get pasted: 1,3,224,224, 1x3x224x224, "1 3 224 224", [1, 3, 224, 224], (1, 3, 224, 224) and
    # torch.Size([1, 3, 224, 224]) (a bracket was 'expected comma-separated integers')
    text = value.strip()
    if text.startswith("torch.Size(") and text.endswith(")"):
        text = text[len("torch.Size("):-1]
    text = text.strip()
    if text[:1] + text[-1:] in ("[]", "()"):
        text = text[1:-1]
    try:
        dims = tuple(int(x) for x in re.split(r"\s*[,x]\s*|\s+", text.strip().rstrip(",").strip()))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected comma-separated integers, e.g. 1,3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise click.BadParameter(f"{value!r}: dimensions must be positive")
    return dims


@click.command("compress", context_settings=CONTEXT_SETTINGS)
@click.argument("model", required=False)
@click.option("-o", "--output", type=click.Path(), help="Output directory for artifacts, manifest and reports.")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="compress.toml recipe; flags override it.")
@click.option("--weights", type=click.Path(dir_okay=False), help="state_dict file for a file.py:factory model.")
@click.option("--trust-pickle", is_flag=True, default=None, help="Allow --weights to be a pickled full model, and a "
              "--student .pt to be rebuilt on a model file other than the teacher's (both run code from the file).")
@click.option("--calib", type=click.Path(), help="Calibration data: .npy, .npz (one array per input), .csv rows, a folder of images or .wav clips, or .txt/.jsonl of sentences.")
@click.option("--eval", "eval_", type=click.Path(), help="Eval data: .npz with inputs plus 'y' labels (accuracy), a folder of class folders, a .jsonl of labelled sentences or sentence pairs; without labels, fidelity to FP32. Without --eval, the --calib samples INT8 does not calibrate on are scored (on its labels, if it has them).")
@click.option("--train", type=click.Path(), help="Training data for distillation (same formats; labels optional).")
@click.option("--input-shape", callback=_shape, help="Input shape when it cannot be inferred from the data, e.g. 1,3,224,224.")
@click.option("--prune", "prune_ratio", type=click.FloatRange(0, 1, max_open=True), help="Fraction of channels to remove (structured).")
@click.option("--prune-method", type=click.Choice(["l1", "l2", "bn", "taylor"]), help="Channel importance criterion.")
@click.option("--ignore", "prune_ignore", multiple=True,
              help="Module name never pruned (repeatable; replaces a recipe's list); the first conv and the output layer "
                   "are always kept.")
@click.option("--target-latency", help="Search the pruning ratio for a measured latency, e.g. 0.6x or 2.5ms.")
@click.option("--distill/--no-distill", default=None, help="Distill from the original model after pruning (default: on when pruning).")
@click.option("--student", help="file.py:factory or a HuggingFace model folder: distill into a different, smaller "
              "architecture (not with --prune).")
@click.option("--quantize", "quant_mode", type=click.Choice(["int8", "int8-dynamic", "fp16", "none"]), help="Quantization mode (default int8).")
@click.option("--tune/--no-tune", "tune", default=None,
              help="Accuracy-aware tuning (default), or ISA-aware defaults once; --tune turns it back on for a "
                   "recipe that had it off.")
@click.option("--max-trials", type=click.IntRange(min=1), help="INT8 tuning trial budget (default 12).")
@click.option("--tolerance", help="Largest accepted accuracy drop: '1%' relative (default) or '0.5pt' absolute; "
              "a bare number is a percentage.")
@click.option("--target", "targets", multiple=True, help="Target name or TOML file (repeatable; default: this host's CPU).")
@click.option("--preprocess", help="Pre/post-processing spec (JSON text or file) declared in the manifest for the device runner.")
@click.option("--tokenizer", help="For .txt/.jsonl sentence data: file.py:function (sentences -> dict of input arrays) or a "
              "tokenizer.json (or a folder holding one), padded to the model's sequence length (else 128).")
@click.option("--profile/--no-profile", "profile", default=None,
              help="Profile latency on the targets (default), or skip it; --profile turns it back on for a recipe "
                   "that had it off.")
@task_option
@click.option("--seed", type=int, help="Random seed (default 0).")
@click.option("--overwrite", is_flag=True, default=None, help="Replace an existing OUTDIR (only after the new run succeeds).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON on stdout.")
def compress(model, output, config, weights, trust_pickle, calib, eval_, train, input_shape, prune_ratio, prune_method,
             prune_ignore, target_latency, distill, student, quant_mode, tune, max_trials, tolerance, targets, preprocess, tokenizer,
             profile, task, seed, overwrite, as_json):
    """Compress MODEL (zoo:NAME, file.py:factory, model.onnx or a HuggingFace model folder) into OUTDIR.

    With --config OUTDIR/compress.toml, MODEL (and -o) default to the recipe's.

    \b
    Examples:
      edgekit compress zoo:digits-cnn -o out/digits
      edgekit compress zoo:digits-cnn --prune 0.5 -o out/digits-pruned
      edgekit compress net.py:build --weights net.pt --calib calib.npy --eval eval.npz -o out/net
      edgekit compress --config out/net/compress.toml -o out/net-again
    """
    from ..pipeline import compress as run_compress

    settings = {"weights": weights, "trust_pickle": trust_pickle, "calib": calib, "eval": eval_, "train": train,
                "input_shape": input_shape, "tolerance": tolerance, "seed": seed, "overwrite": overwrite,
                "preprocess": preprocess, "tokenizer": tokenizer, "task": task}
    if targets:
        settings["targets"] = list(targets)
    settings = {k: v for k, v in settings.items() if v is not None}
    prune = {k: v for k, v in {"ratio": prune_ratio, "method": prune_method, "target_latency": target_latency}.items()
             if v is not None}
    if prune_ignore:
        prune["ignore"] = list(prune_ignore)
    dist = {k: v for k, v in {"enabled": distill, "student": student}.items() if v is not None}
    quant = {k: v for k, v in {"mode": quant_mode, "tune": tune,
                               "max_trials": max_trials}.items() if v is not None}
    prof = {} if profile is None else {"enabled": profile}
    for name, sec in (("prune", prune), ("distill", dist), ("quantize", quant), ("profile", prof)):
        if sec:
            settings[name] = sec
    if config and not (model and output):
        from ..config import load_recipe

        recipe = load_recipe(config, notes=False)  # read again, with its notes, when the run starts
        model = model or recipe.get("model")
        output = output or recipe.get("output")
    if not model:
        raise click.UsageError("missing MODEL (zoo:NAME, file.py:factory, model.onnx or a HuggingFace model folder), "
                               "or --config with a recipe")
    if not output:
        raise click.UsageError("missing -o/--output OUTDIR")
    manifest = run_compress(model, output=output, config=config, **settings)
    if as_json:
        echo_json(manifest.to_dict())
    else:
        _summary(manifest, output)


def _p50_cell(lat: dict) -> str:
    """A summary cell: the p50 of a real measurement; a timing under emulation (qemu, or a device declared
    emulated) is correctness only, never device latency, so it shows as 'emulated', as in the report."""
    if lat.get("status") != "ok" or lat.get("p50_ms") is None:
        return lat.get("status", "-")  # failed, unavailable, emulated-only: what happened, not a number
    return "emulated" if lat.get("emulated") else f"{lat['p50_ms']:.3f} ms"


def _summary(manifest, output):
    from rich.console import Console
    from rich.table import Table

    con = Console(stderr=True)
    if not con.is_terminal:
        con.width = 160  # logs and CI: do not wrap the table into unreadable slivers
    targets = list(dict.fromkeys(t for a in manifest.artifacts for t in a.latency))
    # paths, target names and reasons are text, not markup: 'runs[/net]' raised MarkupError after the run
    # had been published, exit 1
    tab = Table(title=f"edgekit compress -> {markup_safe(output)}")
    for col in ("artifact", "kind", "size", "params", "metric"):
        tab.add_column(col)
    for t in targets:
        tab.add_column(f"p50 {markup_safe(t)}", justify="right")
    for a in manifest.artifacts:
        m = a.metrics or {}
        metric = f"{m.get('name', '?')} {m['value']:.4f}" if m.get("value") is not None else "-"
        if m.get("drop_rel") is not None and a.kind != "fp32":
            metric += f" ({pct(-m['drop_rel'], signed=True)})"
        metric += metric_units(m)
        row = [a.path, a.kind, f"{a.bytes / 1024:.1f} KiB", f"{a.params:,}" if a.params else "-", metric]
        row += [_p50_cell(a.latency.get(t, {})) for t in targets]
        tab.add_row(*map(markup_safe, row))
    con.print(tab)
    for t, r in manifest.recommended.items():
        if r.get("status") == "ok":
            con.print(f"[bold]recommended for {markup_safe(t)}:[/bold] {markup_safe(r['path'])} — "
                      f"{markup_safe(r['reason'])}")
        else:
            con.print(f"[bold]{markup_safe(t)}:[/bold] {markup_safe(r.get('status'))}: {markup_safe(r.get('reason'))}")
