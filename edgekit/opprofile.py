"""ONNX Runtime's profiler output: per-operator-type time and which provider ran each node.

The parser itself lives in the device runner (it must run on devices and under qemu without
edgekit installed); this module is the host-side face of it: read a profile file, summarise.
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError
from .runner.edgekit_runner import op_profile, parse_ort_profile

__all__ = ["load_profile", "parse_ort_profile", "op_profile", "top_ops", "fallback_nodes"]


def load_profile(path, skip_runs: int = 1) -> dict:
    """Parse a profile JSON file written by onnxruntime (SessionOptions.enable_profiling)."""
    p = Path(path)
    try:
        events = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{p}: not a readable onnxruntime profile: {e}") from None
    if not isinstance(events, list):
        raise InputError(f"{p}: not an onnxruntime profile (expected a JSON list of trace events)")
    return parse_ort_profile(events, skip_runs=skip_runs)


def top_ops(op_breakdown: dict, n: int = 5) -> list[tuple[str, float, float]]:
    """[(op_type, ms per run, share of the total)] for the n most expensive operator types."""
    total = sum(op_breakdown.values()) or 1e-12
    items = sorted(op_breakdown.items(), key=lambda kv: -kv[1])[:n]
    return [(op, ms, ms / total) for op, ms in items]


def fallback_nodes(providers_by_node: dict, main_provider: str) -> int:
    """Nodes that ran on a provider other than the target's main one (e.g. CPU under CUDA)."""
    return sum(c for p, c in providers_by_node.items() if p != main_provider)
