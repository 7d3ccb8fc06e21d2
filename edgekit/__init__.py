"""edgekit: compress a PyTorch model for an edge device, with its accuracy cost measured."""
from __future__ import annotations

__version__ = "0.1.0"


def compress(model, **kwargs):
    """Run the compression pipeline; returns the Manifest (mirrors `edgekit compress`).

    tolerance is written as on the command line: "1%" (relative drop, the default) or "0.5pt"
    (absolute points). A bare number is a percentage (1 means 1%); one between 0 and 1, such as 0.01,
    is refused as ambiguous: write "1%".
    """
    from .pipeline import compress as _compress

    return _compress(model, **kwargs)


__all__ = ["__version__", "compress"]
