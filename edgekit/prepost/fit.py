"""Whether declared pre-processing can feed a model, checked at compress time by running the steps once.

The check used to swallow every exception, so a spec whose steps could not be built or run (a crop_fraction
the op refuses, a 100000x100000 resize) was bundled and failed on the device for every input. Here every
failure is one line naming the spec and the step, and a resize whose output cannot fit the model is refused
from its parameters, before anything is allocated.
"""
from __future__ import annotations

import numpy as np

from .errors import PrepostError
from .ops import OPS, resize_channels
from .pipeline import Pipeline


def check_pre_fits(spec: dict, inputs: list, model: str, where: str = "--preprocess") -> None:
    """Raise PrepostError ('WHERE: ...', one line) unless the pre steps run and give the model's inputs.

    inputs: the model's inputs (.name, .shape with str for free axes); model: its name, for messages.
    """
    if not (spec or {}).get("pre"):
        return
    try:
        pipe = Pipeline(spec)
    except PrepostError as e:
        raise PrepostError(f"{where}: {e}") from None
    first = pipe.pre[0]
    channels, axis = _channels(first), _channel_axis(first)
    if len(pipe.pre) == 1 and first.op == "resize_normalize":
        _check_resize_shape(first.params, channels, inputs, model, where)
    out = pipe.run_steps(pipe.pre, {}, _sample(first, channels), where)
    _check_feeds(out, inputs, model, where, channels, axis)


def _channels(step):
    """(channel counts a resize_normalize step allows, why) when it fixes them, else None: several
    mean/std/pad_value values fix one count; swap_rb needs 3 or 4 (a grey model passed the check, then
    every raw input failed on the device). With one value each and no swap, the raw image decides."""
    if step.op != "resize_normalize":
        return None
    counts = resize_channels(step.params)
    if counts is None:
        return None
    if len(counts) == 1:
        return counts, f"{counts[0]} channels: mean, std or pad_value has {counts[0]} values"
    return counts, f"{step.where}: swap_rb needs 3 or 4 channels"


def _channel_axis(step):
    """The axis of a resize_normalize output that holds channels (by its layout), else None: only that
    axis may differ from the model's by the channel leniency; height and width must match as sizes (a 3x3
    resize passed for a model taking 4x4 images, then every raw input failed on the device)."""
    if step.op != "resize_normalize":
        return None
    return 1 if step.params["layout"] == "NCHW" else 3


def _sample(step, channels):
    """A small input for the first step: a 48x64 image (its shape does not matter, the output's size is
    fixed by the spec), else the op's own example."""
    if step.op == "resize_normalize":
        c = channels[0][0] if channels else 1
        return np.random.default_rng(0).integers(0, 256, (48, 64, c), dtype=np.uint8)
    return OPS[step.op].example(step.params)[0]


def _check_resize_shape(params, channels, inputs, model, where):
    """A resize's output shape is known from its parameters: refuse a mismatch before allocating it."""
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        return
    (h, w), c = params["size"], channels[0][0] if channels else 1
    nchw = params["layout"] == "NCHW"
    shape = [1, c, h, w] if nchw else [1, h, w, c]
    _compare(inputs[0], shape, model, where, channels, 1 if nchw else 3)


def _check_feeds(out, inputs, model, where, channels, axis):
    feeds = out if isinstance(out, dict) else {inputs[0].name: out}  # as the device runner feeds it
    missing = [s.name for s in inputs if s.name not in feeds]
    if missing:
        # the device runner feeds the pre-processing's result to the model as its inputs: a model input it
        # does not give can never be fed there (it was bundled, passed its self-test, and failed every run)
        gives = f"arrays {sorted(map(str, out))}" if isinstance(out, dict) else "one array"
        raise PrepostError(f"{where}: the pre-processing gives {gives}, but {model} takes {len(inputs)} inputs "
                           f"({', '.join(s.name for s in inputs)}); it cannot feed {', '.join(map(repr, missing))}. "
                           "Declare pre-processing for a one-input model, or feed model inputs on the device")
    for s in inputs:
        if feeds.get(s.name) is not None:
            _compare(s, list(np.shape(feeds[s.name])), model, where, channels, axis)


def _compare(spec_input, shape, model, where, channels, axis):
    """axis: the channel axis of a 4-D image output, else None (every dim must match as a size)."""
    want = list(spec_input.shape)
    axis = axis if len(shape) == 4 else None
    bad = [i for i, (d, a) in enumerate(zip(want, shape)) if i > 0 and not _dim_ok(d, a, channels, i == axis)]
    if len(shape) == len(want) and not bad:
        return
    why = f" ({channels[1]})" if channels and axis in bad else ""
    dims = ", ".join("N" if i == 0 and not isinstance(d, int) else str(d) for i, d in enumerate(want))
    raise PrepostError(f"{where}: the pre-processing gives {spec_input.name!r} shape {shape}{why}, but {model} "
                       f"takes [{dims}]")


def _dim_ok(d, a, channels, is_channel):
    """Whether the model's dim d takes the pre-processing's a. On the channel axis only: with one mean/std
    value the count follows the raw image (the sample is grey), so 1 and 3 are not held against the model;
    several values fix it; swap_rb's sample has 3 channels, and a 4-channel model takes 4-channel images."""
    if isinstance(d, str) or d is None or d == a:
        return True
    if not is_channel:
        return False
    return a in (1, 3) if channels is None else a in channels[0] and d in channels[0]
