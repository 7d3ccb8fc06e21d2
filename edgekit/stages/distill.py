"""The distill stage: a teacher model teaches a (pruned or smaller) student.

Loss: soft-target KL at temperature T (scaled by T^2 so its gradients keep their size as T
changes) plus hard-label cross-entropy when labels exist; embedding models match what is scored,
the cosine to the teacher's embeddings (+ MSE relative to their energy); other models MSE.
Feature matching through forward hooks: named layers (with a 1x1 conv / linear adapter where
the widths differ), or automatically every block's output when student and teacher share a block
structure (a pruned transformer keeps its hidden size: no adapter), as TinyBERT/MiniLM do.
Token models train at the real padded length of each batch (length-grouped batches, padding
columns trimmed, checked once against the untrimmed output). AdamW with a cosine or one-cycle
schedule, evaluation every epoch, early stopping on the eval metric (a tie broken by how close the
student's held-out scores are to the teacher's) with the best weights restored, seeded.
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import numpy as np

from ..config import DistillConfig
from .. import multilabel
from ..errors import InputError
from ..evaluate import LABELLED_TASKS
from ..source import DENSE_AXIS
from ..module_copy import clone
from ..pruning.graph import check_autograd, first_tensor, output_tensors
from ..pruning.metrics import TorchMetric, labels_cross_entropy


AUTO_FEATURE_WEIGHT = 1.0  # relative MSE per block, next to a loss of order 1
OFF = ("none", "off")


MIN_SPLIT = 100  # training sets smaller than this are not split: too few left to train on


def validation_split(train, evalset, seed: int) -> tuple:
    """(validation set, training set): a seeded fifth of the training data (20 to 1000 samples) held out
    for early stopping and the best epoch, so --eval, which reports the result, did not also pick it.
    Below MIN_SPLIT samples, (evalset, train) unchanged, and the manifest's eval source says so."""
    n = len(train)
    if n < MIN_SPLIT:
        return evalset, train
    k = max(20, min(n // 5, 1000))
    perm = np.random.default_rng(seed).permutation(n)
    val, rest = np.sort(perm[:k]), np.sort(perm[k:])

    # views, not copies: a memory-mapped training set larger than RAM must stay on disk
    return (train.subset(val, f"{train.source} [{k} held out for early stopping]"),
            train.subset(rest, f"{train.source} [{n - k} trained on]"))


def run(teacher, student, ctx, cfg: DistillConfig, *, fresh: bool = False) -> tuple:
    """Train `student` (in place) to mimic `teacher`; returns (student in eval mode, history dict).
    fresh: the student starts from random weights (DistillConfig.resolved)."""
    import torch

    from ..pruning.batching import Trimmer, rows, train_batches
    from ..pruning.metrics import predict

    t0 = time.perf_counter()
    cfg = cfg.resolved(fresh)
    names = [s.name for s in ctx.source.inputs]
    task = ctx.source.task
    train = ctx.train if ctx.train is not None and len(ctx.train) else ctx.calib
    if train is None or not len(train):
        raise InputError("distillation needs training data: pass --train (labelled or not) or --calib")
    evalset = ctx.eval if ctx.eval is not None and len(ctx.eval) else train
    evalset, train = validation_split(train, evalset, ctx.seed)
    teacher.eval()
    torch.manual_seed(ctx.seed)
    metric = TorchMetric(evalset, names, task, reference_model=teacher, tags=ctx.source.entity_tags)
    use_labels = task in LABELLED_TASKS and train.labels is not None and cfg.alpha < 1.0
    trimmer = Trimmer(train, names)
    # per-position labels would have to be trimmed with the padding: per-position tasks train untrimmed
    trimmed = trimmer.verify(teacher, train) if task not in DENSE_AXIS else False
    layers, f_weight, f_mode = feature_setup(cfg, teacher, student)
    features = _Features(teacher, student, layers) if layers else None
    if features is not None:
        features.build(_inputs(trimmer.trim(train.take(2).inputs), names))
    params = list(student.parameters()) + (features.parameters() if features else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = (len(train) + cfg.batch_size - 1) // cfg.batch_size
    sched = _scheduler(opt, cfg, max(1, cfg.epochs * per_epoch))
    # The teacher is frozen and sees the same inputs every epoch: compute its outputs once.
    t_out = None if features else torch.from_numpy(predict(teacher, train, names, trimmer=trimmer if trimmed else None))
    scale = None
    if task == "regression" and not trimmed:
        scale = target_scale(t_out if t_out is not None else torch.from_numpy(predict(teacher, train, names)))
    example = _inputs(train.take(2).inputs, names)
    with torch.no_grad():
        example_outs = output_tensors(teacher(*example))
    # a multi-label output already through its sigmoid is matched as probabilities, without temperature
    probabilities = task == multilabel.TASK and multilabel.is_probability(
        t_out.numpy() if t_out is not None else predict(teacher, train, names))
    heads = _other_heads(example_outs, len(example[0]) if example else 0)
    # Likewise the other heads, unless padding is trimmed per batch (their lengths then follow the batch)
    # or they would not fit in memory (a dense map per sample): those run the teacher again per batch.
    t_heads = None
    if heads and t_out is not None and not trimmed and _heads_bytes(example_outs, heads, len(train)) <= HEADS_CACHE_BYTES:
        t_heads = _heads_outputs(teacher, train, names, heads)
    g = torch.Generator().manual_seed(ctx.seed)

    heads_ref = _heads_outputs(teacher, evalset, names, heads) if heads else None

    def evaluate(ep, loss):
        out = metric.outputs(student)
        rec = {"epoch": ep, "loss": loss, "metric": metric(student, out), "agreement": metric.agreement(out)}
        progress = metric.progress(out)
        if progress is not None:
            rec["r2_unclipped"] = progress
        kl = metric.divergence(out)
        if kl is not None:
            rec["kl_to_teacher"] = kl
        if heads:
            from ..evaluate import output_fidelity

            got = _heads_outputs(student, evalset, names, heads)
            rec["other_outputs_fidelity"] = [output_fidelity(g, r) for g, r in zip(got, heads_ref)]
        return rec

    tolerance = getattr(ctx, "tolerance", None)

    history = [evaluate(0, None)]
    best, best_state, bad = history[0], copy.deepcopy(student.state_dict()), 0
    from ..progress import task as progress_task

    # Without labels the student only imitates a fixed function: dropout noise makes that target
    # unreachable and slows the fit (MiniLM, 1000 sentences x 2 epochs: cosine 0.895 with, 0.904
    # without); early stopping on held-out data guards against over-fitting instead.
    dropout = _DropoutOff(student) if not use_labels else None
    with progress_task(f"distilling ({len(train)} samples, up to {cfg.epochs} epochs)", total=cfg.epochs) as bar:
        for ep in range(1, cfg.epochs + 1):
            student.train()
            losses = []
            for idx_np in train_batches(len(train), cfg.batch_size, g, trimmer.lengths if trimmed else None):
                feeds = trimmer.trim(rows(train, idx_np)) if trimmed else rows(train, idx_np)
                xb = _inputs(feeds, names)
                t_all = None
                if features is not None:
                    with torch.no_grad():
                        t_all = output_tensors(features.teacher_forward(xb))
                    tb = t_all[0]
                else:
                    tb = t_out[idx_np]
                s_all = output_tensors(student(*xb))
                sb = s_all[0]
                y = torch.from_numpy(np.asarray(train.labels[idx_np])).long() if use_labels else None
                loss = _loss(sb, tb, y, task, cfg, scale, probabilities)
                if heads:
                    if t_all is None and t_heads is not None:
                        t_all = {j: torch.from_numpy(h[idx_np]) for j, h in zip(heads, t_heads)}
                    elif t_all is None:
                        with torch.no_grad():
                            t_all = output_tensors(teacher(*xb))
                    loss = loss + _heads_loss(s_all, t_all, heads)
                if features is not None:
                    mask = xb[names.index(trimmer.mask_name)] if trimmed else None
                    loss = loss + f_weight * features.loss(mask)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses.append(loss.item())
            diverged = _divergence(losses, student, ep)
            if diverged:
                # NaN weights answer one class and could still beat a fresh student's eval score
                history.append({"epoch": ep, "loss": None, "diverged": diverged})
                break
            rec = evaluate(ep, float(np.mean(losses)))
            history.append(rec)
            bar.update(ep, f"loss {rec['loss']:.4f} {metric.name} {rec['metric']:.4f}")
            if better_epoch(rec, best, tolerance):
                best, best_state, bad = rec, copy.deepcopy(student.state_dict()), 0
            else:
                bad += 1
                if cfg.patience and bad >= cfg.patience:
                    break
    if features is not None:
        features.remove()
    if dropout is not None:
        dropout.restore()
    student.load_state_dict(best_state)
    student.eval()
    notes = _untrained_notes(best, history, metric.name, cfg.epochs, evalset.source)
    for note in notes:  # the student may ship as it was: said where it happens, for every command
        print(f"edgekit: note: {note}", file=sys.stderr)
    info = {"notes": notes, "history": history, "metric": metric.name, "best_epoch": best["epoch"],
            "best_metric": best["metric"],
            "epochs_run": history[-1]["epoch"], "teacher_metric": _teacher_metric(metric, teacher),
            "train": {"n": len(train), "labelled": bool(use_labels), "source": train.source},
            # early stopping and the best epoch are chosen on this set, so it is not --eval when the
            # training data allows a split: --eval then reports the result without having picked it
            "eval": {"n": len(evalset), "source": evalset.source},
            "loss": _loss_name(task, use_labels) + (f" + {f_weight:g} x feature matching ({f_mode}, "
                                                    f"{len(layers)} layers)" if features else "")
            + (f" + relative MSE to the teacher on {len(heads)} other output(s)" if heads else ""),
            "feature_layers": [f"{s}={t}" if s != t else s for s, t in features.pairs] if features else [],
            "padding_trimmed": bool(trimmed), "dropout_off": bool(dropout and dropout.saved),
            "settings": {"epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size, "temperature": cfg.temperature,
                         "alpha": cfg.alpha, "schedule": cfg.schedule, "weight_decay": cfg.weight_decay,
                         "patience": cfg.patience, "seed": ctx.seed, "feature_weight": f_weight if features else 0.0,
                         "threads": torch.get_num_threads()},
            "seconds": round(time.perf_counter() - t0, 2)}
    return student, info


def auto_feature_layers(teacher, student) -> list:
    """Block outputs to match when student and teacher share a block structure (a pruned copy, a
    same-depth student): the longest nn.ModuleList present under the same name in both, with the
    same length and block types (BERT's encoder.layer, nn.TransformerEncoder.layers, ...)."""
    import torch.nn as nn

    smods = dict(student.named_modules())
    best = []
    for name, m in teacher.named_modules():
        s = smods.get(name)
        if not (isinstance(m, nn.ModuleList) and isinstance(s, nn.ModuleList) and len(m) == len(s) >= 2):
            continue
        if all(type(a) is type(b) for a, b in zip(m, s)) and len(m) > len(best):
            best = [f"{name}.{i}" if name else str(i) for i in range(len(m))]
    return best


def feature_setup(cfg: DistillConfig, teacher, student) -> tuple:
    """(layers, weight, mode): explicit cfg.feature_layers; else every block when the structures
    match (intermediate-layer distillation recovers a pruned transformer far faster than its
    output alone); feature_layers=("none",) switches it off."""
    layers = tuple(cfg.feature_layers)
    if layers and layers[0].lower() in OFF:
        return [], 0.0, "off"
    weight = cfg.feature_weight if cfg.feature_weight and cfg.feature_weight > 0 else AUTO_FEATURE_WEIGHT
    if layers:
        return list(layers), weight, "given"
    auto = auto_feature_layers(teacher, student)
    return auto, weight, "auto: matching blocks"


# ---------------------------------------------------------------- pieces

def _inputs(feeds: dict, names) -> list:
    import torch

    return [torch.from_numpy(np.array(feeds[n])) for n in names]


def _teacher_metric(metric: TorchMetric, teacher) -> float | None:
    return metric(teacher, metric.reference) if metric.labelled else None


HEADS_CACHE_BYTES = 512 << 20


def better_epoch(rec, than, tolerance) -> bool:
    """Whether epoch record `rec` beats `than`. The first output's metric alone kept an epoch before a
    second head was fitted at all; the weakest output alone stopped counting a head's gains once it passed
    the accuracy (0.9917), and the head then missed the tolerance by 0.01 points. So: every other head within
    tolerance first, then the metric (the weakest output while some head is not), then the heads' mean, then
    the unclipped R^2 or the KL divergence from the teacher, continuous where the metric moves in steps."""
    def key(r):
        heads = list(r.get("other_outputs_fidelity") or ())
        ok = all(tolerance.allows(1.0, v) for v in heads) if tolerance is not None else True
        return ok, (r["metric"] if ok else min([r["metric"], *heads])), (float(np.mean(heads)) if heads else 0.0)
    a, b = key(rec), key(than)
    if a[0] != b[0]:
        return a[0]
    if abs(a[1] - b[1]) > 1e-6:
        return a[1] > b[1]
    # an R^2 metric clipped at 0 is flat while the student is still worse than the mean: the unclipped
    # R^2 sees it improve (a fresh student stopped after `patience` epochs and shipped untrained)
    if abs(a[2] - b[2]) > 1e-6:
        return a[2] > b[2]
    p, q = rec.get("r2_unclipped"), than.get("r2_unclipped")
    if p is not None and q is not None and abs(p - q) > 1e-6:
        return p > q
    # class scores: the same accuracy or agreement on the held-out set, closer to the teacher's scores.
    # The 0.1% margin keeps float noise from counting as progress.
    k, m = rec.get("kl_to_teacher"), than.get("kl_to_teacher")
    return k is not None and m is not None and k < m * (1 - 1e-3)


def _divergence(losses, student, ep: int) -> str | None:
    """Why epoch `ep` diverged (a non-finite loss or weight), else None."""
    import torch

    if not np.all(np.isfinite(losses)):
        return f"epoch {ep}'s training loss is not finite"
    bad = [n for n, p in student.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        return f"after epoch {ep} the student's {bad[0]} holds non-finite values"
    return None


def _untrained_notes(best, history, metric_name, epochs, where) -> list:
    """Say so when the model handed back is the student before any training, or scores at the floor of
    a clipped metric (r2 0.0000 reads like a result, and is only 'no better than the mean')."""
    notes = []
    ran = history[-1]["epoch"]
    if history[-1].get("diverged"):
        kept = "the student before training" if best["epoch"] == 0 else f"epoch {best['epoch']}"
        notes.append(f"distillation diverged: {history[-1]['diverged']}; training stopped there and {kept} is "
                     "kept (its weights are finite); try a lower --lr")
    if not ran:
        notes.append(f"distillation: 0 epochs ran (--epochs {epochs}), so the student is kept as it was loaded, "
                     "untrained by this run")
    if ran and best["epoch"] == 0 and best["metric"] < 1.0 - 1e-6:  # at 1.0 nothing could beat it
        notes.append(f"distillation: no trained epoch beat the student before training ({metric_name} "
                     f"{best['metric']:.4f} on {where}), so it is kept as it was; {ran} of {epochs} epochs ran")
    if ran and ran == epochs and best["epoch"] == ran and not history[-1].get("diverged") and best["metric"] < 1.0 - 1e-6:
        # the epoch limit ended training, not a plateau: a pruned CNN (twoheads, 240 samples) was best at its
        # 30th of 30 epochs at -2.75% accuracy, and at its 80th of 80 at -1.6%
        notes.append(f"distillation: the last epoch ({ran} of {epochs}) was still the best on {where} ({metric_name} "
                     f"{best['metric']:.4f}): the epoch limit ended training, not a plateau; more epochs (--epochs, "
                     "or distill.epochs in a compress recipe) may recover more")
    if metric_name in ("r2", "fidelity") and best.get("r2_unclipped") is not None and best["metric"] <= 0.0:
        notes.append(f"distillation: the kept epoch's {metric_name} on {where} is {best['metric']:.4f}, the floor "
                     "of the clipped R^2: the student is no better than predicting the mean (unclipped mean R^2 "
                     f"{best['r2_unclipped']:.4g}); try more --epochs or a higher --lr")
    return notes


def _other_heads(outs, n: int) -> list:
    """Indices of the teacher's outputs (`outs`, for an example of n samples) after the first that training
    should match: floating point ones (ids and masks have no gradient). The task loss sees only the first
    output, and a second head (a regression beside the classes) came out of pruning + distillation at R^2
    0.47 to FP32, unnoticed."""
    # per-sample outputs only: a 0-d statistic of the batch, or a constant buffer, has no rows to match
    return [j for j, t in enumerate(outs) if j > 0 and t.is_floating_point() and t.ndim and t.shape[0] == n]


def _heads_bytes(outs, heads, n: int) -> int:
    """Bytes the `heads` outputs take over n samples as float32, from the example's outputs `outs`."""
    return 4 * n * sum(outs[j][0].numel() for j in heads if j < len(outs))


def _heads_outputs(model, data, names, heads, batch: int = 256) -> list:
    """The `heads` outputs of `model` over `data`, as numpy arrays (one per head)."""
    import torch

    parts = [[] for _ in heads]
    with torch.no_grad():
        for i in range(0, len(data), batch):
            outs = output_tensors(model(*_inputs({k: np.asarray(v[i:i + batch]) for k, v in data.inputs.items()},
                                                 names)))
            for k, j in enumerate(heads):
                parts[k].append(outs[j].float().numpy() if j < len(outs) else np.zeros(0, np.float32))
    return [np.concatenate(p) for p in parts]


def _heads_loss(s_all, t_all, heads):
    """Sum over the other heads of their MSE relative to the teacher's energy: scale-free, so a head in
    the thousands does not drown the task loss (nor one near zero vanish)."""
    import torch.nn.functional as F

    total = 0.0
    for j in heads:
        if j >= len(s_all) or j not in (t_all if isinstance(t_all, dict) else range(len(t_all))):
            continue
        s, t = s_all[j].float(), t_all[j].float()
        if s.shape != t.shape:
            continue
        total = total + F.mse_loss(s, t) / t.pow(2).mean().clamp(min=1e-12)
    return total


def _loss_name(task, use_labels) -> str:
    if task == multilabel.TASK:
        return "binary cross-entropy per class to the teacher's sigmoid(T) * T^2" + (
            " + binary cross-entropy with labels" if use_labels else " (no labels: teacher only)")
    if task == "classification":
        return "KL(T) * T^2" + (" + cross-entropy with labels" if use_labels else " (no labels: teacher only)")
    if task in DENSE_AXIS:
        return "KL(T) * T^2 per position" + (" + cross-entropy with labels per position" if use_labels
                                             else " (no labels: teacher only)")
    if task == "regression":
        return "MSE to the teacher's outputs, per target relative to its variance"
    return "1 - cosine + relative MSE to the teacher's embeddings" if task == "embedding" else \
        "MSE to the teacher's outputs"


def _loss(s, t, y, task: str, cfg: DistillConfig, scale=None, probabilities: bool = False):
    import torch.nn.functional as F

    if task == multilabel.TASK:
        return multilabel.distill_loss(s, t, y, cfg.temperature, cfg.alpha, probabilities)

    if task == "classification" or (task in DENSE_AXIS and s.ndim >= 3):
        if task in DENSE_AXIS:  # every position is one classification, weighted alike
            axis = DENSE_AXIS[task]
            # per position, before flattening: labels at a larger size than the map are upsampled to
            ce = labels_cross_entropy(s.movedim(axis, 1), y)
            c = s.shape[axis]
            s, t = s.movedim(axis, -1).reshape(-1, c), t.movedim(axis, -1).reshape(-1, c)
        else:
            s, t = s.reshape(len(s), -1), t.reshape(len(t), -1)  # an all-conv head's [N, C, 1, 1] scores
            ce = labels_cross_entropy(s, y)
        T = cfg.temperature
        kd = F.kl_div(F.log_softmax(s / T, dim=1), F.softmax(t / T, dim=1), reduction="batchmean") * T * T
        return kd if ce is None else cfg.alpha * kd + (1.0 - cfg.alpha) * ce
    s2, t2 = s.reshape(len(s), -1).float(), t.reshape(len(t), -1).float()
    mse = F.mse_loss(s2, t2)
    if task == "embedding":
        # what is scored is the cosine; MSE relative to the teacher's energy keeps the norm too
        # and has the same scale whether or not the embedding is L2-normalised
        return (1.0 - F.cosine_similarity(s2, t2, dim=1)).mean() + mse / t2.pow(2).mean().clamp(min=1e-12)
    if task == "regression":
        # scored as the mean of each target's R^2: each target's error relative to its own spread, so a
        # small-scale target is not drowned by a large one
        var = scale if scale is not None and scale.numel() == t2.shape[1] else target_scale(t2)
        return ((s2 - t2).pow(2).mean(0) / var).mean()
    return mse


def target_scale(t):
    """Each target's variance over the samples of t ([N, C] or [N, ...]), floored so a constant target
    stays finite: the regression loss's per-target weights (over all training outputs, not per batch,
    where a last batch of one sample has no spread)."""
    t2 = t.reshape(len(t), -1).float()
    return t2.var(0, unbiased=False).clamp(min=1e-6 * float(t2.pow(2).mean()) + 1e-12)


class _DropoutOff:
    """Sets every dropout probability to 0 (HF attention reads .p itself) and restores it later."""

    def __init__(self, model):
        import torch.nn as nn

        self.saved = [(m, m.p) for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]
        for m, _ in self.saved:
            m.p = 0.0

    def restore(self):
        for m, p in self.saved:
            m.p = p


def _scheduler(opt, cfg: DistillConfig, total_steps: int):
    import torch

    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.2)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=cfg.lr * 0.01)


def _axis_linear(axis: int, n_in: int, n_out: int):
    """A bias-free Linear from n_in to n_out along one axis of its input."""
    import torch.nn as nn

    class AxisLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x.movedim(axis, -1)).movedim(-1, axis)

    return AxisLinear(n_in, n_out, bias=False)


class _Features:
    """Forward hooks on matching layers ('name' or 'student_name=teacher_name') + learned adapters."""

    def __init__(self, teacher, student, layers):
        self.teacher, self.student = teacher, student
        self.pairs = [tuple(x.split("=", 1)) if "=" in x else (x, x) for x in layers]
        smods, tmods = dict(student.named_modules()), dict(teacher.named_modules())
        for s, t in self.pairs:
            if s not in smods:
                raise InputError(f"distill.feature_layers: student has no module {s!r}")
            if t not in tmods:
                raise InputError(f"distill.feature_layers: teacher has no module {t!r}")
        self.s_feat, self.t_feat, self.adapters, self.hooks = {}, {}, [], []
        for i, (s, t) in enumerate(self.pairs):
            self.hooks.append(smods[s].register_forward_hook(self._store(self.s_feat, i)))
            self.hooks.append(tmods[t].register_forward_hook(self._store(self.t_feat, i)))

    @staticmethod
    def _store(where, i):
        def hook(mod, inp, out):
            where[i] = first_tensor(out)
        return hook

    def build(self, example):
        import torch
        import torch.nn as nn

        with torch.no_grad():
            self.teacher(*example)
            self.student(*example)
        for i in range(len(self.pairs)):
            s, t = self.s_feat[i], self.t_feat[i]
            if s.shape[1:] == t.shape[1:]:
                self.adapters.append(nn.Identity())  # pruned copies keep the residual width: no adapter
            elif s.dim() == 4:
                self.adapters.append(nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False))
            else:
                # the one axis whose width differs: channels first for a Conv1d's [N, C, L] (a TCN's blocks),
                # last for a transformer's [N, L, d]
                axis = next((a for a in range(s.dim() - 1, 0, -1) if s.shape[a] != t.shape[a]), s.dim() - 1)
                self.adapters.append(_axis_linear(axis, s.shape[axis], t.shape[axis]))

    def parameters(self):
        return [p for a in self.adapters for p in a.parameters()]

    def teacher_forward(self, xb):
        return self.teacher(*xb)

    def loss(self, mask=None):
        """Mean over layers of the MSE relative to the teacher feature's energy (scale-free, so
        one weight suits every layer and model); padding positions left out when a mask is given."""
        import torch.nn.functional as F

        total = 0.0
        for i, ad in enumerate(self.adapters):
            s, t = ad(self.s_feat[i]).float(), self.t_feat[i].detach().float()
            if s.dim() == 4 and s.shape[-2:] != t.shape[-2:]:
                s = F.adaptive_avg_pool2d(s, t.shape[-2:])
            if mask is not None and t.dim() == 3 and tuple(t.shape[:2]) == tuple(mask.shape):
                w = mask.to(t.dtype).unsqueeze(-1)
                total = total + ((s - t).pow(2) * w).sum() / (t.pow(2) * w).sum().clamp(min=1e-12)
            else:
                total = total + (s - t).pow(2).sum() / t.pow(2).sum().clamp(min=1e-12)
        return total / max(1, len(self.adapters))

    def remove(self):
        for h in self.hooks:
            h.remove()


def fresh_student(spec) -> bool:
    """Whether a --student starts from random weights: a file.py:factory (a pruned .pt or a HuggingFace folder
    brings trained weights)."""
    from .. import hf_folder

    return bool(spec) and not str(spec).endswith((".pt", ".pth")) and not hf_folder.is_model_folder(str(spec))


def load_student(spec: str, source, example=None, *, trust_pickle: bool = False):
    """A student from `file.py:factory` (fresh weights), from a HuggingFace model folder (its own weights: a
    smaller pretrained model, as TinyBERT or DistilBERT start), or from a pruned-model file written by
    `edgekit prune` or `edgekit distill`, rebuilt on the architecture that file records."""
    import torch

    from .. import hf_folder
    from ..pruning import serialize

    if spec.endswith((".pt", ".pth")):
        obj = serialize.read(spec)
        base_spec = student_base_spec(spec, source, obj)
        if base_spec == source.spec:
            base = clone(source.module)
        else:
            _check_base_trusted(spec, base_spec, source, trust_pickle)
            base = _call_factory(base_spec, f"--student {spec}")
        student = serialize.apply(base, obj, where=spec)
    elif hf_folder.is_model_folder(spec):
        student = hf_folder.build(spec, where=f"--student {spec}")[0]
    else:
        path, _, factory = spec.rpartition(":")
        if not path.endswith(".py"):
            raise InputError(f"--student {spec!r}: expected file.py:factory, a HuggingFace model folder or a pruned .pt "
                             "file from `edgekit prune`")
        student = _call_factory(spec, f"--student {spec}")
    from ..loader import bind_inputs, cache_off, returns_cache

    # the teacher's data inputs reach the student's forward() parameters of the same names
    student = bind_inputs(student.eval(), [s.name for s in source.inputs])
    if example is not None:
        with torch.no_grad():
            try:
                raw = student(*example)
                # a HuggingFace decoder student returns its key/value cache, as the teacher did at load
                if returns_cache(raw) and cache_off(student):
                    raw = student(*example)
            except Exception as e:
                raise InputError(f"--student {spec}: forward() failed on the teacher's inputs: "
                                 f"{type(e).__name__}: {str(e).splitlines()[0]}") from None
            student = _same_outputs(student, raw, source, spec)
            s_out = first_tensor(student(*example))
            t_out = first_tensor(source.module(*example))
        if s_out.shape != t_out.shape:
            raise InputError(f"--student {spec}: output shape {list(s_out.shape)} differs from the teacher's "
                             f"{list(t_out.shape)}")
        check_autograd(student, example, f"--student {spec}")
    return student


def _check_base_trusted(pt: str, base_spec: str, source, trust_pickle: bool) -> None:
    """A pruned.pt names the Python file it is rebuilt on (beside it, anywhere, or through a manifest.json
    beside it): importing that file runs code the .pt chose, so, as for a pickled --weights, only with
    --trust-pickle, unless it is the teacher's own model file, which the user named and edgekit ran already."""
    path = base_spec.rpartition(":")[0]
    tpath = source.spec.rpartition(":")[0]
    if trust_pickle or (tpath.endswith(".py") and Path(tpath).resolve() == Path(path).resolve()):
        return
    raise InputError(f"--student {pt}: rebuilding it would import and run {path} (the model file it records, "
                     f"not the teacher's {source.spec}); if you trust this file, pass --trust-pickle")


def _call_factory(spec: str, where: str):
    from ..loader import call_factory

    path, _, factory = spec.rpartition(":")
    return call_factory(path, factory, where)


def student_base_spec(pt: str, source, obj=None) -> str:
    """The architecture a pruned.pt student is rebuilt on: source.spec when it records the teacher, else
    its own file.py:factory, absolute. Another zoo/ONNX base cannot be rebuilt here: refused in one line."""
    from ..pruning import serialize

    obj = serialize.read(pt) if obj is None else obj
    base = str(obj.get("spec", ""))
    if not base or base == source.spec:
        return source.spec
    path, _, factory = base.rpartition(":")
    if not (factory and path.endswith(".py")):
        raise InputError(f"--student {pt}: it was made from {base}, not the teacher {source.spec}; only a "
                         "file.py:factory base of another architecture can be rebuilt")
    found = _base_file(pt, base)
    tpath, _, tfactory = source.spec.rpartition(":")
    if tfactory == factory and tpath.endswith(".py") and Path(tpath).resolve() == found:
        return source.spec
    return f"{found}:{factory}"


def _base_file(pt: str, base: str) -> Path:
    """The absolute file of a pruned.pt's recorded file.py:factory. Files written before the path was
    recorded absolute hold it as typed: tried from the working folder, beside the pruned.pt, and as the
    source_file its OUTDIR's manifest recorded for that spec."""
    import json

    path = base.rpartition(":")[0]
    here = [Path(path)]
    if not Path(path).is_absolute():
        folder = Path(pt).resolve().parent
        here.append(folder / path)
        try:
            src = json.loads((folder / "manifest.json").read_text()).get("source") or {}
            here += [Path(r["source_file"]) for r in (src, src.get("student") or {})
                     if r.get("spec") == base and r.get("source_file")]
        except (OSError, ValueError, AttributeError):
            pass  # no readable manifest beside it: the other places only
    found = next((p for p in here if p.is_file()), None)
    if found is None:
        raise InputError(f"--student {pt}: its base model {base}: file not found (looked for "
                         f"{', '.join(dict.fromkeys(str(p.resolve()) for p in here))})")
    return found.resolve()


def _same_outputs(student, raw, source, spec: str):
    """The student, returning the teacher's outputs in the teacher's order (a dict / namedtuple result is
    flattened by name), or an InputError before any training: the student is exported under the teacher's
    output names, so a student with other outputs failed only after training, blamed on the teacher."""
    from ..loader import flatten_outputs, output_leaves, plain_output

    got = [n for n, _ in output_leaves(raw)]
    names = getattr(source.module, "edgekit_output_names", None)
    if names is not None:
        if getattr(student, "edgekit_output_names", None) is None:
            if sorted(got) != sorted(names):
                raise InputError(f"--student {spec}: returns outputs {got}; the teacher returns {list(names)}, and "
                                 "the student must return the same ones")
            student = flatten_outputs(student, list(names))
        return student
    plain = plain_output(raw)
    n_teacher = len(source.outputs or [None])
    if not plain or len(got) != n_teacher:
        what = "a dict, namedtuple or non-tensor values" if not plain else f"{len(got)} output(s)"
        raise InputError(f"--student {spec}: returns {what}; the teacher returns {n_teacher} tensor output(s) "
                         f"({', '.join(source.outputs or [])}), and the student must return the same")
    return student
