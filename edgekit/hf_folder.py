"""A HuggingFace model folder (what save_pretrained writes: config.json and the weights) as a model spec:
`edgekit compress ./my-bert`. It needed a file.py:build of one line, from_pretrained(folder).

The class is the one config.json's "architectures" names, taken from the transformers library itself: a folder
whose class is its own code (auto_map, trust_remote_code) is refused, since edgekit runs no code a model folder
brings. The weights load as transformers loads them: .safetensors, or a pytorch_model.bin through
torch.load(weights_only=True). A tokenizer.json beside them is the model's tokenizer unless --tokenizer names one.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError


def is_model_folder(spec) -> bool:
    p = Path(spec)
    return p.is_dir() and (p / "config.json").is_file()


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def weights_file(spec) -> Path | None:
    """The file the folder's weights are recorded by in the manifest (a sharded model's index)."""
    return next((Path(spec) / f for f in WEIGHT_FILES if (Path(spec) / f).is_file()), None)


def task_of(arch: str, config) -> str | None:
    """The task a transformers head names, or None where its name does not settle it: a token classifier's
    [N, L, C] scores, else scored by the cosine of their flattened values; a sequence or image classifier
    of one label or problem_type "regression" is a regression (transformers trains it with MSE), one of
    "multi_label_classification" is a multi-label classifier (a sigmoid per class). A semantic segmentation
    head (Segformer, BEiT, DPT, MobileViT, UperNet) gives class scores per position [N, C, h, w], its classes
    on axis 1: without the task, a Segformer's were scored by the cosine of their flattened values."""
    if arch.endswith("ForTokenClassification"):
        return "token-classification"
    if arch.endswith("ForCausalLM"):
        return "causal-lm"
    if arch.endswith("ForSemanticSegmentation"):
        return "segmentation"
    if arch.endswith(("ForSequenceClassification", "ForImageClassification", "ForAudioClassification")):
        problem = getattr(config, "problem_type", None)
        if problem == "multi_label_classification":
            return "multi-label"
        if problem == "regression" or getattr(config, "num_labels", 2) == 1:
            return "regression"
        return "classification"
    return None


def tokenizer_in(spec) -> str | None:
    """The folder's own tokenizer.json, as a --tokenizer spec, or None."""
    return str(spec) if is_model_folder(spec) and (Path(spec) / "tokenizer.json").is_file() else None


def build(spec: str, where: str | None = None):
    """(the model in eval mode, its class name) from the folder; anything wrong is one line naming it (or
    `where`, the option it came from)."""
    p = Path(spec)
    where = where or spec
    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{p / 'config.json'}: not a readable JSON config ({e})") from None
    archs = cfg.get("architectures") if isinstance(cfg, dict) else None
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise InputError(f"{p / 'config.json'}: names no \"architectures\", so the model class to build is unknown; "
                         f"pass a file.py:build that returns AutoModelFor<task>.from_pretrained({str(p)!r})")
    arch = archs[0]
    try:
        import transformers
    except ImportError:
        raise InputError(f"{where}: a HuggingFace model folder needs the transformers package "
                         "(pip install transformers)") from None
    cls = getattr(transformers, arch, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        why = ("its own code (auto_map in config.json), which edgekit does not run" if "auto_map" in cfg
               else f"not a model class of transformers {transformers.__version__}")
        raise InputError(f"{where}: config.json's architecture {arch!r} is {why}; pass a file.py:build that "
                         "returns the model")
    try:
        model = cls.from_pretrained(str(p), local_files_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise InputError(f"{where}: transformers could not load {arch} from it: {type(e).__name__}: {first}") from None
    return model.eval(), arch


def preprocess_in(spec) -> tuple:
    """(a resize_normalize spec, its file, a note) from the folder's preprocessor_config.json, the resize and
    normalisation its image processor applies (ViT, DeiT, ConvNeXt, ResNet, CLIP); (None, None, None) when the
    folder has none, or (None, file, why) when its resize is one a fixed-size input cannot take. Without it an
    image folder was fed as 0..1 pixels at its own size: a ViT refused every image, and a model normalised
    with its mean and std was calibrated and scored on inputs it never saw."""
    p = Path(spec) / "preprocessor_config.json"
    if not is_model_folder(spec) or not p.is_file():
        return None, None, None
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{p}: not a readable JSON config ({e})") from None
    if not isinstance(cfg, dict) or "image_mean" not in cfg and "size" not in cfg:
        return None, None, None  # an audio feature extractor or a tokenizer's config: not an image processor
    try:
        geo = _geometry(cfg)
        rescale = float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0
        if cfg.get("do_normalize", True) and "image_mean" in cfg:
            mean = [float(m) / rescale for m in _values(cfg["image_mean"])]
            std = [float(s) / rescale for s in _values(cfg.get("image_std", [1.0]))]
        else:
            mean, std = [0.0], [1.0 / rescale]
    except (TypeError, ValueError, KeyError, ZeroDivisionError) as e:
        return None, str(p), f"{p}: not read ({type(e).__name__}: {e}); pass --preprocess"
    if isinstance(geo, str):
        return None, str(p), f"{p}: not read: {geo}; pass --preprocess with the model's input size"
    size, mode, frac = geo
    op = {"op": "resize_normalize", "size": list(size), "mean": mean, "std": std, "layout": "NCHW", "mode": mode}
    if frac < 1.0:
        op["crop_fraction"] = frac
    how = {"stretch": "resized", "crop": "centre-cropped and resized"}[mode]
    return {"pre": [op]}, str(p), (f"{p}: images {how} to {size[0]}x{size[1]}"
                                   + (f" (the central {frac:g})" if frac < 1.0 else "")
                                   + ", normalised with its image_mean and image_std, as its image processor does")


def _values(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _hw(v) -> tuple:
    """(height, width) of a size entry: an int, or {"height", "width"}."""
    if isinstance(v, dict):
        return int(v["height"]), int(v["width"])
    return int(v), int(v)


def _geometry(cfg: dict):
    """((height, width), mode, crop_fraction) of an image processor's resize (and centre crop), or why it
    cannot be one fixed-size step."""
    size = cfg.get("size")
    resize = cfg.get("do_resize", True)
    crop = _hw(cfg["crop_size"]) if cfg.get("do_center_crop") and cfg.get("crop_size") is not None else None
    if not resize:
        return "it does not resize (do_resize false)" if crop is None else (crop, "crop", 1.0)
    if isinstance(size, dict) and "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        if "crop_pct" in cfg and cfg["crop_pct"] is not None and crop is None:
            # ConvNeXt: below 384, resize the short side to edge / crop_pct, then crop edge x edge
            return ((edge, edge), "crop", float(cfg["crop_pct"])) if edge < 384 else ((edge, edge), "stretch", 1.0)
        if crop is None:
            return f"it resizes the shortest edge to {edge} and keeps the aspect ratio, so no size is fixed"
        if crop[0] != crop[1] or crop[0] > edge:
            return f"a centre crop of {crop[0]}x{crop[1]} after resizing the shortest edge to {edge}"
        return crop, "crop", crop[0] / edge
    if isinstance(size, dict) and not {"height", "width"} <= set(size):
        return f"its size {size} is not a height and width"
    hw = _hw(size)
    if crop is None:
        return hw, "stretch", 1.0
    if crop[0] * hw[1] != crop[1] * hw[0] or crop[0] > hw[0]:
        return f"a {crop[0]}x{crop[1]} centre crop of a {hw[0]}x{hw[1]} resize"
    return crop, "stretch", crop[0] / hw[0]
