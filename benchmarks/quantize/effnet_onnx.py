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
