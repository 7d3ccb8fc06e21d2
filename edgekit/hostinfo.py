"""What this CPU can do: model name and the ISA features quantization defaults depend on."""
from __future__ import annotations

import os
import platform

# Features that change INT8 kernels in ONNX Runtime's MLAS.
_ISA_FLAGS = {
    "avx2": "avx2",
    "avx512f": "avx512f",
    "avx512_vnni": "avx512-vnni",
    "avx_vnni": "avx-vnni",
    "amx_int8": "amx-int8",
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "asimd": "neon",
}


def cpu_info(cpuinfo_text: str | None = None) -> dict:
    """Parse /proc/cpuinfo (or the given text) into {model, isa[list], cores}."""
    if cpuinfo_text is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo_text = f.read()
        except OSError:
            cpuinfo_text = ""
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    for line in cpuinfo_text.splitlines():
        if ":" not in line:
            continue
        key, _, val = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and val.strip():
            model = val.strip()
        elif key in ("flags", "features"):
            flags.update(val.split())
    isa = sorted({name for flag, name in _ISA_FLAGS.items() if flag in flags})
    return {"model": model, "isa": isa, "cores": os.cpu_count() or 1}
