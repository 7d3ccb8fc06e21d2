"""Build, read and verify .ekb bundles: one artifact, its self-test, the runner, pre/post code.

Layout inside the archive (all paths relative, regular files only):

    bundle.json          format, version, model, selftest{inputs, expected, atol},
                         files{relpath: sha256}, artifact (its manifest entry, less the
                         raw latency samples), prepost spec
    <model>.onnx         the chosen artifact (plus any external-data files it names)
    edgekit_runner.py    numpy + onnxruntime only; `selftest --bundle DIR` checks the model
    selftest.npz         one input; expected.npz: onnxruntime's output for it on the build host
    edgekit/prepost/...  the pre/post-processing package, when edgekit has it

The version is derived from bundle.json's content (which lists every file's hash), so the
same content always gets the same version and re-flashing it sends nothing.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..artifact import load_manifest
from ..errors import FlashError, InputError, UsageError, did_you_mean
from ..fsutil import sha256_file
from .archive import check_member_name, safe_extract, save_npz, write_archive

FORMAT = "edgekit.bundle/1"
META = "bundle.json"
RUNNER = "edgekit_runner.py"
SELFTEST_INPUTS, SELFTEST_EXPECTED = "selftest.npz", "expected.npz"
PKG = Path(__file__).resolve().parents[1]  # the edgekit package
RUNNER_SRC = PKG / "runner" / RUNNER  # single-file, numpy + onnxruntime only
PREPOST_SRC = PKG / "prepost"
# The version (`<kind>-<hash>`) becomes a directory name on the device and the target of its
# `current` link, so it and the kind it is made from must each be one plain path component.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SAFE_NAME_RULE = "letters, digits, '.', '_', '-', starting with a letter or digit, no '..', at most 128 characters"


def is_safe_name(name) -> bool:
    """True if name can be used as a single file name on any device without escaping its directory."""
    # fullmatch, not match: '$' would let a trailing newline through
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None and ".." not in name


@dataclass
class Bundle:
    """An extracted, verified bundle."""

    root: Path
    meta: dict

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def files(self) -> dict:
        return self.meta["files"]

    def meta_sha256(self) -> str:
        return sha256_file(self.root / META)

    def upload_order(self) -> list[str]:
        """Small files first and bundle.json last, so an interrupted upload keeps most of what it sent."""
        rels = sorted(self.files, key=lambda r: ((self.root / r).stat().st_size, r))
        return rels + [META]

    def total_bytes(self) -> int:
        return sum((self.root / r).stat().st_size for r in self.upload_order())


def content_version(meta: dict, kind: str) -> str:
    body = {k: v for k, v in meta.items() if k != "version"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"{kind}-{digest[:16]}"


def choose_artifact(manifest, outdir: Path, which: str | None = None):
    """--artifact KIND|PATH, else the first recommended artifact, else the smallest compressed one that met
    the tolerance (and was not measured slower), else fp32."""
    arts = manifest.artifacts
    if not arts:
        raise InputError(f"{outdir / 'manifest.json'}: lists no artifacts")
    if which:
        by_path = [a for a in arts if which == a.path or (Path(which).name == Path(a.path).name and Path(which).exists()
                                                          and Path(which).resolve() == (outdir / a.path).resolve())]
        by_kind = [a for a in arts if which == a.kind]
        if by_path or len(by_kind) == 1:
            return (by_path or by_kind)[0]
        if by_kind:  # the INT8 of the FP32 and of the distilled model: a kind names neither
            raise UsageError(f"--artifact {which!r}: {len(by_kind)} artifacts of that kind in "
                             f"{outdir / 'manifest.json'} ({', '.join(a.path for a in by_kind)}); give the file name")
        names = list(dict.fromkeys([a.kind for a in arts] + [a.path for a in arts]))
        raise UsageError(f"--artifact {which!r}: not in {outdir / 'manifest.json'}" + did_you_mean(which, names))
    for rec in (manifest.recommended or {}).values():
        if isinstance(rec, dict) and rec.get("path"):
            for a in arts:
                if a.path == rec["path"]:
                    return a
    # no recommendation (profiling was off, or an `edgekit prune`/`distill` output): the smallest compressed
    # variant that met the tolerance and that no measurement showed slower (a prune output shipped its
    # unpruned FP32); never one the run itself refused; else FP32
    ok = [a for a in arts if a.kind != "fp32" and _acceptable(a, manifest)]
    if ok:
        return min(ok, key=lambda a: (a.bytes or 0, arts.index(a)))
    return next((a for a in arts if a.kind == "fp32"), arts[0])


def _acceptable(a, manifest) -> bool:
    q = manifest.quantization.get(a.parent or "", {}) if a.stage == "quantize" else {}
    if q.get("tolerance_met") is False:
        return False
    gate = next(iter((q.get("speed_gate") or {}).values()), {})
    if gate.get("status") == "ok" and not gate.get("passed"):
        return False
    tol = (manifest.settings or {}).get("tolerance")
    if tol is None:
        return True
    from ..config import Tolerance
    from ..errors import ConfigError
    from ..recommend import metric_veto

    try:
        return metric_veto(a, manifest, Tolerance.parse(str(tol))) is None
    except ConfigError:  # a manifest from another version: the quantization record above still applies
        return True


def _external_data(model: Path) -> list[str]:
    import onnx

    m = onnx.load(str(model), load_external_data=False)
    out = set()
    tensors = list(m.graph.initializer) + [a.t for n in m.graph.node for a in n.attribute if a.HasField("t")]
    for t in tensors:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc:
                out.add(loc)
    return sorted(out)


def _copy_package(src: Path, dest: Path) -> list[Path]:
    copied = []
    for p in sorted(src.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"):
            q = dest / p.relative_to(src)
            q.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, q)
            copied.append(q)
    return copied


def _holds_a_bundle(path) -> bool:
    import tarfile

    try:
        with tarfile.open(path, "r:gz") as tf:
            return any(m.name.lstrip("./") == META for m in tf.getmembers())
    except (tarfile.TarError, OSError, EOFError):
        return False


def check_inputs_file(path) -> None:
    """Refuse --inputs in one line when numpy cannot read every array in it without pickle: an object
    array surfaced as 'internal error: ValueError', and a file that is no .npz/.npy at all read as
    'does not hold arrays matching the model's inputs'."""
    import numpy as np

    p = Path(path)
    try:
        with open(p, "rb") as f:
            magic = f.read(6)
    except FileNotFoundError:
        raise InputError(f"{p}: no such inputs file") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read the inputs file: {e.strerror or e}") from None
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY")):
        raise InputError(f"{p}: not a .npz or .npy file (no zip or .npy header); save the inputs with np.savez")
    try:
        data = np.load(p, allow_pickle=False)
        if hasattr(data, "files"):  # an .npz: its arrays are read (and refused) one by one
            with data:
                for k in data.files:
                    data[k]
    except ValueError as e:
        if "bject arrays" in str(e):
            raise InputError(f"{p}: holds object arrays (pickled Python objects), which edgekit never loads; "
                             "save plain numeric arrays") from None
        raise InputError(f"{p}: not a readable .npz or .npy file: {str(e).strip().splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 - zipfile, zlib and numpy's format errors: all a damaged file
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InputError(f"{p}: not a readable .npz or .npy file: {why}") from None


def build_bundle(outdir, dest, *, artifact: str | None = None, inputs=None, atol: float | None = None) -> dict:
    """Pack OUTDIR's chosen artifact into dest (.ekb). Returns a summary (path, version, artifact, ...)."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        raise InputError(f"{outdir}: not a directory (expected an edgekit output directory)")
    if Path(dest).is_dir():  # the rename at the end would fail with an internal error ('-o out/run', '-o .')
        raise InputError(f"{dest}: is a directory; -o names the bundle file to write (e.g. {outdir.name}.ekb)")
    if Path(dest).exists() and not _holds_a_bundle(dest):
        # re-bundling replaces an older bundle; any other file at that path is the user's, not ours to replace
        raise InputError(f"{dest}: exists and is not an edgekit bundle; not replacing it (remove it or choose "
                         "another -o)")
    if inputs is not None:
        check_inputs_file(inputs)
    manifest = load_manifest(outdir)
    art = choose_artifact(manifest, outdir, artifact)
    model_src = art.checked_file(outdir, then="refusing to bundle it (re-run compress)")
    runner = RUNNER_SRC
    if not runner.is_file():
        raise FlashError(f"bundle: the device runner {runner} is missing from this edgekit installation")

    with tempfile.TemporaryDirectory(prefix="edgekit-bundle-") as tmp:
        root = Path(tmp)
        model_rel = Path(art.path).name
        shutil.copyfile(model_src, root / model_rel)
        for loc in _external_data(model_src):
            try:
                rel = check_member_name(loc)
            except ValueError as e:
                raise InputError(f"{model_src}: external data location {loc!r} is unsafe: {e}") from None
            if not (model_src.parent / rel).is_file():
                raise InputError(f"{model_src}: external data file {rel} is missing")
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model_src.parent / rel, root / rel)
        shutil.copyfile(runner, root / RUNNER)
        prepost = PREPOST_SRC
        has_prepost = prepost.is_dir() and (prepost / "__init__.py").is_file()
        if has_prepost:
            _copy_package(prepost, root / "edgekit" / "prepost")
            # `edgekit_runner.py run` imports edgekit.prepost from the bundle directory when bundle.json
            # has pre/post steps; this stub keeps that import light (no rest of edgekit on the device)
            (root / "edgekit" / "__init__.py").write_text('"""edgekit subset shipped in a bundle: prepost only."""\n')
        feeds, expected, facts = make_selftest(root / model_rel, outdir, manifest, art.kind,
                                               inputs=inputs, atol=atol)
        save_npz(root / SELFTEST_INPUTS, feeds)
        save_npz(root / SELFTEST_EXPECTED, expected)
        files = {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
        from .. import __version__

        meta = {
            "format": FORMAT,
            "version": "",
            "model": model_rel,
            "runner": RUNNER,
            "selftest": {"inputs": SELFTEST_INPUTS, "expected": SELFTEST_EXPECTED, "atol": facts["atol"],
                         "input_origin": facts["input_origin"]},
            "files": files,
            "artifact": artifact_entry(art),
            "prepost": manifest.prepost or {},
            "prepost_code": has_prepost,
            "source": manifest.source or {},
            "edgekit_version": __version__,
        }
        meta["version"] = content_version(meta, art.kind)
        (root / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        write_archive(dest, root, list(files) + [META])
    return {"path": str(dest), "version": meta["version"], "artifact": {"kind": art.kind, "path": art.path},
            "files": len(files) + 1, "bytes": Path(dest).stat().st_size, "selftest": meta["selftest"]}


def _drop_samples(obj):
    if isinstance(obj, dict):
        return {k: _drop_samples(v) for k, v in obj.items() if k != "samples_ms"}
    if isinstance(obj, list):
        return [_drop_samples(v) for v in obj]
    return obj


def artifact_entry(art) -> dict:
    """The artifact's manifest entry for bundle.json, without the raw timed runs (latency.*.samples_ms):
    thousands of numbers the device never reads; the summary statistics (p50, p90, ...) stay."""
    d = art.to_dict()
    if isinstance(d.get("latency"), dict):
        d["latency"] = _drop_samples(d["latency"])
    return d


def make_selftest(*a, **k):
    from .selftest import make_selftest as _make

    return _make(*a, **k)


def check_meta(meta, where) -> None:
    """Refuse a bundle.json whose fields are of the wrong type or could name a path outside the bundle."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(f"{where}: not an {FORMAT} bundle (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    for key in ("version", "model", "files", "selftest"):
        if key not in meta:
            raise InputError(f"{where}: bundle.json lacks {key!r}")
    # a wrong type would otherwise surface later as a traceback instead of a refusal
    for key, typ, what in (("version", str, "a string"), ("model", str, "a string"), ("files", dict, "an object"),
                           ("selftest", dict, "an object")):
        if not isinstance(meta[key], typ):
            raise InputError(f"{where}: bundle.json's {key!r} is not {what}")
    if "artifact" in meta and not isinstance(meta["artifact"], dict):
        raise InputError(f"{where}: bundle.json's 'artifact' is not an object")
    files, st = meta["files"], meta["selftest"]
    for rel, sha in files.items():
        if not isinstance(sha, str):
            raise InputError(f"{where}: bundle.json lists {rel!r} without a sha256 string")
    for key in ("inputs", "expected"):
        if not isinstance(st.get(key), str):
            raise InputError(f"{where}: bundle.json's selftest.{key} is missing or not a string")
    for rel in list(files) + [meta["model"], st["inputs"], st["expected"]]:
        try:
            if check_member_name(rel) != rel:
                raise ValueError("not a normalised relative path")
        except ValueError as e:
            raise InputError(f"{where}: bundle.json names an unsafe path {rel!r}: {e}") from None
    for rel in (meta["model"], st["inputs"], st["expected"], RUNNER):
        if rel not in files:
            raise InputError(f"{where}: bundle.json does not list {rel!r} among its files")
    # the kind is checked on its own as well: a consistent `<kind>-<hash>` version carries it into device paths
    kind = (meta.get("artifact") or {}).get("kind", meta["version"].split("-")[0])
    if not is_safe_name(kind):
        raise InputError(f"{where}: bundle.json has an unsafe artifact kind {kind!r} (allowed: {SAFE_NAME_RULE})")
    if not is_safe_name(meta["version"]):
        raise InputError(f"{where}: bundle.json has an unsafe version {meta['version']!r} (allowed: {SAFE_NAME_RULE})")
    if content_version(meta, kind) != meta["version"]:
        raise InputError(f"{where}: bundle.json's version {meta['version']} does not match its content (edited?)")


def read_bundle(path, workdir) -> Bundle:
    """Extract an .ekb safely into workdir and verify every file against bundle.json."""
    path = Path(path)
    root = Path(tempfile.mkdtemp(prefix="bundle-", dir=workdir))
    try:
        return _read_into(path, root)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)  # a refused bundle leaves nothing behind in workdir
        raise


def _read_into(path: Path, root: Path) -> Bundle:
    meta = {}

    def index(found, read):
        # bundle.json is read and checked before anything is written: an unlisted member (a 2 GiB
        # file of zeros in 2 MiB of gzip) is refused here, a listed one as soon as its hash differs
        if META not in found:
            raise InputError(f"{path}: not an edgekit bundle (no {META})")
        try:
            parsed = json.loads(read(META))
        except ValueError as e:
            raise InputError(f"{path}: unreadable {META}: {e}") from None
        check_meta(parsed, path)
        meta.update(parsed)
        extra = sorted(set(found) - set(meta["files"]) - {META})
        missing = sorted(set(meta["files"]) - set(found))
        if extra or missing:
            raise InputError(f"{path}: contents differ from {META} (missing {missing or 'none'}, "
                             f"unlisted {extra or 'none'})")
        return meta["files"]

    safe_extract(path, root, index)
    return Bundle(root, meta)


def open_source(src, workdir, *, artifact: str | None = None) -> Bundle:
    """A Bundle from an .ekb file or an edgekit OUTDIR (bundled on the fly into workdir)."""
    src = Path(src)
    if src.is_dir():
        ekb = Path(workdir) / "from-outdir.ekb"
        build_bundle(src, ekb, artifact=artifact)
        return read_bundle(ekb, workdir)
    if artifact:
        raise UsageError("--artifact applies to an output directory; a bundle already holds one artifact")
    if not src.exists():
        raise InputError(f"{src}: no such bundle or output directory")
    return read_bundle(src, workdir)
