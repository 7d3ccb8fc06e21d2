"""A manifest whose prepost spec cannot run (a folder written before compress checked its spec, or edited by
hand) is one line naming that manifest under profile --with-prepost, not an internal error."""
import json

import numpy as np
import torch
import torch.nn as nn

from tests.cliutil import run_cli


def test_profile_with_prepost_names_a_manifest_whose_spec_cannot_run(tmp_path, capsys):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4)).eval()
    torch.onnx.export(net, (torch.randn(2, 6),), str(tmp_path / "m.onnx"), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    np.save(tmp_path / "c.npy", np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32))
    out = tmp_path / "out"
    assert run_cli(["compress", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npy"), "--quantize", "none",
                    "--no-profile", "--preprocess", '{"post": [{"op": "softmax_topk", "k": 2}]}', "-o", str(out)]) == 0
    manifest = out / "manifest.json"
    m = json.loads(manifest.read_text())
    m["prepost"] = {"post": [{"op": "softmax_topk", "k": 0}]}
    manifest.write_text(json.dumps(m))
    capsys.readouterr()
    rc = run_cli(["profile", str(out), "--with-prepost", "--max-seconds", "0.5", "--min-seconds", "0.1"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("edgekit: error")]
    assert len(lines) == 1 and str(manifest) in lines[0] and "k: 0" in lines[0], err
    assert "internal error" not in err
