"""Models that cache derived tensors on themselves in eval mode (timm's LeViT) can be copied and pruned."""
from __future__ import annotations

import torch

from edgekit.module_copy import clone
from tests.cliutil import prune_model_file

CACHED = '''
import torch
import torch.nn as nn


class CachedBias(nn.Module):
    """LeViT's attention bias: computed from a Parameter, cached per device in eval mode, dropped on train()."""

    def __init__(self, n):
        super().__init__()
        self.table = nn.Parameter(torch.linspace(-1, 1, n))
        self.cache = {}

    def train(self, mode=True):
        super().train(mode)
        self.cache = {}
        return self

    def forward(self, x):
        if self.training:
            return x + self.table * 2
        key = str(x.device)
        if key not in self.cache:
            self.cache[key] = self.table * 2
        return x + self.cache[key]


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4), CachedBias(4)).eval()
'''


def _cached_net(tmp_path):
    (tmp_path / "cached.py").write_text(CACHED)
    import importlib.util

    spec = importlib.util.spec_from_file_location("cached_model", tmp_path / "cached.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.net()


def test_a_module_holding_a_cached_non_leaf_tensor_is_cloned(tmp_path):
    net = _cached_net(tmp_path)
    x = torch.randn(2, 3, 6, 6)
    ref = net(x)  # autograd on, eval mode: the cache holds a tensor with history
    assert net[7].cache["cpu"].grad_fn is not None
    twin = clone(net)
    assert net[7].cache["cpu"].grad_fn is None  # detached in place, same values
    with torch.no_grad():
        assert torch.equal(twin(x), ref.detach()) and torch.equal(net(x), ref.detach())
    assert twin[7].table is not net[7].table


def test_pruning_a_model_that_caches_tensors_in_eval_mode(tmp_path, capsys):
    # timm's LeViT: "edgekit: internal error: RuntimeError: Only Tensors created explicitly by the user (graph
    # leaves) support the deepcopy protocol at the moment"
    rc, err, out = prune_model_file(tmp_path, capsys, CACHED, shape=(3, 8, 8), ratio=0.5)
    assert rc == 0, err
    assert "internal error" not in err
    assert (out / "model.pruned.onnx").exists()
