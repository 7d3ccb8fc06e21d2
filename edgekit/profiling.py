"""`edgekit profile` as a library call: resolve artifacts, load inputs, sweep targets x batch x threads.

All artifacts are measured together (interleaved) for each (target, batch, threads), so their
ratios on one target are trustworthy on a noisy machine.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError, UsageError

MAX_INPUT_SAMPLES = 8


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
            for a in m.artifacts:
                f = p / a.path
                if not f.is_file():
                    raise InputError(f"{f}: artifact listed in {p / 'manifest.json'} is missing")
                label = f"{p.name}/{a.kind}" if multi_dirs else a.kind
                add(label, f, {"path": str(f), "kind": a.kind, "sha256": a.sha256, "bytes": a.bytes},
                    m.prepost or None)
        elif p.is_file():
            if p.suffix != ".onnx":
                raise InputError(f"{p}: not an .onnx file or an edgekit output directory")
            _check_onnx(p)
            add(p.stem, p, {"path": str(p), "kind": None, "bytes": p.stat().st_size})
        else:
            raise InputError(f"{p}: no such file or directory")
    return paths, facts, prepost


def _check_onnx(p: Path) -> None:
    import onnxruntime as ort

    try:
        so = ort.SessionOptions()
        so.log_severity_level = 4
        ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise InputError(f"{p}: onnxruntime cannot load this model: {msg}") from None


def load_inputs(path) -> list[dict]:
    """An .npz with one array per input name, leading axis = samples; up to 8 one-sample feed dicts."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: inputs file not found")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if k not in ("y", "labels")}
    except Exception as e:
        raise InputError(f"{p}: not a readable .npz of inputs: {e}") from None
    if not arrays:
        raise InputError(f"{p}: no input arrays in the file")
    n = {a.shape[0] if a.ndim else 0 for a in arrays.values()}
    if len(n) != 1 or 0 in n:
        raise InputError(f"{p}: input arrays must share a leading sample axis (got {sorted(n)})")
    count = min(MAX_INPUT_SAMPLES, n.pop())
    return [{k: v[i:i + 1] for k, v in arrays.items()} for i in range(count)]


def make_prepost(spec, raw_path=None):
    """A pre/post pipeline from a manifest's prepost spec (edgekit.prepost), with raw samples if given."""
    try:
        from .prepost import Pipeline
    except ImportError as e:
        raise UsageError(f"--with-prepost needs edgekit.prepost, which is not available: {e}") from None
    pipe = Pipeline.from_spec(spec)
    raw = None
    if raw_path:
        rp = Path(raw_path)
        try:
            raw = [np.load(rp, allow_pickle=False)]
        except Exception as e:
            raise InputError(f"{rp}: not a readable .npy raw input: {e}") from None
    return {"pipeline": pipe, "raw": raw}


def run_profile(artifacts, targets, *, inputs=None, batches=(1,), threads=(None,), with_prepost=False,
                raw=None, warmup=5, min_runs=30, min_seconds=1.0, max_seconds=30.0, op_profile=True,
                progress=None) -> dict:
    """Profile every artifact on every target for each batch x threads; returns the edgekit.profile/1 report."""
    from .profile import profile_models
    from .profile_report import build_report
    from .targets import load_target

    say = progress or (lambda msg: None)
    paths, facts, prepost_specs = resolve_artifacts(artifacts)
    tprofiles = [load_target(t) for t in targets]
    feeds = load_inputs(inputs) if inputs else None
    pipes = {}
    if with_prepost:
        if not prepost_specs:
            raise UsageError("--with-prepost: none of the artifacts has a prepost spec in its manifest.json")
        for label, spec in prepost_specs.items():
            pipes[label] = make_prepost(spec, raw)
    runs = []
    for t in tprofiles:
        for b in batches:
            for th in threads:
                eff_threads = th if th is not None else t.threads
                say(f"{t.name}: {len(paths)} artifact(s), batch {b}, threads {eff_threads or 'default'}")
                res = profile_models(paths, t, inputs=feeds, warmup=warmup, min_runs=min_runs,
                                     min_seconds=min_seconds, max_seconds=max_seconds, op_profile=op_profile,
                                     threads=eff_threads, batch=b)
                for label, pipe in pipes.items():
                    r = res.get(label)
                    if r and r.get("status") == "ok":
                        r["prepost"] = _prepost(paths[label], pipe, t, eff_threads, warmup, min_runs,
                                                min_seconds, max_seconds)
                runs.append({"target": t.name, "batch": b, "threads": eff_threads,
                             "target_info": {"arch": t.arch, "address": t.address, "emulated": t.emulated,
                                             "providers": [{"name": n, "options": o} for n, o in t.providers],
                                             "source": t.source},
                             "results": res})
    settings = {"warmup": warmup, "min_runs": min_runs, "min_seconds": min_seconds, "max_seconds": max_seconds,
                "op_profile": op_profile, "inputs": str(inputs) if inputs else "generated (seeded, right shape)",
                "batches": list(batches), "threads": list(threads), "with_prepost": with_prepost}
    return build_report(runs, facts, settings)


def _prepost(path, pipe, t, threads, warmup, min_runs, min_seconds, max_seconds):
    from .profile import profile_prepost

    if t.address != "local":
        return {"status": "unavailable", "reason": f"pre/post timing runs on local targets only, not {t.address}"}
    return profile_prepost(path, pipe, threads=threads, providers=list(t.providers), warmup=warmup,
                           min_runs=min_runs, min_seconds=min_seconds, max_seconds=max_seconds)
