"""A transformer graph onnxruntime's attention fusion does not recognise (torch's nn.TransformerEncoder) gets no
fused dynamic INT8 candidates: two trials of the budget went to "error: graph has no BERT-like attention to
fuse", printed as errors beside the real ones."""
import json

import numpy as np
import torch
import torch.nn as nn

from tests.test_quant_cli import _cli


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), 2)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.enc(self.inp(x)).mean(1))


def test_an_encoder_the_fusion_does_not_know_spends_no_trial_on_it(tmp_path):
    torch.manual_seed(0)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused encoder fast path has no ONNX export
    try:
        torch.onnx.export(Encoder().eval(), (torch.randn(2, 8, 8),), str(tmp_path / "enc.onnx"), input_names=["x"],
                          dynamic_axes={"x": {0: "n"}}, dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).normal(size=(64, 8, 8)).astype(np.float32))
    r = _cli("quantize", "enc.onnx", "--calib", "calib.npy", "--max-trials", "4", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    q = json.loads((tmp_path / "out" / "manifest.json").read_text())["quantization"]["enc.onnx"]
    trials = q["trials"]
    assert q["graph"]["transformer_like"] is True
    assert not [t for t in trials if t.get("error")], trials
    assert trials[0]["name"] == "dynamic per-channel" and len(trials) >= 2
    assert any("finds no BERT-like attention" in n for n in q["notes"]), q["notes"]
