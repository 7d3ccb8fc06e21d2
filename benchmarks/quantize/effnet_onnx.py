"""The EfficientNet-Lite0 probes' common start: zoo:efficientnet-lite0 exported to ONNX and pre-processed."""
from __future__ import annotations

from pathlib import Path


def export_preprocessed(work) -> Path:
    """Export the pretrained model (dynamic batch) into `work` and return onnxruntime's pre-processed copy."""
    import torch

    from edgekit.quant import static
    from edgekit.zoo import efficientnet_lite0 as E

    work = Path(work)
    fp32, prep = work / "fp32.onnx", work / "prep.onnx"
    torch.onnx.export(E.build_model(), torch.zeros(1, 3, E.SIZE, E.SIZE), str(fp32), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      dynamo=False)
    static.preprocess(fp32, prep)
    return prep


def eval_setup(work):
    """(the calibration Dataset, the eval crops as one array, the pre-processed model in `work`): the start of
    the probes that score every eval crop (probe_effnet.py, kernel_check.py)."""
    import numpy as np

    from edgekit.zoo import efficientnet_lite0 as E

    ds = E.datasets()
    return ds["calib"], np.asarray(ds["eval"].inputs["input"][:]), export_preprocessed(work)


def batched_logits(session, x, batch: int = 32):
    """The session's first output over x, run `batch` crops at a time."""
    import numpy as np

    return np.concatenate([session.run(None, {"input": x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def probe_inputs(work):
    """(the pre-processed model in `work`, 64 calibration crops, one eval crop): the probes' shared start."""
    import numpy as np

    from edgekit.zoo import efficientnet_lite0 as E

    ds = E.datasets()
    cal = np.asarray(ds["calib"].inputs["input"][:64])
    x = np.asarray(ds["eval"].inputs["input"][:1])
    return export_preprocessed(work), cal, x


def calibration_reader(cal, batch: int = 8):
    """A fresh onnxruntime CalibrationDataReader over `cal` in batches of `batch` (one per quantize call)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(cal[i:i + batch] for i in range(0, len(cal), batch))

        def get_next(self):
            b = next(self.batches, None)
            return None if b is None else {"input": b}

    return Reader()
