"""What the docs say, held to: profile throughput units (F6) and prepost SPEC arguments (F3) of sweep23."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from flash_fixtures import make_outdir

FAST = ["--warmup", "1", "--min-runs", "5", "--min-seconds", "0.05", "--max-seconds", "2"]


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
