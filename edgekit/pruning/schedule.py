"""Iterative prune -> distill: reach the final ratio in several steps, recovering after each,
because one cut at a high ratio removes channels the network could have learned to do without."""
from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from ..errors import UsageError
from . import fused_heads, graph, importance


def epochs_per_step(total: int, steps: int) -> list:
    """Intermediate steps get total // steps epochs (at least 1); the final step gets the rest. A step is never
    left untrained: the next cut would then remove channels from a network that has not recovered, which is one
    larger cut with extra work, so fewer epochs than steps is raised to one per step (epochs_note says so)."""
    if steps == 1:
        return [total]
    each = max(1, total // steps)
    return [each] * (steps - 1) + [max(each, total - each * (steps - 1))]


def epochs_note(total: int, steps: int) -> str | None:
    """Say so when --epochs (the total) was raised to one epoch per step."""
    ran = sum(epochs_per_step(total, steps))
    if total <= 0 or ran == total:
        return None
    return (f"--epochs {total} is fewer than --steps {steps}: distilled one epoch after each step, {ran} epochs "
            f"in all (a step left untrained would only make the next cut larger)")


def run(model, *, teacher, ctx, plan, prune_cfg, distill_cfg, distill_enabled: bool, ratio: float,
        ratio_dict=None, round_to: int, example, metric, names, export=None, feeds=None) -> dict:
    """Prune `model` in place in prune_cfg.steps steps (distilling after each when enabled).

    Returns {"steps": [...], "distill": [histories], "notes": [...]}; step 0 is the unpruned model.
    When export/feeds are given every step's model is exported and all are timed interleaved.
    """
    from ..stages import distill as distill_stage

    imp, notes = importance.make(prune_cfg.method, model)
    # with per-layer ratios (from sensitivity) a layer left out of the dict is not pruned
    pruner = graph.make_pruner(model, example, plan, imp, ratio=0.0 if ratio_dict else ratio, ratio_dict=ratio_dict,
                               global_pruning=prune_cfg.global_pruning, round_to=round_to,
                               head_ratio=prune_cfg.head_ratio, steps=prune_cfg.steps)
    unwrapped = graph.unwrapped_note(pruner)
    if not graph.prunable_groups(pruner.DG, pruner.ignored_layers) and not (plan.has_heads and prune_cfg.head_ratio > 0):
        # a copy of the same model would be reported as a "pruned" variant: refuse instead
        raise graph.NothingToPrune(f"prune: nothing in this model can be pruned: {_kept(plan)}"
                                   f"{graph.foreign_layers(model)}; leave it unpruned (compress without --prune)",
                                   first_conv="first conv" in plan.kept.values(), kept=_kept(plan))
    macs, params = graph.count(model, example)
    steps = [{"step": 0, "ratio": 0.0, "params": params, "macs": macs, "latency_ms": None, "metric": metric(model)}]
    histories = []
    told = []  # notes already on stderr: the prune command's summary does not repeat them
    if unwrapped:
        notes.append(unwrapped)
        told.append(tell(unwrapped))
    td = tempfile.TemporaryDirectory(prefix="edgekit-steps-") if export is not None else None
    paths = {}
    try:
        if td is not None:
            paths["step0"] = Path(td.name) / "step0.onnx"
            export(teacher, paths["step0"])
        distill_cfg = distill_cfg.resolved(False)  # a pruned model fine-tunes
        raised = epochs_note(distill_cfg.epochs, prune_cfg.steps) if distill_enabled else None
        if raised:
            notes.append(raised)
            told.append(tell(raised))
        for s, ep in enumerate(epochs_per_step(distill_cfg.epochs, prune_cfg.steps), start=1):
            if prune_cfg.method == "taylor":
                used = importance.accumulate_gradients(model, ctx.train or ctx.calib, names, ctx.source.task)
                if s == 1:
                    notes.append(f"taylor importance from {used}")
            for note in graph.step(pruner, plan):
                notes.append(note)
                told.append(tell(note))
            if plan.fused and prune_cfg.head_ratio > 0:
                ref = fused_heads.prune(model, plan.fused, prune_cfg.head_ratio * s / prune_cfg.steps)
                if ref is not None:
                    graph.check_head_cut(model, ref, pruner)
            model.zero_grad(set_to_none=True)
            if distill_enabled and ep > 0:
                model, hist = distill_stage.run(teacher, model, ctx, replace(distill_cfg, epochs=ep))
                hist["step"] = s
                histories.append(hist)
            model.eval()
            macs, params = graph.count(model, example)
            steps.append({"step": s, "ratio": round(ratio * s / prune_cfg.steps, 4), "params": params, "macs": macs,
                          "latency_ms": None, "metric": metric(model)})
            if td is not None:
                paths[f"step{s}"] = Path(td.name) / f"step{s}.onnx"
                export(model, paths[f"step{s}"])
        if plan.fused and prune_cfg.head_ratio > 0:
            now = dict(fused_heads.modules(model))
            notes.append("attention heads cut in c_attn: " + ", ".join(
                f"{n} {h} -> {now[n].num_heads}" for n, h in plan.fused.items() if n in now))
        if td is not None:
            from .latency_search import measure

            lat = measure(paths, feeds, getattr(ctx, "primary_target", None))
            for rec in steps:
                rec["latency_ms"] = lat.get(f"step{rec['step']}")
    finally:
        if td is not None:
            td.cleanup()
    before, after = steps[0]["params"], steps[-1]["params"]
    if after >= before and not (plan.has_heads and prune_cfg.head_ratio > 0):
        raise UsageError(f"prune: ratio {ratio:g} removed 0 of {before:,} parameters (every layer rounds back to its "
                         f"width); use a larger ratio or a smaller channel multiple")
    note = shortfall(before, after, ratio, plan, teacher=teacher, model=model)
    if note:
        notes.append(note)
        told.append(tell(note))
    return {"steps": steps, "distill": histories, "notes": notes, "told": told, "module": model}


def _kept(plan) -> str:
    return "kept: " + ", ".join(plan.ignored_names) if plan.ignored_names else "no Conv, Linear or RNN layer to cut"


def shortfall(before: int, after: int, ratio: float, plan, *, teacher=None, model=None) -> str | None:
    """A note when far fewer parameters went than the ratio suggests, naming the layers that kept
    their parameters (largest first) and why, where that is known."""
    removed = before - after
    if before <= 0 or ratio <= 0:
        return None
    whole = unpruned_modules(teacher, model) if teacher is not None and model is not None else None
    why = _reasons(plan, model) if whole else {}
    # cut layers left whole for no reason of their own: their channels are tied to a kept layer's (a residual
    # add onto the first conv's output keeps every conv writing into that sum), which the ratio hides
    tied = [(name, n) for name, kind, n in (whole or []) if kind in _CUT_KINDS and name not in why]
    # `ratio` is a fraction of channels; cutting both sides of a layer removes more parameters than
    # that, so only a removal under half of it is worth a word, unless layers held whole by others keep a
    # good share of what remains (a fifth)
    short = removed / before < ratio / 2
    if not short and sum(n for _, n in tied) * 5 < max(after, 1):
        return None
    head = f"pruning removed {removed:,} of {before:,} parameters ({removed / before:.1%}) at ratio {ratio:g}"
    if not whole:
        return f"{head}: {_kept(plan)}"
    for name, _ in ([] if short else tied):
        why[name] = ("its channels are tied to a layer kept whole (a residual add, a concat, a depthwise conv), or "
                     "round back to the channel multiple")
    kept = sum(n for _, _, n in whole)
    share = "most" if kept * 2 > after else f"{kept:,} of the {after:,} remaining"
    shown = [f"{name} ({kind}, {n:,} params{'; ' + why[name] if name in why else ''})" for name, kind, n in whole[:4]]
    more = f", and {len(whole) - 4} more" if len(whole) > 4 else ""
    # a GroupNorm that holds the width is named even when its own parameters are few
    shown += [f"{name} ({why[name]})" for name, kind, _ in whole[4:] if kind == "GroupNorm" and name in why]
    return f"{head}: {share} parameters are in layers pruning left whole: {', '.join(shown)}{more}"


_CUT_KINDS = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "Linear")


def unpruned_modules(teacher, model) -> list:
    """[(name, type, parameters)] of the largest modules whose parameters pruning left unchanged
    (a module is named, not its children, when all of it was left whole), largest first."""
    old = {n: p.shape for n, p in teacher.named_parameters()}
    new = {n: p.shape for n, p in model.named_parameters()}
    whole_params = {n for n, shape in new.items() if old.get(n) == shape}
    found = []
    for name, m in model.named_modules():
        if not name or any(name.startswith(f + ".") for f, _, _ in found):
            continue
        names = [f"{name}.{k}" for k, _ in m.named_parameters()]
        if names and all(k in whole_params for k in names):
            found.append((name, type(m).__name__, sum(p.numel() for p in m.parameters())))
    return sorted(found, key=lambda r: -r[2])


def _reasons(plan, model) -> dict:
    """{module name: why it keeps its width} from the plan, plus GroupNorms whose one-channel groups cannot shrink."""
    import torch.nn as nn

    why = dict(plan.kept)
    for name, m in model.named_modules():
        if isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels:
            why[name] = (f"GroupNorm with {m.num_groups} groups of one channel: its channels, and those of the "
                         f"layers feeding it, cannot be cut")
    return why


def tell(note: str) -> str:
    # the compress summary table shows sizes, not pruning notes: say it where the user looks
    import sys

    print(f"edgekit: note: {note}", file=sys.stderr)
    return note
