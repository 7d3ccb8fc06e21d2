"""The numerical check of an exported ONNX file against its PyTorch model: element by element, on batches
besides the trace's, on eval data, with torch's tracer warnings surfaced and errors naming the model."""
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgekit.dataset import Dataset
from edgekit.errors import NumericsError
from edgekit.loader import load_python
from edgekit.stages.export import export_module
from edgekit.verify import check_outputs

MODELS = textwrap.dedent("""
    import torch, torch.nn as nn, torch.nn.functional as F

    class DataBranch(nn.Module):
        def __init__(self):
            super().__init__(); self.a = nn.Linear(16, 4); self.b = nn.Linear(16, 4)
        def forward(self, x):
            if x.sum() > 0:  # frozen by the trace
                return self.a(x)
            return self.b(x)

    class Batch1Branch(nn.Module):
        def __init__(self):
            super().__init__(); self.a = nn.Linear(16, 4)
        def forward(self, x):
            y = self.a(x)
            if x.shape[0] == 1:
                y = y * 0 + 7.0
            return y

    class IntReshape(nn.Module):
        def __init__(self):
            super().__init__(); self.a = nn.Linear(16, 4)
        def forward(self, x):
            n = int(x.shape[0])
            return self.a(x).reshape(n, 2, 2).reshape(n, -1)

    class InPlace(nn.Module):
        def __init__(self):
            super().__init__(); self.a = nn.Linear(16, 4)
        def forward(self, x):
            x.mul_(2.0)
            return self.a(x)

    class HeatAndBoxes(nn.Module):  # the exporter gets this interpolate chain wrong by ~5%
        def __init__(self):
            super().__init__(); self.c = nn.Conv2d(1, 1, 3, padding=1); self.box = nn.Linear(256, 4)
        def forward(self, x):
            h = F.interpolate(x, scale_factor=1.7, mode="bilinear", align_corners=False)
            h = F.interpolate(h, scale_factor=0.6, mode="nearest")
            heat = torch.sigmoid(self.c(h)).flatten(1)
            return torch.cat([heat, 4000 * torch.sigmoid(self.box(x.flatten(1)))], 1)

    class NegInf(nn.Module):
        def __init__(self):
            super().__init__(); self.a = nn.Linear(16, 6)
        def forward(self, x):
            y = self.a(x)
            return y.masked_fill(y < 0, float("-inf"))

    class Squeezed(nn.Module):
        def __init__(self):
            super().__init__(); self.a = nn.Linear(16, 4)
        def forward(self, x):
            return self.a(x).unsqueeze(1).squeeze()

    class Subnormal(nn.Module):  # as an untrained HuggingFace MobileViT's logits: ~1e-40
        def __init__(self):
            super().__init__(); self.a = nn.Linear(16, 16); self.b = nn.Linear(16, 4, bias=False)
        def forward(self, x):
            return self.b(self.a(x) * 1e-39)  # onnxruntime's Gemm reads its subnormal input as zero

    def build(name):
        torch.manual_seed(0)
        return globals()[name]().eval()
""") + "".join(f"\ndef {n.lower()}():\n    return build({n!r})\n"
               for n in ("DataBranch", "Batch1Branch", "IntReshape", "InPlace", "HeatAndBoxes", "NegInf", "Squeezed",
                         "Subnormal"))

rng = np.random.default_rng(0)
X = rng.standard_normal((40, 16)).astype(np.float32)


@pytest.fixture
def models(tmp_path):
    p = tmp_path / "vmodels.py"
    p.write_text(MODELS)
    return str(p)


def _line(models, text):
    return next(i for i, line in enumerate(Path(models).read_text().splitlines(), 1) if text in line)


def _export(models, factory, tmp_path, data, **kw):
    src = load_python(models, factory, sample_inputs={"x": data[:2]})
    return src, export_module(src.module, src, tmp_path / "model.fp32.onnx", data=Dataset({"x": data}, None, "calib.npy"),
                              **kw)


def test_an_input_changed_in_place_by_forward_does_not_corrupt_the_check(models, tmp_path):
    # torch ran on the same memory as onnxruntime's feed and doubled it: "outputs differ ... 3.69"
    _, art = _export(models, "inplace", tmp_path, X)
    assert art.verify["max_abs_diff"] < 1e-5


def test_a_batch_size_branch_is_caught_at_batch_1_with_torchs_warning(models, tmp_path):
    # verified at batch 16 only (diff 4.8e-07) though ONNX differs at batch 1 by 8.8
    with pytest.raises(NumericsError) as e:
        _export(models, "batch1branch", tmp_path, X)
    msg = str(e.value)
    assert msg.startswith(f"{models}:batch1branch: outputs differ from PyTorch on calib.npy (sample 0 at batch 1; "
                          "traced at batch 2): output: max|diff| "), msg
    assert f"torch warned while tracing: {models}:{_line(models, 'x.shape[0] == 1')} (if x.shape[0] == 1:)" in msg
    assert "model.fp32.onnx" not in msg and "\n" not in msg
    assert not (tmp_path / "model.fp32.onnx").exists()


def test_a_data_branch_is_caught_on_the_eval_data(models, tmp_path):
    # calibration data that all takes one branch verified it; ONNX differed on 120/120 eval samples
    ev = Dataset({"x": X - 3.0}, None, "eval.npz")
    with pytest.raises(NumericsError, match=r"^\S+:databranch: outputs differ from PyTorch on eval.npz \(samples 0-7 as "
                                            r"one batch of 8; traced at batch 2\): .*torch warned while tracing: .*"
                                            r"\(if x.sum\(\) > 0:\) Converting a tensor to a Python boolean"):
        _export(models, "databranch", tmp_path, X + 3.0, eval_data=ev)


def test_a_tracer_warning_is_a_note_naming_the_model_and_line_when_the_check_passes(models, tmp_path, capsys):
    _, art = _export(models, "databranch", tmp_path, X + 3.0, eval_data=Dataset({"x": X + 2.0}, None, "eval.npz"))
    note = f"{models}:databranch: torch warned while tracing forward(): {models}:{_line(models, 'x.sum() > 0')} " \
           "(if x.sum() > 0:) Converting a tensor to a Python boolean"
    assert art.notes and art.notes[0].startswith(note), art.notes
    assert "at batch 1, 3, 16 and 8" not in art.notes[0] and "calib.npy, eval.npz" in art.notes[0]
    assert f"edgekit: note: {note}" in capsys.readouterr().err


def test_a_traced_batch_number_fails_in_one_line_naming_the_model(models, tmp_path):
    # "internal error: Fail: [ONNXRuntimeError] : 1 : FAIL : ... reshape_helper.h:91 ..." before
    with pytest.raises(NumericsError) as e:
        _export(models, "intreshape", tmp_path, X)
    msg = str(e.value)
    assert re.match(rf"{re.escape(models)}:intreshape: the exported graph fails to run on calib.npy \(samples 0-15 as "
                    r"one batch of 16; traced at batch 2\): Reshape node '[^']+': The input tensor cannot be reshaped", msg)
    assert "int(x.shape[0])" in msg and "--input-shape" in msg and "onnxruntime_src" not in msg and "\n" not in msg


def test_two_samples_still_check_another_batch(models, tmp_path):
    # with 2 calibration samples trace and check were both at batch 2: verified, and failed at batch 1 on the device
    with pytest.raises(NumericsError, match=r"fails to run on calib.npy \(sample 0 at batch 1; traced at batch 2\)"):
        _export(models, "intreshape", tmp_path, X[:2])
    _, art = _export(models, "inplace", tmp_path, X[:2])
    assert art.verify["batches"] == [1, 2, 3] and art.verify["traced_batch"] == 2
    assert art.verify["checks"][-1]["samples"] == "0-1 repeated"


def test_a_real_export_error_is_not_hidden_by_large_values_in_the_same_output(models, tmp_path):
    # max|diff| 0.047 on a (0, 1) heat map passed against atol + rtol * max|ref| = 0.26 (boxes near 4e3)
    img = rng.random((20, 1, 16, 16)).astype(np.float32)
    src = load_python(models, "heatandboxes", sample_inputs={"x": img[:2]})
    with pytest.raises(NumericsError, match=r"output: max\|diff\| 0.0\d+, \d+ of 4160 values out of tolerance"):
        export_module(src.module, src, tmp_path / "m.onnx", data=Dataset({"x": img}, None, "img.npy"))


def test_the_tolerance_is_element_wise_and_scaled_to_the_output():
    heat = rng.random((16, 81))
    boxes = 1e3 + 3e3 * rng.random((16, 4))
    ref = np.concatenate([heat, boxes], 1)
    with pytest.raises(NumericsError, match="out of tolerance"):  # 5% off on the heat map only
        check_outputs([ref], [np.concatenate([heat * 1.05, boxes], 1)], ["y"], atol=1e-3, rtol=1e-4, where="w")
    tiny = 1e-6 * rng.standard_normal((16, 4))
    with pytest.raises(NumericsError, match="out of tolerance"):  # noise the size of the values
        check_outputs([tiny], [tiny + 1e-6 * rng.standard_normal((16, 4))], ["y"], atol=1e-3, rtol=1e-4, where="w")
    f32 = [ref.astype(np.float32), tiny.astype(np.float32)]  # float32 rounding of both passes
    res = check_outputs([ref, tiny], f32, ["a", "b"], atol=1e-3, rtol=1e-4, where="w")
    assert res["per_output"]["b"]["atol"] < 1e-8 and "per element" in res["rule"]


def test_non_finite_values_match_only_the_same_values_at_the_same_places():
    ref = np.array([[1.0, -np.inf, np.nan], [2.0, np.inf, 3.0]])
    assert check_outputs([ref], [ref.copy()], ["y"], atol=1e-3, rtol=1e-4, where="w")["per_output"]["y"][
        "non_finite"] == 3
    for got in (np.where(np.isnan(ref), 5.0, ref),  # torch's NaN where ONNX gives a number: passed anything
                np.where(ref == -np.inf, np.inf, ref), np.where(ref == 3.0, np.nan, ref)):
        with pytest.raises(NumericsError, match=r"y: 1 non-finite values not matched"):
            check_outputs([ref], [got], ["y"], atol=1e-3, rtol=1e-4, where="w")


def test_masked_minus_inf_reproduced_by_onnx_verifies(models, tmp_path):
    # refused as "outputs differ from the source model: output: non-finite values"
    _, art = _export(models, "neginf", tmp_path, X)
    assert art.verify["per_output"]["output"]["non_finite"] > 0 and art.verify["max_abs_diff"] < 1e-5


def test_subnormal_outputs_flushed_to_zero_by_onnxruntime_verify(models, tmp_path):
    # "torch 1.15e-40, onnx -2.5e-43, allowed 4.5e-44": edgekit's sessions flush subnormals, torch does not
    _, art = _export(models, "subnormal", tmp_path, X)
    assert 0 < art.verify["max_abs_diff"] < np.finfo(np.float32).tiny
    assert "smallest normal number" in art.verify["rule"]
    small = 1e-36 * rng.standard_normal((16, 4))  # normal floats: a 10% error there is still one
    with pytest.raises(NumericsError, match="out of tolerance"):
        check_outputs([small], [small * 1.1], ["y"], atol=1e-3, rtol=1e-4, where="w")


def test_a_squeeze_that_drops_the_batch_axis_at_batch_1_is_not_refused_there(models, tmp_path):
    _, art = _export(models, "squeezed", tmp_path, X)
    assert art.verify["batches"] == [1, 16] and art.verify["max_abs_diff"] < 1e-5


def test_the_record_says_what_was_compared_and_the_schema_documents_it(models, tmp_path):
    src, art = _export(models, "inplace", tmp_path, X, eval_data=Dataset({"x": X[::-1].copy()}, None, "eval.npz"))
    v = art.verify
    assert v["batches"] == [1, 8, 16] and v["traced_batch"] == 2 and v["n"] == 16 and v["data"] == "calib.npy"
    assert [(c["data"], c["samples"], c["batch"]) for c in v["checks"]] == [
        ("calib.npy", "0-15", 16), ("calib.npy", "0", 1), ("eval.npz", "0-7", 8)]
    assert v["compared_with"] == f"{src.spec} in PyTorch" and v["atol"] == 1e-3 and v["rtol"] == 1e-4
    pruned = export_module(src.module, src, tmp_path / "model.pruned.onnx", kind="pruned",
                           data=Dataset({"x": X}, None, "calib.npy"))
    assert pruned.verify["compared_with"].startswith("the pruned model in PyTorch")
    doc = (Path(__file__).parents[1] / "docs" / "report-schema.md").read_text()
    section = doc[doc.index("Verify:"):]
    section = section[:section.index("\n\n")]
    for key in [*v, *v["checks"][0], *v["per_output"]["output"]]:
        assert f"`{key}`" in section, key
