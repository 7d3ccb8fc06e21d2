"""Re-parameterisable blocks (RepVGG / MobileOne style) are folded for export with their own methods, on a
copy, and kept as trained when the fold would change the outputs or the method is not a fold."""
import numpy as np
import onnx
import torch
import torch.nn as nn

from edgekit.artifact import TensorSpec
from edgekit.dataset import Dataset
from edgekit.source import SourceModel
from edgekit.stages import reparam
from edgekit.stages.export import export_module


def _bn(c, seed):
    bn = nn.BatchNorm2d(c)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # trained-looking statistics, so a wrong fold shows
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g) * 0.1)
        bn.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return bn


def _fold_bn(weight, bn):
    std = torch.sqrt(bn.running_var + bn.eps)
    return weight * (bn.weight / std).reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * bn.weight / std


class RepBlock(nn.Module):
    """RepVGG: 3x3 conv + BN, 1x1 conv + BN and a BN identity, summed; reparameterize() folds the three
    into one 3x3 conv. broken=True folds the 1x1 branch in the wrong place (a fold that changes the model)."""

    def __init__(self, c, seed, broken=False):
        super().__init__()
        self.c, self.broken = c, broken  # broken: True (a wrong fold) or "shape" (a fold that cannot run)
        self.k3, self.b3 = nn.Conv2d(c, c, 3, padding=1, bias=False), _bn(c, seed)
        self.k1, self.b1 = nn.Conv2d(c, c, 1, bias=False), _bn(c, seed + 1)
        self.bid = _bn(c, seed + 2)
        self.fused = None

    def forward(self, x):
        if self.fused is not None:
            return torch.relu(self.fused(x))
        return torch.relu(self.b3(self.k3(x)) + self.b1(self.k1(x)) + self.bid(x))

    def reparameterize(self):
        w3, c3 = _fold_bn(self.k3.weight, self.b3)
        w1, c1 = _fold_bn(nn.functional.pad(self.k1.weight, [0, 2, 0, 2] if self.broken else [1, 1, 1, 1]), self.b1)
        eye = torch.zeros(self.c, self.c, 3, 3)
        eye[torch.arange(self.c), torch.arange(self.c), 1, 1] = 1.0
        wi, ci = _fold_bn(eye, self.bid)
        self.fused = nn.Conv2d(self.c, self.c, 3, padding=1)
        self.fused.weight.data, self.fused.bias.data = (w3 + w1 + wi).detach(), (c3 + c1 + ci).detach()
        if self.broken == "shape":  # a weight for one input channel more than the block has
            self.fused.weight.data = torch.zeros(self.c, self.c + 1, 3, 3)
        for name in ("k3", "b3", "k1", "b1", "bid"):
            delattr(self, name)


class Fusion(nn.Module):
    """Not a fold: a submodule called `fuse`, and a VAE-style reparameterize that needs arguments."""

    def __init__(self):
        super().__init__()
        self.fuse = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.fuse(x)

    def reparameterize(self, mu, logvar):
        raise AssertionError("a sampling step is not a fold")


def _net(broken=False):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), RepBlock(4, 1, broken), Fusion(), RepBlock(4, 7, broken),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).eval()


def _export(net, tmp_path, name):
    src = SourceModel(spec="rep.py:net", kind="torch", module=net, task="classification",
                      inputs=[TensorSpec("x", ["batch", 3, 12, 12], "float32")], outputs=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    data = Dataset({"x": np.random.default_rng(0).normal(size=(20, 3, 12, 12)).astype(np.float32)})
    return export_module(net, src, tmp_path / name, data=data), onnx.load(str(tmp_path / name))


def test_foldable_blocks_are_found_by_their_methods_only():
    assert reparam.foldable(_net()) == ["1", "3"]


def test_rep_blocks_fold_into_one_conv_each_and_the_file_matches_the_unfolded_model(tmp_path, capsys):
    net = _net()
    art, m = _export(net, tmp_path, "m.onnx")
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Conv") == 4 and "Add" not in ops and "BatchNormalization" not in ops  # stem, 2 folded, fuse
    assert art.verify["max_abs_diff"] < 1e-4  # checked against the unfolded model
    assert any("2 block(s) re-parameterised for export with their own reparameterize()" in n for n in art.notes)
    assert "re-parameterised" in capsys.readouterr().err
    assert art.params == 3 * 4 * 9 + 4 + 2 * (4 * 4 * 9 + 4) + 4 * 4 + 4 + 4 * 5 + 5  # the folded model's
    assert isinstance(net[1].k3, nn.Conv2d) and net[1].fused is None  # the user's model keeps its branches


def test_a_fold_that_changes_the_outputs_is_not_used(tmp_path):
    art, m = _export(_net(broken=True), tmp_path, "m.onnx")
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Add") == 4  # both blocks exported as trained: two sums of three branches
    note = next(n for n in art.notes if "training-time branches" in n)
    assert "folding 2 block(s) (reparameterize()) changed the outputs" in note


def test_a_model_without_folds_is_exported_as_it_is(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), Fusion(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    assert reparam.fold(net) == (net, [])
    art, _ = _export(net, tmp_path, "m.onnx")
    assert not any("re-parameteris" in n or "training-time" in n for n in art.notes)


def test_a_fold_that_no_longer_runs_is_not_used(tmp_path):
    art, m = _export(_net(broken="shape"), tmp_path, "m.onnx")
    assert [n.op_type for n in m.graph.node].count("Add") == 4
    note = next(n for n in art.notes if "training-time branches" in n)
    assert "the model with 2 block(s) folded (reparameterize()) fails to run: RuntimeError" in note


def test_pruning_cuts_the_folded_model(tmp_path, capsys):
    """Pruning the training branches left blocks whose own fold then failed (timm's MobileOne reads a channel
    count the pruner does not update), so the pruned file kept every branch and was larger than the folded
    FP32 file. The folded model is now what is pruned."""
    import json

    from tests.cliutil import prune_model_file

    rc, err, out = prune_model_file(tmp_path, capsys, "from tests.test_export_reparam import _net\n\n\n"
                                    "def net():\n    return _net()\n", shape=(3, 12, 12), ratio=0.5)
    assert rc == 0, err
    rec = json.loads((out / "pruning.json").read_text())
    assert any("2 block(s) re-parameterised before pruning" in n for n in rec["notes"])
    folded_params = 3 * 4 * 9 + 4 + 2 * (4 * 4 * 9 + 4) + 4 * 4 + 4 + 4 * 5 + 5
    assert rec["params_before"] == folded_params and rec["params_after"] < folded_params
    ops = [n.op_type for n in onnx.load(str(out / "model.pruned.onnx")).graph.node]
    assert "Add" not in ops and "BatchNormalization" not in ops


class _Once(RepBlock):
    def reparameterize(self):
        if self.fused is None:  # timm's blocks return early once folded
            super().reparameterize()


def test_blocks_folded_already_are_not_folded_or_counted_again():
    net = nn.Sequential(_Once(4, 1), _Once(4, 5)).eval()
    folded, done = reparam.fold(net)
    assert [m for _, m in done] == ["reparameterize"] * 2 and folded is not net
    assert reparam.fold(folded) == (folded, [])  # nothing changed: no copy, no note


def test_a_folded_model_and_its_copies_are_not_copied_again_to_fold():
    """A pruned model is a copy of the folded one, exported once per pruning step and per latency-search
    candidate: each export copied the whole model and called every block's method to find nothing to fold."""
    from edgekit.module_copy import clone

    calls = []

    class Counted(_Once):
        def reparameterize(self):
            calls.append(self)
            super().reparameterize()

    folded, done = reparam.fold(nn.Sequential(Counted(4, 1), Counted(4, 5)).eval())
    assert len(done) == 2 and len(calls) == 2
    copy = clone(folded)
    assert reparam.fold(folded) == (folded, []) and reparam.fold(copy) == (copy, [])
    assert len(calls) == 2  # neither the folded model nor its copy was walked again
