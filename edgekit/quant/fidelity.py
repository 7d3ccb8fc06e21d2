"""The metric when there is no labelled eval set: fidelity of a candidate's outputs to the FP32 model's.

Top-1 agreement for classifier-like outputs ([N, C] with C > 1), mean cosine otherwise;
edgekit.evaluate does the scoring, this picks the task and the data.
"""
from __future__ import annotations

from ..evaluate import Evaluator

MAX_EVAL = 500


def output_task(onnx_path) -> str:
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    dims = m.graph.output[0].type.tensor_type.shape.dim if m.graph.output else []
    if len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value > 1:
        return "classification"
    return "generic"


def fidelity_evaluator(fp32_path, data, *, task: str | None = None, calib_size: int | None = None):
    """(evaluator, note). Without an eval set, score on calibration samples not used for calibrating."""
    task = task or output_task(fp32_path)
    if calib_size is not None and len(data) > calib_size:
        from ..dataset import Dataset

        n = min(len(data), calib_size + MAX_EVAL)
        held = Dataset({k: v[calib_size:n] for k, v in data.inputs.items()}, None,
                       f"{data.source} [{calib_size}:{n}]")
        note = f"no --eval: fidelity to FP32 on {len(held)} calibration samples not used for calibrating"
        data = held
    else:
        data = data.take(MAX_EVAL)
        note = f"no --eval: fidelity to FP32 on {len(data)} calibration samples (the same ones used to calibrate)"
    nolabels = type(data)(dict(data.inputs), None, data.source, dict(data.extra))
    return Evaluator(nolabels, task, fp32_path), note
