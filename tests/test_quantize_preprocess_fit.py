"""edgekit quantize --preprocess runs the declared pre steps on a sample against the model's input, as
compress does: the spec ships in the manifest, and a resize to an image for a model taking [N, 6] vectors
was written there and failed on the device for every input."""
import json

import numpy as np
import torch
import torch.nn as nn

from tests.cliutil import run_cli


def _model(tmp_path):
    torch.manual_seed(0)
    torch.onnx.export(nn.Sequential(nn.Linear(6, 4)).eval(), (torch.randn(2, 6),), str(tmp_path / "m.onnx"),
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    np.save(tmp_path / "c.npy", np.random.default_rng(0).normal(size=(16, 6)).astype(np.float32))


def test_quantize_refuses_a_pre_step_that_cannot_feed_the_model(tmp_path, capsys):
    _model(tmp_path)
    spec = tmp_path / "pre.json"
    spec.write_text(json.dumps({"pre": [{"op": "resize_normalize", "size": [8, 8], "mean": [0.5], "std": [0.5],
                                         "layout": "NCHW"}]}))
    rc = run_cli(["quantize", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npy"), "--preprocess",
                  str(spec), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2, err
    line = [ln for ln in err.splitlines() if ln.startswith("edgekit: error")]
    assert len(line) == 1 and "pre.json" in line[0], err
    assert not (tmp_path / "out").exists()


def test_quantize_keeps_a_post_only_spec_that_fits(tmp_path, capsys):
    _model(tmp_path)
    rc = run_cli(["quantize", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npy"), "--preprocess",
                  '{"post": [{"op": "softmax_topk", "k": 2}]}', "-o", str(tmp_path / "out")])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["prepost"]["post"][0]["k"] == 2
