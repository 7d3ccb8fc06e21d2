"""A model whose channel dependencies Torch-Pruning cannot trace is one clear line, not an internal error."""
from __future__ import annotations

import numpy as np

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
