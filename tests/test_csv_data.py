"""Tabular data as .csv / .tsv: one sample per row, an optional header whose 'y' / 'label' / 'target' column
holds the labels. It was 'unknown data format '.csv'', and a tabular model's rows had to be saved as .npy."""
import csv
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from cliutil import run_cli
from edgekit.calibration import read_dataset
from edgekit.errors import CalibrationError, InputError

MODEL_PY = '''
import torch.nn as nn


def build():
    return nn.Sequential(nn.Linear(13, 16), nn.ReLU(), nn.Linear(16, 3))
'''


def _write(path, rows, header=None, delimiter=","):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


def test_rows_are_samples_and_the_label_column_is_y(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 64)).round(4)
    y = rng.integers(0, 10, size=20)
    head = [f"px{i}" for i in range(64)]
    _write(tmp_path / "d.csv", [list(r[:5]) + [c] + list(r[5:]) for r, c in zip(x, y)],
           header=head[:5] + ["label"] + head[5:])
    spec = [{"name": "img", "shape": ["batch", 1, 8, 8], "dtype": "float32"}]
    ds = read_dataset(tmp_path / "d.csv", spec, labels=True)
    # 64 columns for a [N, 1, 8, 8] input: one flattened sample per row
    assert ds.inputs["img"].shape == (20, 1, 8, 8) and ds.inputs["img"].dtype == np.float32
    assert np.allclose(np.asarray(ds.inputs["img"]).reshape(20, 64), x, atol=1e-6)
    assert ds.labels.tolist() == y.tolist() and ds.extra["columns"] == head
    assert read_dataset(tmp_path / "d.csv", spec).labels is None  # calibration reads no labels
    # no header, tab-separated, integer ids for an integer input
    _write(tmp_path / "ids.tsv", [[1, 2, 3], [4, 5, 6]], delimiter="\t")
    ids = read_dataset(tmp_path / "ids.tsv", [{"name": "ids", "shape": ["batch", 3], "dtype": "int64"}])
    assert ids.inputs["ids"].dtype == np.int64 and np.asarray(ids.inputs["ids"]).tolist() == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.parametrize("text, words", [
    ("a,b\n1,2\n3\n", "row 3 has 1 columns, the first row 2"),
    ("a,b\n1,2\n3,oops\n", "row 3, column 'b': 'oops' is not a number"),
    ("a,b\n", "a header and no rows"),
    ("1,2\n3,\n", "row 2, column 2: '' is not a number"),
])
def test_bad_csv_is_one_line_naming_the_place(tmp_path, text, words):
    (tmp_path / "d.csv").write_text(text)
    with pytest.raises(CalibrationError) as e:
        read_dataset(tmp_path / "d.csv", [{"name": "x", "shape": ["batch", 2], "dtype": "float32"}])
    assert str(e.value).startswith(str(tmp_path / "d.csv")) and words in str(e.value), str(e.value)


def test_compress_a_tabular_model_on_csv_rows(tmp_path, capsys):
    (tmp_path / "tab.py").write_text(MODEL_PY)
    ns = {}
    exec(MODEL_PY, ns)
    torch.manual_seed(0)
    torch.save(ns["build"]().state_dict(), tmp_path / "tab.pt")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 13)).astype(np.float32)
    y = rng.integers(0, 3, size=300)
    head = [f"f{i}" for i in range(13)]
    _write(tmp_path / "calib.csv", x[:200].tolist(), header=head)
    _write(tmp_path / "eval.csv", [list(r) + [c] for r, c in zip(x[200:].tolist(), y[200:])], header=head + ["y"])
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{tmp_path / 'tab.py'}:build", "--weights", str(tmp_path / "tab.pt"), "--calib",
                  str(tmp_path / "calib.csv"), "--eval", str(tmp_path / "eval.csv"), "--quantize", "none",
                  "--no-profile", "-o", str(out)])  # no --input-shape: 13 columns make it
    assert rc == 0, capsys.readouterr().err
    man = json.loads((out / "manifest.json").read_text())
    fp32 = man["artifacts"][0]
    assert fp32["inputs"][0]["shape"] == ["batch", 13]
    sess = ort.InferenceSession(str(out / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    pred = sess.run(None, {sess.get_inputs()[0].name: x[200:]})[0].argmax(1)
    assert fp32["metrics"]["name"] == "accuracy" and fp32["metrics"]["n"] == 100
    assert fp32["metrics"]["value"] == pytest.approx(float(np.mean(pred == y[200:])))
    # the same rows time the model: profile --inputs takes them as it takes an .npy
    capsys.readouterr()
    rc = run_cli(["profile", str(out / "model.fp32.onnx"), "--inputs", str(tmp_path / "calib.csv"), "--max-seconds",
                  "0.3", "--min-seconds", "0.05", "--min-runs", "3", "--no-op-profile", "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert rc in (0, None) and rep["settings"]["inputs"] == str(tmp_path / "calib.csv")
    assert [r["status"] for r in rep["runs"][0]["results"].values()] == ["ok"]


def test_rows_stream_in_batches_from_any_row(tmp_path, monkeypatch):
    """Batches in order, rows in any order and a limit all give the rows written, across remembered
    positions and checked chunks; blank lines, CRLF endings, a byte-order mark and a header cell holding a
    line break do not shift them."""
    import edgekit.csv_rows as csv_rows

    monkeypatch.setattr(csv_rows, "STRIDE", 16)
    monkeypatch.setattr(csv_rows, "CHUNK", 64)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(301, 4)).round(4)
    y = rng.integers(0, 7, size=301)
    with open(tmp_path / "d.csv", "w", newline="", encoding="utf-8-sig") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(["a", "b\nc", "label", "d", "e"])
        for i, (r, c) in enumerate(zip(x, y)):
            w.writerow([r[0], r[1], c, r[2], r[3]])
            if i % 37 == 0:
                f.write("\r\n , \r\n")
    spec = [{"name": "x", "shape": ["batch", 4], "dtype": "float32"}]
    ds = read_dataset(tmp_path / "d.csv", spec, labels=True)
    assert len(ds) == 301 and ds.labels.tolist() == y.tolist() and ds.extra["columns"] == ["a", "b\nc", "d", "e"]
    got = np.concatenate([b["x"] for b in ds.batches(10)])
    assert np.allclose(got, x, atol=1e-6)
    rows = rng.permutation(301)[:90]
    assert np.allclose(ds.inputs["x"][rows], x[rows], atol=1e-6)
    assert np.allclose(ds.inputs["x"][15:50], x[15:50], atol=1e-6)
    for limit in (1, 16, 64, 65, 200):
        part = read_dataset(tmp_path / "d.csv", spec, labels=True, limit=limit)
        assert np.allclose(np.asarray(part.inputs["x"]), x[:limit], atol=1e-6) and part.labels.tolist() == y[:limit].tolist()


def test_a_large_csv_is_not_held_in_memory(tmp_path, monkeypatch):
    """Reading the file holds one chunk of rows as text, not the whole file: read whole, the rows' strings
    took over ten times the values' own size."""
    import tracemalloc

    import edgekit.csv_rows as csv_rows

    monkeypatch.setattr(csv_rows, "CHUNK", 256)
    x = np.random.default_rng(4).normal(size=(30000, 10)).astype(np.float32)
    np.savetxt(tmp_path / "big.csv", x, delimiter=",", fmt="%.6f")
    tracemalloc.start()
    try:
        ds = read_dataset(tmp_path / "big.csv", [{"name": "x", "shape": ["batch", 10], "dtype": "float32"}])
        read_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        total = sum(float(b["x"].astype(np.float64).sum()) for b in ds.batches(64))
        batch_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == pytest.approx(float(x.astype(np.float64).sum()), rel=1e-5, abs=1e-2)
    assert read_peak < x.nbytes / 2 and batch_peak < x.nbytes / 2, (read_peak, batch_peak, x.nbytes)


def test_a_csv_changed_while_read_is_refused(tmp_path):
    _write(tmp_path / "d.csv", [[1, 2], [3, 4], [5, 6]])
    ds = read_dataset(tmp_path / "d.csv", [{"name": "x", "shape": ["batch", 2], "dtype": "float32"}])
    _write(tmp_path / "d.csv", [[1, 2], [3, 4], [5, 6], [7, 8]])
    with pytest.raises(InputError) as e:
        ds.inputs["x"][1:3]
    assert str(e.value) == f"{tmp_path / 'd.csv'}: the file changed or was removed while edgekit was reading it"
    (tmp_path / "d.csv").unlink()
    with pytest.raises(InputError, match="changed or was removed"):
        np.asarray(ds.inputs["x"])
