"""Pruning the hidden units of nn.RNN / nn.GRU / nn.LSTM.

Torch-Pruning 1.6 cannot do it: its LSTM pruner slices the gate-stacked weights with
per-unit indices (IndexError on weight_hh_l0), and GRU/RNN have no pruner at all. Worse, on
CPU torch runs a recurrent layer as dozens of small autograd ops (transpose, stack, chunk,
addmm per time step), which DepGraph walks as if they were element-wise: it then couples the
layer before the RNN with the layer after it, or trips over the gate chunks.

So while a graph is traced, each recurrent module runs a stand-in forward with the real
output shapes whose autograd graph is one projection of its input (what DepGraph expects of a
layer); its hidden units are then pruned by HiddenPruner below, gate by gate and layer by
layer. Layers whose output width is not one hidden unit per channel (bidirectional, proj_size)
or that take an initial state (its width would have to change with them) are traced the same
way but kept, together with every layer coupled to them.
"""
from __future__ import annotations

import contextlib
import types

import torch
import torch.nn as nn
import torch_pruning as tp

TYPES = (nn.RNN, nn.GRU, nn.LSTM)


def gates(m) -> int:
    return 4 if isinstance(m, nn.LSTM) else 3 if isinstance(m, nn.GRU) else 1


def unsupported(m) -> str | None:
    """Why this recurrent module's hidden units cannot be pruned here (None: they can)."""
    if m.bidirectional:
        return "bidirectional"
    if getattr(m, "proj_size", 0):
        return "proj_size"
    return None


def _directions(m) -> list:
    return [""] + (["_reverse"] if m.bidirectional else [])


def _stand_in(seen_state: set):
    def forward(self, x, hx=None):
        packed = isinstance(x, nn.utils.rnn.PackedSequence)
        data = x.data if packed else x
        width = getattr(self, "proj_size", 0) or self.hidden_size
        n_in = data.shape[-1]
        # no slicing of the module's own weights: DepGraph would read a slice of them as a channel op
        out = nn.functional.linear(data, data.new_full((width * len(_directions(self)), n_in), 1.0 / n_in))
        anchor = 0 * self.weight_ih_l0.sum()  # an autograd node even when the input needs no grad
        if hx is not None:
            seen_state.add(self)
            h0 = hx[0] if isinstance(hx, tuple) else hx
            # the state's producer must see this layer as its consumer, so its group is kept too
            anchor = anchor + 0 * h0.sum(0).mean()
        out = out + anchor
        layers = self.num_layers * len(_directions(self))
        if packed:
            last = out[:int(x.batch_sizes[0])]
            out = nn.utils.rnn.PackedSequence(out, x.batch_sizes, x.sorted_indices, x.unsorted_indices)
        else:
            last = out.select(0 if data.dim() == 2 or not self.batch_first else 1, -1)
        h = torch.stack([last[..., :width]] * layers)
        if isinstance(self, nn.LSTM):
            c = h if not getattr(self, "proj_size", 0) else h.new_zeros(h.shape[:-1] + (self.hidden_size,))
            return out, (h, c)
        return out, h

    return forward


@contextlib.contextmanager
def traceable(model, seen_state: set | None = None):
    """Recurrent modules run the stand-in forward inside the block (only for graph tracing)."""
    seen = seen_state if seen_state is not None else set()
    patched = [m for m in model.modules() if isinstance(m, TYPES)]
    fwd = _stand_in(seen)
    for m in patched:
        m.forward = types.MethodType(fwd, m)
    try:
        yield seen
    finally:
        for m in patched:
            if "forward" in vars(m):
                del m.forward


class HiddenPruner(tp.pruner.function.BasePruningFunc):
    """Removes hidden units: their rows in every gate of every layer, their recurrent columns,
    and the matching input columns of the layers above; the first layer's inputs are in_channels."""

    TARGET_MODULES = TYPES

    def _keep(self, n, idxs):
        drop = {int(i) for i in idxs}
        return torch.tensor([i for i in range(n) if i not in drop], dtype=torch.long)

    def _cut(self, layer, name, keep, dim):
        setattr(layer, name, self._prune_parameter_and_grad(getattr(layer, name), keep, dim))

    def prune_out_channels(self, layer, idxs):
        if unsupported(layer):
            raise ValueError(f"{type(layer).__name__} ({unsupported(layer)}) is kept whole")
        hidden = layer.hidden_size
        keep = self._keep(hidden, idxs)
        rows = torch.cat([keep + g * hidden for g in range(gates(layer))])
        for k in range(layer.num_layers):
            self._cut(layer, f"weight_ih_l{k}", rows, 0)
            if k > 0:
                self._cut(layer, f"weight_ih_l{k}", keep, 1)
            self._cut(layer, f"weight_hh_l{k}", rows, 0)
            self._cut(layer, f"weight_hh_l{k}", keep, 1)
            if layer.bias:
                self._cut(layer, f"bias_ih_l{k}", rows, 0)
                self._cut(layer, f"bias_hh_l{k}", rows, 0)
        layer.hidden_size = len(keep)
        layer._init_flat_weights()
        return layer

    def prune_in_channels(self, layer, idxs):
        if unsupported(layer):
            raise ValueError(f"{type(layer).__name__} ({unsupported(layer)}) is kept whole")
        keep = self._keep(layer.input_size, idxs)
        self._cut(layer, "weight_ih_l0", keep, 1)
        layer.input_size = len(keep)
        layer._init_flat_weights()
        return layer

    def get_out_channels(self, layer):
        return (getattr(layer, "proj_size", 0) or layer.hidden_size) * len(_directions(layer))

    def get_in_channels(self, layer):
        return layer.input_size


PRUNER = HiddenPruner()
CUSTOMIZED = {t: PRUNER for t in TYPES}


def unit_importance(layer, p: int = 2) -> torch.Tensor:
    """|w|_p of each hidden unit over everything that prunes with it (all gates, all layers)."""
    hidden, g = layer.hidden_size, gates(layer)
    total = torch.zeros(hidden)
    with torch.no_grad():
        for k in range(layer.num_layers):
            for name in (f"weight_ih_l{k}", f"weight_hh_l{k}", f"bias_ih_l{k}", f"bias_hh_l{k}"):
                w = getattr(layer, name, None)
                if w is None:
                    continue
                rows = w.detach().abs().pow(p).reshape(g, hidden, -1).sum((0, 2))
                total += rows
            total += getattr(layer, f"weight_hh_l{k}").detach().abs().pow(p).sum(0)
            if k > 0:
                total += getattr(layer, f"weight_ih_l{k}").detach().abs().pow(p).sum(0)
    return total


class RecurrentAware(tp.importance.Importance):
    """Torch-Pruning's criterion, and for a group only recurrent layers score (an RNN feeding
    another RNN), the magnitude of each hidden unit's weights instead of no score at all."""

    def __init__(self, base):
        self.base = base

    def __getattr__(self, name):  # Taylor importance and friends keep their own attributes
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)

    def __call__(self, group):
        imp = self.base(group)
        if imp is not None:
            return imp
        root = group[0].dep.target.module
        if isinstance(root, TYPES) and not unsupported(root):
            return unit_importance(root)
        return None
