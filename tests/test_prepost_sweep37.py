"""sweep37 F2, F3, F5: the pre-processing fit check holds height and width to the model's as sizes (only
the channel axis is lenient), every warm-up feeds an image with a channel count the steps accept, and a
post-processing misfit names the spec as a pre-processing misfit does (the recipe or the file)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from cliutil import run_cli
from edgekit import prepost as pp
from edgekit.artifact import TensorSpec
from edgekit.prepost import Pipeline, PrepostError
from edgekit.prepost.fit import check_pre_fits
from tests.test_prepost_spec_checks import _classifier, _compress
from tests.test_prepost_sweep35 import _env, _version

# ------------------------------------------------------------- F2: H and W are sizes, not channel counts


@pytest.mark.parametrize("step, shape", [
    # swap_rb allows 3 or 4 channels: a 3x3 resize passed for a 4x4 model (and 4x4 for 3x3)
    ({"size": [3, 3], "swap_rb": True}, ["N", 3, 4, 4]),
    ({"size": [4, 4], "swap_rb": True}, ["N", 3, 3, 3]),
    ({"size": [3, 4], "swap_rb": True, "layout": "NHWC"}, ["N", 4, 3, 3]),
    # one mean/std value lets 1 and 3 channels pass: a 1x1 or 3x3 resize fitted every model
    ({"size": [1, 1]}, ["N", 3, 224, 224]),
    ({"size": [3, 3], "layout": "NHWC"}, ["N", 224, 224, 3]),
])
def test_a_resize_to_1_3_or_4_is_held_to_the_models_height_and_width(step, shape):
    spec = {"pre": [{"op": "resize_normalize", **step}]}
    with pytest.raises(PrepostError, match=r"^s\.json: the pre-processing gives 'x' shape .*, but m\.onnx takes"):
        check_pre_fits(spec, [TensorSpec("x", shape, "float32")], "m.onnx", "s.json")


def test_a_size_mismatch_does_not_blame_swap_rb():
    spec = {"pre": [{"op": "resize_normalize", "size": [3, 3], "swap_rb": True}]}
    with pytest.raises(PrepostError) as e:
        check_pre_fits(spec, [TensorSpec("x", ["N", 3, 5, 5], "float32")], "m.onnx", "s.json")
    assert str(e.value) == "s.json: the pre-processing gives 'x' shape [1, 3, 3, 3], but m.onnx takes [N, 3, 5, 5]"


@pytest.mark.parametrize("step, shape", [
    ({"size": [8, 8]}, ["N", 3, 8, 8]),  # grey sample, RGB model: the raw image decides
    ({"size": [8, 8], "layout": "NHWC"}, ["N", 8, 8, 3]),
    ({"size": [3, 3], "swap_rb": True}, ["N", 4, 3, 3]),
    ({"size": [4, 4], "swap_rb": True, "layout": "NHWC"}, ["N", 4, 4, 4]),
    ({"size": [1, 1]}, ["N", 1, 1, 1]),
])
def test_the_channel_axis_keeps_its_leniency(step, shape):
    check_pre_fits({"pre": [{"op": "resize_normalize", **step}]}, [TensorSpec("x", shape, "float32")], "m.onnx",
                   "s.json")


# ----------------------------------------------------- F3: warm-up examples the steps accept


@pytest.mark.parametrize("extra, channels", [({"swap_rb": True}, 3), ({"mean": [1, 2, 3, 4]}, 4),
                                             ({"mean": [1, 2, 3], "swap_rb": True}, 3), ({}, 1)])
def test_the_example_image_has_a_channel_count_the_step_accepts(extra, channels):
    # the example was grey whatever swap_rb said: warm-up and profile --with-prepost failed on it
    pipe = Pipeline({"pre": [{"op": "resize_normalize", "size": [4, 4], **extra}],
                     "post": [{"op": "softmax_topk", "k": 3}]}, backend="numpy")
    img = pipe.example_input()
    assert img.shape[-1] == channels
    assert pipe.preprocess(img).shape == (1, channels, 4, 4)
    assert pipe.warmup()["first_call_s"] >= 0


SWAP = {"pre": [{"op": "resize_normalize", "size": [4, 4], "swap_rb": True, "layout": "NCHW"}],
        "post": [{"op": "softmax_topk", "k": 3}]}


def test_runner_warmup_of_a_swap_rb_bundle(tmp_path):
    dev = tmp_path / "dev"
    _version(dev, "fp32-3737", SWAP)
    env = {**_env(tmp_path), "EDGEKIT_PREPOST_NUMBA": "0"}  # the example is the same; no minute of compiling
    r = subprocess.run([sys.executable, str(dev / "current" / "edgekit_runner.py"), "warmup", "--bundle",
                        str(dev / "current")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["status"] == "ok" and out["steps"] == ["resize_normalize", "softmax_topk"], out


@pytest.mark.slow
@pytest.mark.skipif(not pp.HAVE_NUMBA, reason="numba is a required dependency of edgekit")
def test_python_m_edgekit_prepost_in_a_swap_rb_bundle(tmp_path):
    # hands over to the runner's warm-up (Numba only): it failed there, and ended in a traceback
    dev = tmp_path / "dev"
    _version(dev, "fp32-3738", SWAP)
    r = subprocess.run([sys.executable, "-m", "edgekit.prepost"], cwd=dev / "current",
                       env={**_env(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("the runner's cache: backend numba"), r.stdout


@pytest.mark.skipif(not pp.HAVE_NUMBA, reason="numba is a required dependency of edgekit")
def test_python_m_edgekit_prepost_says_a_failed_warmup_in_one_line(tmp_path):
    dev = tmp_path / "dev"
    v = _version(dev, "fp32-3739", SWAP)
    (v / "edgekit_runner.py").write_text('import sys\nprint(\'{"status": "failed", "reason": "boom"}\')\nsys.exit(1)\n')
    r = subprocess.run([sys.executable, "-m", "edgekit.prepost"], cwd=dev / "current",
                       env={**_env(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines() == [f"python -m edgekit.prepost: error: {v / 'edgekit_runner.py'} warmup failed: "
                                     "boom"], r.stderr


# ------------------------------------------------------- F5: a post misfit names the spec's origin


@pytest.fixture
def cls(tmp_path):
    _classifier(tmp_path / "cls.onnx", 3)
    np.save(tmp_path / "calib.npy", np.random.default_rng(1).random((16, 3, 8, 8)).astype(np.float32))
    return tmp_path


POST20 = json.dumps({"post": [{"op": "softmax_topk", "k": 20}]})
WHY = "the post-processing does not fit {}'s outputs: prepost.post[0] (softmax_topk): k: 20 is larger"


def test_a_post_misfit_in_a_recipe_names_the_recipe(cls, capsys):
    recipe = cls / "post.toml"
    recipe.write_text(f'model = "{cls / "cls.onnx"}"\noutput = "{cls / "out"}"\ncalib = "{cls / "calib.npy"}"\n'
                      f'preprocess = {json.dumps(POST20)}\n\n[quantize]\nmode = "none"\n\n[profile]\nenabled = false\n')
    rc = run_cli(["compress", "--config", str(recipe)])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("edgekit: error")]
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"edgekit: error: {recipe}: preprocess: {WHY.format(cls / 'cls.onnx')}"), err
    assert not (cls / "out").exists()


def test_a_post_misfit_in_a_file_names_the_file_and_json_text_the_flag(cls, capsys):
    spec = cls / "post20.json"
    spec.write_text(POST20)
    rc, err, out = _compress(cls, "cls.onnx", "calib.npy", str(spec), capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"edgekit: error: {spec}: {WHY.format(cls / 'cls.onnx')}"), err
    assert not out.exists()
    rc, err, _ = _compress(cls, "cls.onnx", "calib.npy", POST20, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("edgekit: error: --preprocess: the post-"), err
