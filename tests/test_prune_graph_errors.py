"""A model whose channel dependencies Torch-Pruning cannot trace is one clear line, not an internal error."""
from __future__ import annotations

import numpy as np
import pytest

from tests.cliutil import prune_model_file

SHUFFLE = '''
import torch
import torch.nn as nn


def shuffle(x):
    b, c, h, w = x.shape
    return x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)


class Unit(nn.Module):
    """torchvision's ShuffleNetV2 unit: at stride 2 two branches of the input, else half the channels
    through one branch, concatenated, then the channel shuffle (the channel axis regrouped by view /
    transpose / view)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin), nn.BatchNorm2d(cin),
                                         nn.Conv2d(cin, half, 1), nn.BatchNorm2d(half), nn.ReLU())
        self.branch2 = nn.Sequential(nn.Conv2d(cin if stride > 1 else half, half, 1), nn.BatchNorm2d(half), nn.ReLU(),
                                     nn.Conv2d(half, half, 3, stride, 1, groups=half), nn.BatchNorm2d(half),
                                     nn.Conv2d(half, half, 1), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            return shuffle(torch.cat((x1, self.branch2(x2)), dim=1))
        return shuffle(torch.cat((self.branch1(x), self.branch2(x)), dim=1))


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), Unit(8, 16, 2), Unit(16, 16, 1), Unit(16, 16, 1),
                         Unit(16, 16, 1), Unit(16, 32, 2),
                         nn.Conv2d(32, 64, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, 4)).eval()
'''


def test_a_channel_shuffle_is_named_as_what_torch_pruning_cannot_trace(tmp_path, capsys):
    # was "edgekit: internal error: ZeroDivisionError: integer division or modulo by zero" (torchvision's
    # shufflenet_v2_x0_5)
    rc, err, out = prune_model_file(tmp_path, capsys, SHUFFLE, shape=(3, 12, 12), samples=16)
    assert rc == 2, err
    line = [ln for ln in err.splitlines() if ln.startswith("edgekit: error")]
    assert len(line) == 1, err
    assert "Torch-Pruning cannot trace this model's channel dependencies: ZeroDivisionError in " in line[0]
    assert "channel shuffle" in line[0] and "nothing was pruned" in line[0]
    assert "internal error" not in err
    assert not out.exists()


LINEAR_ATTENTION = '''
import torch
import torch.nn as nn


class LinAttn(nn.Module):
    """MobileViTv2's separable self-attention: one 1x1 conv makes q (1 channel), k and v, split by sizes
    the module holds."""

    def __init__(self, d):
        super().__init__()
        self.d = d
        self.qkv = nn.Conv2d(d, 1 + 2 * d, 1)
        self.out = nn.Conv2d(d, d, 1)

    def forward(self, x):
        q, k, v = torch.split(self.qkv(x), [1, self.d, self.d], dim=1)
        ctx = (k * q.flatten(2).softmax(-1).view_as(q)).sum((2, 3), keepdim=True)
        return self.out(torch.relu(v) * ctx)


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         LinAttn(16), nn.ReLU(), nn.Conv2d(16, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 4)).eval()
'''


def test_a_layer_whose_cut_stops_the_model_running_is_kept_whole_and_the_rest_pruned(tmp_path, capsys):
    # timm's MobileViTv2 was "the pruned model no longer runs after cutting ...qkv_proj (RuntimeError:
    # split_with_sizes expects split_sizes to sum exactly to ...)", nothing pruned
    import json

    import onnxruntime as ort

    rc, err, out = prune_model_file(tmp_path, capsys, LINEAR_ATTENTION, shape=(3, 12, 12), samples=16)
    assert rc == 0, err
    assert "kept whole: 4.qkv: cutting its channels stopped the model from running (RuntimeError: split" in err
    rec = json.loads((out / "pruning.json").read_text())
    assert any(k.startswith("4.qkv (cutting its channels stopped") for k in rec["ignored"])
    assert rec["params_after"] < rec["params_before"]
    assert rec["channels"]["2"][1] < 16 and rec["channels"]["4.qkv"][:2] == [33, 33]  # [before, after, cut]
    sess = ort.InferenceSession(str(out / "model.pruned.onnx"))
    x = np.load(tmp_path / "x.npy")[:2]
    assert sess.run(None, {sess.get_inputs()[0].name: x})[0].shape == (2, 4)


FUSED_QKV_WITH_POSITIONS = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    """Attention as users write it: one Linear makes q, k and v, reshaped by the head count it holds."""

    def __init__(self, d=32, h=4):
        super().__init__()
        self.h = h
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.n1(x)).reshape(b, n, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4).unbind(0)
        x = x + self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.n2(x))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(8, 32)
        self.pos = nn.Parameter(torch.randn(1, 8, 32) * 0.1)  # a bare Parameter in the residual stream
        self.blocks = nn.Sequential(Block(), Block())
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc(self.blocks(self.emb(x) + self.pos).mean(1))


def net():
    torch.manual_seed(0)
    return Net().eval()
'''


def test_layers_cut_with_a_bare_parameter_are_kept_whole_by_starting_again(tmp_path, capsys):
    # was "the pruned model no longer runs after cutting blocks.1.mlp.2, ..., emb, ... (RuntimeError: shape
    # '[2, 8, 3, 4, 6]' is invalid ...); keep the layers involved whole with --ignore ..." (eleven flags): the
    # step that keeps such layers whole cannot undo the cut of `pos`, which the dependency graph holds by object
    import json

    import onnxruntime as ort

    rc, err, out = prune_model_file(tmp_path, capsys, FUSED_QKV_WITH_POSITIONS, shape=(8, 8), samples=16)
    assert rc == 0, err
    assert "pruned again from the unpruned model with them kept whole" in err
    rec = json.loads((out / "pruning.json").read_text())
    assert rec["params_after"] < rec["params_before"]
    ch = rec["channels"]
    assert ch["blocks.0.mlp.0"][1] < 128 and ch["blocks.1.mlp.0"][1] < 128  # the MLP width is cut
    assert ch["blocks.0.qkv"][:2] == [96, 96] and ch["emb"][:2] == [32, 32]  # the heads and the stream are not
    assert not any(k.endswith("(user)") for k in rec["ignored"]), rec["ignored"]  # no --ignore was given
    assert any(k.startswith("blocks.0.qkv (cutting its channels stopped the model from running") for k in rec["ignored"])
    sess = ort.InferenceSession(str(out / "model.pruned.onnx"))
    x = np.load(tmp_path / "x.npy")[:2]
    assert sess.run(None, {sess.get_inputs()[0].name: x})[0].shape == (2, 4)


GPT2_LIKE_FIXED_HEADS = '''
import torch
import torch.nn as nn


class Attn(nn.Module):
    """GPT-2's attribute names, but forward() views by a head count fixed at construction."""

    def __init__(self, d=32, h=4):
        super().__init__()
        self.num_heads, self.head_dim, self.split_size = h, d // h, d
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fixed = h

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t.view(b, n, self.fixed, -1).transpose(1, 2) for t in self.c_attn(x).split(self.split_size, 2))
        a = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, -1) @ v
        return x + self.c_proj(a.transpose(1, 2).reshape(b, n, -1))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(8, 32)
        self.attn = Attn()
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc(self.attn(self.emb(x)).mean(1))


def net():
    torch.manual_seed(0)
    return Net().eval()
'''


def test_a_head_cut_the_forward_cannot_follow_is_one_line_naming_head_ratio(tmp_path, capsys):
    # forward() views by the head count it was built with: after the cut it still runs, with the remaining
    # channels regrouped into heads of another size, which is another function
    from tests.cliutil import run_cli

    (tmp_path / "model.py").write_text(GPT2_LIKE_FIXED_HEADS)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(16, 8, 8)).astype(np.float32))
    rc = run_cli(["prune", f"{tmp_path / 'model.py'}:net", "--calib", str(tmp_path / "x.npy"), "--ratio", "0.3",
                  "--head-ratio", "0.5", "--no-distill", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("edgekit: error")]
    assert rc == 2 and len(lines) == 1, err
    assert "cutting attention heads in c_attn changed what the model computes" in lines[0], lines[0]
    assert "without --head-ratio" in lines[0]
    assert not (tmp_path / "out" / "pruned.pt").exists()


PER_CHANNEL_BUFFERS = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class FrozenBN(nn.Module):
    """torchvision's FrozenBatchNorm2d: a BatchNorm whose statistics and affine terms are buffers."""

    def __init__(self, c):
        super().__init__()
        for k, v in (("weight", torch.rand(c) + 0.5), ("bias", torch.randn(c) * 0.1),
                     ("running_mean", torch.randn(c) * 0.1), ("running_var", torch.rand(c) + 0.5)):
            self.register_buffer(k, v)

    def forward(self, x):
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        return x * scale.view(1, -1, 1, 1) + (self.bias - self.running_mean * scale).view(1, -1, 1, 1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 32).view(1, 32, 1, 1))  # a fixed per-channel scale
        self.c3 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn3 = FrozenBN(32)
        self.register_buffer("shift", torch.linspace(-0.1, 0.1, 32).view(1, 32, 1, 1), persistent=False)
        self.fc = nn.Linear(32, 4)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x) * self.scale)
        x = F.relu(self.bn3(self.c3(x)) + self.shift)
        return self.fc(x.mean((2, 3)))


def net():
    torch.manual_seed(0)
    return Net().eval()
'''


def test_per_channel_buffers_are_cut_with_their_channels(tmp_path, capsys):
    # c2's output times a registered [1, 32, 1, 1] scale, and c3 into a FrozenBatchNorm2d (statistics held as
    # buffers) were "kept whole: c2: cutting its channels stopped the model from running (RuntimeError: The size
    # of tensor a (24) must match the size of tensor b (32) ...)": Torch-Pruning does not see buffers
    import importlib.util
    import json

    import onnxruntime as ort
    import torch

    from edgekit.errors import InputError
    from edgekit.pruning import serialize

    rc, err, out = prune_model_file(tmp_path, capsys, PER_CHANNEL_BUFFERS, shape=(3, 8, 8), samples=16, ratio=0.5)
    assert rc == 0, err
    assert "pruned again from the unpruned model with them cut too" in err
    rec = json.loads((out / "pruning.json").read_text())
    assert rec["channels"]["c2"][1] < 32 and rec["channels"]["c3"][1] < 32, rec["channels"]
    assert not any(k.startswith(("c2", "c3")) for k in rec["ignored"]), rec["ignored"]

    # by path: other tests' model.py files are imported as `model` in this process too
    spec = importlib.util.spec_from_file_location("per_channel_buffers_model", tmp_path / "model.py")
    user = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(user)
    ref = user.net()
    pruned = serialize.apply(user.net(), serialize.read(out / "pruned.pt"))
    # still buffers (not trained, not parameters), of the cut size, holding the kept channels' own values
    assert {n for n, _ in pruned.named_parameters()}.isdisjoint({"scale", "shift", "bn3.weight", "bn3.running_var"})
    bufs = dict(pruned.named_buffers())
    n2, n3 = rec["channels"]["c2"][1], rec["channels"]["c3"][1]
    assert bufs["scale"].shape == (1, n2, 1, 1) and bufs["bn3.running_var"].shape == (n3,)
    assert bufs["shift"].shape == (1, n3, 1, 1)  # non-persistent: carried by pruned.pt beside the state dict
    for name in ("scale", "shift", "bn3.running_var", "bn3.weight"):
        whole = dict(ref.named_buffers())[name].flatten()
        kept = bufs[name].flatten()
        assert all(bool((whole == v).any()) for v in kept), name
    assert torch.all(bufs["scale"].flatten().diff() > 0)  # the kept channels, in order

    sess = ort.InferenceSession(str(out / "model.pruned.onnx"))
    x = np.load(tmp_path / "x.npy")[:4]
    with torch.no_grad():
        want = pruned(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(sess.run(None, {sess.get_inputs()[0].name: x})[0], want, rtol=1e-4, atol=1e-5)

    # a pruned.pt whose buffers the factory's model does not have is one line, not a silent skip
    obj = serialize.read(out / "pruned.pt")
    obj["buffers"] = {"c2.shift": obj["buffers"]["shift"]}
    with pytest.raises(InputError, match=r"^pruned model: buffer 'c2.shift' not in the base architecture"):
        serialize.apply(user.net(), obj)
