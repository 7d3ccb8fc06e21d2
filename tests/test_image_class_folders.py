"""A folder of class folders (torchvision's ImageFolder layout: root/cat/1.png, root/dog/2.png) gives labels,
so an image model's accuracy is measured on real labelled images; it was 'no images in this folder'."""
import json

import numpy as np
import pytest
from PIL import Image

from cliutil import run_cli
from edgekit.calibration import read_dataset

SPEC = [{"name": "x", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]

# two classes told apart by brightness: logits [mean - 0.5, 0.5 - mean] of 0..1 pixels
MODEL_PY = '''
import torch, torch.nn as nn


class Bright(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 2)
        with torch.no_grad():
            self.lin.weight[0] = 1 / 64
            self.lin.weight[1] = -1 / 64
            self.lin.bias[:] = torch.tensor([-0.5, 0.5])

    def forward(self, x):
        return self.lin(x.flatten(1))


def build():
    return Bright()
'''


def _png(path, level, rng):
    path.parent.mkdir(parents=True, exist_ok=True)
    px = np.clip(rng.normal(level, 20, size=(8, 8)), 0, 255).astype(np.uint8)
    Image.fromarray(px).save(path)


def _classes(root, counts: dict, seed=0):
    """counts: class folder -> (images, pixel level); the images of each class alike in brightness."""
    rng = np.random.default_rng(seed)
    for cls, (n, level) in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _png(root / cls / f"{i:03d}.png", level, rng)
    return root


def test_class_folders_give_labels_in_sorted_order_interleaved(tmp_path):
    root = _classes(tmp_path / "data", {"dog": (3, 200), "cat": (2, 40), "emu": (0, 0)})
    _png(root / "dog" / "puppies" / "p.png", 200, np.random.default_rng(1))  # deeper inside a class: its class
    _png(root / ".ipynb_checkpoints" / "c.png", 0, np.random.default_rng(1))  # hidden folders are no class
    _png(root / "cat" / "._a.png", 0, np.random.default_rng(1))
    (root / "cat" / "notes.txt").write_text("not an image")
    ds = read_dataset(root, SPEC, labels=True)
    # cat=0, dog=1, emu=2 (empty, still numbered: a model trained on the full folder has it there)
    assert ds.extra["classes"] == ["cat", "dog", "emu"] and ds.extra["empty_classes"] == ["emu"]
    assert ds.extra["files"] == ["cat/000.png", "dog/000.png", "cat/001.png", "dog/001.png", "dog/002.png",
                                 "dog/puppies/p.png"]
    assert ds.labels.tolist() == [0, 1, 0, 1, 1, 1]
    assert ds.extra["hidden_skipped"] == 2
    x = ds.inputs["x"][:6]
    assert x.shape == (6, 1, 8, 8) and x[0].mean() < 0.3 < 0.6 < x[1].mean()  # dark cat, bright dog
    assert read_dataset(root, SPEC, labels=False).labels is None  # calibration reads no labels
    head = read_dataset(root, SPEC, labels=True, limit=3)
    assert head.labels.tolist() == [0, 1, 0] and len(head) == 3
    # images straight in the folder stay one unlabelled set, whatever subfolders it also has
    _png(root / "loose.png", 100, np.random.default_rng(2))
    flat = read_dataset(root, SPEC, labels=True)
    assert flat.labels is None and flat.extra["files"] == ["loose.png"] and "classes" not in flat.extra


def test_the_class_numbering_is_noted_for_each_labelled_set(tmp_path):
    from edgekit.config import Tolerance
    from edgekit.data_size import small_data_notes

    root = _classes(tmp_path / "data", {"b": (2, 200), "a": (2, 40)})
    labelled, unlabelled = read_dataset(root, SPEC, labels=True), read_dataset(root, SPEC)
    notes = small_data_notes("classification", unlabelled, None, tolerance=Tolerance(), static_int8=False,
                             train=labelled)  # --train's labels feed distillation: its numbering matters too
    assert [n for n in notes if "class folders" in n] == [
        f"{root}: labels from its 2 class folders, numbered in sorted order as torchvision's ImageFolder numbers "
        "them (a=0, b=1)"]
    # one folder as --eval and --train (read twice, two datasets): each note once
    (root / "b" / "._x.png").write_bytes(b"")
    twice = small_data_notes("classification", None, read_dataset(root, SPEC, labels=True), tolerance=Tolerance(),
                             static_int8=False, train=read_dataset(root, SPEC, labels=True))
    assert sum("class folders" in n for n in twice) == 1 and sum("hidden file" in n for n in twice) == 1, twice


@pytest.mark.parametrize("ext", [".webp", ".tif"])
def test_webp_and_tiff_images_are_read(tmp_path, ext):
    rng = np.random.default_rng(0)
    px = rng.integers(0, 255, size=(8, 8), dtype=np.uint8)
    Image.fromarray(px).save(tmp_path / f"a{ext}", **({"lossless": True} if ext == ".webp" else {}))
    x = read_dataset(tmp_path, SPEC).inputs["x"][:1]
    assert np.allclose(x[0, 0], px / 255.0, atol=1e-6)


def test_compress_scores_accuracy_on_class_folders_and_names_their_faults(tmp_path, capsys):
    import torch

    (tmp_path / "m.py").write_text(MODEL_PY)
    ns = {}
    exec(MODEL_PY, ns)
    torch.save(ns["build"]().state_dict(), tmp_path / "m.pt")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.uniform(0, 1, size=(64, 1, 8, 8)).astype(np.float32))
    common = ["--weights", str(tmp_path / "m.pt"), "--calib", str(tmp_path / "calib.npy"), "--input-shape", "1,1,8,8", "--quantize", "none",
              "--no-profile"]
    data = _classes(tmp_path / "eval", {"bright": (30, 200), "dark": (30, 50)})
    out = tmp_path / "out"
    assert run_cli(["compress", f"{tmp_path / 'm.py'}:build", "--eval", str(data), "-o", str(out), *common]) == 0
    err = capsys.readouterr().err
    assert "eval: labels from its 2 class folders, numbered in sorted order" in err and "bright=0, dark=1" in err
    man = json.loads((out / "manifest.json").read_text())
    assert man["data"]["eval"]["classes"] == ["bright", "dark"] and man["data"]["eval"]["samples"] == 60
    fp32 = man["artifacts"][0]["metrics"]
    assert fp32["name"] == "accuracy" and fp32["value"] == 1.0, fp32

    # the same images under names whose sorted order is the model's other way round: scored against the labels
    (data / "bright").rename(data / "x_bright")
    out2 = tmp_path / "out2"
    assert run_cli(["compress", f"{tmp_path / 'm.py'}:build", "--eval", str(data), "-o", str(out2), *common]) == 0
    err = capsys.readouterr().err
    assert json.loads((out2 / "manifest.json").read_text())["artifacts"][0]["metrics"]["value"] == 0.0
    assert "that its class folders, in sorted order, follow the model's class order" in err, err

    # more class folders than the model has classes: one line, exit 2, nothing written
    _classes(data, {"grey": (5, 128)})
    out3 = tmp_path / "out3"
    rc = run_cli(["compress", f"{tmp_path / 'm.py'}:build", "--eval", str(data), "-o", str(out3), *common])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("edgekit: error")]
    assert rc == 2 and len(err) == 1 and not out3.exists(), err
    assert f"{data}: 3 class folders (dark, grey, x_bright, ...) but the model's output has 2 classes" in err[0]

    # neither images nor class folders holding any
    (tmp_path / "none" / "cat").mkdir(parents=True)
    rc = run_cli(["compress", f"{tmp_path / 'm.py'}:build", "--eval", str(tmp_path / "none"), "-o",
                  str(tmp_path / "out4"), *common])
    assert rc == 2 and "none: no images (.jpg" in capsys.readouterr().err
