"""Records that flow between stages: an Artifact per ONNX file and the Manifest beside them.

Manifest schema (``edgekit.manifest/1``), JSON, documented in docs/manifest.md:

    schema, edgekit_version, created,
    source{spec,kind,task,task_from,weights,weights_sha256,source_file,source_sha256,description},
    settings{...}, data{calib,eval,train: {path,format,samples,sha256,hash_of}},
    versions{edgekit,torch,onnx,onnxruntime,numpy,python},
    host{cpu,flags,cores,machine,os}, stages[{name,status,reason,seconds,details}],
    artifacts[Artifact], recommended{target: {path, reason}}, prepost{...},
    quantization{...}, pruning{...}

Status values for stages: done | skipped | not-applicable | failed.
A latency entry per target is either a measurement ({"status": "ok", p50_ms, ...})
or {"status": "unavailable"|"failed"|"emulated-only", "reason": ...}; never a made-up number.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
from dataclasses import dataclass, field
from pathlib import Path

from .fsutil import per_file_version, sha256_file, write_json_atomic

SCHEMA = "edgekit.manifest/1"
KINDS = ("fp32", "pruned", "distilled", "int8", "int8-dynamic", "fp16", "sparse")
STAGE_STATUS = ("done", "skipped", "not-applicable", "failed")


def shape_text(shape) -> str:
    """A shape as messages print it: [N, 3, 224, 224], N for a symbolic batch axis."""
    return "[" + ", ".join("N" if i == 0 and not isinstance(d, int) else str(d) for i, d in enumerate(shape or [])) + "]"


@dataclass
class TensorSpec:
    name: str
    shape: list  # ints or symbolic names (str) for dynamic dims
    dtype: str  # numpy dtype name, e.g. "float32", "int64"

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclass
class Artifact:
    kind: str
    path: str  # relative to the output directory
    sha256: str = ""
    bytes: int = 0
    params: int | None = None
    opset: int | None = None
    parent: str | None = None  # path of the artifact (or "source") this one was made from
    stage: str = ""
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    verify: dict = field(default_factory=dict)
    latency: dict = field(default_factory=dict)  # target name -> measurement or status
    settings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"artifact kind {self.kind!r} not one of {KINDS}")

    def refresh_file_facts(self, outdir) -> None:
        p = Path(outdir) / self.path
        self.sha256 = model_sha256(p)
        self.bytes = p.stat().st_size

    def checked_file(self, outdir, *, then: str) -> Path:
        """OUTDIR/path, refused in one line when it is missing or no longer the file the manifest hashed
        (then: what the caller's user should do about a changed file)."""
        from .errors import InputError

        f = Path(outdir) / self.path
        outside = self._outside(outdir)
        if outside:
            raise InputError(f"{Path(outdir) / 'manifest.json'}: artifact {self.path} ({self.kind}) {outside}; {then}")
        if not f.is_file():
            raise InputError(f"{f}: artifact listed in manifest.json is missing")
        if not self.sha256:
            # edgekit always records one: without it any file would pass as the run's
            raise InputError(f"{Path(outdir) / 'manifest.json'}: artifact {self.path} ({self.kind}) records no "
                             f"sha256, so it cannot be told to be the file the run made; {then}")
        if model_sha256(f) != self.sha256:
            raise InputError(f"{f}: {self.change(outdir)}; {then}")
        return f

    def _outside(self, outdir) -> str | None:
        """Why path does not name a file inside OUTDIR (a link out of it, an absolute or ../ path), or None:
        a run folder from elsewhere must not make edgekit read, time or ship a file outside it."""
        why = _path_problem(self.path)
        if why:
            return why
        root = Path(outdir).resolve()
        if not (Path(outdir) / self.path).resolve().is_relative_to(root):
            return "leads outside the run folder (through a symlink)"
        return None

    def change(self, outdir) -> str | None:
        """Why OUTDIR/path is no longer the model the manifest hashed (missing, changed, or one of its
        external data files missing, or no hash recorded), or None when it still is."""
        f = Path(outdir) / self.path
        outside = self._outside(outdir)
        if outside:
            return f"artifact listed in manifest.json {outside}"
        if not f.is_file():
            return "artifact listed in manifest.json is missing"
        if not self.sha256:
            return "manifest.json records no sha256 for it, so it cannot be told to be the file the run made"
        if model_sha256(f) == self.sha256:
            return None
        data = _external_data_files(f)
        gone = [loc for loc in data if not (f.parent / loc).is_file()]
        if gone:
            return f"its external data file {gone[0]} is missing"
        if data and sha256_file(f) == self.sha256:
            # written before the hash covered the weights: the weights cannot be told unchanged
            return ("manifest.json's sha256 covers the .onnx alone, not its external data "
                    f"({', '.join(data)}; an older edgekit wrote it)")
        return "changed since the run (sha256 differs from manifest.json beside it)"

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _external_data_files(p: Path) -> list[str]:
    try:
        import onnx
        from onnx.external_data_helper import _get_all_tensors, uses_external_data

        m = onnx.load(str(p), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ONNX (a replaced file): it has no data files of its own
        return []
    return sorted({e.value for t in _get_all_tensors(m) if uses_external_data(t)
                   for e in t.external_data if e.key == "location"})


def model_sha256(p) -> str:
    """The sha256 naming a model with its weights: the file's own, or, when its tensors live in external
    data files (model.onnx.data), loader.onnx_sha256's hash over the file's and each data file's hashes.
    The .onnx alone is the same for any weights of one graph; files without external data keep the
    plain hash, so earlier manifests still verify."""
    from .loader import onnx_sha256

    try:
        return onnx_sha256(p)
    except Exception:  # noqa: BLE001 - not ONNX (a replaced file): its bytes are all there is to hash
        return sha256_file(p)


@dataclass
class StageRecord:
    name: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    details: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STAGE_STATUS:
            raise ValueError(f"stage status {self.status!r} not one of {STAGE_STATUS}")


@dataclass
class Manifest:
    source: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    stages: list = field(default_factory=list)  # StageRecord
    artifacts: list = field(default_factory=list)  # Artifact
    recommended: dict = field(default_factory=dict)
    prepost: dict = field(default_factory=dict)
    quantization: dict = field(default_factory=dict)
    pruning: dict = field(default_factory=dict)
    profile: dict = field(default_factory=dict)  # per-target facts: provider, threads, emulated, host
    data: dict = field(default_factory=dict)  # role (calib/eval/train) -> data_record(); {} in older manifests
    versions: dict = field(default_factory=dict)
    host: dict = field(default_factory=dict)
    created: str = ""
    schema: str = SCHEMA
    edgekit_version: str = ""

    def artifact(self, kind_or_path: str) -> Artifact:
        for a in self.artifacts:
            if a.kind == kind_or_path or a.path == kind_or_path:
                return a
        raise KeyError(kind_or_path)

    def to_dict(self) -> dict:
        from . import __version__

        if not self.created:
            # fixed at the first write: the report is built from that write, and the final write a few seconds
            # later gave manifest.json a later time than report.json, which copies it
            self.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        d = {
            "schema": self.schema,
            "edgekit_version": self.edgekit_version or __version__,
            "created": self.created,
            "source": self.source,
            "settings": self.settings,
            "data": self.data,
            "versions": self.versions,
            "host": self.host,
            "stages": [dataclasses.asdict(s) if not isinstance(s, dict) else s for s in self.stages],
            "artifacts": [a.to_dict() if not isinstance(a, dict) else a for a in self.artifacts],
            "recommended": self.recommended,
            "prepost": self.prepost,
            "quantization": self.quantization,
            "pruning": self.pruning,
            "profile": self.profile,
        }
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Manifest":
        m = cls(**{k: d.get(k) for k in ("source", "settings", "recommended", "prepost", "quantization",
                                          "pruning", "profile", "versions", "host", "data") if d.get(k) is not None})
        m.created = d.get("created", "")
        m.schema = d.get("schema", SCHEMA)
        m.edgekit_version = d.get("edgekit_version", "")
        m.stages = [StageRecord(**s) for s in d.get("stages", [])]
        m.artifacts = [Artifact.from_dict(a) for a in d.get("artifacts", [])]
        return m

    def write(self, outdir) -> Path:
        dest = Path(outdir) / "manifest.json"
        write_json_atomic(dest, self.to_dict())
        return dest


def load_manifest(outdir) -> Manifest:
    import json

    from .errors import InputError

    p = Path(outdir)
    if p.is_dir():
        p = p / "manifest.json"
    if not p.exists():
        raise InputError(f"{p}: no manifest.json (is this an edgekit output directory?)")
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{p}: not a readable manifest: {e}") from None
    if not isinstance(d, dict) or not str(d.get("schema", "")).startswith("edgekit.manifest/"):
        schema = d.get("schema") if isinstance(d, dict) else None
        raise InputError(f"{p}: not an edgekit manifest (schema {schema!r})")
    try:
        check_manifest(d)
        return Manifest.from_dict(d)
    except ManifestError as e:
        raise InputError(f"{p}: {e}") from None
    except (TypeError, ValueError, AttributeError, KeyError) as e:  # a shape check_manifest does not cover
        raise InputError(f"{p}: not a readable manifest: {type(e).__name__}: {e}") from None


class ManifestError(ValueError):
    """One field of a manifest has a wrong type or value; the message starts with the field."""


_DICT_FIELDS = ("source", "settings", "recommended", "prepost", "quantization", "pruning", "profile",
                "versions", "host", "data")
_NUMBER, _INT = (int, float), int
# field -> (types allowed, None allowed); what the dataclasses and the report take a field to be
_STAGE_FIELDS = {"name": (str, False), "status": (str, False), "reason": (str, True),
                 "seconds": (_NUMBER, True), "details": (dict, True)}
_ARTIFACT_FIELDS = {"kind": (str, False), "path": (str, False), "sha256": (str, True), "bytes": (_INT, True),
                    "params": (_INT, True), "opset": (_INT, True), "parent": (str, True), "stage": (str, True),
                    "inputs": (list, True), "outputs": (list, True), "metrics": (dict, True),
                    "verify": (dict, True), "latency": (dict, True), "settings": (dict, True),
                    "notes": (list, True)}


def check_manifest(d: dict) -> None:
    """ManifestError naming the first field of d (a parsed manifest.json) of a wrong type or value: a
    damaged or hand-edited run folder is bad input, not an internal error."""
    for k in _DICT_FIELDS:
        _check_type(d.get(k), dict, True, k)
    for k in ("created", "schema", "edgekit_version"):
        _check_type(d.get(k), str, True, k)
    for key, fields, extra in (("stages", _STAGE_FIELDS, _check_stage), ("artifacts", _ARTIFACT_FIELDS, _check_artifact)):
        items = d.get(key)
        _check_type(items, list, True, key)
        for i, item in enumerate(items or []):
            where = f"{key}[{i}]"
            _check_type(item, dict, False, where)
            for name, (types, nullable) in fields.items():
                if name in item or not nullable:
                    _check_type(item.get(name), types, nullable, f"{where}.{name}")
            extra(item, where)


def _check_type(v, types, nullable: bool, where: str) -> None:
    if v is None and nullable:
        return
    if v is None:
        raise ManifestError(f"{where}: missing")
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(v, types) or isinstance(v, bool):  # True is an int to isinstance, not a byte count
        want = " or ".join(t.__name__ for t in types)
        raise ManifestError(f"{where}: {_shown(v)} is not {'an' if want[0] in 'aeiou' else 'a'} {want}")


def _shown(v) -> str:
    text = repr(v)  # a path whole; a whole object in place of a list would make the line a page
    return text if len(text) <= 200 else text[:197] + "..."


def _check_stage(s: dict, where: str) -> None:
    if s["status"] not in STAGE_STATUS:
        raise ManifestError(f"{where}.status: {_shown(s['status'])} is not one of {', '.join(STAGE_STATUS)}")


def _check_artifact(a: dict, where: str) -> None:
    if a["kind"] not in KINDS:
        raise ManifestError(f"{where}.kind: {_shown(a['kind'])} is not one of {', '.join(KINDS)}")
    why = _path_problem(a["path"])
    if why:
        raise ManifestError(f"{where}.path: {_shown(a['path'])} {why}")


def _path_problem(path: str) -> str | None:
    """Why an artifact path cannot name a file inside its run folder, or None (links are checked where read)."""
    if not path:
        return "is empty"
    if path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):  # a drive (C:) as well
        return "is absolute; an artifact must be a file inside the run folder"
    if ".." in path.replace("\\", "/").split("/"):
        return "leaves the run folder (..); an artifact must be a file inside it"
    return None


def data_records(**roles) -> dict:
    """{role: data_record(path, dataset)} for each role=(path, dataset) with data; (None, None) is left out."""
    return {role: data_record(path, ds) for role, (path, ds) in roles.items() if path or ds is not None}


def data_record(path, ds) -> dict:
    """Which data one input (--calib, --eval, --train) was, so a manifest shows what produced its numbers.

    sha256 (hash_of says of what): a file's as sha256sum prints it; a folder of images, of the lines
    `sha256sum` prints for the images read, in name order (`sha256sum $(ls) | sha256sum` with LC_ALL=C;
    paths below it, class/name, for a folder of class folders, whose class names are recorded too);
    data a zoo model brings (no file), of its samples and labels. Files are streamed, never read whole."""
    samples = len(ds) if ds is not None else None
    if not path:
        return {"path": None, "format": "arrays", "samples": samples, "sha256": _samples_sha256(ds),
                "hash_of": "samples", "source": ds.source}
    p = Path(path).resolve()
    if p.is_dir():
        classes = (getattr(ds, "extra", None) or {}).get("classes")
        fmt = (getattr(ds, "extra", None) or {}).get("format", "images")
        return {"path": str(p), "format": fmt, "samples": samples, "sha256": _folder_sha256(p),
                "hash_of": "folder", **({"classes": classes} if classes else {})}
    return {"path": str(p), "format": p.suffix.lower().lstrip(".") or "file", "samples": samples,
            "sha256": _file_sha256(p), "hash_of": "file"}


# calib and eval are often one file: hash each version of a file once per process
_file_sha256 = per_file_version(sha256_file)


def _folder_sha256(folder: Path) -> str:
    import hashlib

    from .audio import AUDIO_EXTS, is_audio_folder
    from .calibration import image_layout

    # the files the image (or .wav clip) reader takes (hidden ones and other extensions are never read), by
    # path below the folder (class/name for a folder of class folders), in that path's order
    files = image_layout(folder, AUDIO_EXTS).files if is_audio_folder(folder) else image_layout(folder).files
    named = sorted((f.relative_to(folder).as_posix(), f) for f in files)
    lines = "".join(f"{_file_sha256(f)}  {name}\n" for name, f in named)
    return hashlib.sha256(lines.encode()).hexdigest()


def _samples_sha256(ds) -> str:
    import hashlib

    import numpy as np

    from .quant.cache import data_hash

    # the calibration cache's hash of the inputs (names, dtypes, shapes, bytes), with the labels after it
    h = hashlib.sha256(data_hash(ds, len(ds)).encode())
    if ds.labels is not None:
        y = np.ascontiguousarray(ds.labels)
        h.update(f"labels|{y.dtype}|{y.shape}".encode())
        h.update(y.tobytes())
    return h.hexdigest()


def versions() -> dict:
    import importlib.metadata as md
    import sys

    from . import __version__

    out = {"edgekit": __version__, "python": sys.version.split()[0]}
    for pkg in ("torch", "onnx", "onnxruntime", "numpy", "numba", "neural-compressor", "torch-pruning"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    # onnxruntime-gpu installs the same `onnxruntime` module under another distribution name: without
    # this a GPU machine's manifest said onnxruntime null
    try:
        out["onnxruntime-gpu"] = md.version("onnxruntime-gpu")
        out["onnxruntime"] = out["onnxruntime"] or out["onnxruntime-gpu"]
    except md.PackageNotFoundError:
        pass
    return out


def host_info() -> dict:
    from .hostinfo import cpu_info

    info = cpu_info()
    return {
        "cpu": info["model"],
        "flags": info["isa"],
        "cores": info["cores"],
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
    }
