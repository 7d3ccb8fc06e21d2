"""The prune stage: a copy of the source model with channels physically removed (and, by
default, distilled from the original), or with sparse weights; the original stays untouched.

Order of work: plan (which layers are kept) -> optional per-layer sensitivity (per-layer
ratios for the same parameter budget) -> optional latency-targeted search of the ratio ->
iterative prune -> distill schedule -> facts for manifest.pruning.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial

from ..config import DistillConfig, PruneConfig
from ..errors import EdgekitError, UsageError
from ..module_copy import clone
from ..progress import task
from ..pruning import channel_buffers, conv1d, fused_heads, graph, importance, latency_search, schedule, sensitivity, sparsity
from ..pruning.metrics import TorchMetric
from .export import with_blocks_folded, without_parametrizations


@dataclass
class PruneResult:
    module: "object"  # torch.nn.Module in eval mode
    kind: str  # "pruned" | "distilled" | "sparse"
    info: dict = field(default_factory=dict)
    told: list = field(default_factory=list)  # notes printed as they arose (stderr), of info["notes"]


def run(source, ctx, prune: PruneConfig, distill: DistillConfig, *, distill_enabled: bool) -> PruneResult:
    import torch

    check_settings(prune, distill)
    # nn.TransformerEncoder's inference fast path turns a padding mask into nested tensors, which
    # Torch-Pruning's graph and MAC counting cannot follow ("NestedTensorImpl doesn't support sizes"), and
    # runs attention as one fused op, whose heads the dependency graph cannot see; same maths either way
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        return _run(source, ctx, prune, distill, distill_enabled=distill_enabled)
    except graph.PruneFailure as e:
        # the README promises errors name the file: the graph only knows the layers
        raise graph.PruneFailure(f"{source.spec}: {e}") from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def refuse_fixed_batch(source, what: str) -> None:
    """Pruning and distillation score and train on batches of their own sizes (64, 256, a short last one):
    a forward() fixed to one batch failed among them with an internal error ("mat1 and mat2 shapes cannot be
    multiplied")."""
    b = source.fixed_batch
    if b is not None:
        raise UsageError(f"{source.spec}: its forward() runs only batches of {b} (--input-shape {b},...), and {what} "
                         "trains and scores it on batches of other sizes; compress it without pruning or a student "
                         "(export and INT8 work at its fixed batch)")


def check_settings(prune: PruneConfig, distill: DistillConfig) -> None:
    """Refuse settings the stage cannot honour, before any work.

    Pruning cuts the source model; --student trains another model in its place. Which of the two a run
    with both should prune (the teacher before it teaches, the student after it learned) is a guess, and
    guessing wrong ships a model the manifest does not describe, so the combination is refused."""
    if distill.student and prune.enabled:
        raise UsageError(f"--prune/--sparsity with --student {distill.student}: pruning cuts the source model and "
                         "--student trains another model in its place; edgekit does not do both in one run: drop "
                         "--student to prune (and distil) the source model, or drop --prune to distil into the "
                         "student (to prune the student, run edgekit prune on it afterwards)")
    # a --student starts untrained and distillation is its only training: running it anyway would ship a
    # distilled model under records saying distillation was off, skipping it would ship random weights
    if distill.student and distill.enabled is False:
        raise UsageError(f"--student {distill.student} with --no-distill (distill.enabled = false): a --student "
                         "model is trained only by distillation; drop --no-distill to distil into it, or drop "
                         "--student to compress the source model")
    if distill.student and distill.epochs == 0 and not str(distill.student).endswith((".pt", ".pth")):
        raise UsageError(f"distill.epochs 0 with --student {distill.student}: a fresh student would ship its random "
                         "initial weights; give distill.epochs 1 or more (or a pruned.pt student)")


def _run(source, ctx, prune: PruneConfig, distill: DistillConfig, *, distill_enabled: bool) -> PruneResult:
    if source.kind != "torch" or source.module is None:
        raise UsageError(f"{source.spec}: pruning needs a PyTorch model (this source is {source.kind})")
    refuse_fixed_batch(source, "--student" if distill.student else "--prune/--sparsity")
    t0 = time.perf_counter()
    # Torch-Pruning cannot remove channels from a parametrized weight (weight_norm, spectral_norm:
    # "KeyError: attribute 'weight' already exists"): the stage works on a copy with them baked in
    teacher = without_parametrizations(source.module.eval())
    baked = teacher is not source.module
    # transformers' Conv1D (GPT-2) has no pruner: the stage works on the Linears they compute
    linears = conv1d.with_linears(teacher)
    swapped, teacher = linears is not teacher, linears
    names = [s.name for s in source.inputs]
    evalset = ctx.eval if ctx.eval is not None else ctx.calib
    if evalset is None:
        raise UsageError(f"{source.spec}: pruning needs evaluation data (--eval or --calib) to measure its cost")
    example = graph.example_inputs(source, ctx.calib or evalset)
    # blocks export folds (stages/reparam.py) are folded first: pruning the training branches left blocks
    # whose own fold then failed (timm's MobileOne reads a channel count the pruner does not update), so the
    # pruned file kept every branch and came out larger than the folded FP32 one
    folded, fold_note = with_blocks_folded(teacher, source, tuple(example), when="before pruning",
                                           then="the folded model is what is pruned and distilled, as deployed")
    fold_note = fold_note if folded is not teacher else None  # a fold that failed: export says why
    teacher = folded
    metric = TorchMetric(evalset, names, source.task, reference_model=teacher, tags=source.entity_tags)
    macs0, params0 = graph.count(teacher, example)
    base = {"params_before": params0, "macs_before": macs0, "metric_name": metric.name,
            "metric_before": metric(teacher), "notes": []}
    if fold_note:
        base["notes"].append(fold_note)
    if swapped:
        base["notes"].append("transformers' Conv1D layers (weights stored [in, out]) are pruned and trained as the "
                             "nn.Linear each computes; the pruned model exports the same arithmetic")
    if baked:
        base["notes"].append("the model's parametrizations (weight_norm, spectral_norm, ...) were baked into plain "
                             "weights for pruning: the pruned model and its training use those weights directly")

    if distill.student:  # check_settings refused it together with pruning
        return _student_only(source, ctx, distill, teacher, example, base, t0)
    if prune.sparsity != "none":
        return _sparse(source, ctx, prune, teacher, example, metric, base, t0)

    model = clone(teacher)  # never the user's module: the pipeline still exports it as FP32
    round_to = graph.round_multiple(prune, ctx)
    plan_kw = {"ignore_names": prune.ignore, "keep_first": prune.keep_first}
    plan = graph.make_plan(model, example, **plan_kw)
    info = {**base, "method": prune.method, "ratio": prune.ratio, "head_ratio": prune.head_ratio,
            "global": prune.global_pruning, "round_to": round_to, "steps_requested": prune.steps,
            "ignored": plan.ignored_names, "sensitivity": [], "notes": base["notes"] + list(plan.notes)}
    ratio, ratio_dict = prune.ratio, None
    feeds = {k: v for k, v in evalset.sample(0).items()}
    export = partial(_export, source=source, data=ctx.calib or evalset)

    if prune.target_latency:
        target = latency_search.LatencyTarget.parse(prune.target_latency)
        ratio = _search_ratio(teacher, source, ctx, prune, plan_kw, round_to, example, export, feeds, target, info)
    if prune.sensitivity:
        ratio_dict = _sensitivity(teacher, model, ctx, prune, plan_kw, round_to, example, metric, ratio, info)
    if ratio <= 0 and prune.head_ratio <= 0:
        raise UsageError("prune: nothing to do (ratio 0); pass --ratio R, --head-ratio R or --target-latency")

    restarted, told = {}, []  # group's layer -> why it is kept whole; notes already on stderr
    buffers = []  # per-channel buffers cut with their channels (channel_buffers.py), once a step failed on one
    plan.restart_for_buffers = True
    while True:
        try:
            res = schedule.run(model, teacher=teacher, ctx=ctx, plan=plan, prune_cfg=prune, distill_cfg=distill,
                               distill_enabled=distill_enabled and distill.resolved(False).epochs > 0, ratio=ratio,
                               ratio_dict=ratio_dict, round_to=round_to, example=example, metric=metric, names=names,
                               export=export, feeds=feeds)
            break
        except graph.NothingToPrune as e:
            # the first conv's width is kept by choice (its channels are few and read the raw input); where
            # nothing else can be cut (every block adds onto the stem's output, as a TCN's do), that choice
            # alone refused the run
            if not (e.first_conv and plan_kw["keep_first"]) or len(told) >= RESTARTS:
                raise
            plan_kw = {**plan_kw, "keep_first": False}
            note = (f"with the first conv's width kept, nothing could be pruned ({e.kept}): its output channels "
                    "are pruned too")
        except graph.PruneFailure as e:
            if e.buffers and not buffers and len(told) < RESTARTS:
                buffers = e.buffers
                note = (f"per-channel buffer(s) {', '.join(buffers)} sized the channels pruning cut, and Torch-Pruning "
                        "does not see buffers: pruned again from the unpruned model with them cut too")
            else:
                # a step keeps such layers whole by undoing its cut, but not once a bare Parameter (a position
                # embedding in the residual stream) was cut with them: the graph holds the old one. Starting
                # again from the unpruned model with them kept whole is that same outcome
                new = [n for n in e.keep if n not in plan_kw["ignore_names"]]
                if not new or len(told) >= RESTARTS:  # one note per fresh start
                    raise
                plan_kw = {**plan_kw, "ignore_names": (*plan_kw["ignore_names"], *new)}
                restarted.update(e.kept)
                note = (f"kept whole: {', '.join(new)}: {e.keep_why}; pruned again from the unpruned model with "
                        "them kept whole (a parameter outside any layer was cut with them, which undoing one step "
                        "cannot restore)")
        model = clone(teacher)
        channel_buffers.as_parameters(model, buffers)
        plan = graph.make_plan(model, example, **plan_kw)
        plan.restart_for_buffers = not buffers
        for n in plan_kw["ignore_names"][len(prune.ignore):]:  # kept for the reason below, not by --ignore
            plan.kept.pop(n, None)
        plan.kept.update(restarted)
        told.append(schedule.tell(note))
    info["notes"] += told
    res["told"] = told + res["told"]
    model = res["module"].eval()
    channel_buffers.as_buffers(model)
    macs1, params1 = graph.count(model, example)
    info.update({"ignored": plan.ignored_names, "ratio": ratio, "params_after": params1, "macs_after": macs1, "metric_after": res["steps"][-1]["metric"],
                 "channels": graph.channel_table(graph.channel_counts(teacher), graph.channel_counts(model)),
                 "steps": res["steps"], "seconds": round(time.perf_counter() - t0, 2)})
    info["notes"] += res["notes"] + _shortfall_notes(info, ratio_dict)
    if res["distill"]:
        info["distill"] = res["distill"][-1] if len(res["distill"]) == 1 else {
            "per_step": res["distill"], "best_epoch": res["distill"][-1]["best_epoch"],
            "best_metric": res["distill"][-1]["best_metric"]}
    kind = "distilled" if res["distill"] else "pruned"
    _check_runs(model, example, where=f"{source.spec} ({kind})")
    return PruneResult(model, kind, info, told=res["told"])


def _shortfall_notes(info, ratio_dict) -> list:
    """Say so when the pruned layers kept more than the uniform ratio asked: channel counts stay
    multiples of round_to (and at least one multiple), so --prune 0.95 on 32-channel layers removes 75%,
    and the manifest read 'ratio 0.95' without a word."""
    ratio = info.get("ratio") or 0.0
    channels = info.get("channels") or {}
    done = [r for _, after, r in channels.values() if after and r > 0]
    if ratio_dict or ratio <= 0 or not channels:
        return []
    if not done:
        return [f"asked to remove {ratio:.0%} of channels; no layer lost any (each layer's count is rounded to "
                f"the target's channel_multiple, {info.get('round_to')}, and keeps at least some channels)"]
    if min(done) >= ratio - 0.05:
        return []
    # the rounding is Torch-Pruning's (to round_to where a layer allows it, with a floor per layer):
    # say what came out, not a rule it does not always follow
    span = f"{min(done):.0%}" if f"{min(done):.0%}" == f"{max(done):.0%}" else f"{min(done):.0%}-{max(done):.0%}"
    return [f"asked to remove {ratio:.0%} of channels; the pruned layers lost {span} "
            f"(channel counts are rounded toward multiples of the target's channel_multiple, "
            f"{info.get('round_to')}, and each layer keeps some channels)"]


# ---------------------------------------------------------------- parts

def _export(module, dest, *, source, data):
    import torch

    from .export import export_module

    # torch's fused encoder-layer fast path (eval + no_grad) has no ONNX export; the plain path does
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        export_module(module, source, dest, kind="pruned", data=data, stage="prune")
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def _search_ratio(teacher, source, ctx, prune, plan_kw, round_to, example, export, feeds, target, info) -> float:
    def candidate(r):
        m = clone(teacher)
        plan = graph.make_plan(m, example, **plan_kw)
        imp, _ = importance.make("l2" if prune.method == "taylor" else prune.method, m)
        graph.step(graph.make_pruner(m, example, plan, imp, ratio=r, global_pruning=prune.global_pruning,
                                     round_to=round_to, head_ratio=prune.head_ratio), plan)
        if plan.fused and prune.head_ratio > 0:  # as the pruning run will cut them
            fused_heads.prune(m, plan.fused, prune.head_ratio)
        return m.eval()

    with task(f"searching the pruning ratio for latency {target}", total=6) as bar:
        ratio, recs = latency_search.search(candidate, export, feeds, target, base_module=teacher,
                                            primary=ctx.primary_target, progress=lambda n, s: bar.update(n, s))
    info["latency_search"] = {"target": str(target), "candidates": recs, "ratio": ratio,
                              "measured_with": "edgekit.profile" if _has_profiler() else "onnxruntime, interleaved"}
    if ratio is None:
        # say what holds the latency up: the layers even the largest ratio leaves whole (tied to a kept layer)
        from ..pruning.schedule import unpruned_modules

        whole = unpruned_modules(teacher, candidate(latency_search.HI))[:4]
        held = ("; layers left whole at that ratio: " + ", ".join(f"{n} ({k}, {c:,} params)" for n, k, c in whole)
                if whole else "")
        raise EdgekitError(f"--target-latency {target}: not reached even at ratio {latency_search.HI} "
                           f"(measured {recs[-1]['latency_x']:.2f}x of the unpruned model){held}")
    if prune.method == "taylor":
        info["notes"].append("latency search ranked channels by l2 magnitude (taylor needs gradients per candidate)")
    return ratio


def _has_profiler() -> bool:
    try:
        from ..profile import profile_models  # noqa: F401
    except ImportError:
        return False
    return True


RESTARTS = 3  # fresh starts with more layers kept whole, after the first attempt
RANKING_MAX = 1000  # samples the per-layer sensitivity is measured on (3 ratios x every layer)


def _ranking_metric(ctx, teacher, names, task, metric):
    """(metric, data source, note) that per-layer sensitivity ranks layers by: not --eval, which reports the
    pruned model's cost, when other data allows, or that figure would come from the set that chose the
    layers. The fifth of --train that distillation holds out for early stopping, else --calib (fidelity
    to the unpruned model where it has no labels); --eval only when it is the only data."""
    from .distill import MIN_SPLIT, validation_split

    if ctx.eval is None or not len(ctx.eval):
        return metric, metric.data.source, None  # the calibration set is all there is, and reports too
    data = None
    if ctx.train is not None and len(ctx.train) >= MIN_SPLIT and ctx.train is not ctx.eval:
        data = validation_split(ctx.train, ctx.eval, ctx.seed)[0]
    elif ctx.calib is not None and len(ctx.calib) and ctx.calib is not ctx.eval:
        data = ctx.calib
    if data is None:
        return metric, metric.data.source, ("per-layer sensitivity was measured on the eval data, which also "
                                            "reports the pruned model's metric (pass --calib or --train data "
                                            "apart from --eval to keep the two apart)")
    if len(data) > RANKING_MAX:
        data = data.take(RANKING_MAX)
    return TorchMetric(data, names, task, reference_model=teacher, tags=ctx.source.entity_tags), data.source, None


def _sensitivity(teacher, model, ctx, prune, plan_kw, round_to, example, metric, ratio, info) -> dict:
    make_imp = lambda m: importance.make("l2" if prune.method == "taylor" else prune.method, m)  # noqa: E731
    metric, source, note = _ranking_metric(ctx, teacher, metric.names, metric.task, metric)
    info["sensitivity_data"] = {"source": source, "n": len(metric.data), "metric": metric.name}
    if note:
        info["notes"].append(note)
    n = len(sensitivity.prunable_groups(teacher, example, graph.make_plan(clone(teacher), example, **plan_kw)))
    with task("per-layer sensitivity", total=n * len(sensitivity.RATIOS)) as bar:
        rows = sensitivity.analyse(teacher, example, metric, make_imp, plan_kw=plan_kw, round_to=round_to,
                                   progress=lambda k, s: bar.update(k, s))
    # the budget: parameters a uniform cut at `ratio` removes, spent where the drop is smallest
    uni = clone(teacher)
    plan = graph.make_plan(uni, example, **plan_kw)
    graph.step(graph.make_pruner(uni, example, plan, make_imp(uni)[0], ratio=ratio, round_to=round_to), plan)
    budget = info["params_before"] - graph.count(uni, example)[1]
    alloc = sensitivity.allocate(rows, budget) if ratio > 0 else {}
    files = sensitivity.write(rows, ctx.outdir, metric_name=metric.name, allocation=alloc) if ctx.outdir else {}
    info["sensitivity"] = [{k: r[k] for k in ("layer", "ratio", "metric", "drop", "params_removed")} for r in rows]
    info["allocation"] = alloc
    info["sensitivity_files"] = {k: str(v).rsplit("/", 1)[-1] for k, v in files.items()}
    mods = dict(model.named_modules())
    return {mods[k]: alloc.get(k, 0.0) for k in dict.fromkeys(r["layer"] for r in rows)} if alloc else None


def _sparse(source, ctx, prune, teacher, example, metric, base, t0) -> PruneResult:
    if prune.head_ratio:
        raise UsageError(f"--head-ratio {prune.head_ratio:g} does not apply to --sparsity, which zeroes weights in "
                         "place and removes no attention head")
    model = clone(teacher)
    plan = graph.make_plan(model, example, ignore_names=prune.ignore, keep_first=prune.keep_first)
    bytes_before = sparsity.compressed_bytes(model)
    if prune.sparsity == "2:4":
        if prune.ratio and prune.ratio != 0.5:
            raise UsageError(f"--ratio {prune.ratio:g} does not apply to 2:4 sparsity, which zeroes 2 of every 4 "
                             "weights (0.5); drop --ratio, or use --sparsity unstructured for another ratio")
        facts = sparsity.two_four(model, skip=plan.ignored)
        ratio = 0.5
    else:
        ratio = prune.ratio or 0.5
        facts = sparsity.magnitude(model, ratio, skip=plan.ignored)
    model.eval()
    info = {**base, "method": f"sparse-{prune.sparsity}", "ratio": ratio, "params_after": base["params_before"],
            "macs_after": base["macs_before"], "metric_after": metric(model), "channels": {},
            "sparsity": {k: v for k, v in facts.items() if k != "layers"}, "sparse_layers": facts.get("layers", []),
            "compressed_bytes_before": bytes_before, "compressed_bytes_after": sparsity.compressed_bytes(model),
            "sensitivity": [], "steps": [], "ignored": plan.ignored_names,
            "notes": base["notes"] + [sparsity.NOTE], "seconds": round(time.perf_counter() - t0, 2)}
    return PruneResult(model, "sparse", info)


def _student_only(source, ctx, distill, teacher, example, base, t0) -> PruneResult:
    from . import distill as distill_stage

    student = distill_stage.load_student(distill.student, source, example, trust_pickle=ctx.trust_pickle)
    macs_s, params_s = graph.count(student, example)
    student, hist = distill_stage.run(teacher, student, ctx, distill, fresh=distill_stage.fresh_student(distill.student))
    info = {**base, "method": "student", "ratio": 0.0, "params_after": params_s, "macs_after": macs_s,
            "metric_after": hist["best_metric"], "channels": {}, "sensitivity": [], "steps": [], "distill": hist,
            "student": distill.student, "seconds": round(time.perf_counter() - t0, 2)}
    return PruneResult(student, "distilled", info)


def _check_runs(model, example, *, where):
    import torch

    with torch.no_grad():
        out = graph.first_tensor(model(*example))
    if not torch.isfinite(out).all():
        raise EdgekitError(f"{where}: the pruned model gives non-finite outputs")
