"""A folder of .wav clips as --calib / --eval data, laid out as an image folder (class subfolders are labels):
keyword spotting and audio classifiers, which were 'a folder of images needs a model with one 4-D image
input'. Clips are written by the standard library's wave module, the way recorders save PCM."""
import json
import struct
import wave

import numpy as np
import pytest
import torch
import torch.nn as nn

from cliutil import run_cli
from edgekit.calibration import read_dataset
from edgekit.errors import CalibrationError

RATE = 8000
TONES = {"high": 1500, "low": 300, "mid": 800}  # sorted names: high=0, low=1, mid=2


def _write(path, x, *, width=2, channels=1, rate=RATE):
    """x: float [frames] or [frames, channels] in [-1, 1], stored as integer PCM of `width` bytes."""
    x = np.asarray(x, np.float64).reshape(len(x), channels)
    if width == 1:
        raw = np.round(x * 127 + 128).astype(np.uint8).tobytes()
    elif width == 3:
        v = np.round(x * (2 ** 23 - 1)).astype(np.int32).reshape(-1)
        raw = b"".join(struct.pack("<i", int(s))[:3] for s in v)
    else:
        dt = "<i2" if width == 2 else "<i4"
        raw = np.round(x * (2 ** (8 * width - 1) - 1)).astype(dt).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)


def _tones(folder, per_class=40, seed=0):
    rng = np.random.default_rng(seed)
    for name, f0 in TONES.items():
        for i in range(per_class):
            n = int(RATE * rng.uniform(0.4, 0.6))
            t = np.arange(n) / RATE
            x = 0.5 * np.sin(2 * np.pi * f0 * rng.uniform(0.9, 1.1) * t) + 0.05 * rng.normal(size=n)
            _write(folder / name / f"{i:03d}.wav", np.clip(x, -1, 1))
    return folder


MODEL_PY = '''
import torch.nn as nn


class KWS(nn.Module):  # a Conv1d keyword spotter on the raw waveform [N, 1, L]
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv1d(1, 16, 64, stride=16), nn.BatchNorm1d(16), nn.ReLU(),
                               nn.Conv1d(16, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                               nn.Linear(16, 3))

    def forward(self, x):
        return self.f(x)


def build():
    return KWS()
'''


@pytest.mark.slow
def test_a_keyword_classifier_is_compressed_and_scored_on_its_class_folders(tmp_path, capsys):
    import importlib.util

    (tmp_path / "kws_model.py").write_text(MODEL_PY)
    spec = importlib.util.spec_from_file_location("kws_model", tmp_path / "kws_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    train = read_dataset(_tones(tmp_path / "train", seed=1), [], labels=True)
    x, y = torch.from_numpy(np.asarray(train.inputs["input"]))[:, None, :], torch.from_numpy(train.labels)
    torch.manual_seed(0)
    net = mod.build()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    torch.save(net.eval().state_dict(), tmp_path / "kws.pt")
    clips = _tones(tmp_path / "clips", per_class=30, seed=2)
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{tmp_path / 'kws_model.py'}:build", "--weights", str(tmp_path / "kws.pt"),
                  "--calib", str(clips), "--eval", str(clips), "--target", "x86-laptop", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "labels from its 3 class folders" in err and "(high=0, low=1, mid=2)" in err
    assert "clips fed as" in err and "padded with silence at the end" in err
    m = json.loads((out / "manifest.json").read_text())
    assert m["data"]["eval"]["format"] == "audio" and m["data"]["eval"]["classes"] == ["high", "low", "mid"]
    assert m["data"]["eval"]["sha256"] != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    fp32 = next(a for a in m["artifacts"] if a["kind"] == "fp32")
    assert fp32["metrics"]["name"] == "accuracy" and fp32["metrics"]["value"] > 0.9
    assert fp32["inputs"][0]["shape"][:2] == ["batch", 1]


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_widths_decode_to_the_same_waveform(tmp_path, width):
    t = np.arange(400) / RATE
    x = 0.6 * np.sin(2 * np.pi * 440 * t)
    _write(tmp_path / "c" / "a.wav", x, width=width)
    ds = read_dataset(tmp_path / "c", [])
    got = np.asarray(ds.inputs["input"])[0]
    assert got.dtype == np.float32 and got.shape == (400,)
    assert np.abs(got - x).max() < (1.5 / 127 if width == 1 else 1e-4)


def test_stereo_clips_are_mixed_down_for_a_waveform_input_and_kept_for_two_channels(tmp_path):
    t = np.arange(300) / RATE
    left, right = 0.5 * np.sin(2 * np.pi * 300 * t), 0.2 * np.ones_like(t)
    _write(tmp_path / "s" / "a.wav", np.stack([left, right], 1), channels=2)
    from edgekit.artifact import TensorSpec

    mono = np.asarray(read_dataset(tmp_path / "s", [TensorSpec("x", ["batch", "len"], "float32")]).inputs["x"])
    assert mono.shape == (1, 300) and np.abs(mono[0] - (left + right) / 2).max() < 1e-3
    two = np.asarray(read_dataset(tmp_path / "s", [TensorSpec("x", ["batch", 2, 256], "float32")]).inputs["x"])
    assert two.shape == (1, 2, 256) and np.abs(two[0, 1] - 0.2).max() < 1e-3  # cut to the model's 256


def test_clips_of_another_rate_or_format_are_one_line_naming_the_file(tmp_path):
    _write(tmp_path / "r" / "a.wav", np.zeros(100))
    _write(tmp_path / "r" / "b.wav", np.zeros(100), rate=16000)
    with pytest.raises(CalibrationError, match=r"b\.wav: sampled at 16000 Hz, a\.wav at 8000 Hz"):
        read_dataset(tmp_path / "r", [])
    # IEEE float WAV (format 3), which the standard library does not read
    f = tmp_path / "f" / "a.wav"
    f.parent.mkdir()
    data = np.zeros(10, "<f4").tobytes()
    f.write_bytes(b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 3, 1, RATE,
                  RATE * 4, 4, 32) + b"data" + struct.pack("<I", len(data)) + data)
    with pytest.raises(CalibrationError, match=r"a\.wav: not a readable PCM \.wav file .*integer PCM") as e:
        read_dataset(tmp_path / "f", [])
    assert "\n" not in str(e.value)


def test_corrupt_empty_and_misfit_clips_are_one_line(tmp_path):
    from edgekit.artifact import TensorSpec

    good = tmp_path / "t" / "a.wav"
    _write(good, 0.1 * np.ones(400))
    raw = good.read_bytes()
    good.write_bytes(raw[:-300])  # the header still declares 400 frames
    with pytest.raises(CalibrationError, match=r"a\.wav: truncated: its header declares 400 frames, the file holds 250"):
        np.asarray(read_dataset(tmp_path / "t", []).inputs["input"])
    _write(tmp_path / "z" / "a.wav", np.zeros(0))
    with pytest.raises(CalibrationError, match=r"a\.wav: holds no audio \(0 frames\)"):
        read_dataset(tmp_path / "z", [])
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "a.wav").write_bytes(b"not a wave file at all")
    with pytest.raises(CalibrationError, match=r"a\.wav: not a readable PCM \.wav file"):
        read_dataset(tmp_path / "g", [])
    _write(tmp_path / "ok" / "a.wav", np.zeros(100))
    with pytest.raises(CalibrationError, match=r"clips give a waveform \[N, L\] or \[N, C, L\]; the model's input x"):
        read_dataset(tmp_path / "ok", [TensorSpec("x", ["batch", 1, 8, 8], "float32")])


def test_a_broken_clip_stops_compress_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "kws_model.py").write_text(MODEL_PY)
    clips = _tones(tmp_path / "clips", per_class=4)
    (clips / "low" / "000.wav").write_bytes(b"RIFF....WAVEjunk")
    out = tmp_path / "out"
    rc = run_cli(["compress", f"{tmp_path / 'kws_model.py'}:build", "--calib", str(clips), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    line = [ln for ln in err.splitlines() if ln.startswith("edgekit: error")]
    assert len(line) == 1 and "000.wav: not a readable PCM .wav file" in line[0], err
    assert not out.exists()
