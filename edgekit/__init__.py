"""edgekit: compress a PyTorch model for an edge device, with its accuracy cost measured."""
from __future__ import annotations

__version__ = "0.1.0"


def compress(model, **kwargs):
    """Run the compression pipeline; returns the Manifest (mirrors `edgekit compress`)."""
    from .pipeline import compress as _compress

    return _compress(model, **kwargs)


__all__ = ["__version__", "compress"]
