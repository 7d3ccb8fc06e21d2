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


def cpu_busy_seconds() -> tuple | None:
    """(CPU seconds used on the CPUs this process may run on, by everything; CPU seconds this process has
    used), from /proc/stat and times(2); None where the kernel does not say (not Linux). Two readings
    give what the rest of the host used in between: other_cores(before, after, wall_seconds)."""
    try:
        with open("/proc/stat") as f:
            lines = [ln.split() for ln in f if ln.startswith("cpu") and not ln.startswith("cpu ")]
        mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except (OSError, AttributeError):
        return None
    busy = 0
    for fields in lines:
        if fields[0] not in mine or len(fields) < 9:
            continue
        # user nice system idle iowait irq softirq steal: all but idle and iowait is busy; steal is
        # another VM holding the core, which competes for it like a local process
        ticks = [int(v) for v in fields[1:9]]
        busy += sum(ticks) - ticks[3] - ticks[4]
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


def other_cores(before, after, wall_seconds: float) -> float | None:
    """Cores' worth of CPU the rest of the host used between two cpu_busy_seconds() readings."""
    if before is None or after is None or wall_seconds <= 0:
        return None
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, others / wall_seconds)
