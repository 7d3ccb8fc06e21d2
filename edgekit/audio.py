"""A folder of .wav clips as --calib / --eval / --train data: what a keyword-spotting or audio classifier
is fed on a device. Laid out as an image folder is (calibration.image_layout): clips directly in the
folder, or one subfolder per class (root/yes/*.wav, root/no/*.wav), numbered in sorted order, as labels.

Each clip is decoded to float32 in [-1, 1] (PCM 8-bit unsigned, 16-, 24- and 32-bit signed), by the
standard library's wave module. The model's input is [N, L] (a waveform) or [N, C, L] (C channels, or
1 for mono: a Conv1d front end); L is the input's fixed length, else the longest clip's, and shorter
clips are padded with silence at the end, longer ones cut (a note gives the counts). Every clip must
share one sample rate: a model hears one rate, and resampling would be a guess at what the device does.
"""
from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CalibrationError

AUDIO_EXTS = (".wav",)


@dataclass
class Clip:
    path: Path
    rate: int
    channels: int
    frames: int
    width: int  # bytes per sample


def is_audio_folder(folder) -> bool:
    """A folder holding .wav clips (directly or in class subfolders) and no images; hidden files and folders
    are skipped, as the readers skip them. One walk that stops at the first image: every image folder read
    asks this first, and building both layouts walked it twice more."""
    from .calibration import IMAGE_EXTS

    folder, audio = Path(folder), False
    for f in folder.rglob("*"):
        suffix = f.suffix.lower()
        if suffix not in IMAGE_EXTS and suffix not in AUDIO_EXTS:
            continue
        if any(part.startswith(".") for part in f.relative_to(folder).parts) or not f.is_file():
            continue
        if suffix in IMAGE_EXTS:
            return False
        audio = True
    return audio


def _header(path: Path) -> Clip:
    try:
        with wave.open(str(path), "rb") as w:
            clip = Clip(path, w.getframerate(), w.getnchannels(), w.getnframes(), w.getsampwidth())
    except (wave.Error, EOFError, OSError) as e:
        # wave reads PCM only: a float or compressed .wav is "unknown format: 3"
        raise CalibrationError(f"{path}: not a readable PCM .wav file ({e}); write 8-, 16-, 24- or 32-bit integer "
                               "PCM") from None
    if clip.width not in (1, 2, 3, 4):
        raise CalibrationError(f"{path}: {8 * clip.width}-bit samples; expected 8-, 16-, 24- or 32-bit PCM")
    if clip.frames == 0:
        raise CalibrationError(f"{path}: holds no audio (0 frames)")
    return clip


def decode(clip: Clip) -> np.ndarray:
    """float32 [channels, frames] in [-1, 1]."""
    with wave.open(str(clip.path), "rb") as w:
        raw = w.readframes(clip.frames)
    n = len(raw) // (clip.width * clip.channels)
    if n < clip.frames:
        raise CalibrationError(f"{clip.path}: truncated: its header declares {clip.frames} frames, the file holds {n}")
    if clip.width == 1:  # 8-bit WAV is unsigned, centred on 128
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif clip.width == 3:  # 24-bit little-endian: widened to int32 by hand
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    else:
        dt = np.dtype("<i2") if clip.width == 2 else np.dtype("<i4")
        x = np.frombuffer(raw, dt).astype(np.float32) / float(2 ** (8 * clip.width - 1))
    return np.ascontiguousarray(x[: n * clip.channels].reshape(n, clip.channels).T)


def clips(folder) -> tuple[list, object]:
    """(headers of the folder's clips in reading order, the layout with labels and classes). All share one
    sample rate and channel count, else one line naming the first clip that differs."""
    from .calibration import image_layout

    layout = image_layout(folder, AUDIO_EXTS)
    if not layout.files:
        raise CalibrationError(f"{folder}: no .wav clips in this folder, nor in class subfolders (one per class: "
                               "root/yes/*.wav, root/no/*.wav)")
    heads = [_header(f) for f in layout.files]
    first = heads[0]
    for c in heads[1:]:
        if c.rate != first.rate:
            raise CalibrationError(f"{c.path}: sampled at {c.rate} Hz, {first.path.name} at {first.rate} Hz; a model "
                                   "hears one rate: resample the clips to the rate it was trained on")
        if c.channels != first.channels:
            raise CalibrationError(f"{c.path}: {c.channels} channels, {first.path.name} {first.channels}; give the "
                                   "clips one channel layout")
    return heads, layout


def _fit(x: np.ndarray, channels: int, length: int, where: Path) -> np.ndarray:
    """[channels, length]: mixed down to mono when the model takes one channel, padded with silence or cut."""
    if channels == 1 and x.shape[0] > 1:
        x = x.mean(axis=0, keepdims=True)
    elif channels != x.shape[0]:
        raise CalibrationError(f"{where}: {x.shape[0]} channels; the model's input takes {channels}")
    out = np.zeros((channels, length), np.float32)
    n = min(length, x.shape[1])
    out[:, :n] = x[:, :n]
    return out


def shape_for(spec, heads: list, where) -> tuple[tuple, int, int]:
    """(item shape, channels, length) the clips are fed as, from the model input's spec (None: a waveform
    [L] at the longest clip's length, for learning a PyTorch model's input)."""
    longest = max(c.frames for c in heads)
    shape = list(spec.shape) if spec is not None else ["batch", "length"]
    if len(shape) not in (2, 3):
        raise CalibrationError(f"{where}: .wav clips give a waveform [N, L] or [N, C, L]; the model's input "
                               f"{spec.name} is {shape}")
    length = shape[-1] if isinstance(shape[-1], int) and shape[-1] > 0 else longest
    if len(shape) == 2:
        return (length,), 1, length
    channels = shape[1] if isinstance(shape[1], int) and shape[1] > 0 else heads[0].channels
    return (channels, length), channels, length


def read_audio(folder, specs, limit, *, labels: bool = False):
    from .calibration import _finish

    folder = Path(folder)
    if len(specs) > 1:
        raise CalibrationError(f"{folder}: a folder of .wav clips feeds one input; the model has {len(specs)}")
    heads, layout = clips(folder)
    y = np.asarray(layout.labels, np.int64) if labels and layout.labels is not None else None
    if limit is not None:
        heads, y = heads[:limit], (None if y is None else y[:limit])
    spec = specs[0] if specs else None
    if spec is not None and np.dtype(spec.dtype).kind != "f":
        raise CalibrationError(f"{folder}: .wav clips give float samples; the model's input is {spec.dtype}")
    item, channels, length = shape_for(spec, heads, folder)
    dtype = np.dtype(spec.dtype) if spec is not None else np.dtype(np.float32)

    def fetch(a, b):
        return np.stack([_fit(decode(c), channels, length, c.path).reshape(item) for c in heads[a:b]]).astype(
            dtype, copy=False)

    from .calibration import LazyArray

    arr = LazyArray(len(heads), item, dtype, fetch)
    extra = {"files": [c.path.relative_to(folder).as_posix() for c in heads], "format": "audio",
             "sample_rate": heads[0].rate, "hidden_skipped": layout.hidden,
             "padded": sum(c.frames < length for c in heads), "cut": sum(c.frames > length for c in heads),
             "length": length}
    if layout.classes:
        extra["classes"] = layout.classes
        present = set(layout.labels)
        extra["empty_classes"] = [c for k, c in enumerate(layout.classes) if k not in present]
    return _finish(str(folder), {spec.name if spec else "input": arr}, specs, labels=y, limit=None,
                   source=str(folder), extra=extra)


def audio_samples(folder, n: int = 2) -> np.ndarray:
    """The first n clips as a waveform [n, L] (L the longest clip's length), for learning a PyTorch model's
    input: the loader then tries [n, 1, L] too (a Conv1d front end)."""
    heads, _ = clips(folder)
    _, _, length = shape_for(None, heads, folder)
    return np.stack([_fit(decode(c), 1, length, c.path)[0] for c in heads[:n]])
