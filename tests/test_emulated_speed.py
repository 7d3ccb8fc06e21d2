"""F19: timings under emulation are correctness only, never device latency, in tuning and the terminal too.

`edgekit compress --target arm64-emulated` printed "quantize ... 7.13x FP32 speed" from qemu trial timings,
ranked INT8 candidates by them, and showed the qemu p50s in its summary as plain "2.324 ms".
"""

import numpy as np
import pytest

from edgekit.artifact import Artifact, Manifest
from edgekit.config import Tolerance
from edgekit.quant import tuning
from edgekit.quant.spec import QuantSpec
from edgekit.quant.tuning import Tuner
from edgekit.targets import load_target

from arm_device import rootfs_fixture
from tests.test_quant import conv_model


def _data(n=16, seed=0):
    from edgekit.dataset import Dataset

    return Dataset({"x": np.random.default_rng(seed).normal(size=(n, 1, 16, 16)).astype(np.float32)})


def _tuner(tmp_path, target, scores, progress=None):
    """A Tuner on a real conv model whose evaluator hands out `scores` in trial order."""
    from edgekit.quant import static

    src = conv_model(tmp_path / "conv.onnx")
    prep = tmp_path / "prep.onnx"
    static.preprocess(src, prep)
    it = iter(scores)
    return Tuner(prep_path=prep, fp32_path=src, workdir=tmp_path, calib=_data(), input_names=["x"],
                 evaluate=lambda path: {"value": next(it)}, reference=1.0, tolerance=Tolerance.parse("20%"),
                 target=target, feeds={"x": np.ones((1, 1, 16, 16), np.float32)}, calib_size=16, max_trials=4,
                 progress=progress)


SPECS = [QuantSpec(), QuantSpec(method="percentile")]


def test_trials_take_no_speed_from_a_measurement_that_comes_back_emulated(tmp_path, monkeypatch, capsys):
    from edgekit.stages.quantize import _progress

    # qemu's word: the less accurate candidate runs 7x faster than FP32, the more accurate one 1.4x
    p50 = iter([1.0, 5.0])

    def emulated(paths, target, feeds, **kw):
        return {"fp32": {"status": "ok", "p50_ms": 7.0, "runs": 5, "emulated": True},
                "int8": {"status": "ok", "p50_ms": next(p50), "runs": 5, "emulated": True}}

    monkeypatch.setattr(tuning, "measure", emulated)
    monkeypatch.delenv("EDGEKIT_QUIET", raising=False)
    tuner = _tuner(tmp_path, load_target("x86-laptop"), [0.90, 0.95], progress=_progress("conv.onnx"))
    trials = tuner.run_phase(SPECS, "grid")
    assert [t.error for t in trials] == [None, None] and all(t.passed for t in trials)
    for t in trials:
        assert t.speedup is None and t.latency_ms is None and t.fp32_ms is None, t
        assert t.info["latency"] == "emulated: not device latency"
        rec = t.record()
        assert rec["speedup"] is None and rec["latency_ms"] is None
        assert rec["latency"] == "emulated: not device latency"
    err = capsys.readouterr().err
    assert "quantize conv.onnx [grid]" in err and "FP32 speed" not in err, err
    # ranked by accuracy alone: qemu's 7x does not make the less accurate candidate the answer
    assert tuner.best() is trials[1]


def test_an_emulated_target_is_not_timed_at_all_and_ranks_by_accuracy(tmp_path, monkeypatch):
    def no_timing(*a, **k):
        raise AssertionError("trials on an emulated target must not be timed under qemu")

    monkeypatch.setattr(tuning, "measure", no_timing)
    tuner = _tuner(tmp_path, load_target("arm64-emulated"), [0.97, 0.93, 0.97])
    trials = tuner.run_phase(SPECS + [QuantSpec(per_channel=False)], "grid")
    assert [t.error for t in trials] == [None] * 3
    assert all(t.speedup is None and t.latency_ms is None for t in trials)
    assert all(t.info["latency"] == "emulated: not device latency" for t in trials)
    best = tuner.best()
    assert best is trials[0]  # most accurate; of equally accurate ones, the earliest
    # nothing passing: the fallback pick among all-unmeasured trials still works
    for t in trials:
        t.passed = False
    assert tuner.best() is trials[0]
    assert not any(map(tuning._faster, trials))


def _manifest(emulated: bool) -> Manifest:
    def lat(p50):
        return {"arm64-emulated": {"target": "arm64-emulated", "status": "ok", "p50_ms": p50, "runs": 30,
                                   "emulated": emulated}}

    arts = [Artifact(kind="fp32", path="model.fp32.onnx", bytes=2048, latency=lat(2.324),
                     metrics={"name": "top1_agreement", "value": 1.0}),
            Artifact(kind="int8", path="model.int8.onnx", bytes=1024, latency=lat(0.962),
                     metrics={"name": "top1_agreement", "value": 0.86, "drop_rel": 0.14})]
    return Manifest(artifacts=arts, recommended={})


def test_the_summary_shows_an_emulated_p50_as_emulated(capsys):
    from edgekit.cli.compress import _summary

    _summary(_manifest(emulated=True), "out")
    err = capsys.readouterr().err
    assert "2.324" not in err and "0.962" not in err, err
    rows = [ln for ln in err.splitlines() if "model." in ln]
    assert len(rows) == 2 and all("emulated" in ln for ln in rows), err
    # a real measurement still shows its p50
    _summary(_manifest(emulated=False), "out")
    err = capsys.readouterr().err
    assert "2.324 ms" in err and "0.962 ms" in err and "emulated" not in err.split("p50 arm64-emulated")[1], err


# ---------------------------------------------------------------- the real arm64-emulated target (qemu)
@pytest.fixture(scope="module")
def rootfs():
    yield from rootfs_fixture()


@pytest.mark.slow
def test_compress_on_arm64_emulated_shows_no_emulated_speed(rootfs, tmp_path, monkeypatch, capsys):
    import edgekit
    from edgekit.cli.compress import _summary

    from conftest import FAST_PROFILE

    monkeypatch.delenv("EDGEKIT_QUIET", raising=False)
    model = conv_model(tmp_path / "net.onnx")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).normal(size=(40, 1, 16, 16)).astype(np.float32))
    out = tmp_path / "out"
    man = edgekit.compress(str(model), output=str(out), calib=str(tmp_path / "calib.npy"),
                           targets=["arm64-emulated"], quantize={"max_trials": 2}, profile=FAST_PROFILE)
    _summary(man, str(out))
    err = capsys.readouterr().err
    assert "quantize model.fp32.onnx [grid]" in err and "FP32 speed" not in err, err
    (q,) = man.quantization.values()
    assert q["trials"] and all(t["speedup"] is None and t["latency_ms"] is None for t in q["trials"]), q["trials"]
    assert all(t["latency"] == "emulated: not device latency" for t in q["trials"] if t["error"] is None)
    assert q["speed_gate"]["arm64-emulated"]["status"] == "emulated" and q["recommend"] is False
    # the profile stage did run under qemu; its p50s are correctness only, and the summary says so
    lats = [a.latency["arm64-emulated"] for a in man.artifacts]
    assert all(lat["status"] == "ok" and lat["emulated"] is True for lat in lats), lats
    rows = [ln for ln in err.splitlines() if "model.fp32.onnx │" in ln or "model.int8.onnx │" in ln]
    assert len(rows) == 2 and all("emulated" in ln and " ms" not in ln for ln in rows), err
