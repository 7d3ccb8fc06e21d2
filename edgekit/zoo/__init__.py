"""Bundled example models. One module per model; REGISTRY maps the zoo name to it.

Each module exposes `load(seed: int = 0) -> SourceModel` and a one-line DESCRIPTION.
"""
from __future__ import annotations

import importlib

from ..errors import InputError, did_you_mean

REGISTRY = {
    "digits-cnn": "digits_cnn",
    "minilm": "minilm",
    "efficientnet-lite0": "efficientnet_lite0",
}


def load(name: str, *, seed: int = 0):
    if name not in REGISTRY:
        raise InputError(f"zoo:{name}: no such zoo model{did_you_mean(name, REGISTRY)}")
    mod = importlib.import_module(f"{__name__}.{REGISTRY[name]}")
    return mod.load(seed=seed)


def describe() -> dict:
    out = {}
    for name, modname in REGISTRY.items():
        try:
            out[name] = importlib.import_module(f"{__name__}.{modname}").DESCRIPTION
        except ModuleNotFoundError as e:
            out[name] = f"unavailable: {e}"
    return out
