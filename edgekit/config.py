"""Settings for each stage as frozen dataclasses, and the compress.toml recipe loader.

Each stage owns one dataclass; CompressConfig composes them. Values are checked in
__post_init__ so a bad recipe fails before any work starts, naming the bad key.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ConfigError, did_you_mean

SEED_MAX = 2 ** 63 - 1  # torch.manual_seed's and numpy's common range
QUANT_MODES = ("int8", "int8-dynamic", "fp16", "none")
PRUNE_METHODS = ("l1", "l2", "bn", "taylor")
SPARSITY_MODES = ("none", "unstructured", "2:4")
LR_SCHEDULES = ("cosine", "onecycle")
CALIB_METHODS = ("auto", "minmax", "entropy", "percentile")
WEIGHT_ROUNDINGS = ("auto", "nearest", "gptq")
BIAS_CORRECTIONS = ("auto", "on", "off")
QUANT_FORMATS = ("qdq", "qoperator")
INT8_TYPES = ("auto", "u8", "s8")


@dataclass(frozen=True)
class Tolerance:
    """Largest accepted metric drop: relative ('1%') or absolute in points ('0.5pt').

    A number without a unit is a percentage, as on the command line: 1 and "1" mean 1%. A bare number
    between 0 and 1 (0.01) is refused: it reads like a fraction (1%) but would mean 0.01%.
    """

    value: float = 0.01
    relative: bool = True

    @classmethod
    def parse(cls, text) -> "Tolerance":
        if isinstance(text, Tolerance):
            return text
        s = str(text).strip().lower()
        m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(%|pt|pts|points?)?", s)
        if not m:
            raise ConfigError(f"tolerance {text!r}: expected e.g. '1%' (relative) or '0.5pt' (absolute points)")
        v = float(m.group(1))
        if m.group(2) is None and 0 < v < 1:
            raise ConfigError(f"tolerance {text!r} is ambiguous: a number without a unit is a percentage "
                              f"({v:g}%), not a fraction ({v * 100:g}%); write '{v * 100:g}%' or '{v:g}%'")
        if v > 100:  # metrics are fractions in [0, 1]: more than 100% or 100pt accepts anything, by mistake
            raise ConfigError(f"tolerance {text!r}: at most 100% (relative) or 100pt (absolute)")
        if m.group(2) == "%" or m.group(2) is None:
            return cls(v / 100.0, True)
        return cls(v / 100.0, False)  # points of accuracy, metric values are fractions

    def allows(self, reference: float, value: float) -> bool:
        return self.drop(reference, value) <= self.value + 1e-12

    def drop(self, reference: float, value: float) -> float:
        d = reference - value
        if self.relative:
            return d / reference if reference else d
        return d

    def format_drop(self, reference: float, value: float) -> str:
        """The drop in this tolerance's own unit ('%' or 'pt'), with as many digits as it takes to tell it
        from the tolerance: "drops 0.18% ... not within 0.18%" hid a 0.1805% drop, and a relative drop
        printed beside a 'pt' tolerance compared two units."""
        d, tol = self.drop(reference, value) * 100, self.value * 100
        digits = 2
        while digits < 6 and d != tol and f"{d:.{digits}f}" == f"{tol:.{digits}f}":
            digits += 1
        return f"{d:.{digits}f}{'%' if self.relative else 'pt'}"

    def __str__(self):
        return f"{self.value * 100:g}%" if self.relative else f"{self.value * 100:g}pt"


@dataclass(frozen=True, kw_only=True)
class PruneConfig:
    ratio: float = 0.0  # fraction of channels removed; 0 = off
    method: str = "l1"
    global_pruning: bool = False
    ignore: tuple = ()  # module names never pruned (first conv and classifier are always kept)
    channel_multiple: int | None = None  # None = the target's channel_multiple
    steps: int = 1  # iterative prune -> distill steps to the final ratio
    sensitivity: bool = False
    target_latency: str | None = None  # "0.6x" of the unpruned model or "2.5ms"
    sparsity: str = "none"
    head_ratio: float = 0.0  # fraction of attention heads removed (transformers); ratio applies to FFN width
    keep_first: bool = True  # never prune the first conv's output channels

    def __post_init__(self):
        if not 0.0 <= self.head_ratio < 1.0:
            raise ConfigError(f"prune.head_ratio {self.head_ratio}: must be in [0, 1)")
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"prune.ratio {self.ratio}: must be in [0, 1)")
        if self.method not in PRUNE_METHODS:
            raise ConfigError(f"prune.method {self.method!r}{did_you_mean(self.method, PRUNE_METHODS)}")
        if self.sparsity not in SPARSITY_MODES:
            raise ConfigError(f"prune.sparsity {self.sparsity!r}{did_you_mean(self.sparsity, SPARSITY_MODES)}")
        if self.steps < 1:
            raise ConfigError(f"prune.steps {self.steps}: must be >= 1")
        if self.channel_multiple is not None and self.channel_multiple < 1:
            raise ConfigError(f"prune.channel_multiple {self.channel_multiple}: must be >= 1")
        object.__setattr__(self, "ignore", tuple(self.ignore))

    @property
    def enabled(self) -> bool:
        return (self.ratio > 0 or self.head_ratio > 0 or self.target_latency is not None
                or self.sparsity != "none")


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    enabled: bool | None = None  # None = on whenever pruning ran or a student is given
    epochs: int | None = None  # None: EPOCHS, or FRESH_EPOCHS for a student that starts from random weights
    lr: float = 2e-3
    batch_size: int = 64
    temperature: float = 4.0
    alpha: float = 0.7  # weight of the soft-target loss; 1 - alpha goes to hard labels when present
    feature_weight: float = 0.0
    feature_layers: tuple = ()
    patience: int | None = None  # None: PATIENCE, or FRESH_PATIENCE for a student from random weights
    student: str | None = None  # file.py:factory for a different architecture
    teacher: str | None = None  # default: the source model
    schedule: str = "cosine"  # learning-rate schedule: cosine | onecycle
    weight_decay: float = 1e-4

    def __post_init__(self):
        if self.schedule not in LR_SCHEDULES:
            raise ConfigError(f"distill.schedule {self.schedule!r}{did_you_mean(self.schedule, LR_SCHEDULES)}")
        # first: 'nan > 0' is False, so the range checks below let a NaN through (every weight became NaN,
        # and the manifest held a bare NaN, not JSON)
        for key in ("lr", "temperature", "alpha", "feature_weight", "weight_decay"):
            v = getattr(self, key)
            if v is not None and not math.isfinite(v):
                raise ConfigError(f"distill.{key} {v}: must be a finite number")
        for key, ok, rule in (("lr", self.lr > 0, "> 0"), ("batch_size", self.batch_size >= 1, ">= 1"),
                              ("weight_decay", self.weight_decay >= 0, ">= 0"),
                              ("patience", self.patience is None or self.patience >= 0, ">= 0")):
            if not ok:
                raise ConfigError(f"distill.{key} {getattr(self, key)!r}: must be {rule}")
        if self.epochs is not None and self.epochs < 0:
            raise ConfigError(f"distill.epochs {self.epochs}: must be >= 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"distill.alpha {self.alpha}: must be in [0, 1]")
        if self.temperature <= 0:
            raise ConfigError(f"distill.temperature {self.temperature}: must be > 0")
        object.__setattr__(self, "feature_layers", tuple(self.feature_layers))

    def resolved(self, fresh: bool) -> "DistillConfig":
        """epochs and patience as given, else the defaults for this student. A pruned model or a pretrained
        folder starts near the teacher and fine-tunes; a file.py:factory student starts from random weights
        and learns the task from nothing: a 602-parameter Conv1d student of a digits teacher reached 0.63
        accuracy in 30 epochs, still rising, with patience 5 cutting longer runs short; 100 epochs with
        patience 15 gave 0.85."""
        return replace(self, epochs=self.epochs if self.epochs is not None else (FRESH_EPOCHS if fresh else EPOCHS),
                       patience=self.patience if self.patience is not None else
                       (FRESH_PATIENCE if fresh else PATIENCE))


EPOCHS, PATIENCE = 30, 5  # fine-tuning a pruned or pretrained student
FRESH_EPOCHS, FRESH_PATIENCE = 100, 15  # training a student from random weights


@dataclass(frozen=True, kw_only=True)
class QuantizeConfig:
    mode: str = "int8"
    format: str = "qdq"
    calibrate_method: str = "auto"
    per_channel: bool | None = None  # None = ISA-aware default
    activation_type: str = "auto"
    weight_type: str = "auto"
    tune: bool = True  # accuracy-aware tuning + speed gate
    max_trials: int = 12
    op_types: tuple = ()  # empty = all supported
    exclude_nodes: tuple = ()
    calib_size: int = 256
    speed_gate: bool = True
    weight_rounding: str = "auto"  # auto | nearest | gptq
    bias_correction: str = "auto"  # auto (tried while tuning static QDQ) | on | off

    def __post_init__(self):
        if self.bias_correction not in BIAS_CORRECTIONS:
            raise ConfigError(f"quantize.bias_correction {self.bias_correction!r}"
                              f"{did_you_mean(self.bias_correction, BIAS_CORRECTIONS)}")
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise ConfigError(f"quantize.weight_rounding {self.weight_rounding!r}"
                              f"{did_you_mean(self.weight_rounding, WEIGHT_ROUNDINGS)}")
        if self.mode not in QUANT_MODES:
            raise ConfigError(f"quantize.mode {self.mode!r}{did_you_mean(self.mode, QUANT_MODES)}")
        if self.format not in QUANT_FORMATS:
            raise ConfigError(f"quantize.format {self.format!r}{did_you_mean(self.format, QUANT_FORMATS)}")
        if self.calibrate_method not in CALIB_METHODS:
            raise ConfigError(
                f"quantize.calibrate_method {self.calibrate_method!r}{did_you_mean(self.calibrate_method, CALIB_METHODS)}")
        for k in ("activation_type", "weight_type"):
            if getattr(self, k) not in INT8_TYPES:
                raise ConfigError(f"quantize.{k} {getattr(self, k)!r}{did_you_mean(getattr(self, k), INT8_TYPES)}")
        if self.max_trials < 1:
            raise ConfigError(f"quantize.max_trials {self.max_trials}: must be >= 1")
        if self.calib_size < 1:
            raise ConfigError(f"quantize.calib_size {self.calib_size}: must be >= 1")
        object.__setattr__(self, "op_types", tuple(self.op_types))
        object.__setattr__(self, "exclude_nodes", tuple(self.exclude_nodes))


@dataclass(frozen=True, kw_only=True)
class ProfileConfig:
    enabled: bool = True
    warmup: int = 5
    min_runs: int = 50
    min_seconds: float = 1.0
    max_seconds: float = 20.0
    op_profile: bool = True

    def __post_init__(self):
        # 'nan < 0' is False: a NaN passed the range check and the report said 'the loop has taken NaN s'
        for key in ("min_seconds", "max_seconds"):
            if not math.isfinite(getattr(self, key)):
                raise ConfigError(f"profile.{key} {getattr(self, key)}: must be a finite number")
        if self.max_seconds <= 0:
            raise ConfigError(f"profile.max_seconds {self.max_seconds}: must be > 0")
        if self.min_runs < 1 or self.warmup < 0 or self.min_seconds < 0:
            raise ConfigError("profile: min_runs >= 1, warmup >= 0 and min_seconds >= 0 are required")


@dataclass(frozen=True, kw_only=True)
class CompressConfig:
    model: str
    output: str
    weights: str | None = None
    trust_pickle: bool = False
    calib: str | None = None
    eval: str | None = None
    train: str | None = None
    input_shape: tuple | None = None
    tolerance: Tolerance = field(default_factory=Tolerance)
    targets: tuple = ()  # empty = the default target
    seed: int = 0
    overwrite: bool = False
    preprocess: str | None = None  # a prepost spec as JSON text or a path to a JSON file
    tokenizer: str | None = None  # file.py:function or a tokenizer.json: sentences (.txt data) -> model inputs
    task: str = "auto"  # what the first output is (loader.TASK_CHOICES); auto: guessed from its shape
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)

    def __post_init__(self):
        if not self.model:
            raise ConfigError("model: a model spec is required (zoo:NAME, file.py:factory, model.onnx or a HuggingFace "
                              "model folder)")
        from .loader import TASK_CHOICES

        if self.task not in TASK_CHOICES:
            raise ConfigError(f"task {self.task!r}{did_you_mean(self.task, TASK_CHOICES)}")
        object.__setattr__(self, "tolerance", Tolerance.parse(self.tolerance))
        if isinstance(self.targets, str):  # a string is iterable: "x86-laptop" was read as targets 'x', '8', ...
            raise ConfigError(f"targets = {self.targets!r} must be a list (targets = [{self.targets!r}])")
        object.__setattr__(self, "targets", tuple(self.targets))
        for t in self.targets:
            if not isinstance(t, str):
                raise ConfigError(f"targets: {t!r} must be a target name or a target .toml file")
        # torch.manual_seed takes at most 64 bits and numpy's generators no negative seed: out of range was an
        # internal error (ValueError: Overflow when unpacking long long) after the model had loaded
        if not isinstance(self.seed, bool) and isinstance(self.seed, int) and not 0 <= self.seed <= SEED_MAX:
            raise ConfigError(f"seed {self.seed}: must be in [0, {SEED_MAX}]")
        self._check_no_nul()
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(int(x) for x in self.input_shape))

    def _check_no_nul(self) -> None:
        """A NUL byte can be in no file name: an output path holding one (from a recipe) ran the whole
        pipeline and then failed as an internal error (ValueError: embedded null byte)."""
        named = {k: getattr(self, k) for k in ("model", "output", *_PATH_KEYS)}
        named.update({f"targets[{i}]": t for i, t in enumerate(self.targets)})
        named.update({f"distill.{k}": getattr(self.distill, k, None) for k in ("student", "teacher")})
        for k, v in named.items():
            if isinstance(v, str) and "\x00" in v:
                raise ConfigError(f"{k} = {v!r}: a NUL byte cannot be part of a file name")

    @property
    def distill_enabled(self) -> bool:
        if self.distill.enabled is not None:
            return self.distill.enabled
        return self.prune.enabled or self.distill.student is not None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["tolerance"] = str(self.tolerance)
        return d


_SECTIONS = {"prune": PruneConfig, "distill": DistillConfig, "quantize": QuantizeConfig, "profile": ProfileConfig}


def _check_keys(where: str, given: dict, cls) -> None:
    valid = {f.name for f in dataclasses.fields(cls)}
    for k in given:
        if k not in valid:
            raise ConfigError(f"{where}: unknown key {k!r}{did_you_mean(k, valid)}")


_SIMPLE_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "tuple": (list, tuple)}


def _check_types(where: str, given: dict, cls) -> None:
    """Each value against its field's declared type: a TOML recipe or an API call can hand over a string
    where a number or a table belongs, which would otherwise surface as a TypeError deep in a stage, or
    worse, be taken as truthy ("no" for a flag)."""
    declared = {f.name: f.type for f in dataclasses.fields(cls)}
    for k, v in given.items():
        t = declared.get(k)
        if not isinstance(t, str):
            continue
        parts = [p.strip() for p in t.split("|")]
        if v is None and "None" in parts:
            continue
        allowed = tuple(x for p in parts for x in _SIMPLE_TYPES.get(p, ()))
        if not allowed or len(allowed) != sum(len(_SIMPLE_TYPES.get(p, ())) for p in parts if p != "None"):
            continue  # a type this check does not describe (Tolerance, a nested config)
        # True is an int to Python, not to a recipe's reader
        if not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed):
            want = " or ".join({"tuple": "a list"}.get(p, p) for p in parts if p != "None")
            raise ConfigError(f"{where}: {k} = {v!r} must be {want}")


def _build(cls, where, values):
    _check_keys(where, values, cls)
    _check_types(where, values, cls)
    try:
        return cls(**values)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def from_dict(d: dict, *, where: str = "settings") -> CompressConfig:
    top = {k: v for k, v in d.items() if k not in _SECTIONS}
    _check_keys(where, top, CompressConfig)
    _check_types(where, top, CompressConfig)
    sections = {}
    for name, cls in _SECTIONS.items():
        v = d.get(name, {})
        if isinstance(v, dict):
            sections[name] = _build(cls, f"{where} [{name}]", v)
        elif isinstance(v, cls):
            sections[name] = v
        else:
            raise ConfigError(f"{where}: [{name}] must be a table")
    if "tolerance" in top:
        try:
            top["tolerance"] = Tolerance.parse(top["tolerance"])
        except ConfigError as e:  # a recipe's tolerance error names its file, like every other key's
            raise ConfigError(f"{where}: {e}") from None
    try:
        return CompressConfig(**top, **sections)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


# what only the command line may ask for: a recipe someone sent, replayed with --config, must not replace a
# folder (--overwrite) or unpickle its weights file, which runs code from it (--trust-pickle)
_COMMAND_LINE_ONLY = ("overwrite", "trust_pickle")


def load_recipe(path, *, notes: bool = True) -> dict:
    """Read compress.toml into a plain dict (merged under CLI flags by the caller). notes=False: no note
    for a setting the recipe had and that was dropped (a caller reading the recipe a second time)."""
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: recipe file not found")
    try:
        d = tomllib.loads(p.read_text(encoding="utf-8-sig"))  # a BOM (Windows editors) is no TOML
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    d = map_paths(d, lambda v: _rebase(v, p.parent))
    if isinstance(d.get("output"), str) and not Path(d["output"]).is_absolute():
        d["output"] = str(p.parent / d["output"])  # like every other path in it, not the current folder
    # a recipe recorded from an --overwrite run replaced another run's folder when replayed with -o elsewhere
    d.pop("overwrite", None)
    if d.pop("trust_pickle", False) and notes:
        print(f"edgekit: note: {p}: recipe's trust_pickle ignored: pass --trust-pickle to load pickled weights",
              file=sys.stderr)
    # validate now so the error names the file: a value's own check (task, quantize.mode, prune.method...)
    # runs in the config class, which does not know the file
    try:
        from_dict({"model": d.get("model", "?"), "output": d.get("output", "?"), **d}, where=str(p))
    except ConfigError as e:
        if str(e).startswith(f"{p}:") or str(e).startswith(f"{p} ["):
            raise
        raise ConfigError(f"{p}: {e}") from None
    _check_inline_prepost(d.get("preprocess"), p)
    return d


def _check_inline_prepost(value, recipe: Path) -> None:
    """A pre/post spec written into the recipe as JSON text is checked here, so its error names the recipe
    (it was reported as '--preprocess: ...', a flag the user never passed). A spec file names itself later."""
    from .prepost import PrepostError, validate_spec
    from .prepost.pipeline import _stat_ok

    if not isinstance(value, str) or _stat_ok(Path(value).is_file):
        return
    try:
        spec = json.loads(value)
    except ValueError as e:
        if value.lstrip()[:1] in ("{", "["):
            raise ConfigError(f"{recipe}: preprocess: not valid JSON ({e})") from None
        return  # a file name: a missing one is named later, as for the flag
    try:
        validate_spec(spec)
    except PrepostError as e:
        raise ConfigError(f"{recipe}: preprocess: {e}") from None


_PATH_KEYS = ("weights", "calib", "eval", "train", "preprocess", "tokenizer")


def _file_part(spec: str) -> tuple:
    """('net.py', ':build') for a file.py:factory spec, (spec, '') for a plain path."""
    head, sep, tail = spec.rpartition(":")
    if sep and head.endswith(".py"):
        return head, ":" + tail
    return spec, ""


def map_spec(v, fn):
    """v with fn applied to the file it names (the file part of file.py:name); zoo names, empty values and
    non-strings pass through."""
    if not isinstance(v, str) or not v or v.startswith("zoo:"):
        return v
    path, rest = _file_part(v)
    return fn(path) + rest


def map_paths(d: dict, fn) -> dict:
    """d with fn applied to every setting that names a file (model/student file.py parts, data, weights,
    a --preprocess file, target TOML files); zoo names, target names and JSON text pass through."""
    out = dict(d)
    for k in ("model", *_PATH_KEYS):
        if out.get(k):
            out[k] = map_spec(out[k], fn)
    if isinstance(out.get("targets"), (list, tuple)):  # another type is refused by name when checked
        out["targets"] = [map_spec(t, fn) if str(t).endswith(".toml") else t for t in out["targets"]]
    if isinstance(out.get("distill"), dict) and out["distill"].get("student"):
        out["distill"] = {**out["distill"], "student": map_spec(out["distill"]["student"], fn)}
    return out


def _absolute(path: str) -> str:
    p = Path(path)
    return str(p.resolve()) if p.exists() else path


def _rebase(path: str, base: Path) -> str:
    """A relative path in a recipe: as given if it exists from here (recipes written before paths were
    made absolute), else relative to the recipe's own folder."""
    p = Path(path)
    if p.is_absolute() or p.exists() or not (base / p).exists():
        return path
    return str(base / p)


_TOML_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(s: str) -> str:
    """s as a TOML basic string: TOML forbids a raw control character in one, so a path holding a newline
    made the whole recipe unreadable (and --config could not repeat the run)."""
    def esc(c):
        if c in _TOML_ESCAPES:
            return _TOML_ESCAPES[c]
        return f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7f else c
    return '"' + "".join(esc(c) for c in s) + '"'


def to_toml(cfg: CompressConfig) -> str:
    """The exact recipe of a run, so it can be repeated with --config (from any folder: files are named by
    absolute path)."""
    d = map_paths(cfg.to_dict(), _absolute)
    d["output"] = str(Path(d["output"]).resolve())
    for k in _COMMAND_LINE_ONLY:  # safety choices made on the command line, not part of the recipe
        d.pop(k, None)
    lines = []

    def fmt(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return toml_string(str(v))

    for k, v in d.items():
        if k in _SECTIONS or v is None:
            continue
        lines.append(f"{k} = {fmt(v)}")
    for name in _SECTIONS:
        lines.append(f"\n[{name}]")
        for k, v in d[name].items():
            if v is not None:
                lines.append(f"{k} = {fmt(v)}")
    return "\n".join(lines) + "\n"
