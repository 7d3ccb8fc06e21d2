"""`edgekit profile` as a library call: resolve artifacts, load inputs, sweep targets x batch x threads.

The artifacts that share inputs are measured together (interleaved) for each (target, batch, threads),
so their ratios on one target are trustworthy on a noisy machine. Without --inputs each edgekit run is
timed on the real inputs it saved (OUTDIR/sample_inputs.npz), in its own interleaved round: ratios are
only ever taken within a run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError, UsageError
from .fsutil import sha256_file

MAX_INPUT_SAMPLES = 8
GENERATED = "generated (seeded, right shape)"


def resolve_artifacts(specs) -> tuple[dict, dict, dict]:
    """ARTIFACT args (.onnx files or edgekit output dirs) -> (label -> path, label -> facts, label -> prepost spec)."""
    from .artifact import load_manifest

    paths, facts, prepost = {}, {}, {}
    multi_dirs = sum(1 for s in specs if Path(s).is_dir()) > 1

    def add(label, path, info, spec=None):
        base, i = label, 2
        while label in paths:
            label, i = f"{base}#{i}", i + 1
        paths[label], facts[label] = str(path), info
        if spec:
            prepost[label] = spec

    for s in specs:
        p = Path(s)
        if p.is_dir():
            m = load_manifest(p)
            if not m.artifacts:
                raise InputError(f"{p}: manifest.json lists no artifacts")
            kinds = [a.kind for a in m.artifacts]
            for a in m.artifacts:
                # a changed file would be timed, and its ratios taken, under the label of a model not there
                f = a.checked_file(p, then="profile the file itself, or re-run compress")
                # two of a kind (INT8 of the FP32 and of the distilled model): named by file, not kind#2
                name = a.kind if kinds.count(a.kind) == 1 else Path(a.path).name.removesuffix(".onnx").removeprefix("model.")
                label = f"{p.name}/{name}" if multi_dirs else name
                # hashed here: a.sha256 of an external-data model already covers its .data (artifact.model_sha256)
                add(label, f, {"path": str(f), "kind": a.kind, **_file_facts(f),
                               "run": str(p.resolve())}, m.prepost or None)
        elif p.is_file():
            if p.suffix != ".onnx":
                raise InputError(f"{p}: not an .onnx file or an edgekit output directory")
            _check_onnx(p)
            add(p.stem, p, {"path": str(p), "kind": None, **_file_facts(p), "run": _run_of(p)})
        else:
            raise InputError(f"{p}: no such file or directory")
    # a file passed alone that is an artifact of a run given here (an ONNX source's FP32 copy) joins that run
    by_sha = {f["sha256"]: f["run"] for f in facts.values() if f["kind"] and f.get("sha256")}
    for f in facts.values():
        if f["run"] is None and f["sha256"] in by_sha:
            f["run"] = by_sha[f["sha256"]]
    return paths, facts, prepost


def _file_facts(p: Path, sha: str | None = None, nbytes: int | None = None) -> dict:
    """{bytes, sha256} of a model with its weights: for an ONNX file whose tensors live in external data
    files, bytes adds theirs and sha256 hashes the file's and each data file's hashes (edgekit.loader's
    onnx_sha256 format), with each data file in external_data{location: {bytes, sha256}}. The .onnx
    alone is a stub of a few KB, the same for any weights of one graph."""
    import hashlib

    from .profile_remote import external_data

    p = Path(p)
    sha = sha or sha256_file(p)
    nbytes = nbytes if nbytes is not None else p.stat().st_size
    locations = sorted(external_data(p))
    if not locations:
        return {"bytes": nbytes, "sha256": sha}
    h = hashlib.sha256(f"onnx {sha}\n".encode())
    files = {}
    for loc in locations:
        f = p.parent / loc
        if f.is_file():
            files[loc] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
            nbytes += files[loc]["bytes"]
        else:
            files[loc] = {"bytes": None, "sha256": None, "missing": True}
        h.update(f"{loc} {files[loc]['sha256'] or 'missing'}\n".encode())
    return {"bytes": nbytes, "sha256": h.hexdigest(), "onnx_bytes": p.stat().st_size, "external_data": files}


def _run_of(p: Path) -> str | None:
    """The edgekit output folder a loose .onnx file belongs to (its manifest lists it with this hash), else None.
    Ratios are taken within a run: an INT8 file from one run against another run's FP32 compares two models."""
    from .artifact import load_manifest
    from .errors import EdgekitError

    if not (p.parent / "manifest.json").is_file():
        return None
    try:
        m = load_manifest(p.parent)
    except EdgekitError:
        return None
    from .artifact import model_sha256

    sha = model_sha256(p)  # the manifest's hash of a model with external data covers its .data files too
    return str(p.parent.resolve()) if any(a.path == p.name and a.sha256 == sha for a in m.artifacts) else None


def _check_onnx(p: Path) -> None:
    import onnxruntime as ort

    try:
        so = ort.SessionOptions()
        so.log_severity_level = 4
        ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        from .onnxutil import ort_error_text

        msg = ort_error_text(e)[:300] or type(e).__name__  # its reason, not the C++ site before it
        raise InputError(f"{p}: onnxruntime cannot load this model: {msg}") from None


def declared_inputs(path):
    """The model's inputs as onnxruntime declares them (name, shape, type), or None if it cannot load
    (the measurement then reports why, next to the artifacts that work)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only the signature is read
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).get_inputs()
    except Exception:
        return None


def _read_arrays(p: Path) -> dict:
    """name -> array; a .npy (or .csv / .tsv rows) is one unnamed array (key None) for a single-input model."""
    if p.suffix.lower() in (".csv", ".tsv"):
        from .calibration import read_dataset

        return {None: np.asarray(read_dataset(p, []).inputs["input"])}  # its errors name the row and column
    if p.suffix.lower() == ".npy":
        try:
            return {None: np.load(p, allow_pickle=False)}
        except Exception as e:
            raise InputError(f"{p}: not a readable .npy of inputs: {_first_line(e)}") from None
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k not in ("y", "labels")}
    except Exception as e:
        raise InputError(f"{p}: not a readable .npz of inputs: {_first_line(e)}") from None
    if not arrays:
        raise InputError(f"{p}: no input arrays in the file")
    return arrays


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _match_inputs(p: Path, arrays: dict, model: str, ins) -> dict:
    """arrays keyed by this model's input names, checked by the --calib data rules (edgekit.calibration):
    names, rank, the fixed dims after the sample axis, and no lossy dtype cast."""
    from .artifact import TensorSpec
    from .calibration import _check_array
    from .errors import CalibrationError
    from .runner.edgekit_runner import ORT_DTYPES

    names = [i.name for i in ins]
    if None in arrays and len(ins) != 1:
        raise InputError(f"{p}: a .npy holds one array, but {model} has {len(ins)} inputs ({', '.join(names)}); "
                         "pass an .npz with one array per input name")
    out = {}
    for inp in ins:
        arr = arrays.get(inp.name)
        if arr is None and len(ins) == 1 and len(arrays) == 1:
            arr = next(iter(arrays.values()))
        if arr is None:
            raise InputError(f"{p}: no array for input {inp.name!r} of {model} "
                             f"(the file has {', '.join(sorted(k for k in arrays if k))})")
        spec = TensorSpec(inp.name, [d if isinstance(d, int) else "?" for d in inp.shape],
                          ORT_DTYPES.get(inp.type, str(arr.dtype)))
        try:
            _check_array(f"{p}", inp.name, arr, spec)
        except CalibrationError as e:  # the same rules, worded for the model being profiled
            raise InputError(str(e).replace("the model expects", f"{model} expects")) from None
        out[inp.name] = arr
    return out


def load_inputs(path, models: dict | None = None) -> list[dict]:
    """An .npz with one array per input name (or a .npy for a single-input model), leading axis =
    samples; up to 8 one-sample feed dicts. models: {model path: declared inputs} to check them against."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: inputs file not found")
    arrays = _read_arrays(p)
    for model, ins in (models or {}).items():
        if ins is not None:
            matched = _match_inputs(p, arrays, model, ins)
            if None in arrays:  # name the lone .npy array after the input it feeds
                arrays = matched
    if None in arrays:
        arrays = {"input": arrays.pop(None)}
    n = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
    if len(n) != 1 or 0 in n:
        raise InputError(f"{p}: input arrays must share a leading sample axis (got {sorted(n)})")
    count = min(MAX_INPUT_SAMPLES, n.pop())
    return [{k: v[i:i + 1] for k, v in arrays.items()} for i in range(count)]


def _plan_batches(paths: dict, ins: dict, batches, explicit: bool) -> list:
    """[(requested batch, {batch that runs: [labels]}, {label: unavailable result})] for the sweep.

    A fixed-batch model runs its own batch, and the report must say that batch (throughput is
    batch / latency). Without --batch each model runs its own, grouped so that a run's batch is true
    of every result in it (and the ratios compare like with like). A --batch that a model cannot run
    is an error; in a sweep of several, that point is unavailable with the reason.
    """
    from .runner import edgekit_runner as runner

    plan, conflicts, single = [], [], {}
    for b in batches:
        groups, skipped = {}, {}
        for label, path in paths.items():
            fixed = runner.fixed_batch(ins[label]) if ins[label] is not None else None
            if fixed is not None and fixed > 1 and b != fixed:
                if label not in single:
                    single[label] = _one_sample_per_run(path, fixed)
                if single[label]:  # an unbatched [3, 8, 8] image: the runner times one sample per run
                    fixed = 1
            if explicit and fixed is not None and fixed != b:
                why = runner.batch_conflict(ins[label], b)
                skipped[label] = {"status": "unavailable", "reason": why}
                own = "one sample per run" if single.get(label) else f"batch {fixed}"
                conflicts.append(f"{path}: {why} (leave out --batch to measure it at {own})")
                continue
            groups.setdefault(fixed if fixed is not None else b, []).append(label)
        plan.append((b, groups, skipped))
    if conflicts and (len(batches) == 1 or not any(groups for _, groups, _ in plan)):
        raise UsageError(conflicts[0])
    return plan


def _one_sample_per_run(path, fixed: int) -> bool:
    """Whether the runner times this fixed-axis-0 model as one sample per run: no output keeps its axis 0
    (runner.unbatched_note, on one run of generated inputs). Then batch 1 is what runs, and --batch 1
    (or no --batch) must neither be refused nor grouped as a batch of `fixed`."""
    from .runner import edgekit_runner as runner

    try:  # the declared output shapes settle it without a run, as torch's exports declare them
        import onnx

        outs = [[d.dim_value if d.HasField("dim_value") else None for d in o.type.tensor_type.shape.dim]
                if o.type.tensor_type.HasField("shape") else None  # rank unknown
                for o in onnx.load(str(path), load_external_data=False).graph.output
                if o.type.HasField("tensor_type")]
        if any(sh and sh[0] == fixed for sh in outs):
            return False  # an output keeps axis 0: a real batch
        if outs and all(sh is not None and (not sh or sh[0] is not None) for sh in outs):
            return True  # every tensor output's axis 0 is declared, and none is the input's
    except Exception:
        pass
    try:
        s = runner.open_session(path, ["CPUExecutionProvider"], 1)
        return runner.unbatched_note(s.get_inputs(), s.run(None, runner.make_feeds(s, fixed)), fixed) is not None
    except Exception:  # cannot tell here: the measurement reports what it meets
        return False


def make_prepost(spec, raw_path=None, where: str = "the manifest", inputs=None):
    """A pre/post pipeline from a manifest's prepost spec (edgekit.prepost), with raw samples if given.
    inputs: the model's, as onnxruntime declares them (an image raw input is decoded to their channels)."""
    try:
        from .prepost import Pipeline
        from .prepost.errors import PrepostError
    except ImportError as e:
        raise UsageError(f"--with-prepost needs edgekit.prepost, which is not available: {e}") from None
    try:
        pipe = Pipeline.from_spec(spec)
    except PrepostError as e:  # a folder written before compress checked its spec, or edited by hand
        raise InputError(f"{where}: its prepost spec cannot run: {e}") from None
    return {"pipeline": pipe, "raw": [read_raw(Path(raw_path), spec, inputs)] if raw_path else None}


def _image_channels(spec, inputs) -> int | None:
    """1 or 3: the channels the model's one image input takes (by the spec's layout), else those its
    resize_normalize mean/std name; None when neither says."""
    from .calibration import resize_op

    op = resize_op(spec)
    shape = list(inputs[0].shape) if inputs and len(inputs) == 1 else []
    if len(shape) == 4:
        c = shape[1] if str(op.get("layout", "NCHW")).upper() == "NCHW" else shape[3]
        if c in (1, 3):
            return c
    return 3 if 3 in {len(np.atleast_1d(op.get(k, 0.0))) for k in ("mean", "std")} else None


def read_raw(rp: Path, spec, inputs=None) -> np.ndarray:
    """--raw: an .npy array, or an image file (what a camera gives: the help says 'e.g. an image', and a .png
    was 'not a readable .npy raw input: This file contains pickled (object) data') decoded as 8-bit pixels,
    H x W x C, with the channels the model takes (else those the spec's mean/std name, else the image's own:
    grey stays one channel)."""
    from .calibration import IMAGE_EXTS, _decode

    if rp.suffix.lower() in IMAGE_EXTS:
        channels = _image_channels(spec, inputs)
        if channels is None:
            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(rp) as im:
                    channels = 1 if im.mode in ("L", "1", "I;16", "I;16B", "I;16L") else 3
            except (UnidentifiedImageError, OSError) as e:
                raise InputError(f"{rp}: not a readable image ({e})") from None
        px, px16 = _decode(rp, channels)
        if px is None:
            raise InputError(f"{rp}: 16-bit pixels; the pre-processing reads 8-bit images (give the raw input as "
                             ".npy of uint8)")
        return px
    try:
        with open(rp, "rb") as f:
            magic = f.read(len(np.lib.format.MAGIC_PREFIX))
    except OSError as e:
        raise InputError(f"{rp}: not a readable raw input ({e.strerror or e})") from None
    if magic != np.lib.format.MAGIC_PREFIX:
        raise InputError(f"{rp}: not a .npy file (no NPY header) nor an image ({', '.join(IMAGE_EXTS)}); give "
                         "the raw input as numpy.save writes it, or as an image file")
    try:
        return np.load(rp, allow_pickle=False)
    except Exception as e:
        raise InputError(f"{rp}: not a readable .npy raw input: {e}") from None


def run_profile(artifacts, targets, *, inputs=None, batches=(), threads=(None,), with_prepost=False,
                raw=None, warmup=5, min_runs=30, min_seconds=1.0, max_seconds=30.0, op_profile=True,
                progress=None, ssh=None) -> dict:
    """Profile every artifact on every target for each batch x threads; returns the edgekit.profile/1 report.

    batches: the batches asked for; empty means each model's own (its fixed batch, else 1).
    ssh: edgekit.flash SshOptions for ssh:// targets (default: the user's keys and known_hosts).
    """
    from .profile import profile_models
    from .profile_report import build_report
    from .targets import load_targets

    say = progress or (lambda msg: None)
    if min_seconds > max_seconds:  # the loop stops at max_seconds: a minimum above it is never met
        raise UsageError(f"--min-seconds {min_seconds:g} is more than --max-seconds {max_seconds:g}; "
                         "timing stops at --max-seconds")
    tprofiles = load_targets(targets)  # two of one name would share one report section
    if ssh is not None and any(t.address.startswith("ssh://") for t in tprofiles):
        ssh.check_local_files()  # once, as flash does: per target it read as one "unavailable" per device
    paths, facts, prepost_specs = resolve_artifacts(artifacts)
    ins = {label: declared_inputs(path) for label, path in paths.items()}
    if inputs:
        given = load_inputs(inputs, {paths[k]: v for k, v in ins.items()})
        feeds, origin = {k: given for k in paths}, {k: str(inputs) for k in paths}
    else:
        feeds, origin = run_inputs(artifacts, paths, facts, ins)
        _check_generated(paths, ins, feeds, origin)
    explicit = bool(batches)
    plan = _plan_batches(paths, ins, tuple(batches) or (1,), explicit)
    pipes = {}
    if with_prepost:
        if not prepost_specs:
            raise UsageError("--with-prepost: none of the artifacts has a prepost spec in its manifest.json")
        for label, spec in prepost_specs.items():
            pipes[label] = make_prepost(spec, raw, str(Path(facts[label]["run"]) / "manifest.json"), ins[label])
            # a pipeline without pre steps reads the model's input: time it on real ones when there are any
            pipes[label]["inputs"] = feeds[label] or _sample_inputs(paths[label], ins[label])
    runs = []
    for t in tprofiles:
        for b, groups, skipped in plan:
            for th in threads:
                eff_threads = th if th is not None else t.threads
                for gb, labels in sorted(groups.items()) or [(b, [])]:
                    res = {}
                    for part, part_feeds in _by_inputs(labels, feeds):
                        say(f"{t.name}: {len(part)} artifact(s), batch {gb}, threads {eff_threads or 'default'}")
                        res.update(profile_models({k: paths[k] for k in part}, t, inputs=part_feeds, warmup=warmup,
                                                  min_runs=min_runs, min_seconds=min_seconds,
                                                  max_seconds=max_seconds, op_profile=op_profile,
                                                  threads=eff_threads, batch=gb, ssh=ssh))
                    res = {k: res[k] for k in labels}  # the order given, whatever round measured it
                    for k, r in res.items():
                        if r.get("status") == "ok":
                            r["input_shapes"] = timed_shapes(ins[k], feeds[k], r.get("batch", gb))
                    if gb == b:
                        res.update(skipped)
                    for label, pipe in pipes.items():
                        r = res.get(label)
                        if r and r.get("status") == "ok":
                            r["prepost"] = _prepost(paths[label], pipe, t, eff_threads, warmup, min_runs,
                                                    min_seconds, max_seconds, r.get("batch", gb))
                    runs.append({"target": t.name, "batch": gb, "threads": eff_threads,
                                 "target_info": {"arch": t.arch, "address": t.address, "emulated": t.emulated,
                                                 "providers": [{"name": n, "options": o} for n, o in t.providers],
                                                 "source": t.source},
                                 "results": res})
    settings = {"warmup": warmup, "min_runs": min_runs, "min_seconds": min_seconds, "max_seconds": max_seconds,
                "op_profile": op_profile, "inputs": _inputs_summary(origin), "inputs_by_artifact": origin,
                # without --batch: the batches the models ran (their fixed batch, else 1)
                "batches": list(batches) if explicit else sorted({gb for _, groups, _ in plan for gb in groups}),
                "threads": list(threads), "with_prepost": with_prepost}
    return build_report(runs, facts, settings)


def timed_shapes(declared, feeds, batch: int) -> dict | None:
    """{input name: shape} as timed: a symbolic axis (a sequence length generated at 128, the length of
    the given samples) changes latency, and a p50 without it cannot be compared with another run."""
    from .runner import edgekit_runner as runner

    if declared is None:
        return None
    try:
        if not feeds:
            return {k: list(v) for k, v in runner.feed_shapes(declared, batch).items()}
        b = runner.run_batch(declared, batch)
        out = {}
        for inp in declared:
            shape = list(np.shape(runner.pick_input(declared, feeds[0], inp)))
            if shape:  # axis 0 is set to the batch that ran, as fit_feeds does
                shape[0] = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else b
            out[inp.name] = shape
        return out
    except Exception:  # the measurement itself reports why these inputs did not fit
        return None


def run_inputs(specs, paths: dict, facts: dict, ins: dict) -> tuple[dict, dict]:
    """({label: feed dicts or None}, {label: where its inputs come from}) without --inputs: an artifact of
    an edgekit run is timed on the real inputs that run saved, when they fit every artifact of that run
    given here (one input set per run keeps its ratios like for like); anything else on generated inputs."""
    shown = _shown_runs(specs)
    by_run = {}
    for label, f in facts.items():
        by_run.setdefault(f.get("run"), []).append(label)
    feeds, origin = {}, {}
    for run, labels in by_run.items():
        got, why = _run_samples(shown.get(run, run), labels, paths, ins) if run else (None, GENERATED)
        feeds.update(dict.fromkeys(labels, got))
        origin.update(dict.fromkeys(labels, why))
    return feeds, origin


def _shown_runs(specs) -> dict:
    """{resolved run folder: the folder as the user named it}, so the report says the path they typed."""
    shown = {}
    for s in specs:
        p = Path(s)
        shown.setdefault(str((p if p.is_dir() else p.parent).resolve()), str(p if p.is_dir() else p.parent))
    return shown


def _run_samples(folder: str, labels: list, paths: dict, ins: dict) -> tuple[list | None, str]:
    f = Path(folder) / "sample_inputs.npz"
    if not f.is_file():
        return None, f"{GENERATED} ({folder} has no sample_inputs.npz)"
    try:
        return load_inputs(f, {paths[k]: ins[k] for k in labels}), f"{f} (the run's own)"
    except InputError as e:  # a run's inputs that one of its artifacts cannot take: none of them use them
        return None, f"{GENERATED} (the run's own did not fit: {e})"


def _check_generated(paths: dict, ins: dict, feeds: dict, origin: dict) -> None:
    """An artifact on generated inputs whose sizes cannot be guessed is refused before any timing."""
    from .runner.edgekit_runner import InputsNeeded, feed_shapes

    for label, decl in ins.items():
        if feeds[label] is not None or decl is None:
            continue
        try:
            feed_shapes(decl)
        except InputsNeeded as e:
            why = origin[label].removeprefix(GENERATED)  # why the run's own inputs were not used, if it has any
            raise UsageError(f"{paths[label]}: {e}{why}") from None


def _by_inputs(labels: list, feeds: dict) -> list:
    """[(labels, their feeds)]: one interleaved round per input set, in the order first met."""
    parts = {}
    for k in labels:
        parts.setdefault(id(feeds[k]), ([], feeds[k]))[0].append(k)
    return list(parts.values())


def _inputs_summary(origin: dict) -> str:
    """One line for the report: the inputs, and which artifacts ran on which when they differ."""
    by = {}
    for label, o in origin.items():
        by.setdefault(o, []).append(label)
    if len(by) == 1:
        return next(iter(by))
    return "; ".join(f"{', '.join(labels)}: {o}" for o, labels in by.items())


def _sample_inputs(path, declared) -> list[dict] | None:
    """The real inputs a compress run saved beside its artifacts (OUTDIR/sample_inputs.npz), if they fit."""
    outdir = next((d for d in Path(path).parents if (d / "manifest.json").is_file()), None)
    if outdir is None or declared is None or not (outdir / "sample_inputs.npz").is_file():
        return None
    try:
        return load_inputs(outdir / "sample_inputs.npz", {str(path): declared})
    except InputError:
        return None


def _prepost(path, pipe, t, threads, warmup, min_runs, min_seconds, max_seconds, batch=1):
    from .profile import profile_prepost

    if t.address != "local":
        return {"status": "unavailable", "reason": f"pre/post timing runs on local targets only, not {t.address}"}
    return profile_prepost(path, pipe, threads=threads, providers=list(t.providers), warmup=warmup,
                           min_runs=min_runs, min_seconds=min_seconds, max_seconds=max_seconds,
                           inputs=pipe.get("inputs") if isinstance(pipe, dict) else None, batch=batch)
