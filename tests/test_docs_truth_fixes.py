"""What the docs say, held to: profile throughput units (F6) and prepost SPEC arguments (F3) of sweep23."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from flash_fixtures import make_outdir
from profile_models import cli_exit as _exit

FAST = ["--warmup", "1", "--min-runs", "5", "--min-seconds", "0.05", "--max-seconds", "2"]


def _one_line_error(capsys) -> str:
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert not cap.out and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_with_prepost_throughput_is_samples_per_second_like_the_models(tmp_path):
    """docs/report-schema.md: throughput is inferences per second. The pre/post parts are timed per batch,
    and their throughput was batches/s: at batch 4 the part called model read 4x below the model's own."""
    out = make_outdir(tmp_path / "out")  # post softmax_topk: timed on the saved sample inputs
    np.savez(out / "sample_inputs.npz", x=np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32))
    # the NumPy kernels: the units do not depend on the backend, and a cold Numba cache compiles for a minute
    p = subprocess.run([sys.executable, "-m", "edgekit", "profile", str(out), "--with-prepost", "--batch", "4",
                        "--no-op-profile", "--json", *FAST], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "EDGEKIT_PREPOST_NUMBA": "0"})
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)["runs"][0]["results"]["fp32"]
    pp = r["prepost"]
    assert r["status"] == pp["status"] == "ok" and r["batch"] == pp["batch"] == 4, pp
    assert r["throughput"] == pytest.approx(4000 / r["mean_ms"], rel=1e-6)
    for part in ("pre", "model", "post", "e2e"):
        if pp[part]["mean_ms"] > 0:  # no pre steps: pre can time as nothing at all
            assert pp[part]["throughput"] == pytest.approx(4000 / pp[part]["mean_ms"], rel=1e-6), part


def test_prepost_check_names_a_missing_spec_file(tmp_path, capsys, monkeypatch):
    """It said 'SPEC: not valid JSON (Expecting value ...)': the path was parsed as JSON text."""
    monkeypatch.chdir(tmp_path)
    assert _exit(["prepost", "check", "./missing_spec.json"]) == 2
    assert _one_line_error(capsys) == ("edgekit: error: ./missing_spec.json: no such file "
                                       "(SPEC is a JSON file or JSON text)")
    (tmp_path / "adir").mkdir()
    assert _exit(["prepost", "check", "adir"]) == 2
    assert "adir: not a file" in _one_line_error(capsys)


def test_prepost_check_tells_bad_json_text_from_a_bad_json_file(tmp_path, capsys):
    assert _exit(["prepost", "check", '{"post": [}']) == 2
    assert _one_line_error(capsys).startswith("edgekit: error: SPEC: not valid JSON (")
    bad = tmp_path / "badspec.json"
    bad.write_text("{bad")
    assert _exit(["prepost", "check", str(bad)]) == 2
    assert _one_line_error(capsys).startswith(f"edgekit: error: {bad}: not valid JSON (")
    assert _exit(["prepost", "check", '"a string"']) == 2
    assert "SPEC: prepost: expected an object" in _one_line_error(capsys)


def test_prepost_check_takes_json_text_longer_than_a_file_name(capsys):
    """Over 255 characters JSON text is no possible file name: checking for the file raised OSError
    (File name too long), an internal error, before the text was read."""
    spec = {"pre": [{"op": "resize_normalize", "size": [8, 8], "mean": [0.485, 0.456, 0.406],
                     "std": [0.229, 0.224, 0.225]}], "post": [{"op": "softmax_topk", "k": 5}]}
    text = json.dumps(spec, indent=4)
    assert len(text) > 255 and "/" not in text
    assert _exit(["prepost", "check", text, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["post"][0]["k"] == 5


def test_read_spec_names_the_argument_it_reads(tmp_path):
    from edgekit.prepost import PrepostError
    from edgekit.prepost.pipeline import read_spec

    f = tmp_path / "pp.json"
    f.write_text('{"post": [{"op": "softmax_topk", "k": 2}]}')
    assert read_spec(str(f)) == ({"post": [{"op": "softmax_topk", "k": 2}]}, str(f))
    assert read_spec('{"pre": []}') == ({"pre": []}, None)
    with pytest.raises(PrepostError, match=r"^--preprocess: not valid JSON \("):
        read_spec("[1,", what="--preprocess")
    with pytest.raises(PrepostError, match=r"^'x\\n\{': no such file \(--preprocess is"):
        read_spec("x\n{", what="--preprocess")  # one line, whatever was passed
    with pytest.raises(PrepostError, match=r"^--preprocess: empty"):
        read_spec(" ", what="--preprocess")
