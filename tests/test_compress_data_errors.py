"""`edgekit compress file.py:factory` with bad or unusual data files: one line naming the file, exit 2,
no output directory; and data types scikit-learn really hands out are accepted."""
import textwrap

import numpy as np
import pytest

from edgekit.report.fmt import md_text
from tests.test_quant_cli import _cli

MODEL = textwrap.dedent("""
    import torch.nn as nn

    def build():
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
""")


@pytest.fixture
def mlp(tmp_path):
    (tmp_path / "mlp.py").write_text(MODEL)
    return "mlp.py:build"


def _bad_files(d):
    rng = np.random.default_rng(0)
    (d / "empty.npy").write_bytes(b"")
    (d / "empty.npz").write_bytes(b"")
    good = rng.normal(size=(40, 6))
    np.savez(d / "ok.npz", input=good)
    (d / "trunc.npz").write_bytes((d / "ok.npz").read_bytes()[:100])
    np.save(d / "obj.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    nan = good.copy()
    nan[7, 2] = np.nan
    np.save(d / "nan.npy", nan)
    (d / "imgs").mkdir()


@pytest.mark.parametrize("name,expect", [("empty.npy", "not a valid .npy"), ("empty.npz", "not a valid .npz"),
                                         ("trunc.npz", "not a valid .npz"), ("obj.npy", "not a valid .npy"),
                                         ("nan.npy", "NaN or infinite values (first in sample 7)"),
                                         ("imgs", "imgs: no images")])
def test_bad_calibration_file_is_one_line_naming_it(tmp_path, mlp, name, expect):
    _bad_files(tmp_path)
    r = _cli("compress", mlp, "--calib", name, "--no-profile", "-o", "out", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and name in lines[0] and expect in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_float64_data_from_scikit_learn_is_accepted_and_the_recipe_repeats_the_run(tmp_path, mlp):
    """float64 calibration and eval data (as scikit-learn's loaders return) quantize to INT8; README:
    `edgekit compress --config OUTDIR/compress.toml` repeats the run; paths typed relative to the first
    run's folder must still resolve, and MODEL comes from the recipe. One INT8 run serves both: it was
    two identical compress runs (its speed gate alone takes seconds)."""
    import json

    rng = np.random.default_rng(1)
    np.save(tmp_path / "calib.npy", rng.normal(size=(64, 6)))  # float64, as sklearn's loaders return
    np.savez(tmp_path / "eval.npz", input=rng.normal(size=(32, 6)), y=rng.integers(0, 3, 32))
    r = _cli("compress", mlp, "--calib", "calib.npy", "--eval", "eval.npz", "--no-profile", "--no-tune",
             "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "model.int8.onnx").is_file()
    # the reports were written in a staging folder renamed into OUTDIR: they must name OUTDIR
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["runs"][0]["outdir"] == str((tmp_path / "out").resolve()) and rep["runs"][0]["label"] == "out"
    for f in ("report.json", "report.md", "report.html"):
        assert "staging" not in (tmp_path / "out" / f).read_text(), f
    # the recipe, replayed from another folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r2 = _cli("compress", "--config", str(tmp_path / "out" / "compress.toml"), "-o", "again", cwd=elsewhere)
    assert r2.returncode == 0, r2.stderr
    first, second = (json.loads((d / "manifest.json").read_text()) for d in (tmp_path / "out", elsewhere / "again"))
    assert [a["kind"] for a in first["artifacts"]] == [a["kind"] for a in second["artifacts"]]
    assert first["artifacts"][0]["metrics"]["n"] == second["artifacts"][0]["metrics"]["n"] == 32


@pytest.mark.parametrize("n,scored", [(300, 44), (100, 100), (1000, 500)])
def test_without_eval_scores_on_calibration_samples_not_calibrated_on(tmp_path, mlp, n, scored):
    import json

    np.save(tmp_path / "calib.npy", np.random.default_rng(2).normal(size=(n, 6)).astype(np.float32))
    r = _cli("compress", mlp, "--calib", "calib.npy", "--no-profile", "--no-tune", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert {a["metrics"]["n"] for a in man["artifacts"]} == {scored}
    load = next(s for s in man["stages"] if s["name"] == "load")
    note = " ".join(load["details"]["notes"])
    assert ("not used for calibrating" in note) == (n > 256), note
    assert ("at most 500 are scored: 244 more unused; give --eval" in note) == (n == 1000), note
    # the metrics' meaning changed: the user must see it where they read them, not only in the manifest
    assert f"edgekit: note: {load['details']['notes'][0]}" in r.stderr
    # as Markdown shows it as written (report.fmt.md_text escapes [ ] | < > & \\)
    assert md_text(load["details"]["notes"][0]) in (tmp_path / "out" / "report.md").read_text()


def test_model_that_hard_codes_its_batch_compresses_with_input_shape(tmp_path):
    (tmp_path / "fixed.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        class Fixed(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(12, 3)

            def forward(self, x):
                return self.fc(x.reshape(4, -1))  # only ever runs 4 samples at a time

        def build():
            return Fixed()
    """))
    np.save(tmp_path / "calib.npy", np.random.default_rng(4).normal(size=(42, 3, 4)).astype(np.float32))
    # what is checked is the export's input shape (the loader): INT8 would only add its speed gate's seconds
    r = _cli("compress", "fixed.py:build", "--calib", "calib.npy", "--input-shape", "4,3,4", "--no-profile",
             "--quantize", "none", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import onnx

    dims = onnx.load(str(tmp_path / "out" / "model.fp32.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 3, 4]
    # without --input-shape the probe's batch of 2 fails: the error says what to pass
    r = _cli("compress", "fixed.py:build", "--calib", "calib.npy", "--no-profile", "--no-tune", "-o", "o0", cwd=tmp_path)
    assert r.returncode == 2 and "pass --input-shape B,3,4 with that B" in r.stderr, r.stderr[-600:]
    # the same data as N x 4 stacks of the fixed batch (calibration/README.md): forward() ran on [4, 4, 3, 4]
    np.save(tmp_path / "stacks.npy", np.random.default_rng(5).normal(size=(10, 4, 3, 4)).astype(np.float32))
    r = _cli("compress", "fixed.py:build", "--calib", "stacks.npy", "--input-shape", "4,3,4", "--no-profile",
             "--quantize", "none", "-o", "out2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    dims = onnx.load(str(tmp_path / "out2" / "model.fp32.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 3, 4]


def test_token_ids_past_the_embedding_table_are_one_line(tmp_path):
    (tmp_path / "tok.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        class Tok(nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = nn.Embedding(50, 8)
                self.fc = nn.Linear(8, 3)

            def forward(self, ids):
                return self.fc(self.emb(ids).mean(1))

        def build():
            return Tok()
    """))
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "calib.npz", ids=rng.integers(0, 50, (40, 6)))
    np.savez(tmp_path / "eval.npz", ids=rng.integers(0, 80, (20, 6)), y=rng.integers(0, 3, 20))
    r = _cli("compress", "tok.py:build", "--calib", "calib.npz", "--eval", "eval.npz", "--quantize", "int8-dynamic",
             "--no-profile", "--no-tune", "-o", "out", cwd=tmp_path)
    lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("edgekit: note:")]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "eval.npz" in lines[0] and "cannot run on this data" in lines[0] and "Gather" in lines[0], lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("signature,call", [("x, scale: float = 2.0, feats=False", "x"),
                                            ("x, *, scale=2.0", "x")])
def test_forward_with_defaulted_parameters_exports(tmp_path, signature, call):
    (tmp_path / "kw.py").write_text(textwrap.dedent(f"""
        import torch.nn as nn

        class Kw(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(6, 3)

            def forward(self, {signature}):
                return self.fc({call}) * scale

        def build():
            return Kw()
    """))
    np.save(tmp_path / "calib.npy", np.random.default_rng(6).normal(size=(40, 6)).astype(np.float32))
    # the export's graph inputs are checked: INT8 would only add its speed gate's seconds
    r = _cli("compress", "kw.py:build", "--calib", "calib.npy", "--no-profile", "--quantize", "none", "-o", "out",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import onnx

    assert [i.name for i in onnx.load(str(tmp_path / "out" / "model.fp32.onnx")).graph.input] == ["x"]


def test_post_processing_that_cannot_fit_the_outputs_is_refused(tmp_path, mlp):
    np.save(tmp_path / "calib.npy", np.random.default_rng(7).normal(size=(40, 6)).astype(np.float32))
    spec = '{"post": [{"op": "softmax_topk", "k": 5}]}'  # the model has 3 classes
    r = _cli("compress", mlp, "--calib", "calib.npy", "--preprocess", spec, "--no-profile", "-o", "out", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "larger than the number of classes (3)" in lines[-1], r.stderr
    assert not (tmp_path / "out").exists()


def test_unreachable_target_still_publishes_with_latency_unavailable(tmp_path, mlp):
    """No native number could be measured (the only target is a device that does not answer): the
    compressed artifacts and their accuracy are still the run's result; latency says why it is missing."""
    import json

    (tmp_path / "gone.toml").write_text(textwrap.dedent("""
        description = "a device that is switched off"
        arch = "aarch64"
        address = "ssh://pi@127.0.0.1:1/home/pi/edgekit"
        threads = 4
        precisions = ["int8", "fp32"]
        isa = ["neon"]

        [[providers]]
        name = "CPUExecutionProvider"
    """))
    np.save(tmp_path / "calib.npy", np.random.default_rng(8).normal(size=(40, 6)).astype(np.float32))
    # a wide tolerance: what is checked is the latency's reason, which an accuracy miss would pre-empt
    # (one of 40 samples flips on an AVX2-only host, where INT8 uses 7-bit weights)
    r = _cli("compress", mlp, "--calib", "calib.npy", "--target", "gone.toml", "--no-tune", "--tolerance", "50%",
             "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    lat = [a["latency"]["gone"] for a in man["artifacts"]]
    assert all(x["status"] == "unavailable" and "127.0.0.1:1" in x["reason"] for x in lat), lat
    assert all("p50_ms" not in x for x in lat)
    q = next(iter(man["quantization"].values()))
    assert q["recommend"] is False and "unavailable" in q["reason"], q["reason"]


def test_too_few_samples_are_warned_about(tmp_path, mlp):
    # one labelled sample read "accuracy 1.0000"; ten cannot judge a 1% tolerance; ten calibration
    # inputs rarely reach the ranges real data does
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(10, 6)))  # one array, named unlike forward()'s input
    np.savez(tmp_path / "eval.npz", input=rng.normal(size=(1, 6)), y=[0])
    r = _cli("compress", mlp, "--calib", "calib.npz", "--eval", "eval.npz", "--no-profile", "--no-tune",
             "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "note: only 1 evaluation sample(s): one changed prediction moves the score by 100%" in r.stderr
    assert "give at least 100 samples" in r.stderr
    assert "note: only 10 calibration sample(s)" in r.stderr
    np.savez(tmp_path / "eval.npz", input=rng.normal(size=(200, 6)), y=rng.integers(0, 3, 200))
    np.save(tmp_path / "calib.npy", rng.normal(size=(64, 6)))
    r = _cli("compress", mlp, "--calib", "calib.npy", "--eval", "eval.npz", "--no-profile", "--no-tune",
             "-o", "out2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "note: only" not in r.stderr


@pytest.mark.parametrize("bad", [7, -1])
def test_training_labels_out_of_range_are_one_line_before_any_work(tmp_path, mlp, bad):
    # cross-entropy failed after pruning with "internal error: IndexError: Target 7 is out of bounds"
    rng = np.random.default_rng(4)
    np.save(tmp_path / "calib.npy", rng.normal(size=(40, 6)))
    y = rng.integers(0, 3, 40)
    y[5] = bad
    np.savez(tmp_path / "train.npz", input=rng.normal(size=(40, 6)), y=y)
    r = _cli("compress", mlp, "--calib", "calib.npy", "--train", "train.npz", "--prune", "0.5", "--no-profile",
             "--no-tune", "-o", "out", cwd=tmp_path)
    err = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("edgekit: note:")]
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert f"train.npz: label {bad} (sample 5) is not a class index in [0, 3)" in err[0]
    assert "pruning" not in r.stderr and not (tmp_path / "out").exists()


LABEL_MODELS = textwrap.dedent("""
    import torch, torch.nn as nn

    def one_logit():
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))

    class FeatFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):
            e = torch.relu(self.a(x))
            return e, self.b(e)

    def feat_first():
        return FeatFirst()

    class Ids(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 3)

        def forward(self, x):
            return self.a(x).argmax(1)

    def class_ids():
        return Ids()

    class MapFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):
            e = torch.relu(self.a(x))
            return e[:, :, None].repeat(1, 1, 3), self.b(e)

    def map_first():
        return MapFirst()
""")


@pytest.mark.parametrize("factory,needle", [
    ("one_logit", "--eval labels unused: the model's output 'output' is [N, 1]"),
    ("feat_first", "accuracy is scored on the first of 2 outputs, 'output_0' [N, 8]"),
    # class ids got the one-logit advice
    ("class_ids", "--eval labels unused: the model's output 'output' is [N], not [N, C] class scores with C >= 2, "
                  "so metrics are fidelity to FP32 (int64 values, e.g. class ids: return the class scores"),
    # the class scores were there, second: the note said to return [N, C] scores as if there were none
    ("map_first", "--eval labels unused: the model's output 'output_0' is [N, 8, 3], not [N, C] class scores with "
                  "C >= 2, so metrics are fidelity to FP32 (its output 'output_1' [N, 3] fits the labels as class "
                  "scores: return it first"),
])
def test_what_the_labels_are_scored_on_is_said(tmp_path, factory, needle):
    (tmp_path / "m.py").write_text(LABEL_MODELS)
    rng = np.random.default_rng(6)
    np.save(tmp_path / "calib.npy", rng.normal(size=(64, 6)))
    np.savez(tmp_path / "eval.npz", input=rng.normal(size=(120, 6)), y=rng.integers(0, 2, 120))
    # the note comes from the export stage (the FP32 model's outputs): INT8 would only add its speed gate
    r = _cli("compress", f"m.py:{factory}", "--calib", "calib.npy", "--eval", "eval.npz", "--no-profile",
             "--quantize", "none", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"edgekit: note: {needle}" in r.stderr
    md = (tmp_path / "out" / "report.md").read_text()
    assert md_text(needle) in md
    # --no-profile is not a failure: the latency section says profiling was off
    assert "profiling was off (--no-profile)" in md and "every target was emulated" not in md


def test_pre_processing_that_cannot_feed_the_model_is_refused(tmp_path, mlp):
    # it was accepted, bundled and flashed, and the device runner failed on every input
    np.save(tmp_path / "calib.npy", np.random.default_rng(7).normal(size=(40, 6)))
    pre = '{"pre": [{"op": "resize_normalize", "size": [16, 16]}]}'
    r = _cli("compress", mlp, "--calib", "calib.npy", "--preprocess", pre, "--no-profile", "-o", "out", cwd=tmp_path)
    err = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("edgekit: note:")]
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert "--preprocess: the pre-processing gives 'input' shape [1, " in err[0] and "takes [N, 6]" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_source_at_chance_accuracy_is_noted(tmp_path):
    # a forgotten --weights: the factory's random initialisation was evaluated and reported silently
    (tmp_path / "m.py").write_text(textwrap.dedent("""
        import torch, torch.nn as nn

        def build():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(6, 10))
    """))
    rng = np.random.default_rng(8)
    x = rng.normal(size=(400, 6)).astype(np.float32)
    pred = np.argmax(x @ rng.normal(size=(6, 10)), 1)  # labels from another model: chance for this one
    np.save(tmp_path / "calib.npy", x[:100])
    np.savez(tmp_path / "eval.npz", input=x[100:], y=pred[100:])
    # the note judges the source (FP32) model's accuracy: INT8 would only add its speed gate's seconds
    r = _cli("compress", "m.py:build", "--calib", "calib.npy", "--eval", "eval.npz", "--no-profile",
             "--quantize", "none", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "is at chance level for 10 classes: no --weights was given" in r.stderr


def test_pre_processing_for_a_two_input_model_is_refused(tmp_path):
    # an image + vector model: the runner feeds the pre-processing's one array to the first input only,
    # so the bundle passed its self-test and then failed every run on the device ("inputs lack 'extra'")
    (tmp_path / "m.py").write_text(
        "import torch, torch.nn as nn\n"
        "class M(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.c = nn.Conv2d(1, 4, 3)\n"
        "        self.l = nn.Linear(4 + 3, 2)\n"
        "    def forward(self, image, extra):\n"
        "        return self.l(torch.cat([self.c(image).mean((2, 3)), extra], 1))\n"
        "def build():\n"
        "    return M()\n")
    rng = np.random.default_rng(8)
    np.savez(tmp_path / "calib.npz", image=rng.random((40, 1, 8, 8)).astype(np.float32),
             extra=rng.random((40, 3)).astype(np.float32))
    pre = '{"pre": [{"op": "resize_normalize", "size": [8, 8], "mean": [0], "std": [1], "layout": "NCHW"}]}'
    r = _cli("compress", "m.py:build", "--calib", "calib.npz", "--preprocess", pre, "--no-profile", "-o", "out",
             cwd=tmp_path)
    err = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("edgekit: note:")]
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert "gives one array, but m.py:build takes 2 inputs (image, extra); it cannot feed 'extra'" in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_an_all_conv_classifier_is_scored_on_accuracy_and_prunes_with_its_labels(tmp_path):
    # a head that ends in a 1x1 conv after global pooling gives [N, 10, 1, 1]: its labels were left
    # unused with advice for a one-logit classifier
    import torch
    from sklearn.datasets import load_digits

    (tmp_path / "m.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        def build():
            return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Conv2d(32, 10, 1))
    """))
    d = load_digits()
    x, y = (d.images / 16).astype(np.float32)[:, None], d.target.astype(np.int64)
    torch.manual_seed(0)
    import importlib.util
    spec = importlib.util.spec_from_file_location("allconv", tmp_path / "m.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.build()
    opt = torch.optim.Adam(net.parameters(), 0.02)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.from_numpy(x[:1200])).flatten(1), torch.from_numpy(y[:1200])).backward()
        opt.step()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    np.save(tmp_path / "calib.npy", x[:100])
    np.savez(tmp_path / "train.npz", input=x[:400], y=y[:400])
    np.savez(tmp_path / "eval.npz", input=x[1200:], y=y[1200:])
    # FP32 scoring, the task and pruning/distillation are checked: two INT8 runs would only add seconds
    r = _cli("compress", "m.py:build", "--weights", "w.pt", "--calib", "calib.npy", "--eval", "eval.npz",
             "--train", "train.npz", "--prune", "0.25", "--no-profile", "--quantize", "none", "-o", "out",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-1500:]
    assert "labels unused" not in r.stderr
    import json
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    fp32 = next(a for a in m["artifacts"] if a["kind"] == "fp32")
    assert fp32["outputs"][0]["shape"] == ["batch", 10, 1, 1]
    assert fp32["metrics"]["name"] == "accuracy" and fp32["metrics"]["value"] > 0.5
    assert m["source"]["task"] == "classification"
    assert any(a["kind"] == "distilled" for a in m["artifacts"])


def test_nms_post_processing_fits_a_batch_dynamic_detector(tmp_path):
    # the fit check ran the post steps on 8 samples' outputs at once; NMS takes one image's boxes, as the
    # device runner gives it, so every batch-dynamic detector was refused
    (tmp_path / "det.py").write_text(textwrap.dedent("""
        import torch, torch.nn as nn

        class Det(nn.Module):
            def __init__(self):
                super().__init__()
                self.c = nn.Conv2d(3, 8, 3, padding=1)
                self.box, self.sc = nn.Linear(8, 32), nn.Linear(8, 8)

            def forward(self, x):
                h = torch.relu(self.c(x)).mean((2, 3))
                b = self.box(h).view(-1, 8, 4)
                xy, wh = torch.sigmoid(b[..., :2]) * 12, torch.sigmoid(b[..., 2:]) * 8 + 2
                return torch.cat([xy, xy + wh], -1), torch.sigmoid(self.sc(h))

        def build():
            torch.manual_seed(1)
            return Det()
    """))
    np.save(tmp_path / "calib.npy", np.random.default_rng(9).random((40, 3, 16, 16)).astype(np.float32))
    spec = ('{"post": [{"op": "nms", "inputs": [0, 1], "iou_threshold": 0.3, "score_threshold": 0.4}]}')
    # the fit check runs right after export, on the FP32 model's outputs: INT8 would only add seconds
    r = _cli("compress", "det.py:build", "--calib", "calib.npy", "--preprocess", spec, "--no-profile",
             "--quantize", "none", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-1500:]
    # and a spec that really does not fit is still refused: NMS over the boxes' own scores input index 2
    bad = '{"post": [{"op": "nms", "inputs": [0, 2]}]}'
    r = _cli("compress", "det.py:build", "--calib", "calib.npy", "--preprocess", bad, "--no-profile", "--no-tune",
             "-o", "out2", cwd=tmp_path)
    assert r.returncode == 2 and "the post-processing does not fit" in r.stderr, r.stderr[-800:]


TWO_INPUTS = textwrap.dedent("""
    import torch
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 4), nn.Linear(3, 4)

        def forward(self, image, meta):
            return self.a(image) + self.b(meta)

    def build():
        return Net()
""")


@pytest.mark.parametrize("arrays,expect", [
    ({"image": (6,)}, "but {f} holds one input array, 'image'"),
    ({"image": (6,), "meta": (3,), "extra": (3,)}, "{f} has inputs ['extra'] that forward() does not take"),
    ({"image": (6,), "meta": (5,)}, "meta['batch', 5] (from {f}): RuntimeError"),
])
def test_data_that_does_not_fit_forward_is_named_in_the_error(tmp_path, arrays, expect):
    """Errors that read "data has inputs ['extra'] that forward() does not take" or "forward() failed on inputs ..."
    named the model but not the data file whose arrays did not fit it."""
    (tmp_path / "two.py").write_text(TWO_INPUTS)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "wrong.npz", **{k: rng.normal(size=(16, *s)).astype(np.float32) for k, s in arrays.items()})
    r = _cli("compress", "two.py:build", "--calib", "wrong.npz", "--no-profile", "-o", "out", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert expect.format(f="wrong.npz") in lines[0], r.stderr
    assert not (tmp_path / "out").exists()
