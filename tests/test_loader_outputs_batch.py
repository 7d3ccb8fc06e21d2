"""The loader on models whose outputs nest a list or dict in a tuple, whose forward() hard-codes its
batch, and that compute in float64: each exports to a float32 ONNX file that onnxruntime runs and that
matches PyTorch, or is refused in one line naming the model."""
import json
import textwrap

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgekit.dataset import Dataset
from edgekit.errors import InputError
from edgekit.loader import load_python, output_leaves
from edgekit.stages.export import export_module
from tests.test_quant_cli import _cli

MODELS = textwrap.dedent("""
    import torch
    import torch.nn as nn

    class Heads(nn.Module):
        def __init__(self, kind):
            super().__init__()
            torch.manual_seed(0)
            self.kind = kind
            self.a, self.b = nn.Linear(16, 4), nn.Linear(16, 2)
            self.register_buffer("anchors", torch.rand(2, 4))

        def forward(self, x):
            if self.kind == "tuple_list":
                return self.a(x), [self.b(x), self.b(x) + 1]
            if self.kind == "tuple_dict":
                return self.a(x), {"aux": self.b(x)}
            if self.kind == "view2":
                return self.a(x).view(2, -1)  # hard-codes a batch of 2
            if self.kind == "one":
                return self.a(x.reshape(1, 16))  # runs on one sample only
            if self.kind == "pairs":
                return self.a(x.view(-1, 2, 16)).sum(1)  # runs on an even batch only
            return self.a(x), self.anchors  # "anchors": a constant [2, 4] output

    def tuple_list():
        return Heads("tuple_list")

    def tuple_dict():
        return Heads("tuple_dict")

    def view2():
        return Heads("view2")

    def pairs():
        return Heads("pairs")

    def one():
        return Heads("one")

    def anchors():
        return Heads("anchors")

    def conv(dtype):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, 3)).to(dtype)

    def f64_conv():
        return conv(torch.float64)

    def f16_conv():
        return conv(torch.float16)

    def bf16_conv():
        return conv(torch.bfloat16)
""")


@pytest.fixture
def models(tmp_path):
    p = tmp_path / "heads.py"
    p.write_text(MODELS)
    return str(p)


def _x(n=16, shape=(16,), dtype=np.float32, name="x"):
    return {name: np.random.default_rng(0).normal(size=(n, *shape)).astype(dtype)}


def _export_and_run(src, tmp_path, data):
    """Export through the export stage (checked against PyTorch there) and run the file in onnxruntime;
    the data in the inputs' dtypes, as the data stage reads it."""
    data = {s.name: data[s.name].astype(s.dtype) for s in src.inputs}
    art = export_module(src.module, src, tmp_path / "m.onnx", data=Dataset(data, None, "data"))
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"))
    return art, sess, sess.run(None, data)


@pytest.mark.parametrize("factory,names", [
    ("tuple_list", ["output_0", "output_1.0", "output_1.1"]),
    ("tuple_dict", ["output_0", "output_1.aux"]),
])
def test_tuple_nesting_a_list_or_dict_exports_with_indexed_names(models, tmp_path, factory, names):
    # was: ONNX export failed: RuntimeError: Invalid name: '0' (torch refuses an all-digit output name)
    data = _x()
    src = load_python(models, factory, sample_inputs=data)
    assert src.outputs == names
    art, sess, got = _export_and_run(src, tmp_path, data)
    assert [o.name for o in sess.get_outputs()] == names
    ref = src.module(torch.from_numpy(data["x"]))
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g, r.detach().numpy(), atol=1e-5)


def test_leaves_of_a_top_level_tuple_are_named_like_a_flat_tuples_outputs():
    t = torch.zeros(1)
    assert [n for n, _ in output_leaves((t, [t, {"k": t}]))] == ["output_0", "output_1.0", "output_1.1.k"]
    assert [n for n, _ in output_leaves({0: t, "y": (t,)})] == ["output_0", "y.0"]


def test_output_that_hard_codes_the_batch_is_refused_with_the_fixed_batch_hint(models):
    # was: declared [batch, 4] (its 2 rows at the probe's 2 samples), then evaluation died joining
    # batches ("internal error: ValueError: all the input array dimensions ...")
    with pytest.raises(InputError, match=r"heads\.py:view2: output 'output' is \[2, 4\] for 2 samples and "
                                         r"\[2, 6\] for 3: .*pass --input-shape B,16 with that B$"):
        load_python(models, "view2", sample_inputs=_x())


def test_forward_that_fails_at_another_batch_is_refused_in_one_line(models):
    with pytest.raises(InputError, match=r"heads\.py:pairs: forward\(\) runs on 2 samples but fails on 3 "
                                         r"\(x\[3, 16\]\): RuntimeError: .*pass --input-shape B,16 with that B$"):
        load_python(models, "pairs", sample_inputs=_x())


# view2 was ignored (the probe at 2 ran) and declared batch-dynamic as without --input-shape; one (batch 1)
# was refused with the same error after the hint 'pass --input-shape B,16 with that B' was followed (sweep41 F1)
@pytest.mark.parametrize("factory, batch", [("view2", 2), ("one", 1)])
def test_input_shape_with_a_fixed_batch_is_honoured(models, tmp_path, factory, batch):
    data = _x()
    src = load_python(models, factory, sample_inputs=data, input_shape=(batch, 16))
    assert src.inputs[0].shape == [batch, 16] and src.dynamic_axes == {}
    art, sess, got = _export_and_run(src, tmp_path, {"x": data["x"][:batch]})
    assert sess.get_inputs()[0].shape == [batch, 16] and got[0].shape == (batch, 4)


def test_constant_output_is_not_declared_batched(models, tmp_path):
    # its [2, 4] matched the probe's batch of 2: it was declared [batch, 4]
    data = _x()
    src = load_python(models, "anchors", sample_inputs=data)
    assert src.dynamic_axes == {"x": {0: "batch"}, "output_0": {0: "batch"}}
    art, sess, got = _export_and_run(src, tmp_path, data)
    assert [o.shape for o in sess.get_outputs()] == [["batch", 4], [2, 4]]


# float64 was: a float64 ONNX file named model.fp32.onnx, and with a Conv "internal error: NotImplemented:
# ... Could not find an implementation for Conv(11)"; float16 failed the export check on float16 rounding
# ("outputs differ from PyTorch ... max|diff| 0.000122"); bfloat16 could not be fed ("data type 'bfloat16'
# not understood")
@pytest.mark.parametrize("factory, dtype, data_dtype", [("f64_conv", "float64", np.float64),
                                                       ("f16_conv", "float16", np.float16),
                                                       ("f16_conv", "float16", np.float32),
                                                       ("bf16_conv", "bfloat16", np.float32)])
def test_a_model_in_another_float_type_is_cast_to_float32_with_a_note(models, tmp_path, capsys, factory, dtype,
                                                                      data_dtype):
    data = _x(shape=(1, 6, 6), dtype=data_dtype, name="input")  # nn.Sequential's forward(input)
    src = load_python(models, factory, sample_inputs=data)
    assert src.inputs[0].dtype == "float32"
    assert {p.dtype for p in src.module.parameters()} == {torch.float32}
    err = capsys.readouterr().err
    assert f"heads.py:{factory} computes in {dtype}" in err and "cast to float32" in err
    assert "outputs moved by at most" in err and f"({dtype} cast to float32)" in src.description
    art, sess, got = _export_and_run(src, tmp_path, data)
    assert sess.get_inputs()[0].type == "tensor(float)" and got[0].dtype == np.float32
    ref = src.module(torch.from_numpy(data["input"].astype(np.float32))).detach().numpy()
    np.testing.assert_allclose(got[0], ref, atol=1e-5)


@pytest.mark.slow
def test_compress_of_a_fixed_batch_model(tmp_path):
    """The CLI end to end: refused in one line (exit 2) without --input-shape, exported and evaluated
    at the fixed batch with it."""
    (tmp_path / "heads.py").write_text(MODELS)
    np.save(tmp_path / "calib.npy", _x(40)["x"])
    r = _cli("compress", "heads.py:view2", "--calib", "calib.npy", "--quantize", "none", "--no-profile",
             "-o", "o0", cwd=tmp_path)
    assert r.returncode == 2 and "heads.py:view2: output 'output' is [2, 4]" in r.stderr, r.stderr[-600:]
    assert "internal error" not in r.stderr and not (tmp_path / "o0").exists()
    r = _cli("compress", "heads.py:view2", "--calib", "calib.npy", "--input-shape", "2,16", "--quantize", "none",
             "--no-profile", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-600:]
    fp32 = json.loads((tmp_path / "out" / "manifest.json").read_text())["artifacts"][0]
    assert fp32["inputs"][0]["shape"] == [2, 16] and fp32["outputs"][0]["shape"] == [2, 4]


def test_a_fixed_batch_model_is_refused_for_pruning_and_distillation_in_one_line(models, tmp_path):
    # was: 'internal error: RuntimeError: mat1 and mat2 shapes cannot be multiplied', exit 1 (sweep44 F1):
    # pruning scores and distillation trains on batches of their own sizes
    np.save(tmp_path / "calib.npy", _x(40)["x"])
    np.savez(tmp_path / "eval.npz", x=_x(40)["x"], y=np.arange(40) % 4)
    data = ["--calib", str(tmp_path / "calib.npy"), "--eval", str(tmp_path / "eval.npz")]
    for argv in (["compress", f"{models}:one", "--input-shape", "1,16", "--prune", "0.5", *data, "--no-profile"],
                 ["distill", "--teacher", f"{models}:one", "--input-shape", "1,16", "--student", f"{models}:pairs",
                  *data, "--epochs", "1"]):
        r = _cli(*argv, "-o", str(tmp_path / argv[0]), cwd=tmp_path)
        assert r.returncode == 2, r.stderr[-600:]
        assert "runs only batches of 1 (--input-shape 1,...)" in r.stderr and "internal error" not in r.stderr
        assert len(r.stderr.strip().splitlines()[-1]) > 0 and not (tmp_path / argv[0]).exists()


MIXERS = textwrap.dedent("""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def batch_stats_2d():  # normalises by the batch's statistics even in eval mode
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, track_running_stats=False),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def batch_stats_1d():  # fails on one sample: "Expected more than 1 value per channel when training"
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8, track_running_stats=False),
                             nn.Linear(8, 3))

    class ByHand(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a = nn.Linear(16, 3)

        def forward(self, x):
            x = x.flatten(1)
            return self.a((x - x.mean(0, keepdim=True)) / (x.std(0, keepdim=True) + 1e-3))

    def by_hand():  # and alone a 1-sample std is NaN
        return ByHand()

    class Dropout(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a = nn.Linear(16, 3)

        def forward(self, x):
            return F.dropout(self.a(x.flatten(1)), 0.5, training=True)

    def dropout_on():  # differs from itself: left to the export check's own message
        return Dropout()

    def per_sample():  # BatchNorm with running statistics and InstanceNorm: per sample in eval mode
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.InstanceNorm2d(4, affine=True),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
""")


@pytest.mark.parametrize("factory, needle", [
    ("batch_stats_2d", "sample 0 gives other outputs in a batch of 3 than in a batch of 2 (output: max|diff| "),
    ("batch_stats_1d", "forward() runs on 2 samples but fails on one alone (ValueError: Expected more than 1 value"),
    ("by_hand", "sample 0 gives other outputs in a batch of 3 than in a batch of 2 (output: max|diff| "),
])
def test_a_model_whose_samples_mix_in_a_batch_is_refused(tmp_path, factory, needle):
    # was: batch_stats_2d and by_hand compressed and were scored on batches of 16, which a device running one
    # sample at a time never sees (by_hand gives NaN there); batch_stats_1d failed later, in torch's exporter
    # ("ONNX export failed: AssertionError: batch_size and channel_size must be non-None")
    (tmp_path / "mix.py").write_text(MIXERS)
    with pytest.raises(InputError) as e:
        load_python(str(tmp_path / "mix.py"), factory, sample_inputs=_x(shape=(1, 4, 4)))
    msg = str(e.value)
    assert msg.startswith(f"{tmp_path / 'mix.py'}:{factory}: ") and needle in msg and "\n" not in msg, msg
    assert "one sample at a time" in msg


@pytest.mark.parametrize("factory", ["dropout_on", "per_sample"])
def test_per_sample_models_and_nondeterministic_ones_are_not_called_mixing(tmp_path, factory):
    (tmp_path / "mix.py").write_text(MIXERS)
    src = load_python(str(tmp_path / "mix.py"), factory, sample_inputs=_x(shape=(1, 4, 4)))
    assert src.inputs[0].shape == ["batch", 1, 4, 4]


SELECTORS = textwrap.dedent("""
    import torch
    import torch.nn as nn

    class Keep(nn.Module):
        def __init__(self, flat=False):
            super().__init__()
            torch.manual_seed(0)
            self.a, self.flat = nn.Linear(16, 5), flat

        def forward(self, x):
            out = self.a(x)
            return out.flatten() if self.flat else out[out[:, 4] > 0]  # rows picked by the data, as NMS does

    def keep():
        return Keep()

    def flat():
        return Keep(flat=True)
""")


def test_an_output_whose_length_follows_the_data_is_told_so(tmp_path):
    # was: "its first axis does not follow the batch size; if forward() runs only one fixed batch size B, pass
    # --input-shape B,16 with that B", which no batch size fixes
    (tmp_path / "sel.py").write_text(SELECTORS)
    x = {"x": np.array([[1.0] * 16, [-1.0] * 16, [1.0] * 16], np.float32) * np.linspace(0.5, 1.5, 16)}
    with pytest.raises(InputError) as e:
        load_python(str(tmp_path / "sel.py"), "keep", sample_inputs=x)
    msg = str(e.value)
    assert "its length follows the data, not the batch (a boolean mask or NMS in forward()?)" in msg, msg
    assert "--input-shape" not in msg and "\n" not in msg and "the nms post op" in msg
    # the batch flattened into one axis is still the batch-size message
    with pytest.raises(InputError, match="does not follow the batch size"):
        load_python(str(tmp_path / "sel.py"), "flat", sample_inputs=x)


@pytest.mark.parametrize("cmd", ["compress", "quantize"])
def test_an_onnx_output_whose_length_follows_the_data_is_refused(tmp_path, cmd):
    # it was scored row against unrelated row (top1_agreement over the kept rows of every batch joined), and
    # an INT8 file keeping another count could not be compared at all
    namespace = {}
    exec(SELECTORS, namespace)  # the same Keep module the PyTorch loader refuses
    torch.onnx.export(namespace["keep"]().eval(), (torch.zeros(2, 16),), str(tmp_path / "keep.onnx"),
                      input_names=["x"], output_names=["kept"], dynamic_axes={"x": {0: "n"}, "kept": {0: "k"}},
                      dynamo=False)
    x = np.random.default_rng(3).normal(size=(40, 16)).astype(np.float32)
    x[:3] = np.array([[1.0] * 16, [-1.0] * 16, [1.0] * 16], np.float32) * np.linspace(0.5, 1.5, 16)
    np.save(tmp_path / "calib.npy", x)
    extra = ["--no-profile"] if cmd == "compress" else []
    r = _cli(cmd, "keep.onnx", "--calib", "calib.npy", *extra, "-o", "out", cwd=tmp_path)
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("edgekit: error:")]
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert "keep.onnx: output 'kept' has 1 rows for 2 samples and 2 for 3: its length follows the data" in err[0]
    assert not (tmp_path / "out").exists()


SIMILARITIES = textwrap.dedent("""
    import torch, torch.nn as nn

    class Similar(nn.Module):  # CLIP's logits_per_image: every image against every text of the batch
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.a = nn.Linear(16, 8)

        def forward(self, x):
            e = self.a(x)
            return e @ e.T

    def similar():
        return Similar()
""")


def test_an_output_whose_row_is_as_long_as_the_batch_is_refused_at_load(tmp_path):
    # was accepted, then "internal error: ValueError: all the input array dimensions except for the
    # concatenation axis must match exactly" when scoring joined a batch of 64 and one of 8
    (tmp_path / "sim.py").write_text(SIMILARITIES)
    x = {"x": np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)}
    with pytest.raises(InputError) as e:
        load_python(str(tmp_path / "sim.py"), "similar", sample_inputs=x)
    msg = str(e.value)
    assert "output 'output' is [2, 2] for 2 samples and [3, 3] for 3: its axes after the first follow the batch" in msg
    assert "--input-shape" not in msg and "\n" not in msg
