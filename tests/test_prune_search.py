"""Sensitivity analysis, latency-targeted ratio search and the iterative schedule on tiny models."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgekit.config import DistillConfig, PruneConfig
from edgekit.errors import ConfigError
from edgekit.pruning import latency_search, schedule, sensitivity
from edgekit.stages import prune as stage
from test_prune_models import init_bn, make_ctx, make_source, residual_cnn


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _src():
    return make_source(init_bn(residual_cnn()), {"input": ((3, 16, 16), "float32", None)}, n=24)


def test_sensitivity_table_allocation_and_files(tmp_path):
    src = _src()
    cfg = PruneConfig(ratio=0.5, sensitivity=True)
    res = stage.run(src, make_ctx(src, tmp_path), cfg, DistillConfig(enabled=False, epochs=0), distill_enabled=False)
    rows = res.info["sensitivity"]
    layers = {r["layer"] for r in rows}
    assert layers == {"3.conv1", "4", "7"}  # the stem group and the output layer are kept
    assert {r["ratio"] for r in rows} == set(sensitivity.RATIOS)
    assert all(0 <= r["metric"] <= 1 for r in rows)
    data = json.loads((tmp_path / "sensitivity.json").read_text())
    assert data["metric"] == "top1_agreement" and len(data["rows"]) == len(rows)
    assert (tmp_path / "sensitivity.csv").read_text().splitlines()[0] == "layer,ratio,metric,drop,params_removed"
    assert (tmp_path / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert res.info["allocation"] and res.info["params_after"] < res.info["params_before"]


def test_allocate_spends_budget_on_insensitive_layers():
    rows = [{"layer": "a", "ratio": r, "drop": d, "params_removed": p}
            for r, d, p in ((0.25, 0.0, 100), (0.5, 0.01, 200), (0.75, 0.3, 300))]
    rows += [{"layer": "b", "ratio": r, "drop": d, "params_removed": p}
             for r, d, p in ((0.25, 0.2, 100), (0.5, 0.4, 200), (0.75, 0.6, 300))]
    alloc = sensitivity.allocate(rows, 300)
    assert alloc["a"] > alloc.get("b", 0)
    assert sum({"a": {0.25: 100, 0.5: 200, 0.75: 300}, "b": {0.25: 100, 0.5: 200, 0.75: 300}}[k][v]
               for k, v in alloc.items()) >= 300


def test_latency_target_parse():
    t = latency_search.LatencyTarget.parse("0.6x")
    assert t.relative and t.met(0.59, 1.0) and not t.met(0.61, 1.0)
    assert latency_search.LatencyTarget.parse("2.5ms").met(2.4, 100.0)
    for bad in ("fast", "1.2x", "0ms", "-1ms"):
        with pytest.raises(ConfigError):
            latency_search.LatencyTarget.parse(bad)


def test_latency_search_measures_exported_candidates(tmp_path):
    src = _src()
    cfg = PruneConfig(target_latency="1000ms")  # met by every candidate: bisects down to the smallest ratio
    res = stage.run(src, make_ctx(src, tmp_path), cfg, DistillConfig(enabled=False, epochs=0), distill_enabled=False)
    cands = res.info["latency_search"]["candidates"]
    assert len(cands) >= 3 and all(c["met"] and c["latency_ms"] > 0 and c["base_ms"] > 0 for c in cands)
    assert cands[0]["ratio"] == latency_search.HI
    assert res.info["ratio"] == min(c["ratio"] for c in cands) < 0.2
    with pytest.raises(Exception, match="not reached") as e:
        stage.run(src, make_ctx(src, tmp_path), PruneConfig(target_latency="0.000001ms"),
                  DistillConfig(enabled=False, epochs=0), distill_enabled=False)
    # and what holds it up: the layers pruning leaves whole even at the largest ratio (the kept stem)
    assert "layers left whole at that ratio: " in str(e.value) and "(Conv2d, " in str(e.value), str(e.value)


def test_iterative_schedule_steps_and_epochs(tmp_path):
    assert schedule.epochs_per_step(10, 3) == [3, 3, 4]
    assert schedule.epochs_per_step(1, 3) == [1, 1, 1]
    labels = np.random.default_rng(0).integers(0, 10, 24)
    src = make_source(init_bn(residual_cnn()), {"input": ((3, 16, 16), "float32", None)}, n=24, labels=labels)
    cfg = PruneConfig(ratio=0.5, steps=2)
    res = stage.run(src, make_ctx(src, tmp_path), cfg, DistillConfig(epochs=2, patience=0), distill_enabled=True)
    assert res.kind == "distilled"
    steps = res.info["steps"]
    assert [s["ratio"] for s in steps] == [0.0, 0.25, 0.5]
    assert steps[0]["params"] > steps[1]["params"] > steps[2]["params"]
    assert all(s["latency_ms"] > 0 for s in steps)
    assert len(res.info["distill"]["per_step"]) == 2
    assert res.module[3].conv1.out_channels == 8


def _split_source(n_train):
    """Eval with labels, --train/--calib without: which set ranked the layers shows in the metric's name."""
    from edgekit.dataset import Dataset

    src = make_source(init_bn(residual_cnn()), {"input": ((3, 16, 16), "float32", None)}, n=24)
    rng = np.random.default_rng(5)
    src.eval = Dataset({"input": rng.standard_normal((24, 3, 16, 16)).astype(np.float32)},
                       rng.integers(0, 10, 24), "eval.npz")
    src.train = Dataset({"input": rng.standard_normal((n_train, 3, 16, 16)).astype(np.float32)}, None, "train.npy")
    src.calib = Dataset({"input": rng.standard_normal((40, 3, 16, 16)).astype(np.float32)}, None, "calib.npy")
    return src


@pytest.mark.parametrize("n_train,source", [(120, "train.npy [24 held out for early stopping]"), (30, "calib.npy")])
def test_sensitivity_ranks_layers_on_data_apart_from_eval(tmp_path, n_train, source):
    # --eval both chose the per-layer ratios and reported the pruned model's accuracy: optimistic
    src = _split_source(n_train)
    res = stage.run(src, make_ctx(src, tmp_path), PruneConfig(ratio=0.5, sensitivity=True),
                    DistillConfig(enabled=False, epochs=0), distill_enabled=False)
    assert res.info["metric_name"] == "accuracy"  # the result, on --eval's labels
    assert res.info["sensitivity_data"]["source"] == source and res.info["sensitivity_data"]["metric"] == \
        "top1_agreement"
    assert json.loads((tmp_path / "sensitivity.json").read_text())["metric"] == "top1_agreement"
    assert not any("sensitivity was measured on the eval data" in n for n in res.info["notes"])


def test_sensitivity_on_eval_alone_says_so(tmp_path):
    src = _src()  # one data set serves as calib, eval and train
    res = stage.run(src, make_ctx(src, tmp_path), PruneConfig(ratio=0.5, sensitivity=True),
                    DistillConfig(enabled=False, epochs=0), distill_enabled=False)
    assert any("sensitivity was measured on the eval data" in n for n in res.info["notes"]), res.info["notes"]
