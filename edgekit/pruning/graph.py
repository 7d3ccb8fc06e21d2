"""Structured pruning with Torch-Pruning's DepGraph: which layers to keep, heads, rounding.

DepGraph traces the model once and groups every layer whose channels are coupled
(residual adds, BatchNorm, depthwise convs, q/k/v of one attention block), so removing
channel i of a group removes it everywhere and the pruned model still runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import EdgekitError, InputError

DEFAULT_MULTIPLE = 8


@dataclass
class Plan:
    """What a pruner may touch; built once per model (module references belong to that model)."""

    ignored: list  # nn.Module
    ignored_names: list  # for the report
    num_heads: dict = field(default_factory=dict)  # q/k/v Linear -> heads
    attention: list = field(default_factory=list)  # HF-style self-attention modules to update after pruning
    notes: list = field(default_factory=list)

    @property
    def has_heads(self) -> bool:
        return bool(self.num_heads)


# ---------------------------------------------------------------- inputs and outputs

def example_inputs(source, data=None, n: int = 2) -> tuple:
    """A small real batch (or zeros of the declared shapes) in forward() order."""
    import torch

    data = data if data is not None else (source.calib or source.eval)
    if data is not None and len(data):
        feeds = data.take(n).inputs
        return tuple(torch.from_numpy(np.array(feeds[s.name])) for s in source.inputs)
    return tuple(torch.zeros([n if isinstance(d, str) else d for d in s.shape], dtype=getattr(torch, s.dtype))
                 for s in source.inputs)


def first_tensor(out):
    """The tensor a loss or metric works on: the first output (HF ModelOutput: its first field)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        return first_tensor(next(iter(out.values())))
    if isinstance(out, (tuple, list)):
        return first_tensor(out[0])
    raise EdgekitError(f"model output of type {type(out).__name__} has no tensor to prune or distill against")


def _output_sum(out):
    return first_tensor(out).float().sum()


# ---------------------------------------------------------------- which layers

def _execution_order(model, example) -> list:
    """Conv/Linear modules in the order forward() calls them (the first is the stem, the last the head)."""
    import torch
    import torch.nn as nn

    order, hooks = [], []
    for m in model.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            hooks.append(m.register_forward_hook(lambda mod, i, o: order.append(mod)))
    try:
        with torch.no_grad():
            model(*example)
    except Exception as e:
        raise InputError(f"forward() failed on example inputs: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(order))


def _transformer_parts(model):
    """(residual writers to keep, q/k/v -> heads, HF attention modules, MHA modules kept whole)."""
    import torch.nn as nn

    keep, heads, attn = [], {}, []
    for name, m in model.named_modules():
        # HuggingFace BERT-like: self-attention with query/key/value Linears and a head count
        if all(isinstance(getattr(m, a, None), nn.Linear) for a in ("query", "key", "value")) and \
                hasattr(m, "num_attention_heads"):
            for lin in (m.query, m.key, m.value):
                heads[lin] = int(m.num_attention_heads)
            attn.append(m)
        # BERT-like layer outputs write to the residual stream (hidden size): kept so the hidden
        # size, LayerNorms and embeddings stay put; their *inputs* (heads, FFN width) are pruned
        if name.endswith("output.dense") and isinstance(m, nn.Linear):
            keep.append(m)
        # torch's own encoder/decoder layers: embed_dim is the residual stream, prune the FFN only
        if isinstance(m, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
            keep.append(m.linear2)
            keep.append(m.self_attn)
            if hasattr(m, "multihead_attn"):
                keep.append(m.multihead_attn)
        elif isinstance(m, nn.MultiheadAttention):
            keep.append(m)
    return keep, heads, attn


def make_plan(model, example, *, ignore_names=(), keep_first: bool = True) -> Plan:
    import torch.nn as nn

    names = {m: n for n, m in model.named_modules()}
    by_name = dict(model.named_modules())
    order = _execution_order(model, example)
    if not order:
        raise InputError("the model has no Conv or Linear layers to prune")
    ignored, why = [], []
    if keep_first and isinstance(order[0], nn.modules.conv._ConvNd):
        ignored.append(order[0])
        why.append(f"{names[order[0]]} (first conv)")
    ignored.append(order[-1])
    why.append(f"{names[order[-1]]} (output layer)")
    for n in ignore_names:
        if n not in by_name:
            from ..errors import did_you_mean

            raise InputError(f"--ignore {n!r}: no such module{did_you_mean(n, [k for k in by_name if k])}")
        ignored.append(by_name[n])
        why.append(f"{n} (user)")
    keep, heads, attn = _transformer_parts(model)
    plan = Plan(ignored=ignored + keep, ignored_names=why, num_heads=heads, attention=attn)
    if keep:
        plan.notes.append(f"transformer: hidden size kept; pruning attention heads and feed-forward width "
                          f"({len(keep)} residual-stream layers kept)")
    if any(isinstance(m, nn.MultiheadAttention) for m in keep):
        plan.notes.append("nn.MultiheadAttention heads are not pruned (its heads share the embedding width)")
    return plan


# ---------------------------------------------------------------- the pruner

def make_pruner(model, example, plan: Plan, importance, *, ratio: float, global_pruning: bool = False,
                round_to: int | None = DEFAULT_MULTIPLE, ratio_dict: dict | None = None, head_ratio: float = 0.0,
                steps: int = 1):
    import torch_pruning as tp

    kw = {}
    if plan.has_heads:
        kw.update(num_heads=dict(plan.num_heads), prune_num_heads=head_ratio > 0, prune_head_dims=False,
                  head_pruning_ratio=head_ratio)
    try:
        return tp.pruner.MetaPruner(
            model, example, importance=importance, pruning_ratio=ratio, pruning_ratio_dict=ratio_dict,
            global_pruning=global_pruning, ignored_layers=list(plan.ignored), round_to=round_to,
            iterative_steps=steps, output_transform=_output_sum, max_pruning_ratio=0.95, **kw)
    except Exception as e:
        raise EdgekitError(f"building the pruning dependency graph failed: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None


def step(pruner, plan: Plan) -> None:
    """One pruning step, then fix the attributes forward() reads (heads, head sizes)."""
    pruner.step()
    for m in plan.attention:
        n = int(pruner.num_heads.get(m.query, m.num_attention_heads))
        m.num_attention_heads = n
        m.all_head_size = m.query.out_features
        m.attention_head_size = m.query.out_features // max(n, 1)
        if hasattr(m, "num_key_value_groups"):
            m.num_key_value_groups = 1


# ---------------------------------------------------------------- facts

def channel_counts(model) -> dict:
    """{module name: out channels} for Conv/Linear, plus {attn name + '.heads': heads}."""
    import torch.nn as nn

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = int(m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = int(m.out_features)
        elif hasattr(m, "num_attention_heads") and hasattr(m, "query"):
            out[f"{name}.heads"] = int(m.num_attention_heads)
    return out


def channel_table(before: dict, after: dict) -> dict:
    return {k: [v, after.get(k, v)] for k, v in before.items()}


def count(model, example) -> tuple[int, int]:
    """(MACs, parameters) as Torch-Pruning counts them."""
    import torch
    import torch_pruning as tp

    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def round_multiple(prune_cfg, ctx) -> int:
    if prune_cfg.channel_multiple:
        return int(prune_cfg.channel_multiple)
    t = ctx.primary_target if ctx is not None else None
    m = getattr(t, "channel_multiple", None) if t is not None else None
    return int(m) if m else DEFAULT_MULTIPLE
