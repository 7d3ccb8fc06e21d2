"""The models of benchmarks/tasks/run.py, importable by `edgekit compress models.py:NAME`."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.f1, self.f2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        return x * F.hardsigmoid(self.f2(F.relu(self.f1(F.adaptive_avg_pool2d(x, 1)))))


def _block(cin, cout, stride):
    mid = cin * 3
    return nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.Hardswish(),
                         nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.Hardswish(),
                         SE(mid), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))


def mobile():
    """MobileNetV3-like: depthwise convs, Hardswish, squeeze-excite."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
                         _block(16, 24, 2), _block(24, 32, 2),
                         nn.Conv2d(32, 64, 1), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(64, 10))


def multilabel():
    """4 yes/no labels per digit (even, >= 5, prime, multiple of 3): logits for BCEWithLogitsLoss."""
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))


class Seg(nn.Module):
    """Background / faint stroke / solid stroke per pixel, with a bilinear upsampling skip."""

    def __init__(self):
        super().__init__()
        self.e1 = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.e2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.d = nn.Sequential(nn.Conv2d(48, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 1))

    def forward(self, x):
        a = self.e1(x)
        b = F.interpolate(self.e2(a), scale_factor=2, mode="bilinear", align_corners=False)
        return self.d(torch.cat([a, b], 1))


def seg():
    return Seg()
