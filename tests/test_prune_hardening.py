"""Pruning hardening (sweep20): a pruned model computes what the original computes with the removed channels
zeroed, or the layers that would break that stay whole (F1); --prune with --student is refused (F6); tied weights
stay tied (F3); learned parameters applied with Mul or read through Slice are counted (F2); prune errors name the
layers and exit 2 (F4); --epochs below --steps is said (F5)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgekit.config import DistillConfig, PruneConfig
from edgekit.errors import UsageError
from edgekit.pruning import graph, importance, schedule


def _prune(model, x, *, ratio=0.5):
    model.eval()
    plan = graph.make_plan(model, (x,))
    imp, _ = importance.make("l1", model)
    pruner = graph.make_pruner(model, (x,), plan, imp, ratio=ratio, round_to=graph.DEFAULT_MULTIPLE)
    return plan, graph.step(pruner, plan)


class Shuffle(nn.Module):  # ShuffleNet-style: grouped 1x1 -> channel shuffle -> grouped 1x1
    def __init__(self, shuffle=True):
        super().__init__()
        self.shuffle = shuffle
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.g1 = nn.Conv2d(32, 32, 1, groups=4)
        self.g2 = nn.Conv2d(32, 32, 1, groups=4)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = F.relu(self.g1(F.relu(self.stem(x))))
        if self.shuffle:
            n, c, h, w = x.shape
            x = x.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(F.relu(self.g2(x)).mean((2, 3)))


class ConcatShuffle(Shuffle):  # a concat after the shuffle: redoing the step needs its sizes as they were
    def __init__(self):
        super().__init__()
        self.l1, self.c3 = nn.Conv2d(32, 16, 3, padding=1), nn.Conv2d(48, 32, 3, padding=1)

    def forward(self, x):
        s = F.relu(self.stem(x))
        x = F.relu(self.g1(s))
        n, c, h, w = x.shape
        x = F.relu(self.g2(x.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)))
        x = F.relu(self.c3(torch.cat([x, F.relu(self.l1(s))], 1)))
        return self.fc(x.mean((2, 3)))


def _zero_removed(orig, pruned, names):
    """The original with the output channels the pruned model lost zeroed (found by their distinct biases)."""
    ref = copy.deepcopy(orig)
    mo, mp = dict(ref.named_modules()), dict(pruned.named_modules())
    with torch.no_grad():
        for n in names:
            kept = [int((mo[n].bias == v).nonzero()[0]) for v in mp[n].bias]
            gone = sorted(set(range(len(mo[n].bias))) - set(kept))
            mo[n].weight[gone] = 0
            mo[n].bias[gone] = 0
    return ref


@pytest.mark.parametrize("shuffled", [True, False])
def test_a_channel_shuffle_keeps_its_layer_whole_and_the_function_of_the_masked_original(shuffled):
    torch.manual_seed(0)
    orig = Shuffle(shuffled).eval()
    x = torch.randn(4, 3, 8, 8)
    model = copy.deepcopy(orig)
    plan, notes = _prune(model, x)
    if shuffled:
        # before: g1 was cut to 16 channels as if channel i still fed g2's slot i (outputs off by 7.2 on 6.3)
        assert model.g1.out_channels == 32 and "rearranged" in plan.kept["g1"]
        assert len(notes) == 1 and notes[0].startswith("kept whole: g1: its channels are rearranged")
    else:
        assert model.g1.out_channels == 16 and "g1" not in plan.kept and notes == []
    assert model.g2.out_channels == 16
    with torch.no_grad():
        want = _zero_removed(orig, model, ["g1", "g2"])(x)
        got = model(x)
    assert float((want - got).abs().max()) <= 1e-4 * float(want.abs().max())


def test_a_concat_after_a_shuffle_is_restored_when_the_step_is_redone():
    torch.manual_seed(0)
    orig = ConcatShuffle().eval()
    x = torch.randn(4, 3, 8, 8)
    model = copy.deepcopy(orig)
    plan, notes = _prune(model, x)
    assert (model.g1.out_channels, model.g2.out_channels, model.l1.out_channels, model.c3.out_channels) == \
        (32, 16, 8, 16)
    with torch.no_grad():
        want = _zero_removed(orig, model, ["g2", "l1", "c3"])(x)
        assert float((want - model(x)).abs().max()) <= 1e-4 * float(want.abs().max())
    assert len(notes) == 1 and "g1" in notes[0]


def test_prune_with_a_student_is_refused_before_any_work():
    from edgekit.stages import prune as prune_stage

    # before: the student was ignored and the pruned teacher shipped (1,108 params, not the 260 of the student)
    refused = r"--prune/--sparsity with --student models.py:student: .* drop --student"
    with pytest.raises(UsageError, match=refused) as e:
        prune_stage.run(None, None, PruneConfig(ratio=0.5), DistillConfig(student="models.py:student"),
                        distill_enabled=True)
    assert e.value.exit_code == 2 and "\n" not in str(e.value)


class TiedLM(nn.Module):  # output layer tied to the embedding
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 32)
        self.h1, self.h2 = nn.Linear(32, 64), nn.Linear(64, 32)
        self.out = nn.Linear(32, 50, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(self.h2(F.relu(self.h1(self.emb(ids).mean(1)))))


def test_tied_weights_stay_tied_and_the_count_is_explained():
    torch.manual_seed(0)
    model = TiedLM()
    plan, _ = _prune(model, torch.randint(0, 50, (4, 6)))
    # before: out.weight became 50x16 while emb.weight stayed 50x32, tie broken, no note
    assert model.out.weight is model.emb.weight and tuple(model.emb.weight.shape) == (50, 32)
    assert model.h2.out_features == 32 and model.h1.out_features < 64  # the rest is still pruned
    assert "tied weights" in plan.kept["emb"]
    assert any(n.startswith("tied weights: emb and out share one parameter (1,600 elements)") for n in plan.notes)


class NormPos(nn.Module):  # GroupNorm (exported as InstanceNormalization + Mul + Add) and a sliced positional table
    def __init__(self):
        super().__init__()
        self.conv, self.gn = nn.Conv1d(4, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.pos = nn.Parameter(torch.randn(1, 16, 8))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = self.gn(self.conv(x)).transpose(1, 2)
        return self.fc(y + self.pos[:, :y.shape[1]]).mean(1)


def test_groupnorm_scale_and_a_sliced_learned_table_are_counted(tmp_path):
    from edgekit.artifact import TensorSpec
    from edgekit.dataset import Dataset
    from edgekit.onnxutil import graph_facts
    from edgekit.quant import fp16
    from edgekit.source import SourceModel
    from edgekit.stages.export import export_module

    torch.manual_seed(0)
    net = NormPos().eval()
    x = np.random.default_rng(0).normal(size=(8, 4, 10)).astype(np.float32)
    src = SourceModel(spec="test", kind="torch", module=net, task="classification",
                      inputs=[TensorSpec("x", ["batch", 4, "t"], "float32")], outputs=["y"],
                      dynamic_axes={"x": {0: "batch", 2: "t"}, "y": {0: "batch"}})
    path = tmp_path / "np.fp32.onnx"
    export_module(net, src, path, data=Dataset({"x": x}))
    fp16.convert(path, tmp_path / "np.fp16.onnx")
    want = sum(p.numel() for p in net.parameters())  # 96 + 8 + 16 + 128 + 27 = 275
    # before: 8 gamma missing, 2 + 2 InstanceNormalization placeholders counted, the 128 of pos missing
    assert graph_facts(path)["params"] == want
    assert graph_facts(tmp_path / "np.fp16.onnx")["params"] == want


class FreeParams(nn.Module):  # a bare per-channel Parameter next to an unpruned buffer
    def __init__(self):
        super().__init__()
        self.stem, self.c = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(32))
        self.register_buffer("shift", torch.zeros(32))
        self.c2, self.fc = nn.Conv2d(32, 32, 3, padding=1), nn.Linear(32, 4)

    def forward(self, x):
        x = self.c(F.relu(self.stem(x))) * self.scale[None, :, None, None] + self.shift[None, :, None, None]
        return self.fc(F.relu(self.c2(F.relu(x))).mean((2, 3)))


class GroupedUp(nn.Module):  # a grouped ConvTranspose2d Torch-Pruning cannot cut
    def __init__(self):
        super().__init__()
        self.e, self.m = nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.up, self.out = nn.ConvTranspose2d(32, 16, 2, stride=2, groups=4), nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x):
        return self.out(F.relu(self.up(F.relu(self.m(F.relu(self.e(x)))))))


@pytest.mark.parametrize("net, layer", [(FreeParams, "c"), (GroupedUp, "up")])
def test_prune_errors_name_the_layer_and_exit_2(net, layer):
    torch.manual_seed(0)
    # before: "keep the layers involved with --ignore NAME", exit 1 for the first and 2 for the second
    with pytest.raises(graph.PruneFailure) as e:
        _prune(net(), torch.randn(2, 3, 16, 16))
    assert e.value.exit_code == 2 and f"--ignore {layer}" in str(e.value) and "NAME" not in str(e.value)


def test_fewer_epochs_than_steps_is_said():
    # before: --steps 3 --epochs 2 ran 3 epochs with no word
    assert schedule.epochs_per_step(2, 3) == [1, 1, 1]
    assert schedule.epochs_note(2, 3).startswith("--epochs 2 is fewer than --steps 3: distilled one epoch after "
                                                 "each step, 3 epochs in all")
    assert schedule.epochs_note(6, 3) is None and schedule.epochs_note(10, 3) is None
    assert schedule.epochs_note(0, 3) is None


def test_a_cut_that_changes_the_output_shapes_is_named():
    import torch_pruning as tp

    torch.manual_seed(0)
    ref = Shuffle(False).eval()
    x = torch.randn(2, 3, 8, 8)
    dg = graph.dependency_graph(ref, (x,))
    names = graph._names(ref)
    cut = graph._record(dg.get_pruning_group(ref.fc, tp.prune_linear_out_channels, [0, 1]), dg, *names)
    pruned = copy.deepcopy(ref)
    graph._replay(pruned, cut)
    # before: "pruning changed the model's output shapes ...; keep the output layers with --ignore NAME"
    with pytest.raises(graph.PruneFailure, match=r"\[\(2, 4\)\] -> \[\(2, 2\)\] after cutting fc; .* --ignore fc$"):
        graph._check_runs(pruned, ref, [cut], (x,), [(2, 4)])


def test_a_cut_the_unpruned_model_cannot_take_is_no_crash_of_the_check():
    torch.manual_seed(0)
    ref = Shuffle(False).eval()
    x = torch.randn(2, 3, 8, 8)
    # indices past g2's 32 input channels: masking them cannot be done, and must not end the run
    cut = graph._Cut("g1", [(None, 1, "in", "g2", False, [40, 41])], ["g1"], True)
    assert graph._unfaithful(ref, copy.deepcopy(ref), [cut], (x,)) is None
    assert not ref.g2._forward_pre_hooks


def test_compress_refuses_prune_with_a_student_before_loading_the_model(tmp_path):
    # the refusal came from the prune stage, after the model (here: a file that does not exist) was loaded
    import edgekit

    with pytest.raises(UsageError, match=r"--prune/--sparsity with --student s\.py:student"):
        edgekit.compress(str(tmp_path / "nosuch.py") + ":build", output=str(tmp_path / "out"),
                         prune={"ratio": 0.5}, distill={"student": "s.py:student"})
    assert not (tmp_path / "out").exists()
