"""--task segmentation: class scores per position [N, C, d1, ...] (classes on axis 1) are scored per
position. Without it such a model was scored by the cosine of its flattened scores, which hid flipped
pixels: a small U-Net's INT8 read fidelity 0.99998 while 0.1% of its pixels changed class."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from cliutil import run_cli

MODEL_PY = '''
import torch
import torch.nn as nn


class Seg(nn.Module):
    def __init__(self):
        super().__init__()
        self.e1 = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU())
        self.e2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.d = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 1))

    def forward(self, x):
        a = self.e1(x)
        return self.d(torch.cat([a, self.up(self.e2(a))], 1))


def build():
    return Seg()
'''


def _masks(images):
    """3 classes per pixel of the digits: background, faint stroke, solid stroke."""
    return np.digitize(images, [0.2, 0.6]).astype(np.int64)


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    from sklearn.datasets import load_digits

    d = tmp_path_factory.mktemp("seg")
    (d / "m.py").write_text(MODEL_PY)
    ns = {}
    exec(MODEL_PY, ns)
    torch.manual_seed(0)
    model = ns["build"]()
    x = (load_digits().images / 16.0).astype(np.float32)[:, None]
    y = _masks(x[:, 0])
    xt, yt = torch.from_numpy(x[:1000]), torch.from_numpy(y[:1000])
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for epoch in range(8):
        for i in range(0, 1000, 50):
            loss = F.cross_entropy(model(xt[i:i + 50]), yt[i:i + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.save(model.state_dict(), d / "m.pt")
    model.eval()
    torch.onnx.export(model, (xt[:2],), str(d / "m.onnx"), input_names=["x"], output_names=["scores"],
                      dynamic_axes={"x": {0: "batch"}, "scores": {0: "batch"}}, opset_version=17, dynamo=False)
    ev_y = y[1000:1400].copy()
    ev_y[:, 0, :] = -1  # the top row is not scored
    np.save(d / "calib.npy", x[:200])
    np.savez(d / "eval.npz", x=x[1000:1400], y=ev_y)
    np.savez(d / "eval_nolabels.npz", x=x[1000:1400])
    np.savez(d / "train.npz", x=x[:1000], y=y[:1000])
    np.savez(d / "eval_rows.npz", x=x[1000:1400], y=ev_y[:, :7])  # one row short
    np.savez(d / "eval_classes.npz", x=x[1000:1400], y=ev_y * 2)  # classes 0, 2, 4 of 3
    np.savez(d / "eval_per_sample.npz", x=x[1000:1400], y=ev_y[:, 4, 4].clip(0))
    np.savez(d / "eval_fractions.npz", x=x[1000:1400], y=ev_y * 0.5)  # 0.5: no class index
    np.savez(d / "eval_unscored.npz", x=x[1000:1400], y=np.full_like(ev_y, -1))
    np.savez(d / "train_rows.npz", x=x[:1000], y=y[:1000, :7])
    (d / "eval_corrupt.npz").write_bytes((d / "eval.npz").read_bytes()[:200])  # cut short
    return d


def _miou(pred, labels, classes):
    """Per class |pred & label| / |pred | label| over scored positions, averaged over classes present."""
    keep = labels >= 0
    ious = []
    for c in range(classes):
        p, t = (pred == c) & keep, (labels == c) & keep
        if (p | t).any():
            ious.append((p & t).sum() / (p | t).sum())
    return float(np.mean(ious))


def _outputs(path, x):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def test_pixel_metrics():
    from edgekit.evaluate import metric_name, per_output, pixel_accuracy, score

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4, 3, 5, 6)).astype(np.float32)
    labels = ref.argmax(1)
    got = ref.copy()
    # one position of sample 0 changes class, by the smallest margin: the cosine barely moves
    c0, c1 = np.argsort(ref[0, :, 2, 3])[-2:]
    got[0, c0, 2, 3] = ref[0, c1, 2, 3] + 1e-3
    expect = _miou(got.argmax(1), labels, 3)
    assert expect < 1.0
    assert per_output([got], "segmentation", [ref])[0] == pytest.approx(expect)
    assert per_output([got], "generic", [ref])[0] > 0.999
    assert score([got], "segmentation", labels) == pytest.approx(expect)
    assert pixel_accuracy(got, labels) == pytest.approx(1 - 1 / labels.size)
    labels[0, 2, 3] = -1  # a position not scored drops out of every count
    assert score([got], "segmentation", labels) == 1.0
    labels[:, :, :3] = -1
    assert pixel_accuracy(got, labels) == 1.0
    assert metric_name("segmentation", True) == "miou"
    assert metric_name("segmentation", False) == "miou_agreement"


def test_mean_iou_sees_a_small_class_wiped_out_that_pixel_accuracy_hides():
    """Pixel accuracy is mostly background: a class on 0.5% of the pixels, lost entirely, moved it by 0.5%,
    within the default 1% tolerance; its IoU falls from 1 to 0, and the mean over 3 classes by a third."""
    from edgekit.evaluate import pixel_accuracy, score

    labels = np.zeros((10, 20, 20), np.int64)
    labels[:, 10:, :] = 1  # half the map
    labels[:, 0, :2] = 2  # 20 of 4000 pixels
    ref = np.eye(3, dtype=np.float32)[labels].transpose(0, 3, 1, 2)  # FP32 gets every pixel right
    got = ref.copy()
    got[:, 2] = -1.0  # the small class is never predicted: those pixels fall to background
    assert pixel_accuracy(got, labels) == pytest.approx(1 - 20 / 4000)
    assert score([got], "segmentation", labels) == pytest.approx(_miou(got.argmax(1), labels, 3))
    assert score([got], "segmentation", labels) < 0.67
    assert score([got], "segmentation", None, [ref]) < 0.67  # against FP32's classes alike


def test_segmentation_compress_prunes_distills_and_scores_per_pixel(seg, tmp_path):
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{seg / 'm.py'}:build", "--weights", str(seg / "m.pt"), "--calib",
                  str(seg / "calib.npy"), "--eval", str(seg / "eval.npz"), "--train", str(seg / "train.npz"),
                  "--task", "segmentation", "--prune", "0.3", "--max-trials", "2", "--no-profile", "-o", str(out)])
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    ev = np.load(seg / "eval.npz")
    keep = ev["y"] >= 0
    kinds = set()
    for a in m["artifacts"]:
        met = a["metrics"]
        assert met["name"] == "miou", met
        pred = _outputs(out / a["path"], ev["x"]).argmax(1)
        assert met["value"] == pytest.approx(_miou(pred, ev["y"], 3), abs=1e-9)
        assert met["pixel_accuracy"] == pytest.approx(((pred == ev["y"]) & keep).sum() / keep.sum(), abs=1e-9)
        kinds.add(a["kind"])
    assert {"fp32", "distilled"} <= kinds, kinds
    assert m["pruning"]["metric_name"] == "miou"
    dist = m["pruning"]["distill"]
    assert "per position" in dist["loss"] and "cross-entropy with labels" in dist["loss"], dist["loss"]
    assert dist["train"]["labelled"] is True
    # the source model segments well, and the pruned, distilled one holds most of it
    fp32 = next(a for a in m["artifacts"] if a["kind"] == "fp32")["metrics"]["value"]
    distilled = next(a for a in m["artifacts"] if a["kind"] == "distilled")["metrics"]["value"]
    assert fp32 > 0.85 and distilled > fp32 - 0.05, (fp32, distilled)


def test_segmentation_without_labels_scores_miou_agreement(seg, tmp_path):
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{seg / 'm.py'}:build", "--weights", str(seg / "m.pt"), "--calib",
                  str(seg / "calib.npy"), "--eval", str(seg / "eval_nolabels.npz"), "--task", "segmentation",
                  "--max-trials", "1", "--no-profile", "-o", str(out)])
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    x = np.load(seg / "eval_nolabels.npz")["x"]
    ref = _outputs(out / "model.fp32.onnx", x).argmax(1)
    int8 = next(a for a in m["artifacts"] if a["kind"] == "int8")
    assert int8["metrics"]["name"] == "miou_agreement"
    got = _outputs(out / int8["path"], x).argmax(1)
    assert int8["metrics"]["value"] == pytest.approx(_miou(got, ref, 3), abs=1e-9)
    assert int8["metrics"]["pixel_agreement"] == pytest.approx(float(np.mean(got == ref)), abs=1e-9)


def test_quantize_alone_scores_miou(seg, tmp_path):
    out = tmp_path / "out"
    rc = run_cli(["quantize", str(seg / "m.onnx"), "--calib", str(seg / "calib.npy"), "--eval",
                  str(seg / "eval.npz"), "--task", "segmentation", "--max-trials", "1", "-o", str(out)])
    assert rc == 0
    m = json.loads((out / "manifest.json").read_text())
    ev = np.load(seg / "eval.npz")
    keep = ev["y"] >= 0
    for a in m["artifacts"]:
        assert a["metrics"]["name"] == "miou", a["metrics"]
        pred = _outputs(out / a["path"], ev["x"]).argmax(1)
        assert a["metrics"]["value"] == pytest.approx(_miou(pred, ev["y"], 3), abs=1e-9)
        assert a["metrics"]["pixel_accuracy"] == pytest.approx(((pred == ev["y"]) & keep).sum() / keep.sum(),
                                                               abs=1e-9)


@pytest.mark.parametrize("data, expect", [
    ("eval_rows.npz", "labels 'y' have shape [400, 7, 8], expected [N, 8, 8]"),
    ("eval_classes.npz", "is not a class index in [0, 3)"),
    ("eval_per_sample.npz", "--task segmentation needs labels 'y' with one class per position"),
    ("eval_fractions.npz", "--task segmentation needs labels 'y' of integer classes"),
    ("eval_unscored.npz", "every label in 'y' is negative (not scored): nothing to score"),
    ("eval_corrupt.npz", ""),
])
def test_bad_segmentation_labels_name_the_file(seg, tmp_path, capsys, data, expect):
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{seg / 'm.py'}:build", "--weights", str(seg / "m.pt"), "--calib",
                  str(seg / "calib.npy"), "--eval", str(seg / data), "--task", "segmentation", "--no-profile",
                  "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and f"{data}: " in err and expect in err, err
    assert not out.exists()


def test_bad_training_labels_name_the_file_before_any_work(seg, tmp_path, capsys):
    """--train labels are checked against the model's scores at load, as --eval's are, not mid-distillation."""
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{seg / 'm.py'}:build", "--weights", str(seg / "m.pt"), "--calib",
                  str(seg / "calib.npy"), "--train", str(seg / "train_rows.npz"), "--task", "segmentation",
                  "--prune", "0.3", "--no-profile", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "train_rows.npz: labels 'y' have shape [1000, 7, 8], expected [N, 8, 8]" in err, err
    assert "distilling" not in err and not out.exists()


def test_segmentation_refuses_per_sample_scores(seg, tmp_path, capsys):
    """A classifier's [N, C] output has no positions: refused in one line, pointing at classification."""
    (tmp_path / "c.py").write_text("import torch.nn as nn\n\n\ndef build():\n"
                                   "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n")
    rc = run_cli(["compress", f"{tmp_path / 'c.py'}:build", "--calib", str(seg / "calib.npy"),
                  "--task", "segmentation", "--no-profile", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "per-position class scores need [N, C, d1, ...]" in err and "--task classification" in err, err


def test_dense_labels_without_the_task_are_named(seg, tmp_path, capsys):
    rc = run_cli(["compress", f"{seg / 'm.py'}:build", "--weights", str(seg / "m.pt"), "--calib",
                  str(seg / "calib.npy"), "--eval", str(seg / "eval.npz"), "--quantize", "none", "--no-profile",
                  "-o", str(tmp_path / "out")])
    assert rc == 0
    assert "pass --task segmentation" in capsys.readouterr().err


TAGGER_PY = '''
import torch.nn as nn


class Tagger(nn.Module):
    def __init__(self, classes_first):
        super().__init__()
        self.e, self.h, self.first = nn.Embedding(20, 16), nn.Linear(16, 5), classes_first

    def forward(self, input_ids):
        out = self.h(self.e(input_ids))  # [N, L, 5]
        return out.transpose(1, 2) if self.first else out


def last():
    return Tagger(False)


def first():
    return Tagger(True)
'''


def test_per_token_scores_need_classes_on_axis_1(tmp_path, capsys):
    """[N, L, C] from token ids: argmax over axis 1 would pick a position, not a class. Refused, naming
    --task token-classification; [N, C, L] is scored per token against labels [N, L]."""
    (tmp_path / "t.py").write_text(TAGGER_PY)
    ids = np.random.default_rng(0).integers(0, 20, (120, 12))
    np.save(tmp_path / "calib.npy", ids)
    np.savez(tmp_path / "eval.npz", input_ids=ids[:60], y=ids[:60] % 5)
    common = ["--calib", str(tmp_path / "calib.npy"), "--eval", str(tmp_path / "eval.npz"), "--task", "segmentation",
              "--quantize", "none", "--no-profile"]
    rc = run_cli(["compress", f"{tmp_path / 't.py'}:last", *common, "-o", str(tmp_path / "last")])
    err = capsys.readouterr().err
    assert rc == 2 and "is [N, 12, 5], its axis 1 the length of 'input_ids'" in err and \
        "pass --task token-classification" in err, err
    # without labels nothing else would catch it: pixel agreement over positions scores anything
    np.savez(tmp_path / "eval_nolabels.npz", input_ids=ids[:60])
    rc = run_cli(["compress", f"{tmp_path / 't.py'}:last", *common[:2], "--eval", str(tmp_path / "eval_nolabels.npz"),
                  *common[4:], "-o", str(tmp_path / "last2")])
    err = capsys.readouterr().err
    assert rc == 2 and "per-token scores with the classes last" in err, err
    rc = run_cli(["compress", f"{tmp_path / 't.py'}:first", *common, "-o", str(tmp_path / "first")])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "first" / "manifest.json").read_text())
    met = m["artifacts"][0]["metrics"]
    pred = _outputs(tmp_path / "first" / m["artifacts"][0]["path"], ids[:60]).argmax(1)
    assert met["name"] == "miou" and met["value"] == pytest.approx(_miou(pred, ids[:60] % 5, 5))
    assert met["pixel_accuracy"] == pytest.approx(float(np.mean(pred == ids[:60] % 5)))


def test_a_map_output_without_a_task_gets_a_note_naming_it(seg, tmp_path, capsys):
    """Without --task, scores [N, C, H, W] are scored by cosine: a note says so and names the task."""
    rc = run_cli(["compress", f"{seg / 'm.py'}:build", "--weights", str(seg / "m.pt"), "--calib",
                  str(seg / "calib.npy"), "--quantize", "none", "--no-profile", "-o", str(tmp_path / "out")])
    assert rc == 0
    err = capsys.readouterr().err
    assert "first output [N, 3, 8, 8] is scored by the cosine" in err and "pass --task segmentation" in err, err
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert any("pass --task segmentation" in n for n in json.dumps(m).split('"')), "recorded in the manifest"
    # told, it is quiet
    rc = run_cli(["compress", f"{seg / 'm.py'}:build", "--weights", str(seg / "m.pt"), "--calib",
                  str(seg / "calib.npy"), "--task", "segmentation", "--quantize", "none", "--no-profile",
                  "-o", str(tmp_path / "out2")])
    assert rc == 0 and "pass --task segmentation" not in capsys.readouterr().err
