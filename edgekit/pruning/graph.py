"""Structured pruning with Torch-Pruning's DepGraph: which layers to keep, heads, rounding.

DepGraph traces the model once and groups every layer whose channels are coupled
(residual adds, BatchNorm, depthwise convs, q/k/v of one attention block), so removing
channel i of a group removes it everywhere and the pruned model still runs.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..errors import EdgekitError, InputError, UsageError
from ..module_copy import clone, detach_caches
from . import channel_buffers, fused_heads, untraceable

# Torch-Pruning's UserWarning about parameters no layer it knows holds (a ViT's cls_token, an EmbeddingBag's
# table) reached the terminal as two raw lines of its own advice ("please provide an unwrapped_parameters
# argument", which an edgekit user cannot); the pruning stage says it as one note (unwrapped_note)
warnings.filterwarnings("ignore", message="Unwrapped parameters detected", category=UserWarning)


def unwrapped_note(pruner) -> str | None:
    """One line naming the parameters Torch-Pruning found no layer for, and what it does with them."""
    buffers = set(channel_buffers.held(pruner.model))  # the stage's note names them
    names = sorted(n for n in getattr(pruner.DG, "_param_to_name", {}).values() if n not in buffers)
    if not names:
        return None
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (f"{len(names)} parameter(s) held by no layer Torch-Pruning knows ({shown}): their last dimension is "
            "pruned with the channels it matches, and the pruned model is checked as every step is")

DEFAULT_MULTIPLE = 8


@dataclass
class Plan:
    """What a pruner may touch; built once per model (module references belong to that model)."""

    ignored: list  # nn.Module
    kept: dict  # module name -> why it keeps its width, for the report
    num_heads: dict = field(default_factory=dict)  # q/k/v Linear -> heads
    attention: list = field(default_factory=list)  # HF-style self-attention modules to update after pruning
    notes: list = field(default_factory=list)
    frozen: list = field(default_factory=list)  # recurrent modules kept whole, and whatever is coupled to them
    fused: dict = field(default_factory=dict)  # fused-qkv attention (GPT-2) name -> heads, cut by fused_heads.py
    # a step the model stopped running after, on the size of a per-channel buffer, ends the attempt (PruneFailure
    # .buffers) rather than keeping the layers whole: the prune stage starts again with those buffers cut too
    restart_for_buffers: bool = False

    @property
    def has_heads(self) -> bool:
        return bool(self.num_heads or self.fused)

    @property
    def ignored_names(self) -> list:
        return [f"{name} ({why})" for name, why in self.kept.items()]


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


def output_tensors(out) -> list:
    """Every tensor in a model's output: tuples, lists, dicts (HF ModelOutput), nested."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in output_tensors(v)]
    return []


def _output_sum(out):
    # every output is traced: a head left out of the graph keeps its old input width while the
    # body it reads from is pruned
    ts = [t for t in output_tensors(out) if t.is_floating_point()]
    if not ts:
        raise EdgekitError(f"model output of type {type(out).__name__} has no tensor to prune or distill against")
    return sum(t.float().sum() for t in ts)


def check_autograd(model, example, where: str) -> None:
    """Refuse a model whose forward() turns autograd off (@torch.no_grad(), torch.inference_mode() inside it)
    before pruning or distilling it: pruning traces the autograd graph and distillation trains through it.
    Pruning said "nothing in this model can be pruned" of a plain CNN, and a --student so written crashed
    training with "internal error: RuntimeError: element 0 of tensors does not require grad"."""
    import torch

    if not any(p.requires_grad for p in model.parameters()):
        return
    with torch.enable_grad():
        try:
            out = model(*example)
        except Exception:  # a forward() that fails is reported where it runs
            return
    ts = [t for t in output_tensors(out) if t.is_floating_point()]
    if ts and not any(t.requires_grad for t in ts):
        raise InputError(f"{where}: forward() computes without autograd (torch.no_grad or torch.inference_mode "
                         "inside the model), and pruning traces the autograd graph and distillation trains "
                         "through it; remove it from forward() (edgekit runs inference without gradients itself)")


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


def _layer_types() -> tuple:
    import torch.nn as nn

    from . import recurrent

    return (nn.modules.conv._ConvNd, nn.Linear) + recurrent.TYPES


def _output_layers(model, example) -> tuple[list, set]:
    """(the layers nearest each model output, recurrent modules given an initial state).

    Walks autograd back from every output tensor and stops at the first layer on each path:
    those layers' output channels are the outputs' channels (through any activation, add,
    reshape or LayerNorm), so they must keep their width. Recurrent modules run their
    tracing stand-in here as they do for DepGraph."""
    import torch

    from . import recurrent

    by_fn, hooks = {}, []

    def record(mod, _inp, out):
        for t in output_tensors(out):
            if t.grad_fn is not None:
                by_fn[t.grad_fn] = mod

    for m in model.modules():
        if isinstance(m, _layer_types()):
            hooks.append(m.register_forward_hook(record))
    try:
        with torch.enable_grad(), recurrent.traceable(model) as with_state:
            out = model(*example)
    except Exception as e:
        raise InputError(f"forward() failed on example inputs: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    finally:
        for h in hooks:
            h.remove()
    found, seen = [], set()
    stack = [t.grad_fn for t in output_tensors(out) if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn in seen:
            continue
        seen.add(fn)
        if fn in by_fn:
            found.append(by_fn[fn])
            continue
        stack += [f for f, _ in getattr(fn, "next_functions", ()) if f is not None]
    rank = {m: i for i, m in enumerate(model.modules())}
    return sorted(set(found), key=rank.get), set(with_state)


def _transformer_parts(model):
    """(residual writers to keep, q/k/v -> heads, HF attention modules, MHA modules kept whole)."""
    import torch.nn as nn

    keep, heads, attn = [], {}, []
    modules = dict(model.named_modules())
    for name, m in model.named_modules():
        qkv = _qkv(m)
        if qkv and isinstance(getattr(m, "query", None), nn.Linear):
            # HuggingFace BERT-like: self-attention with query/key/value Linears and a head count
            for lin in qkv:
                heads[lin] = int(m.num_attention_heads)
            attn.append(m)
        elif qkv:
            # transformers' newer layout (ViT, Llama, Phi, DistilBERT): q_proj/k_proj/v_proj and an output
            # projection in one module, and the block's MLP beside it. Both write the residual stream
            # (kept, as for BERT); the heads are pruned, or with grouped key/value heads (Llama's GQA: q
            # and k/v head counts differ, and repeat_kv fixes their ratio) the attention is kept whole
            n, kv = _head_counts(m)
            out = next((getattr(m, a) for a in ("o_proj", "out_proj", "out_lin", "dense")
                        if isinstance(getattr(m, a, None), nn.Linear)), None)
            parent = modules.get(name.rpartition(".")[0]) if "." in name else None
            if out is not None and parent is not None:
                keep.append(out)
                own = {id(x) for x in m.modules()}
                keep += [x for x in parent.modules() if isinstance(x, nn.Linear) and id(x) not in own
                         and x.out_features == out.out_features]
            if n and kv == n:
                for lin in qkv:
                    heads[lin] = n
                attn.append(m)
            else:
                keep += list(qkv)
        # GPT-2 (its Conv1D as Linears, conv1d.py): c_attn's q, k and v are split by the embedding width, so the
        # attention is kept whole; c_proj of the attention and of the MLP write the residual stream
        if isinstance(getattr(m, "c_attn", None), nn.Linear) and isinstance(getattr(m, "c_proj", None), nn.Linear):
            keep += [m.c_attn, m.c_proj] + ([m.q_attn] if isinstance(getattr(m, "q_attn", None), nn.Linear) else [])
        elif isinstance(getattr(m, "c_fc", None), nn.Linear) and isinstance(getattr(m, "c_proj", None), nn.Linear):
            keep.append(m.c_proj)
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


_QKV = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin"))


def _qkv(m) -> tuple:
    """The query, key and value Linears of an attention module, by transformers' names; () for others."""
    import torch.nn as nn

    for names in _QKV:
        lins = tuple(getattr(m, a, None) for a in names)
        if all(isinstance(x, nn.Linear) for x in lins):
            if names[0] == "query" and not hasattr(m, "num_attention_heads"):
                return ()
            return lins
    return ()


def _head_counts(m) -> tuple[int, int]:
    """(query heads, key/value heads) of an attention module from its attributes or its config; 0 unknown."""
    cfg = getattr(m, "config", None)
    n = next((int(v) for v in (getattr(m, "num_attention_heads", None), getattr(m, "num_heads", None),
                               getattr(m, "n_heads", None), getattr(cfg, "num_attention_heads", None))
              if isinstance(v, int) and v > 0), 0)
    kv = getattr(m, "num_key_value_heads", None) or getattr(cfg, "num_key_value_heads", None) or n
    return n, int(kv)


def make_plan(model, example, *, ignore_names=(), keep_first: bool = True,
              group_seconds: float = untraceable.GROUP_SECONDS) -> Plan:
    import torch.nn as nn

    from . import recurrent

    check_autograd(model, example, "prune")
    names = {m: n for n, m in model.named_modules()}
    by_name = dict(model.named_modules())
    order = _execution_order(model, example)
    if not order:
        raise InputError("the model has no Conv or Linear layers to prune")
    ignored, why = [], {}
    if keep_first and isinstance(order[0], nn.modules.conv._ConvNd):
        ignored.append(order[0])
        why[names[order[0]]] = "first conv"
    keep, heads, attn = _transformer_parts(model)
    outputs, with_state = _output_layers(model, example)
    for m in outputs or [order[-1]]:
        ignored.append(m)
        if m not in keep:  # residual writers reached through the stream are named as transformer parts
            why[names[m]] = "output layer"
    frozen = []
    for name, m in model.named_modules():
        if not isinstance(m, recurrent.TYPES):
            continue
        reason = recurrent.unsupported(m) or ("given an initial state" if m in with_state else None)
        if reason:
            frozen.append(m)
            if m not in ignored:
                why[name] = f"{type(m).__name__}, {reason}: kept whole, with the layers coupled to it"
    tied_notes = []
    for owners, numel in _tied(model):
        # pruning one side would give it a new, smaller Parameter and leave the other whole: kept whole, with
        # every layer whose channels are coupled to them, so the pruned model still shares the weight
        for name in owners:
            frozen.append(by_name[name])
            why.setdefault(name, f"shares its weight with {', '.join(o for o in owners if o != name)} (tied "
                                 "weights): kept whole, with the layers coupled to it, so the tie holds")
        extra = numel * (len(owners) - 1)
        tied_notes.append(f"tied weights: {' and '.join(owners)} share one parameter ({numel:,} elements), kept "
                          f"whole with the layers coupled to them; params_before/params_after count it once, as "
                          f"torch does, while an exported ONNX file may store it once per use ({extra:,} more "
                          "elements in the artifacts' params)")
    for n in ignore_names:
        if n not in by_name:
            from ..errors import did_you_mean

            raise InputError(f"--ignore {n!r}: no such module{did_you_mean(n, [k for k in by_name if k])}")
        ignored.append(by_name[n])
        why[n] = "user"
    stuck = untraceable.untraceable_roots(dependency_graph(model, example), ignored + keep + frozen, root_types(),
                                          seconds=group_seconds)
    for m in stuck:
        ignored.append(m)
        why[names[m]] = (f"its channels' dependencies did not resolve in {group_seconds:g} s (Torch-Pruning's "
                         "index tracing does not converge through this part of the model, e.g. rotary "
                         "embeddings' rotate_half): kept whole")
    for a in [a for a in attn if any(x is m for x in _qkv(a) for m in stuck)]:
        # heads cut from v alone no longer match q and k: the whole attention keeps its heads
        attn.remove(a)
        for lin in _qkv(a):
            heads.pop(lin, None)
            if not any(lin is m for m in ignored):
                ignored.append(lin)
                why[names[lin]] = "attention kept whole: its query and key channels could not be traced"
    plan = Plan(ignored=ignored + keep + frozen, kept=why, num_heads=heads, attention=attn, frozen=frozen)
    if keep:
        plan.notes.append(f"transformer: hidden size kept; pruning attention heads and feed-forward width "
                          f"({len(keep)} residual-stream layers kept)")
    if any(isinstance(m, nn.MultiheadAttention) for m in keep):
        plan.notes.append("nn.MultiheadAttention heads are not pruned (its heads share the embedding width)")
    plan.fused = {n: int(m.num_heads) for n, m in fused_heads.modules(model)
                  if not any(m.c_attn is x for x in frozen) and n not in ignore_names
                  and names.get(m.c_attn) not in ignore_names}
    fused_kept = [m for m in model.modules() if isinstance(getattr(m, "c_attn", None), nn.Linear)
                  and any(m.c_attn is k for k in keep) and names.get(m) not in plan.fused]
    if plan.fused:
        plan.notes.append("GPT-2 attention: c_attn's query, key and value are split by the embedding width, which "
                          "Torch-Pruning cannot follow; --head-ratio cuts its heads (a head's rows in all three and "
                          "its columns of c_proj), the MLP width is pruned, the residual stream kept")
    if fused_kept:
        plan.notes.append("GPT-2 attention heads are not pruned (c_attn's query, key and value are split by the "
                          "embedding width); its MLP width is")
    plan.notes += tied_notes
    return plan


def _tied(model) -> list:
    """[(names of the modules holding one Parameter, its elements)] for Parameters held by more than one
    module (an output layer tied to the embedding), found by identity."""
    owners, sizes = {}, {}
    for name, m in model.named_modules():
        for p in m.parameters(recurse=False):
            if name not in owners.setdefault(id(p), []):
                owners[id(p)].append(name)
            sizes[id(p)] = p.numel()
    return [(names, sizes[k]) for k, names in owners.items() if len(names) > 1]


# ---------------------------------------------------------------- the pruner

class StrictMultiple(int):
    """A channel multiple the user asked for (--channel-multiple): kept exactly, never relaxed."""


def rounded_keep(current: int, n_pruned: int, multiple: int) -> int:
    """Channels to keep when `n_pruned` of `current` are asked off, rounded to a hardware-friendly
    multiple. The multiple nearest the asked count is used when it lands within a quarter of the
    asked fraction (or 5 points); otherwise the multiple is halved until it does: on a small layer
    one step of 8 is a large share (rounding 32 channels at 0.3 down to 16 removes half)."""
    if current <= 0 or n_pruned <= 0:
        return current
    target = max(current - n_pruned, 1)
    asked = n_pruned / current
    tol = max(0.05, asked / 4)
    step = max(int(multiple or 1), 1)
    while True:
        cands = [k for k in (target // step * step, (target // step + 1) * step) if step <= k <= current]
        if isinstance(multiple, StrictMultiple):
            # the nearest multiple however far from the asked share; a layer with no smaller multiple stays whole
            return min(cands, key=lambda k: (abs(k - target), -k)) if cands else current
        if cands:
            keep = min(cands, key=lambda k: (abs(k - target), -k))
            if step == 1 or abs((current - keep) / current - asked) <= tol + 1e-9:
                return keep
        if step == 1:
            return target
        step = max(1, step // 2)


def _keep_of_first(first: int, current: int, n_pruned: int, multiple: int) -> int:
    """rounded_keep for a layer `first` channels wide before any step and `current` now: the kept count
    is rounded as a cut from `first`, and never above `current` (a step does not grow a layer)."""
    return min(rounded_keep(first, first - (current - n_pruned), multiple), current)


def _pruner_class():
    import torch_pruning as tp

    class Pruner(tp.pruner.MetaPruner):
        # A group with channel groups (GroupNorm, grouped conv) is ranked and cut per channel group:
        # `n_pruned` counts channels of one group while Torch-Pruning passes the layer's full width, so
        # every channel looked prunable and the whole layer was kept. Round per channel group here,
        # with a multiple that keeps the layer's total width a multiple of `round_to`.
        def _get_channel_groups(self, group) -> int:
            n = super()._get_channel_groups(group)
            self.__dict__.setdefault("_edgekit_ch_groups", {})[group[0].dep.target.module] = n
            return n

        # With --steps N a later step cuts an already narrower layer: rounding its share of that width
        # lets the multiple be halved (12 of 32 channels with round_to 8), so every step rounds the
        # count it keeps against the layer's original width, as one step at that ratio would.
        def _round_to(self, n_pruned, current_channels, round_to):
            module = getattr(self, "_edgekit_last_module", None)
            g = max(int(self.__dict__.get("_edgekit_ch_groups", {}).get(module, 1)), 1)
            current = int(current_channels)
            first = max(int(self.__dict__.get("_edgekit_widths", {}).get(getattr(self, "_edgekit_last_query", None))
                            or current), current)
            if g > 1 and current % g == 0 and first % g == 0:
                per, first, multiple = current // g, first // g, int(round_to or 1)
                step = multiple // math.gcd(multiple, g)
                step = StrictMultiple(step) if isinstance(round_to, StrictMultiple) else step
                return per - _keep_of_first(first, per, int(n_pruned), step)
            return current - _keep_of_first(first, current, int(n_pruned), round_to)

    return Pruner


def _remember_widths(pruner) -> None:
    """Every layer's widths before any step, keyed as _remember_channel_queries notes a query."""
    dg, widths = pruner.DG, {}
    for module in list(getattr(dg, "module2node", {})):
        for name in ("get_out_channels", "get_in_channels"):
            try:
                w = getattr(dg, name)(module)
            except Exception:  # a node Torch-Pruning cannot size (a functional op): never rounded either
                continue
            if isinstance(w, int):
                widths[(name, module)] = w
    pruner._edgekit_widths = widths


def _remember_channel_queries(pruner) -> None:
    """Torch-Pruning asks a group's width just before rounding it: note which module it asked about."""
    dg = pruner.DG
    for name in ("get_out_channels", "get_in_channels"):
        fn = getattr(dg, name)

        def ask(module, _fn=fn, _name=name):
            pruner._edgekit_last_module = module
            pruner._edgekit_last_query = (_name, module)
            return _fn(module)

        setattr(dg, name, ask)


def root_types() -> list:
    return list(_layer_types())


def dependency_graph(model, example):
    """Torch-Pruning's DepGraph with recurrent layers traced and pruned as single layers."""
    import torch_pruning as tp

    from . import recurrent

    try:
        with recurrent.traceable(model), channel_buffers.traced(model):
            return tp.DependencyGraph().build_dependency(model, example_inputs=example, output_transform=_output_sum,
                                                         customized_pruners=dict(recurrent.CUSTOMIZED))
    except EdgekitError:
        raise
    except Exception as e:  # forward() ran (check_autograd): the fault is in Torch-Pruning's tracing
        where = _failed_in(e)
        raise UsageError(f"prune: Torch-Pruning cannot trace this model's channel dependencies: "
                         f"{type(e).__name__} in {where}{_graph_hint(e, where)}; nothing was pruned") from None


def _failed_in(e: Exception) -> str:
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    return f"{frames[-1].name}()" if frames else "its graph builder"


def _graph_hint(e: Exception, where: str) -> str:
    if "reshape" in where:
        # torchvision's ShuffleNetV2: ZeroDivisionError in update_reshape_index_mapping
        return (" (a reshape that regroups the channel axis, such as ShuffleNet's channel shuffle, is beyond its "
                "index mapping; --ignore does not help, the graph is traced whole)")
    text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return f" ({text})" if text else ""


def _block_frozen(dg, ignored: list, frozen: list) -> list:
    """Layers to add to `ignored` so no group touching a frozen module is pruned: a group is
    skipped when any layer whose outputs it cuts is ignored, so all of those are added."""
    if not frozen:
        return []
    frozen, add = set(frozen), []
    for g in dg.get_all_groups(ignored_layers=list(ignored), root_module_types=root_types()):
        if any(d.target.module in frozen for d, _ in g):
            add += _out_layers(dg, g)
    return list(dict.fromkeys(add))


def _out_layers(dg, group) -> list:
    """The layers whose outputs `group` cuts: the entries that keep it unpruned once ignored. Parameters a
    group also cuts (Swin's relative_position_bias_table) are left out: Torch-Pruning looks ignored layers up
    with `in`, and a Parameter there is compared element-wise with the next one ("Boolean value of Tensor
    with more than one value is ambiguous")."""
    import torch.nn as nn

    return [d.target.module for d, _ in group
            if dg.is_out_channel_pruning_fn(d.handler) and isinstance(d.target.module, nn.Module)]


def mismatched_groups(dg, ignored: list) -> tuple[list, list]:
    """(layers to add to `ignored`, one reason per group) for groups that couple layers of different
    widths. A transpose between channel and token axes (MLP-Mixer's token mixing) is not tracked by
    Torch-Pruning: the residual stream's 32 channel indices were applied to a Linear over 16 tokens and
    pruning failed with "index 16 is out of bounds". Such a group is kept whole, the rest still pruned."""
    from torch_pruning import ops

    add, why = [], []
    for g in dg.get_all_groups(ignored_layers=list(ignored), root_module_types=root_types()):
        for d, idxs in g:
            if dg.is_out_channel_pruning_fn(d.handler):
                width = dg.get_out_channels(d.target.module)
            elif dg.is_in_channel_pruning_fn(d.handler):
                width = dg.get_in_channels(d.target.module)
            else:
                continue
            if width is not None and len(idxs) and max(int(i) for i in idxs) >= width:
                add += _out_layers(dg, g)
                concat = any(isinstance(x.dep.target.module, ops._ConcatOp) for x in g)
                why.append((g[0].dep.target.module, d.target.module, int(width), len(g[0].idxs), concat))
                break
    return list(dict.fromkeys(add)), why


def prunable_groups(dg, ignored) -> list:
    """The groups a pruner with these ignored layers may cut."""
    return list(dg.get_all_groups(ignored_layers=list(ignored), root_module_types=root_types()))


def make_pruner(model, example, plan: Plan, importance, *, ratio: float, global_pruning: bool = False,
                round_to: int | None = DEFAULT_MULTIPLE, ratio_dict: dict | None = None, head_ratio: float = 0.0,
                steps: int = 1):
    import torch

    from . import recurrent

    kw = {}
    if plan.num_heads:
        kw.update(num_heads=dict(plan.num_heads), prune_num_heads=head_ratio > 0, prune_head_dims=False,
                  head_pruning_ratio=head_ratio)
    try:
        with recurrent.traceable(model), channel_buffers.traced(model):
            pruner = _pruner_class()(
                model, example, importance=recurrent.RecurrentAware(importance), pruning_ratio=ratio,
                pruning_ratio_dict=ratio_dict, global_pruning=global_pruning, ignored_layers=list(plan.ignored),
                round_to=round_to, iterative_steps=steps, output_transform=_output_sum, max_pruning_ratio=0.95,
                customized_pruners=dict(recurrent.CUSTOMIZED), root_module_types=root_types(), **kw)
    except Exception as e:
        raise EdgekitError(f"building the pruning dependency graph failed: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}") from None
    _remember_widths(pruner)
    _remember_channel_queries(pruner)
    pruner.ignored_layers += _block_frozen(pruner.DG, pruner.ignored_layers, plan.frozen)
    # the first conv is kept by choice, not because its group cannot be traced: its group is checked too. An
    # image branch's flattened features concatenated with a metadata Linear's were traced as one group with
    # the first conv (the concatenation's sizes read before the flatten), skipped as the first conv's, and
    # "nothing can be pruned" named only the first conv and the output layer. (Layers kept as untraceable
    # stay out of the check: walking their groups is what never ends.)
    names = {m: n for n, m in model.named_modules()}
    by_choice = {m for m in pruner.ignored_layers if plan.kept.get(names.get(m)) == "first conv"}
    add, why = mismatched_groups(pruner.DG, [m for m in pruner.ignored_layers if m not in by_choice])
    pruner.ignored_layers += add
    for root, odd, width, n, concat in why:
        odd_name = names.get(odd, type(odd).__name__)
        if isinstance(odd, torch.nn.LayerNorm) and len(odd.normalized_shape) > 1:
            what = (f"LayerNorm '{odd_name}' normalises over {list(odd.normalized_shape)}, a shape channel "
                    "pruning cannot resize")
        elif concat:
            what = (f"{odd_name} has {width} along that axis; the channels meet a torch.cat whose parts "
                    "Torch-Pruning sized wrongly (a flattened or reshaped part), so pruning cannot follow them")
        else:
            what = f"{odd_name} has {width} along that axis, a transpose or reshape pruning cannot follow"
        plan.kept.setdefault(names.get(root, type(root).__name__), f"with the {n} channels coupled to it: {what}")
    _ratio_dict_for_recurrent(pruner, ratio_dict, steps)
    with torch.no_grad():
        pruner.edgekit_check = (example, [tuple(t.shape) for t in output_tensors(model(*example))])
    return pruner


def _ratio_dict_for_recurrent(pruner, ratio_dict, steps) -> None:
    """Torch-Pruning reads per-layer ratios only for its own layer types: add recurrent ones."""
    from . import recurrent

    for key, r in (ratio_dict or {}).items():
        for m in (key if isinstance(key, tuple) else (key,)):
            for sub in m.modules():
                if isinstance(sub, recurrent.TYPES) and sub not in pruner.pruning_ratio_dict:
                    pruner._layer_to_scope[sub] = (f"_edgekit_recurrent_{id(sub)}", [sub])
                    pruner.pruning_ratio_dict[sub] = pruner.iterative_pruning_ratio_scheduler(r, steps)


class PruneFailure(UsageError):
    """A pruning step this model does not allow (exit 2); the prune stage adds the model's file.

    `keep`: layers which, kept whole from the start, avoid it, where this step could not keep them whole itself
    (`keep_why` says why; `kept`, {group's layer: why}, as the report names them); the prune stage then starts
    again from the unpruned model."""

    keep: list = []
    keep_why: str = ""
    kept: dict = {}
    buffers: list = []  # per-channel buffers of the size the model failed on: start again cutting them too


class NothingToPrune(UsageError):
    """No group is left to cut; `first_conv`: the first conv's width was kept by choice, not by need;
    `kept`: the layers kept and why, in words."""

    def __init__(self, message: str, *, first_conv: bool = False, kept: str = ""):
        super().__init__(message)
        self.first_conv, self.kept = first_conv, kept


def foreign_layers(model) -> str:
    """'; ...' naming the layer types that hold a model's weights but that Torch-Pruning has no pruner for
    (transformers' GPT-2 Conv1D: a Linear with its weight stored [in, out]), else ''. A GPT-2 was 'nothing
    in this model can be pruned: kept: score (output layer)', which did not say where its weights were."""
    import torch.nn as nn

    from . import recurrent

    known = (nn.modules.conv._ConvNd, nn.Linear, nn.Embedding, nn.EmbeddingBag, nn.modules.batchnorm._NormBase,
             nn.LayerNorm, nn.GroupNorm, nn.MultiheadAttention) + recurrent.TYPES
    count, numel = {}, {}
    for m in model.modules():
        w = m._parameters.get("weight")
        if isinstance(m, known) or w is None or w.dim() < 2:
            continue
        kind = type(m).__name__
        count[kind] = count.get(kind, 0) + 1
        numel[kind] = numel.get(kind, 0) + sum(p.numel() for p in m.parameters(recurse=False))
    if not count:
        return ""
    total = sum(p.numel() for p in model.parameters()) or 1
    kinds = ", ".join(f"{n} ({count[n]} layers, {numel[n] / total:.0%} of the parameters)"
                      for n in sorted(count, key=lambda n: -numel[n]))
    return f"; its weights are in layers Torch-Pruning has no pruner for: {kinds}"


def _unprunable_hint(model, layers=()) -> str:
    """What in the model is known to defeat channel pruning, as the end of a one-line error."""
    import torch.nn as nn

    for name, m in model.named_modules():
        if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) > 1:
            return (f"; LayerNorm '{name}' normalises over {list(m.normalized_shape)}, a shape channel pruning "
                    "cannot resize: leave it unpruned (compress without --prune) or normalise with GroupNorm")
    if layers:
        flags = " ".join(f"--ignore {n}" for n in layers)
        return f"; keep the layers involved whole with {flags}, or leave it unpruned (compress without --prune)"
    return "; keep the layers involved with --ignore NAME, or leave it unpruned (compress without --prune)"


# ---------------------------------------------------------------- one step, checked

@dataclass
class _Cut:
    """One Torch-Pruning group as pruned: enough to redo it on, or mask it in, a copy of the model."""

    root: str  # the layer the group was ranked by
    items: list  # (handler, pruning_dim, "in" | "out", module or parameter name, is_parameter, idxs)
    outs: list  # names of the layers whose outputs it cuts
    maskable: bool  # every layer in it is per-channel, so zeroing the channels is what removing them computes


def _mask_dim(m):
    """The channel axis of a layer whose channels can be zeroed in place of being removed, or None."""
    import torch.nn as nn

    per_channel = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                   nn.PReLU)
    if isinstance(m, per_channel):
        return 1
    if isinstance(m, (nn.Linear, nn.Embedding)):
        return -1
    return None  # LayerNorm, GroupNorm, RNNs, ...: statistics or state span the channels


def _record(group, dg, mod_names, param_names) -> _Cut:
    import torch
    import torch_pruning as tp

    items, outs, maskable = [], [], True
    for dep, idxs in group:
        target = dep.target.module
        is_param = isinstance(target, torch.nn.Parameter)
        name = param_names.get(target) if is_param else mod_names.get(target)
        if name is None:
            continue  # an op node (add, concat, reshape): nothing of its own to cut
        out = bool(dg.is_out_channel_pruning_fn(dep.handler))
        plain = tp._helpers.to_plain_idxs(idxs) if len(idxs) and isinstance(idxs[0], tp._helpers._HybridIndex) \
            else list(idxs)
        items.append((dep.handler, dep.target.pruning_dim, "out" if out else "in", name, is_param,
                      [int(i) for i in plain]))
        if out and not is_param:
            outs.append(name)
        if not is_param and _mask_dim(target) is None:
            maskable = False
    root = mod_names.get(group[0].dep.target.module) or (outs[0] if outs else "?")
    return _Cut(root, items, list(dict.fromkeys(outs)), maskable)


def _replay(model, cut: _Cut) -> None:
    """Cut `cut`'s channels out of `model` (a copy of the model the group was taken from)."""
    mods = dict(model.named_modules())
    for handler, dim, _side, name, is_param, idxs in cut.items:
        handler.__self__.pruning_dim = dim
        if is_param:
            parent, _, leaf = name.rpartition(".")
            owner = mods[parent]
            setattr(owner, leaf, handler(getattr(owner, leaf), idxs))
        else:
            handler(mods[name], idxs)


def _masked(model, cuts: list) -> list:
    """Hooks that zero, in `model`, the channels `cuts` remove (inputs of the layers reading them, outputs of
    the layers writing them); the other cuts are done for real. Returns the hooks to remove."""
    import torch

    mods = dict(model.named_modules())
    zero = {}
    for cut in cuts:
        if not cut.maskable:
            _replay(model, cut)
            continue
        for _h, _d, side, name, is_param, idxs in cut.items:
            if not is_param:
                zero.setdefault((name, side), set()).update(idxs)

    def fill(t, dim, idx):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return t
        return t.index_fill(dim % t.dim(), torch.tensor(sorted(idx), dtype=torch.long), 0.0)

    hooks = []
    for (name, side), idx in zero.items():
        m = mods[name]
        dim = _mask_dim(m)
        if side == "in":
            hooks.append(m.register_forward_pre_hook(
                lambda _m, args, dim=dim, idx=idx: (fill(args[0], dim, idx),) + tuple(args[1:]) if args else args))
        else:
            hooks.append(m.register_forward_hook(lambda _m, _a, out, dim=dim, idx=idx: fill(out, dim, idx)))
    return hooks


def _outputs(model, example) -> list:
    import torch

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [t.detach().float() for t in output_tensors(model(*example)) if t.is_floating_point()]
    finally:
        model.train(was)


RTOL = 1e-4  # of the outputs' scale: float rounding of a few layers stays far below it


def _difference(a: list, b: list) -> tuple[float, float] | None:
    """(max |a - b|, scale of a) when the two differ beyond rounding, else None."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf"), 0.0
    if not a:
        return None
    scale = max(float(x.abs().max()) if x.numel() else 0.0 for x in a)
    diff = max(float((x - y).abs().max()) if x.numel() else 0.0 for x, y in zip(a, b))
    return (diff, scale) if not diff <= RTOL * scale + 1e-6 else None


def _unfaithful(ref, model, cuts, example):
    """(max difference, scale) when the pruned `model` does not compute what `ref` (the model before the step)
    computes with the removed channels zeroed, else None."""
    # hooks leave `ref` as it was (the undo needs it); cutting a group for real needs a copy
    masked = clone(ref) if any(not c.maskable for c in cuts) else ref
    hooks = []
    try:
        hooks = _masked(masked, cuts)
        want = _outputs(masked, example)
    except Exception:
        # channel indices the model before the step cannot take (a mapping Torch-Pruning got wrong, which the
        # run and shape checks report): nothing to compare against, and no reason to fail a prune that runs
        return None
    finally:
        for h in hooks:
            h.remove()
    return _difference(want, _outputs(model, example))


def _culprits(ref, cuts, example, *, runs_only=False, shapes=None) -> list:
    """The cuts that, done alone on a copy of `ref`, break the model: it fails to run, changes the output shapes
    (when `shapes` is given) or, unless runs_only, computes something other than `ref` with those channels zeroed."""
    import torch

    bad = []
    for cut in cuts:
        if not runs_only and not cut.maskable:
            continue  # nothing to compare it with
        trial = clone(ref).eval()
        try:
            _replay(trial, cut)
            with torch.no_grad():
                got = [tuple(t.shape) for t in output_tensors(trial(*example))]
        except Exception:
            bad.append(cut)
            continue
        if shapes is not None and got != shapes:
            bad.append(cut)
        elif not runs_only and _unfaithful(ref, trial, [cut], example) is not None:
            bad.append(cut)
    return bad


def _restore(model, ref) -> None:
    """Put `ref`'s weights and sizes back into `model`'s modules, keeping the module objects (the pruner's
    dependency graph refers to them) and their hooks."""
    saved = dict(ref.named_modules())
    for name, m in model.named_modules():
        r = saved.get(name)
        if r is None:
            continue
        for k, v in r.__dict__.items():
            if k != "_modules" and "hook" not in k:
                m.__dict__[k] = v


def _names(model) -> tuple[dict, dict]:
    return ({m: n for n, m in model.named_modules()},
            {p: n for n, p in model.named_parameters(remove_duplicate=False)})


REARRANGED = ("its channels are rearranged (view/transpose/reshape) on the way to the layers it feeds in a way "
              "the dependency graph cannot follow: pruning it changed what the model computes")


def step(pruner, plan: Plan, *, _retry: int = 0) -> list:
    """One pruning step, then fix the attributes forward() reads (heads, head sizes), and check the pruned model
    computes what the model before the step computes with the removed channels zeroed. Groups that break that
    (a channel shuffle the dependency graph took for an identity) are undone and their layers kept whole.
    Returns notes for the manifest."""
    model = pruner.model
    check = getattr(pruner, "edgekit_check", None)
    ref = clone(model) if check is not None else None
    heads = dict(getattr(pruner, "num_heads", None) or {})
    ops = _op_states(pruner.DG) if check is not None else {}
    mod_names, param_names = _names(model)
    cuts, current, ranked = [], None, []
    # Torch-Pruning can fail while ranking a group (before it is handed out): remember which one
    rank, own = pruner.estimate_importance, pruner.__dict__.get("estimate_importance")
    pruner.estimate_importance = lambda group, **kw: (ranked.append(group), rank(group, **kw))[1]
    try:
        for group in pruner.step(interactive=True):
            current = _record(group, pruner.DG, mod_names, param_names)
            group.prune()
            cuts.append(current)
            current = None
    except (RuntimeError, IndexError, ValueError) as e:
        if current is None and ranked:
            current = _record(ranked[-1], pruner.DG, mod_names, param_names)
        layers = current.outs if current is not None else []
        raise PruneFailure(f"prune: torch_pruning cannot prune this model ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}"
                           f"{'; while cutting ' + ', '.join(layers) if layers else ''})"
                           f"{_unprunable_hint(model, layers)}") from None
    finally:
        if own is None:
            pruner.__dict__.pop("estimate_importance", None)  # back to the class's method
        else:
            pruner.estimate_importance = own
    channel_buffers.freeze(model)
    _fix_attention(pruner, plan)
    if check is None:
        return []
    example, shapes = check
    try:
        _check_runs(model, ref, cuts, example, shapes)
    except PruneFailure as e:
        if getattr(e, "culprits", None) is None:
            raise
        return _undo_and_redo(pruner, plan, ref, (heads, ops), cuts, None, _retry, failure=e)
    diff = _unfaithful(ref, model, cuts, example)
    if diff is None:
        return []
    return _undo_and_redo(pruner, plan, ref, (heads, ops), cuts, diff, _retry)


def _fix_attention(pruner, plan) -> None:
    for m in plan.attention:
        q = _qkv(m)[0]
        n = int(pruner.num_heads.get(q, _head_counts(m)[0]))
        for attr in ("num_attention_heads", "num_heads", "n_heads"):
            if isinstance(getattr(m, attr, None), int):
                setattr(m, attr, n)
        if hasattr(m, "all_head_size"):
            m.all_head_size = q.out_features
        if hasattr(m, "attention_head_size"):
            m.attention_head_size = q.out_features // max(n, 1)
        if hasattr(m, "num_key_value_groups"):
            m.num_key_value_groups = 1


def check_head_cut(model, ref, pruner) -> None:
    """After fused_heads cut heads outside Torch-Pruning: the model runs and computes what `ref` (the model before
    the cut with those heads' outputs zeroed) computes."""
    check = getattr(pruner, "edgekit_check", None)
    if check is None:
        return
    example = check[0]
    what = "cutting attention heads in c_attn"
    try:
        got = _outputs(model, example)
    except Exception as e:
        raise PruneFailure(f"the model no longer runs after {what} ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''}); prune it without --head-ratio") from None
    diff = _difference(_outputs(ref, example), got)
    if diff is not None:
        raise PruneFailure(f"{what} changed what the model computes (max difference {diff[0]:.3g} on outputs of "
                           f"scale {diff[1]:.3g} against the model with those heads' outputs zeroed): its forward() "
                           "reads a head count the cut does not update; prune it without --head-ratio")


def _check_runs(model, ref, cuts, example, shapes) -> None:
    # a coupling DepGraph could not see (an op it took for element-wise) shows up here, as a
    # one-line error naming the layers to keep, not as a shape error deep in a later stage
    import torch

    try:
        with torch.no_grad():
            got = [tuple(t.shape) for t in output_tensors(model(*example))]
    except Exception as e:
        bad = _culprits(ref, cuts, example, runs_only=True)
        layers = [n for c in bad for n in c.outs]
        where = f" after cutting {', '.join(layers)}" if layers else ""
        first = str(e).splitlines()[0]
        err = PruneFailure(f"the pruned model no longer runs{where} ({type(e).__name__}: {first})"
                           f"{_unprunable_hint(model, layers)}")
        err.culprits, err.reason = bad, f"{type(e).__name__}: {first[:160]}"
        raise err from None
    if got != shapes:
        layers = [n for c in _culprits(ref, cuts, example, runs_only=True, shapes=shapes) for n in c.outs]
        where = f" after cutting {', '.join(layers)}" if layers else ""
        flags = " ".join(f"--ignore {n}" for n in layers) or "--ignore NAME"
        raise PruneFailure(f"pruning changed the model's output shapes {shapes} -> {got}{where}; keep the layers "
                           f"that write the outputs whole with {flags}")


def _op_states(dg) -> dict:
    """{op node: its attributes} for the graph's concat/split/reshape nodes, whose sizes pruning updates in place
    (Torch-Pruning's stand-ins for torch.cat & co., not modules of the model)."""
    own = {id(m) for m in dg.model.modules()} | {id(p) for p in dg.model.parameters()}
    return {node.module: {k: list(v) if isinstance(v, list) else v for k, v in vars(node.module).items()}
            for node in dg.module2node.values() if id(node.module) not in own and hasattr(node.module, "__dict__")}


def _undo_and_redo(pruner, plan, ref, saved, cuts, diff, retry, failure=None) -> list:
    """Undo a step that changed the model's function (diff) or stopped it from running (failure, a
    PruneFailure naming its culprits), keep the groups responsible whole, and step again."""
    heads, ops = saved
    example = pruner.edgekit_check[0]
    if failure is not None and plan.restart_for_buffers:
        failure.buffers = channel_buffers.matching(pruner.model, failure.reason)
        if failure.buffers:
            raise failure
    bad = _culprits(ref, cuts, example) if failure is None else failure.culprits
    layers = list(dict.fromkeys(n for c in bad for n in c.outs))
    params = any(it[4] for c in cuts for it in c.items)  # the graph tracks pruned bare Parameters by object
    why = REARRANGED if failure is None else (
        f"cutting its channels stopped the model from running ({failure.reason}): forward() splits or sizes "
        "them by numbers it holds (such as torch.split with fixed sizes), which the dependency graph does not update")
    # as the report names them: each group by the layer it was ranked by, with the others it holds
    kept = {c.root: f"with {', '.join(o for o in c.outs if o != c.root)}: {why}"
            if any(o != c.root for o in c.outs) else why for c in bad}
    if failure is not None and (not layers or params or retry >= 3):
        if layers and params and retry < 3:
            failure.keep, failure.keep_why, failure.kept = layers, why, kept
        raise failure
    if not layers or params or retry >= 3:
        named = layers or list(dict.fromkeys(n for c in cuts for n in c.outs))
        err = PruneFailure(f"prune: the pruned model computes something else than the model with those channels "
                           f"removed (max difference {diff[0]:.3g} on outputs of scale {diff[1]:.3g}): a reshape, "
                           f"view or transpose the dependency graph cannot follow"
                           f"{_unprunable_hint(pruner.model, named)}")
        if layers and params and retry < 3:
            err.keep, err.keep_why, err.kept = layers, why, kept
        raise err
    _restore(pruner.model, ref)
    for op, state in ops.items():
        op.__dict__.update(state)
    if heads:
        pruner.num_heads.clear()
        pruner.num_heads.update(heads)
    pruner.current_step -= 1
    mods = dict(pruner.model.named_modules())
    pruner.ignored_layers += [mods[n] for n in layers]
    for root, text in kept.items():
        plan.kept.setdefault(root, text)
    note = (f"kept whole: {', '.join(layers)}: {why}" + ("" if failure is not None else
            f" (max difference {diff[0]:.3g} on outputs of scale {diff[1]:.3g} against the model with those "
            "channels zeroed)"))
    return [note] + step(pruner, plan, _retry=retry + 1)


# ---------------------------------------------------------------- facts

def channel_counts(model) -> dict:
    """{module name: out channels} for Conv/Linear, hidden units of RNN/GRU/LSTM, plus {attn name + '.heads': heads}."""
    import torch.nn as nn

    from . import recurrent

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, recurrent.TYPES):
            out[name] = int(m.hidden_size)
        elif isinstance(m, nn.modules.conv._ConvNd):
            out[name] = int(m.out_channels)
        elif isinstance(m, nn.Linear):
            out[name] = int(m.out_features)
        elif hasattr(m, "num_attention_heads") and hasattr(m, "query"):
            out[f"{name}.heads"] = int(m.num_attention_heads)
        elif isinstance(getattr(m, "c_attn", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int):
            out[f"{name}.heads"] = int(m.num_heads)
    return out


def channel_table(before: dict, after: dict) -> dict:
    """{name: [before, after, fraction removed]}: the fraction is what rounding really gave."""
    return {k: [v, after.get(k, v), round(1 - after.get(k, v) / v, 4) if v else 0.0] for k, v in before.items()}


def count(model, example) -> tuple[int, int]:
    """(MACs, parameters) as Torch-Pruning counts them."""
    import torch
    import torch_pruning as tp

    with torch.no_grad():
        detach_caches(model)  # Torch-Pruning deep-copies the model to count
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def round_multiple(prune_cfg, ctx) -> int:
    if prune_cfg.channel_multiple:
        return StrictMultiple(prune_cfg.channel_multiple)
    t = ctx.primary_target if ctx is not None else None
    m = getattr(t, "channel_multiple", None) if t is not None else None
    return int(m) if m else DEFAULT_MULTIPLE
