"""Tiny seeded models of each kind the prune tests cut, and a SourceModel/RunContext around them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgekit.artifact import Manifest, TensorSpec
from edgekit.context import RunContext
from edgekit.dataset import Dataset
from edgekit.source import SourceModel


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def residual_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        ResBlock(16),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def depthwise_cnn():
    def dw(c):
        return nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c), nn.ReLU6())

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
        dw(16), nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
        dw(32), nn.Conv2d(32, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, 5))


def mlp_bn():
    return nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64), nn.BatchNorm1d(64),
                         nn.ReLU(), nn.Linear(64, 3))


class TorchEncoder(nn.Module):
    """torch's own TransformerEncoderLayer on a token sequence, mean-pooled to a vector."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 32)
        self.layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(32, 16)

    def forward(self, x):
        return self.head(self.layer(self.proj(x)).mean(1))


class MaskedEncoder(nn.Module):
    """nn.TransformerEncoder with a padding mask: in eval mode torch's fast path runs it on nested tensors."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 32)
        layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=True)
        self.head = nn.Linear(32, 16)

    def forward(self, input, attention_mask):
        h = self.enc(self.proj(input), src_key_padding_mask=attention_mask == 0)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp(min=1))


class TinyBert(nn.Module):
    """A 2-layer HuggingFace BERT (random weights) with mean pooling: the MiniLM code path in miniature."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                         attention_probs_dropout_prob=0.0)
        cfg._attn_implementation = "eager"  # plain MatMul/Softmax, as zoo:minilm uses
        self.bert = BertModel(cfg, add_pooling_layer=False)

    def forward(self, input_ids, attention_mask):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)


def init_bn(model, seed=0):
    """Random BN statistics and scales, so pruning criteria have something to rank."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def make_source(module, specs: dict, task="classification", n=32, seed=0, labels=None) -> SourceModel:
    """specs: {name: (shape without batch, dtype, high for ints)}; random real-valued data."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, (shape, dtype, high) in specs.items():
        if dtype == "int64":
            arrays[name] = rng.integers(1, high, size=(n, *shape)).astype(np.int64)
        else:
            arrays[name] = rng.standard_normal((n, *shape)).astype(np.float32)
    if "attention_mask" in arrays:
        arrays["attention_mask"][:] = 1
        arrays["attention_mask"][: n // 2, -3:] = 0  # some padding
    ds = Dataset(arrays, labels, "random test data")
    inputs = [TensorSpec(k, ["batch", *v[0]], v[1]) for k, v in specs.items()]
    dyn = {k: {0: "batch"} for k in specs}
    dyn["output"] = {0: "batch"}
    torch.manual_seed(seed)
    return SourceModel(spec="test:model", kind="torch", inputs=inputs, outputs=["output"], task=task,
                       module=module.eval(), dynamic_axes=dyn, calib=ds, eval=ds, train=ds)


def make_ctx(source, outdir: Path, **kw) -> RunContext:
    return RunContext(outdir=Path(outdir), source=source, manifest=Manifest(), calib=source.calib,
                      eval=source.eval, train=source.train, **kw)
