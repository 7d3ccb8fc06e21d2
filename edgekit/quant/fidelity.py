"""The metric when there is no labelled eval set: fidelity of a candidate's outputs to the FP32 model's.

Top-1 agreement for classifier-like outputs ([N, C] with C > 1), mean cosine otherwise;
edgekit.evaluate does the scoring, this picks the task and the data.
"""
from __future__ import annotations

from ..evaluate import Evaluator

MAX_EVAL = 500


def output_task(onnx_path) -> str:
    import onnx

    from ..loader import classifier_output

    m = onnx.load(str(onnx_path), load_external_data=False)
    return "classification" if classifier_output(m) else "generic"


def held_out(data, calib_size: int | None, limit: int | None = MAX_EVAL):
    """(the samples of `data` scored when no --eval is given, labels kept; whether INT8 calibrates on them).
    Static INT8 calibrates on the first calib_size samples, so up to `limit` of the ones after them are
    scored; with fewer, the calibration samples themselves. calib_size=None (dynamic INT8, FP16, pruning)
    calibrates nothing: the first `limit` samples."""
    import numpy as np

    if calib_size is not None and len(data) > calib_size:
        n = len(data) if limit is None else min(len(data), calib_size + limit)
        return data.subset(np.arange(calib_size, n), f"{data.source} [{calib_size}:{n}]"), False
    if limit is not None and len(data) > limit:
        return data.take(limit), calib_size is not None
    return data, calib_size is not None


def fidelity_evaluator(fp32_path, data, *, task: str | None = None, calib_size: int | None = None,
                       limit: int | None = MAX_EVAL):
    """(evaluator, note). Without an eval set, score on calibration samples not used for calibrating.

    calib_size=None: nothing is calibrated on `data` (dynamic/FP16 modes), so up to `limit` of it is scored;
    an --eval set is passed with limit=None and scored whole, as compress scores it.
    """
    if data is None or len(data) == 0:
        raise ValueError("fidelity_evaluator needs sample inputs; see random_inputs() when there are none")
    task = task or output_task(fp32_path)
    total = len(data)
    data, same = held_out(data, calib_size, limit)
    if calib_size is not None and not same:
        note = f"no --eval: fidelity to FP32 on {len(data)} calibration samples not used for calibrating"
        if total > calib_size + len(data):
            # say it: a user with 20,000 samples would otherwise believe all the held-out ones were scored
            note += (f" (samples {calib_size}:{calib_size + len(data)}; at most {MAX_EVAL} are scored, "
                     f"{total - calib_size - len(data)} more unused: give --eval to score a larger set)")
    else:
        note = (f"no --eval: fidelity to FP32 on {len(data)} calibration samples (the same ones used to calibrate)"
                if calib_size is not None else f"no --eval: fidelity to FP32 on {len(data)} samples of {data.source}")
        if len(data) < total:
            note += f" (the first {len(data)} of {total}: give --eval to score them all)"
    return Evaluator(data.without_labels(), task, fp32_path), note


RANDOM_SAMPLES = 16
RANDOM_DIM = 32  # stands in for symbolic non-batch dims (sequence length, image side)


def random_inputs(inputs: list, *, seed: int = 0):
    """A Dataset of random samples shaped like the model's inputs, for timing and a sanity check only.

    Floats are standard normal; integer inputs (token ids, masks, indices) are zeros, the one value
    every such input accepts. Their outputs say whether a quantized graph still computes about the
    same function, nothing about accuracy on real data.
    """
    import numpy as np

    from ..dataset import Dataset

    rng = np.random.default_rng(seed)
    fixed = next((s.shape[0] for s in inputs if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0), None)
    n = 2 * fixed if fixed else RANDOM_SAMPLES
    arrays = {}
    for s in inputs:
        dims = [d if isinstance(d, int) and d > 0 else RANDOM_DIM for d in list(s.shape)[1:]]
        dt = np.dtype(s.dtype)
        arrays[s.name] = (rng.standard_normal((n, *dims)).astype(dt) if dt.kind == "f"
                          else np.zeros((n, *dims), dt))
    return Dataset(arrays, None, f"{n} random inputs")


class SanityEvaluator(Evaluator):
    """Fidelity to FP32 on random inputs, under a name that cannot be mistaken for an accuracy."""

    @property
    def name(self) -> str:
        return super().name + "_on_random_inputs"


def sanity_evaluator(fp32_path, inputs: list):
    """(evaluator, note) when there is no --calib or --eval data at all (dynamic INT8, FP16)."""
    data = random_inputs(inputs)
    note = (f"accuracy not measured: no --eval or --calib data; the metric is fidelity to FP32 on {len(data)} "
            "random inputs, a sanity check of the conversion only")
    return SanityEvaluator(data, output_task(fp32_path), fp32_path), note
