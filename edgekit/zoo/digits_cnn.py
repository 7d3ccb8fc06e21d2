"""zoo:digits-cnn — a small residual CNN for scikit-learn's 8x8 digits, upsampled to 32x32.

Trained on first use (seeded; about 100 s on an idle 2-core AMD EPYC VM, 12 epochs) and cached under the user's cache
directory, keyed by the architecture version and seed, so later runs load in milliseconds.
"""
from __future__ import annotations

import numpy as np

DESCRIPTION = "residual CNN on scikit-learn digits (8x8 upsampled to 32x32), trained on first use"
ARCH_VERSION = 1
SIZE = 32
# Digits pixels are 0..16; the device pipeline scales them to uint8 0..255 then normalises.
MEAN, STD = 0.2, 0.3


def build_model(width: int = 32):
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.relu = nn.ReLU()

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return self.relu(x + y)

    def down(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    w = width
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
        Block(w),
        down(w, 2 * w), Block(2 * w),
        down(2 * w, 4 * w), Block(4 * w),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10),
    )


def digits_arrays(seed: int = 0):
    """(x_train, y_train, x_test, y_test): float32 N x 1 x 32 x 32, normalised; a fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = preprocess(d.images)
    y = d.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.3, random_state=seed, stratify=y)[0::1]


def preprocess(images_8x8: np.ndarray) -> np.ndarray:
    """0..16 digit images -> model input; the same maths as the declared prepost spec."""
    import torch
    import torch.nn.functional as F

    u8 = np.clip(np.rint(np.asarray(images_8x8, np.float32) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    t = torch.from_numpy(u8.astype(np.float32) / 255.0)[:, None]
    t = F.interpolate(t, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return ((t - MEAN) / STD).numpy().astype(np.float32)


PREPOST = {
    "pre": [{"op": "resize_normalize", "size": [SIZE, SIZE], "mean": [MEAN * 255.0], "std": [STD * 255.0],
             "layout": "NCHW"}],
    "post": [{"op": "softmax_topk", "k": 3}],
}


def train(seed: int = 0, epochs: int = 12, progress=None):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    xtr, xte, ytr, yte = digits_arrays(seed)
    model = build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(xtr) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    g = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            xb = xt[idx]
            # small random shifts: cheap augmentation that keeps the tiny set from being memorised
            xb = torch.roll(xb, shifts=(int(torch.randint(-2, 3, (1,), generator=g)),
                                        int(torch.randint(-2, 3, (1,), generator=g))), dims=(2, 3))
            loss = F.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if progress:
            progress(ep + 1, epochs, loss.item())
    model.eval()
    return model


def load(seed: int = 0):
    import torch

    from ..artifact import TensorSpec
    from ..dataset import Dataset
    from ..fsutil import atomic_path, cache_dir, sha256_file
    from ..progress import task
    from ..source import SourceModel

    path = cache_dir() / "zoo" / f"digits-cnn-v{ARCH_VERSION}-seed{seed}.pt"
    model = build_model()
    if path.exists():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception:  # a corrupt cache entry is retrained, never trusted
            path.unlink(missing_ok=True)
    if not path.exists():
        with task("training zoo:digits-cnn (first use, cached afterwards)", total=12) as t:
            model = train(seed, progress=lambda ep, n, loss: t.update(ep, f"loss {loss:.3f}"))
        with atomic_path(path) as tmp:
            torch.save(model.state_dict(), tmp)
    model.eval()
    xtr, xte, ytr, yte = digits_arrays(seed)
    rng = np.random.default_rng(seed)
    calib_idx = rng.choice(len(xtr), size=min(256, len(xtr)), replace=False)
    return SourceModel(
        spec="zoo:digits-cnn", kind="torch", task="classification", module=model,
        inputs=[TensorSpec("input", ["batch", 1, SIZE, SIZE], "float32")], outputs=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        preprocess=PREPOST,
        calib=Dataset({"input": xtr[calib_idx]}, None, "zoo:digits-cnn train split (256 samples)"),
        eval=Dataset({"input": xte}, yte, "zoo:digits-cnn held-out split"),
        train=Dataset({"input": xtr}, ytr, "zoo:digits-cnn train split"),
        weights=str(path), weights_sha256=sha256_file(path), description=DESCRIPTION,
    )
