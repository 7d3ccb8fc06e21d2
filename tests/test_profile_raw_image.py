"""profile --with-prepost --raw takes an image file, as its help suggests: a .png was 'not a readable .npy raw
input: This file contains pickled (object) data'. It is decoded to the channels the model takes."""
import json

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from tests.cliutil import run_cli

PRE = {"pre": [{"op": "resize_normalize", "size": [8, 8], "mean": [0.0], "std": [255.0], "layout": "NCHW"}],
       "post": [{"op": "softmax_topk", "k": 2}]}


def test_raw_image_files_feed_the_pre_processing(tmp_path, capsys):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 3)).eval()  # one grey channel
    torch.onnx.export(net, (torch.randn(2, 1, 8, 8),), str(tmp_path / "m.onnx"), input_names=["img"],
                      output_names=["y"], dynamic_axes={"img": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    np.save(tmp_path / "c.npy", np.random.default_rng(0).uniform(0, 1, size=(16, 1, 8, 8)).astype(np.float32))
    out = tmp_path / "out"
    assert run_cli(["compress", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "c.npy"), "--quantize", "none",
                    "--no-profile", "--preprocess", json.dumps(PRE), "-o", str(out)]) == 0
    rgb = np.random.default_rng(1).integers(0, 255, size=(30, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg")
    np.save(tmp_path / "raw.npy", rgb[:, :, :1])
    (tmp_path / "notes.npy").write_text("not an array")
    quick = ["--max-seconds", "0.3", "--min-seconds", "0.05", "--min-runs", "3", "--no-op-profile", "--json"]
    for raw, shape in (("photo.jpg", [30, 20]), ("raw.npy", [30, 20, 1])):  # an RGB photo read as grey
        capsys.readouterr()
        assert run_cli(["profile", str(out), "--with-prepost", "--raw", str(tmp_path / raw), *quick]) == 0
        res = json.loads(capsys.readouterr().out)["runs"][0]["results"]["fp32"]["prepost"]
        assert res["status"] == "ok" and res["raw_input"] == "given" and res["raw_shape"] == shape, res
        assert res["e2e"]["p50_ms"] > 0
    (tmp_path / "broken.png").write_bytes(b"not a png")
    for raw, words in (("notes.npy", "not a .npy file (no NPY header) nor an image"),
                       ("broken.png", "not a readable image (cannot identify image file"),
                       ("missing.png", "not a readable image"), ("missing.npy", "not a readable raw input")):
        rc = run_cli(["profile", str(out), "--with-prepost", "--raw", str(tmp_path / raw), *quick])
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("edgekit: error")]
        assert rc == 2 and len(err) == 1 and f"{raw}: {words}" in err[0], err
