"""Errors raised by edgekit.prepost (self-contained: this package ships to devices without edgekit)."""
from __future__ import annotations


class PrepostError(ValueError):
    """Bad input or parameters for a pre/post-processing op; the message is one line naming the argument."""


class PrepostFallbackWarning(RuntimeWarning):
    """backend="numba" was asked for but Numba is unavailable, so the NumPy twin ran instead."""
