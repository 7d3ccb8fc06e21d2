"""Attention heads of a fused query/key/value projection (GPT-2's `c_attn`), cut by edgekit itself.

Torch-Pruning prunes heads of separate q/k/v Linears (BERT, ViT, Llama). GPT-2's one `c_attn` makes
[q | k | v], each split by `split_size` and viewed as heads of `head_dim`, so its channels are not one group
Torch-Pruning can follow, and `--head-ratio` left GPT-2's attention whole. A head here is `head_dim`
consecutive rows in each of the three sections of `c_attn` and the same columns of the attention's `c_proj`:
removing them, with `split_size` and `num_heads` set to what is left, is the same model without those heads
(forward() views by `-1, head_dim`). The residual stream (c_attn's inputs, c_proj's outputs) is untouched.
"""
from __future__ import annotations


def modules(model) -> list:
    """[(name, attention module)] whose heads can be cut here: a Linear `c_attn` of 3 x split_size outputs (the
    Conv1D pruning works on as a Linear), a Linear `c_proj` reading split_size, integer num_heads/head_dim, and no
    cross-attention `q_attn`."""
    import torch.nn as nn

    out = []
    for name, m in model.named_modules():
        qkv, proj = getattr(m, "c_attn", None), getattr(m, "c_proj", None)
        n, hd, split = (getattr(m, a, None) for a in ("num_heads", "head_dim", "split_size"))
        if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear) and not hasattr(m, "q_attn")
                and all(isinstance(v, int) and v > 0 for v in (n, hd, split))):
            continue
        if n * hd == split and qkv.out_features == 3 * split and proj.in_features == split:
            out.append((name, m))
    return out


def _rows(heads, head_dim: int, offset: int = 0) -> list:
    return [offset + h * head_dim + i for h in heads for i in range(head_dim)]


def head_scores(m):
    """Each head's L2 norm over its q, k and v rows of c_attn and its columns of c_proj."""
    import torch

    n, hd, split = m.num_heads, m.head_dim, m.split_size
    w = m.c_attn.weight.detach().float()
    p = m.c_proj.weight.detach().float()
    scores = []
    for h in range(n):
        rows = _rows([h], hd) + _rows([h], hd, split) + _rows([h], hd, 2 * split)
        scores.append(float(torch.linalg.vector_norm(w[rows]) ** 2 + torch.linalg.vector_norm(p[:, _rows([h], hd)]) ** 2))
    return scores


def cut(m, keep: list) -> None:
    """Keep only heads `keep` (indices, ascending) of attention module `m`, in place."""
    import torch
    import torch.nn as nn

    hd, split = m.head_dim, m.split_size
    rows = _rows(keep, hd) + _rows(keep, hd, split) + _rows(keep, hd, 2 * split)
    cols = _rows(keep, hd)
    with torch.no_grad():
        qkv, proj = m.c_attn, m.c_proj
        qkv.weight = nn.Parameter(qkv.weight[rows].clone(), requires_grad=qkv.weight.requires_grad)
        if qkv.bias is not None:
            qkv.bias = nn.Parameter(qkv.bias[rows].clone(), requires_grad=qkv.bias.requires_grad)
        qkv.out_features = len(rows)
        proj.weight = nn.Parameter(proj.weight[:, cols].clone(), requires_grad=proj.weight.requires_grad)
        proj.in_features = len(cols)
    m.num_heads, m.split_size = len(keep), len(cols)
    if hasattr(m, "pruned_heads") and isinstance(m.pruned_heads, set):
        m.pruned_heads = set()  # transformers' own bookkeeping of heads it pruned; indices here are not its


def prune(model, originals: dict, fraction: float):
    """Cut the lowest-scoring heads of each module so it keeps round((1 - fraction) x its original count) (at
    least one); `originals`: {name: head count before any step}. Returns what the model computed before the cut
    with the removed heads' outputs zeroed (a copy), which the cut model must compute too, or None when no
    head was cut."""
    import torch

    from ..module_copy import clone

    mods = dict(modules(model))
    keep = {}
    for name, n0 in originals.items():
        m = mods.get(name)
        target = max(1, n0 - int(round(n0 * fraction)))
        if m is None or m.num_heads <= target:
            continue
        scores = head_scores(m)
        keep[name] = sorted(sorted(range(m.num_heads), key=lambda h: (-scores[h], h))[:target])
    if not keep:
        return None
    ref = clone(model)
    refs = dict(ref.named_modules())
    with torch.no_grad():
        for name, heads in keep.items():
            m = refs[name]
            gone = _rows([h for h in range(m.num_heads) if h not in heads], m.head_dim)
            m.c_proj.weight[:, gone] = 0
    for name, heads in keep.items():
        cut(mods[name], heads)
    return ref
