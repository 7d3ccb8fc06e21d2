"""Device profiles: one TOML file in targets/ per device; adding a device is adding a file.

A file looks like::

    description = "..."
    arch = "aarch64"                 # x86_64 | aarch64
    address = "local"                # local | emulated | ssh://user@host[:port]/path
    emulated = false                 # true: this ssh:// device is itself emulated (timings are not device latency)
    threads = 4                      # omit for the runtime's default
    precisions = ["int8", "fp32"]    # what the device runs (recommendations stay within it); default: all
    isa = ["neon"]                   # features quantization may assume; "host" = detect this CPU
    memory_mb = 4096
    channel_multiple = 8

    [[providers]]                    # preference order; or providers = ["CPUExecutionProvider"]
    name = "CUDAExecutionProvider"
    options = { device_id = 0 }
    required = true                  # false: used when present, its absence noted in the report

Validated on load: unknown keys (with a "did you mean"), missing keys and bad types are a
one-line ConfigError naming the file and the key.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, did_you_mean
from .resources import targets_dir

# onnxruntime's intra-op thread count is a C int: 99999999999999999999 passed the target check and profiling
# failed with a pybind TypeError naming neither the file nor the key; no device has more cores than this
MAX_THREADS = 4096

DEFAULT_TARGET = "x86-laptop"

ARCHES = ("x86_64", "aarch64")
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8-dynamic")
ISA_FEATURES = ("host", "sse4.2", "avx", "avx2", "avx512f", "avx512-vnni", "avx-vnni", "amx-int8",
                "neon", "dotprod", "i8mm", "sve", "sve2", "fp16", "bf16")
X86_ISA = ("sse4.2", "avx", "avx2", "avx512f", "avx512-vnni", "avx-vnni", "amx-int8", "fp16", "bf16")
ARM_ISA = ("neon", "dotprod", "i8mm", "sve", "sve2", "fp16", "bf16")


def _host_arch() -> str:
    import platform

    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


# Execution providers onnxruntime knows (onnxruntime.get_all_providers(), without importing it here).
PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider",
             "NvTensorRTRTXExecutionProvider", "OpenVINOExecutionProvider", "DnnlExecutionProvider",
             "DmlExecutionProvider", "CoreMLExecutionProvider", "XnnpackExecutionProvider",
             "ACLExecutionProvider", "ArmNNExecutionProvider", "QNNExecutionProvider",
             "ROCMExecutionProvider", "MIGraphXExecutionProvider", "NnapiExecutionProvider",
             "VitisAIExecutionProvider", "WebGpuExecutionProvider", "AzureExecutionProvider")

_TOP_KEYS = {"name", "description", "arch", "address", "emulated", "threads", "precisions", "isa",
             "memory_mb", "channel_multiple", "providers"}
_REQUIRED = ("arch", "address", "providers")
_PROVIDER_KEYS = {"name", "options", "required"}
_SSH_RE = re.compile(r"^ssh://(?:[A-Za-z0-9._-]+@)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::\d{1,5})?(?P<dir>/.*)?$")


@dataclass(frozen=True)
class TargetProfile:
    name: str
    arch: str  # "x86_64" | "aarch64"
    providers: tuple  # ((name, {options}), ...) in preference order
    threads: int | None  # None = runtime default
    precisions: tuple  # preferred first, e.g. ("int8", "fp32")
    isa: tuple  # assumed ISA features; "host" = detect from this CPU
    memory_mb: int | None
    address: str  # "local" | "emulated" | "ssh://user@host[:port]/path"
    channel_multiple: int = 8  # pruning rounds channel counts to this
    description: str = ""
    source: str = ""  # file it was loaded from
    optional_providers: tuple = ()  # provider names used when present (absence is reported, not an error)
    declared_emulated: bool = False  # `emulated = true`: an ssh:// device that is itself an emulator (qemu)

    def __hash__(self):  # provider options are dicts; a profile is identified by its name and file
        return hash((self.name, self.source, self.address))

    @property
    def provider_names(self) -> tuple:
        return tuple(n for n, _ in self.providers)

    @property
    def required_providers(self) -> tuple:
        return tuple(n for n in self.provider_names if n not in self.optional_providers)

    @property
    def emulated(self) -> bool:
        """Timings are not device latency: qemu on this host, or a device declared emulated."""
        return self.address == "emulated" or self.declared_emulated

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "arch": self.arch, "address": self.address,
                "emulated": self.emulated,
                "providers": [{"name": n, "options": dict(o), "required": n not in self.optional_providers}
                              for n, o in self.providers],
                "threads": self.threads, "precisions": list(self.precisions), "isa": list(self.isa),
                "resolved_isa": list(resolved_isa(self)), "memory_mb": self.memory_mb,
                "channel_multiple": self.channel_multiple, "source": self.source}


def resolved_isa(t: TargetProfile) -> tuple:
    """The target's ISA features with "host" replaced by what this CPU reports."""
    if "host" not in t.isa:
        return tuple(t.isa)
    from .hostinfo import cpu_info

    out = []
    # "host" is this CPU's features, which say nothing about a device of another architecture
    here = cpu_info()["isa"] if t.arch == _host_arch() else []
    for f in t.isa:
        for g in (here if f == "host" else [f]):
            if g not in out:
                out.append(g)
    return tuple(out)


def _names() -> dict:
    d = targets_dir()
    return {p.stem: p for p in sorted(d.glob("*.toml"))} if d.is_dir() else {}


def load_target(name_or_path) -> TargetProfile:
    """A shipped target by name, or a user's target file by path."""
    if isinstance(name_or_path, TargetProfile):
        return name_or_path
    s = str(name_or_path)
    p = Path(s)
    if s.startswith("ssh://") and not p.is_file():
        # flash takes a device address; a target also needs the device's arch, ISA and providers, which
        # decide what is quantized and how: read "target file not found", the address was taken for a path
        raise ConfigError(f"{s}: a device address, not a target; write a target file with address = \"{s}\" "
                          "and the device's arch (see targets/raspberry-pi-5.toml) and pass its path")
    names = _names()
    bare = "/" not in s and not s.endswith(".toml")
    # a bare shipped name means the shipped profile: a file of that name in the working directory (notes, a
    # download) would otherwise take its place; ./NAME loads such a file
    if bare and s in names:
        return _load_file(names[s])
    if not bare or p.is_file():
        if not p.is_file():
            raise ConfigError(f"{s}: target file not found")
        return _load_file(p)
    raise ConfigError(f"unknown target {s!r}{did_you_mean(s, names)}; or pass a target file path")


def load_targets(names) -> list[TargetProfile]:
    """load_target of each name, checked by unique_targets."""
    return unique_targets([load_target(n) for n in names])


def unique_targets(targets) -> list:
    """targets with repeats of one file dropped; two different files with one name are a ConfigError.

    Measurements and recommendations are kept per target name: a second profile of that name would silently
    replace the first one's results (or fill its report section with the other device's numbers).
    """
    out, first = [], {}
    for t in targets:
        name = getattr(t, "name", str(t))
        if name not in first:
            first[name] = t
            out.append(t)
        elif _file_key(first[name]) != _file_key(t):
            raise ConfigError(f"two targets are named {name!r}: {_origin(first[name])} and {_origin(t)}; "
                              "results are kept per target name, so rename one (name = \"...\" in its file)")
    return out


def _file_key(t):
    """One file spelled relative or absolute is the same profile; a profile made in code is itself."""
    src = getattr(t, "source", "") or ""
    if not src:
        return t
    try:
        return str(Path(src).resolve())
    except OSError:
        return src


def _origin(t) -> str:
    """Where a profile came from, for messages: "built-in", its file, or "(no file)"."""
    src = getattr(t, "source", "") or ""
    if not src:
        return "(no file)"
    return "built-in" if _shipped(src) else src


def _shipped(path) -> bool:
    try:
        return Path(path).resolve().parent == targets_dir().resolve()
    except OSError:
        return False


def list_targets() -> list[TargetProfile]:
    return [_load_file(p) for p in _names().values()]


def _load_file(path: Path) -> TargetProfile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a BOM (Windows editors) is no TOML
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read target file: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_target(data, path)


def parse_target(data: dict, path) -> TargetProfile:
    """Validate a parsed TOML dict; every problem is one ConfigError naming the file and the key."""
    where = str(path)

    def bad(key, msg):
        raise ConfigError(f"{where}: {key}: {msg}")

    for k in data:
        if k not in _TOP_KEYS:
            raise ConfigError(f"{where}: unknown key {k!r}{did_you_mean(k, _TOP_KEYS)}")
    for k in _REQUIRED:
        if k not in data:
            raise ConfigError(f"{where}: missing required key {k!r}")
    stem = Path(path).stem
    name = data.get("name", stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        bad("name", f"must be a simple name (letters, digits, . _ -), got {name!r}")
    arch = data["arch"]
    if arch not in ARCHES:
        hint = did_you_mean(str(arch), ARCHES)
        hint = "" if hint.startswith(" (valid") else hint  # the list is already given
        bad("arch", f"{arch!r} is not one of {', '.join(ARCHES)}{hint}")
    address = data["address"]
    ssh = _SSH_RE.match(address) if isinstance(address, str) else None
    if not isinstance(address, str) or not (address in ("local", "emulated") or ssh):
        bad("address", f"{address!r} must be 'local', 'emulated' or 'ssh://user@host[:port]/path'")
    if ssh and not (ssh["dir"] or "").strip("/"):
        # flash and profile install into that directory; without one the target only fails when first used
        bad("address", f"{address!r} has no remote directory; give the install directory, "
                       f"e.g. {address.rstrip('/')}/opt/edgekit")
    if ssh:
        _check_device_address(address, bad)
    if address == "emulated" and arch != "aarch64":
        bad("address", "'emulated' is only supported for arch = 'aarch64'")
    emulated = data.get("emulated", address == "emulated")
    if not isinstance(emulated, bool):
        bad("emulated", f"must be true or false, got {emulated!r}")
    if address == "emulated" and not emulated:
        bad("emulated", "address 'emulated' always runs under emulation; remove emulated = false")
    if address == "local" and emulated:
        bad("emulated", "a local target runs natively on this host (use address = 'emulated' for qemu)")
    providers, optional = _parse_providers(data["providers"], bad)
    threads = data.get("threads")
    if threads is not None and (not _is_int(threads) or not 1 <= threads <= MAX_THREADS):
        bad("threads", f"must be a positive integer up to {MAX_THREADS} (omit it for the runtime default), "
                       f"got {threads!r}")
    # the precisions the device runs: a recommendation never names another (a missing key restricts nothing)
    precisions = _str_list(data.get("precisions", list(PRECISIONS)), "precisions", PRECISIONS, bad)
    if not precisions:
        bad("precisions", "must list at least one precision")
    isa = _str_list(data.get("isa", []), "isa", ISA_FEATURES, bad)
    # an aarch64 target with x86 features (or the reverse) would record an ISA the device cannot have;
    # "host" means this CPU, so it only fits a target of this machine's architecture
    family = {"aarch64": ARM_ISA, "arm64": ARM_ISA}.get(arch, X86_ISA if arch in ("x86_64", "amd64") else ())
    wrong = [f for f in isa if f != "host" and family and f not in family]
    if wrong:
        bad("isa", f"{', '.join(wrong)} {'is not an' if len(wrong) == 1 else 'are not'} {arch} "
                   f"feature{'' if len(wrong) == 1 else 's'}")
    if address == "local":
        _check_local(arch, isa, path, bad)
    memory_mb = data.get("memory_mb")
    if memory_mb is not None and (not _is_int(memory_mb) or memory_mb < 1):
        bad("memory_mb", f"must be a positive integer, got {memory_mb!r}")
    cm = data.get("channel_multiple", 8)
    if not _is_int(cm) or cm < 1:
        bad("channel_multiple", f"must be a positive integer, got {cm!r}")
    desc = data.get("description", "")
    if not isinstance(desc, str):
        bad("description", "must be a string")
    return TargetProfile(name=name, arch=arch, providers=providers, threads=threads, precisions=precisions,
                         isa=isa, memory_mb=memory_mb, address=address, channel_multiple=cm, description=desc,
                         source=str(path), optional_providers=optional,
                         declared_emulated=emulated and address != "emulated")


def _check_device_address(address, bad) -> None:
    """flash and profile parse the address with parse_device: its problems (a port over 65535, a '?' part)
    are found here, naming the file and the key, rather than later without either."""
    from .errors import UsageError
    from .flash.devices import parse_device

    try:
        parse_device(address)
    except UsageError as e:
        bad("address", str(e).removeprefix("device address "))


def _check_local(arch, isa, path, bad) -> None:
    """A local target is this machine: every number recorded for it comes from this CPU, so it cannot be
    another architecture or claim ISA features this CPU lacks (quantization would choose for, and the
    manifest would describe, hardware that was never measured)."""
    here = _host_arch()
    if arch != here:
        if _shipped(path):
            # the shipped local profiles (the default among them) must load on any host; profiling reports
            # them unavailable on another architecture
            return
        other = "address = \"emulated\" (qemu) or " if arch == "aarch64" else ""
        bad("arch", f"{arch}, but a local target runs on this machine, which is {here}; "
                    f"use {other}address = \"ssh://user@host/path\" for an {arch} device")
    have = _host_isa()
    if have is None:
        return
    from .hostinfo import _ISA_FLAGS

    # only what cpu_info detects can be checked; other declared features (avx, sse4.2, ...) are taken on trust
    missing = [f for f in isa if f in _ISA_FLAGS.values() and f not in have]
    if missing:
        bad("isa", f"this CPU lacks {', '.join(missing)}, and a local target is measured on this CPU; "
                   "declare isa = [\"host\"] (what this CPU has), or use an ssh:// address for that device")


def _host_isa() -> set | None:
    """This CPU's detected features, or None where /proc/cpuinfo cannot say (cpu_info then reports none)."""
    import os

    from .hostinfo import cpu_info

    return set(cpu_info()["isa"]) if os.path.exists("/proc/cpuinfo") else None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _str_list(v, key, valid, bad) -> tuple:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        bad(key, f"must be a list of strings, got {v!r}")
    for x in v:
        if x not in valid:
            bad(key, f"unknown value {x!r}{did_you_mean(x, valid)}")
    return tuple(v)


def _parse_providers(v, bad) -> tuple:
    if not isinstance(v, list) or not v:
        bad("providers", "must be a non-empty list of provider names or [[providers]] tables")
    out, optional = [], []
    for i, p in enumerate(v):
        key = f"providers[{i}]"
        if isinstance(p, str):
            p = {"name": p}
        if not isinstance(p, dict):
            bad(key, f"must be a provider name or a table, got {p!r}")
        for k in p:
            if k not in _PROVIDER_KEYS:
                bad(f"{key}.{k}", f"unknown key{did_you_mean(k, _PROVIDER_KEYS)}")
        name = p.get("name")
        if not isinstance(name, str):
            bad(f"{key}.name", "missing or not a string")
        if name not in PROVIDERS:
            bad(f"{key}.name", f"unknown execution provider {name!r}{did_you_mean(name, PROVIDERS)}")
        opts = p.get("options", {})
        if not isinstance(opts, dict) or not all(isinstance(x, (str, int, float, bool)) for x in opts.values()):
            bad(f"{key}.options", "must be a table of scalar values")
        req = p.get("required", True)
        if not isinstance(req, bool):
            bad(f"{key}.required", f"must be true or false, got {req!r}")
        if name in (n for n, _ in out):
            bad(f"{key}.name", f"{name} listed twice")
        out.append((name, dict(opts)))
        if not req:
            optional.append(name)
    if len(optional) == len(out):
        bad("providers", "at least one provider must be required")
    return tuple(out), tuple(optional)
