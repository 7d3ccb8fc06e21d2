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
