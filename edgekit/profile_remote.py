"""Profile on a device reached over SSH: the same runner, staged in PATH/.bench/, results as JSON.

The models, the runner and the inputs go to a fresh PATH/.bench/profile-<nonce>/ (apart from
versions/ and `current`, so profiling never touches what the device has deployed), the runner
times them interleaved there, and its outputs come back to be checked against this host's.
The stage is removed afterwards. Connection and SSH security come from edgekit.flash
(known host keys verified, key-only auth).
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import tempfile

import numpy as np

from .errors import EdgekitError

BENCH_AREA = ".bench"


def _unavailable(models, reason):
    return {k: {"status": "unavailable", "reason": reason} for k in models}


def profile_ssh(models: dict, target, inputs, *, ssh=None, op_runs=10, warmup=5, min_runs=30,
                min_seconds=1.0, max_seconds=30.0, threads=None, batch=1) -> dict:
    from .crosscheck import attach_comparison, host_feeds
    from .flash.devices import parse_device
    from .flash.fleet import open_transport
    from .flash.transport_ssh import SshOptions
    from .runner import RUNNER_PATH

    dev = parse_device(target.address)
    host, feeds, err = host_feeds(models, inputs, batch, threads)
    if feeds is None:
        return err
    try:
        tr = open_transport(dev, ssh or SshOptions())
    except EdgekitError as e:
        return _unavailable(models, f"cannot reach {dev.label}: {e}")
    stage = posixpath.join(dev.path, BENCH_AREA, f"profile-{os.urandom(6).hex()}")
    step = "upload"
    try:
        tr.makedirs(stage)
        tr.put(str(RUNNER_PATH), posixpath.join(stage, "edgekit_runner.py"))
        remote = {}
        for i, (label, path) in enumerate(models.items()):
            remote[label] = posixpath.join(stage, f"m{i}.onnx")
            tr.put(str(path), remote[label])
        with tempfile.TemporaryDirectory(prefix="edgekit-remote-") as d:
            np.savez(os.path.join(d, "inputs.npz"), **feeds)
            tr.put(os.path.join(d, "inputs.npz"), posixpath.join(stage, "inputs.npz"))
        argv = [tr.python, posixpath.join(stage, "edgekit_runner.py"), "bench", "--always-dict",
                "--inputs", posixpath.join(stage, "inputs.npz"), "--outputs", posixpath.join(stage, "outputs.npz"),
                "--warmup", str(warmup), "--min-runs", str(min_runs), "--min-seconds", str(min_seconds),
                "--max-seconds", str(max_seconds), "--batch", str(batch), "--op-runs", str(op_runs),
                "--keep-nodes", "--providers", json.dumps([{"name": n, "options": o} for n, o in target.providers]),
                "--required", ",".join(target.required_providers)]
        if threads:
            argv += ["--threads", str(threads)]
        for label, rpath in remote.items():
            argv += ["--model", f"{label}={rpath}"]
        step = "run"
        rc, out, errb = tr.run(argv, timeout=600 + 3 * max_seconds * max(1, len(models)))
        text = out.decode(errors="replace").strip()
        try:
            rep = json.loads(text.splitlines()[-1])
        except (ValueError, IndexError):
            tail = (errb.decode(errors="replace").strip().splitlines() or [f"exit {rc}"])[-1]
            hint = " (is Python 3 with numpy and onnxruntime there?)" if rc in (126, 127) else ""
            return {k: {"status": "failed", "reason": f"{dev.label}: runner: {tail[:300]}{hint}"} for k in models}
        if "results" not in rep:
            return {k: {"status": "failed", "reason": f"{dev.label}: runner: {rep.get('reason', rep)}"} for k in models}
        step = "fetch outputs"
        remote_out = {}
        try:
            with np.load(io.BytesIO(tr.read_bytes(posixpath.join(stage, "outputs.npz"))), allow_pickle=False) as z:
                for key in z.files:
                    label, _, name = key.partition("::")
                    remote_out.setdefault(label, {})[name] = z[key]
        except Exception:
            remote_out = {}
    except Exception as e:
        return {k: {"status": "failed", "reason": f"{dev.label}: {step}: {type(e).__name__}: {e}"} for k in models}
    finally:
        try:
            tr.rmtree(stage)
        except Exception:
            pass
        try:
            tr.close()
        except Exception:
            pass
    res = rep["results"]
    for r in res.values():
        if r.get("status") == "ok":
            r.update(emulated=target.emulated, device=dev.label, device_machine=r.pop("machine", None))
            if target.emulated:  # declared in the target: reached over SSH, yet not a device's latency
                r["note"] = "the device is emulated (target says emulated = true): correctness only, not device latency"
            if r["device_machine"] and r["device_machine"] != target.arch:
                r["note"] = "; ".join(filter(None, [r.get("note"), f"target says {target.arch}, "
                                                    f"the device reports {r['device_machine']}"]))
    return attach_comparison(res, host, models, feeds, remote_out)
