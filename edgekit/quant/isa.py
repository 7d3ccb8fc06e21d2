"""ISA-aware INT8 defaults: which int8 types, reduce_range and format suit the target's CPU.

The rules follow onnxruntime's MLAS kernels (see quantize_static's "Choosing parameters for
CPU inference"): x86 multiplies u8 activations by s8 weights (VPMADDUBSW / VPDPBUSD), so U8S8
is the fast path there, and S8S8 gets converted at a cost. Without VNNI the 16-bit
intermediate of VPMADDUBSW can saturate, hence 7-bit weights (reduce_range). ARM's SDOT/UDOT
favour symmetric S8S8. GPU providers (TensorRT, CUDA) expect symmetric S8S8 QDQ.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..runner.edgekit_runner import GPU_PROVIDERS  # the runner's: it ships alone to devices


@dataclass(frozen=True)
class IsaChoice:
    activation_type: str
    weight_type: str
    reduce_range: bool
    per_channel: bool
    format: str
    symmetric_activation: bool
    reason: str
    isa: tuple = ()
    arch: str = ""

    @property
    def choice(self) -> str:
        s = f"{self.activation_type.upper()}{self.weight_type.upper()} {self.format.upper()}"
        s += ", per-channel" if self.per_channel else ", per-tensor"
        if self.reduce_range:
            s += ", reduce_range"
        return s

    def to_dict(self) -> dict:
        return {"choice": self.choice, "reason": self.reason, "isa": list(self.isa), "arch": self.arch,
                "activation_type": self.activation_type, "weight_type": self.weight_type,
                "reduce_range": self.reduce_range, "per_channel": self.per_channel, "format": self.format,
                "symmetric_activation": self.symmetric_activation}


def target_facts(target) -> dict:
    """{name, arch, isa, providers, threads} for a TargetProfile (duck-typed) or None (= this host)."""
    import platform

    from ..hostinfo import cpu_info

    if target is None:
        return {"name": "host", "arch": platform.machine(), "isa": cpu_info()["isa"],
                "providers": ["CPUExecutionProvider"], "threads": None}
    isa = None
    try:
        from ..targets import resolved_isa

        isa = resolved_isa(target)
    except (ImportError, AttributeError):
        isa = getattr(target, "isa", None)
    if isa is None:
        isa = cpu_info()["isa"]
    providers = getattr(target, "providers", None) or [getattr(target, "provider", None) or "CPUExecutionProvider"]
    # TargetProfile.providers holds (name, options) pairs
    providers = [p[0] if isinstance(p, (tuple, list)) else p for p in providers]
    return {"name": getattr(target, "name", str(target)), "arch": getattr(target, "arch", "") or platform.machine(),
            "isa": list(isa), "providers": list(providers), "threads": getattr(target, "threads", None)}


def gpu_provider(providers) -> str | None:
    """The first GPU execution provider a target prefers, or None for a CPU target."""
    return next((p for p in providers or () if p in GPU_PROVIDERS), None)


def choose(isa, *, arch: str = "", providers=("CPUExecutionProvider",)) -> IsaChoice:
    isa = tuple(sorted(set(isa or ())))
    arch = (arch or "").lower()
    gpu = [p for p in providers if p in GPU_PROVIDERS]
    if gpu:
        return IsaChoice("s8", "s8", False, True, "qdq", True,
                         f"{gpu[0]}: GPU INT8 kernels (TensorRT/cuDNN) take symmetric S8S8 QDQ", isa, arch)
    is_arm = arch in ("aarch64", "arm64", "armv8", "arm") or "neon" in isa or "dotprod" in isa
    if is_arm:
        if "dotprod" in isa or "i8mm" in isa:
            return IsaChoice("s8", "s8", False, True, "qdq", False,
                             "ARM with dot-product (SDOT): MLAS runs S8S8 natively, no saturation, "
                             "so full 8-bit weights", isa, arch)
        return IsaChoice("u8", "s8", False, True, "qdq", False,
                         "ARM without dot-product: MLAS's NEON kernels widen to 16 bit; U8S8 is the "
                         "portable fast path", isa, arch)
    if "avx512-vnni" in isa or "avx-vnni" in isa or "amx-int8" in isa:
        vnni = "AVX-512 VNNI" if "avx512-vnni" in isa else ("AVX-VNNI" if "avx-vnni" in isa else "AMX")
        return IsaChoice("u8", "s8", False, True, "qdq", False,
                         f"x86 with {vnni}: VPDPBUSD multiplies u8 activations by s8 weights into 32-bit "
                         "sums without saturation, so U8S8 with full 8-bit weights (S8S8 would be "
                         "re-biased at a cost)", isa, arch)
    if "avx2" in isa or "avx512f" in isa:
        return IsaChoice("u8", "s8", True, True, "qdq", False,
                         "x86 AVX2/AVX-512 without VNNI: VPMADDUBSW's 16-bit intermediate can saturate "
                         "with 8-bit weights, so U8S8 with 7-bit weights (reduce_range)", isa, arch)
    said = "the target declares none of AVX2, AVX-512, VNNI or dot-product" if not isa else \
        f"none of AVX2, AVX-512, VNNI or dot-product among {', '.join(isa)}"
    return IsaChoice("u8", "s8", True, True, "qdq", False,
                     f"{said}: conservative U8S8 with reduce_range", isa, arch)


VNNI_LIKE = ("avx512-vnni", "avx-vnni", "amx-int8")


def _is_arm(arch: str, isa) -> bool:
    return (arch or "").lower() in ("aarch64", "arm64", "armv8", "arm") or "neon" in isa or "dotprod" in isa


def exact_int8(arch: str, isa, providers=("CPUExecutionProvider",)) -> bool:
    """Whether a device's INT8 kernels sum u8/s8 x s8 products exactly (32-bit), as QDQ arithmetic does:
    GPUs, ARM (SDOT, or NEON widening to 16 bit without overflow) and x86 VNNI/AMX. x86 without VNNI
    goes through VPMADDUBSW, whose 16-bit pair sums saturate with full 8-bit weights."""
    isa = tuple(isa or ())
    return bool(gpu_provider(providers)) or _is_arm(arch, isa) or any(f in isa for f in VNNI_LIKE)


def host_kernels_differ(facts: dict, target) -> str | None:
    """Why this host's integer kernels cannot stand in for the target's INT8 accuracy (None when they can):
    the target sums exactly where this CPU saturates. A local target is this CPU, whatever it declares."""
    if target is None or getattr(target, "address", "local") == "local":
        return None
    host = target_facts(None)
    if exact_int8(host["arch"], host["isa"]) or not exact_int8(facts["arch"], facts["isa"], facts["providers"]):
        return None
    return (f"{facts['name']} sums INT8 products exactly ({facts['arch'] or 'its CPU'}"
            f"{', ' + ', '.join(facts['isa']) if facts['isa'] else ''}), where this host's CPU (no VNNI) "
            "saturates VPMADDUBSW's 16-bit sums with full 8-bit weights")
