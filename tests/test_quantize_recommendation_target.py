"""`edgekit quantize` without --target records its recommendation under the target compress uses for this CPU,
with the keys the report schema documents (sweep23 F8): it was keyed 'host', a target that does not exist, so
`edgekit report` never compared a quantize run with a compress run on the same machine."""
import json
import platform

import numpy as np
import pytest

from tests.cliutil import run_cli as _run
from edgekit.report.model import build_report
from tests.test_quant import conv_model


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    monkeypatch.setenv("EDGEKIT_QUIET", "1")


# x86-laptop is this CPU with the runtime's threads on an x86-64 host; elsewhere no built-in target is
EXPECTED = "x86-laptop" if platform.machine().lower() in ("x86_64", "amd64") else "host"


def test_quantize_recommends_for_the_default_target_with_the_documented_keys(tmp_path):
    model = conv_model(tmp_path / "net.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).normal(size=(40, 1, 16, 16)).astype(np.float32))
    out = tmp_path / "out"
    assert _run(["quantize", str(model), "--calib", str(tmp_path / "calib.npy"), "--max-trials", "2",
                 "-o", str(out)]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert list(man["recommended"]) == [EXPECTED]  # was ['host'] on x86-64 too
    rec = man["recommended"][EXPECTED]
    assert rec["status"] == "ok" and rec["path"] in {a["path"] for a in man["artifacts"]}
    assert set(rec) >= {"status", "path", "kind", "reason", "speedup_vs_fp32", "rejected"}
    if rec["kind"] == "fp32":
        assert rec["speedup_vs_fp32"] == 1.0 and len(rec["rejected"]) == 1
    else:
        gate = man["quantization"]["net.onnx"]["speed_gate"]["host"]
        assert rec["speedup_vs_fp32"] == pytest.approx(1 / gate["ratio"]) and rec["rejected"] == []
    rep = build_report([out])
    assert rep["runs"][0]["targets"] == [EXPECTED]
