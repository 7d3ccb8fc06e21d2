"""Profile on a device reached over SSH: the same runner, staged in PATH/.bench/, results as JSON.

The models, the runner and the inputs go to a fresh PATH/.bench/profile-<nonce>/ (apart from
versions/ and `current`, so profiling never touches what the device has deployed), the runner
times them interleaved there, and its outputs come back to be checked against this host's. Each
model gets a folder of its own there, with the external data files it references.
The stage is removed afterwards. Connection and SSH security come from edgekit.flash
(known host keys verified, key-only auth).
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import tempfile

from .errors import EdgekitError

BENCH_AREA = ".bench"


def _unavailable(models, reason):
    return {k: {"status": "unavailable", "reason": reason} for k in models}


def external_data(path) -> list[str]:
    """Relative paths of the external data files an ONNX model references (beside it, as onnxruntime
    looks them up); [] when it has none or onnx cannot read it."""
    try:
        import onnx

        m = onnx.load(str(path), load_external_data=False)
    except Exception:
        return []
    found = []
    graphs = [m.graph]
    while graphs:
        g = graphs.pop()
        tensors = list(g.initializer) + [a.t for n in g.node for a in n.attribute if a.HasField("t")]
        graphs += [a.g for n in g.node for a in n.attribute if a.HasField("g")]
        graphs += [sub for n in g.node for a in n.attribute for sub in a.graphs]
        for t in tensors:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                loc = next((e.value for e in t.external_data if e.key == "location"), None)
                if loc and loc not in found:
                    found.append(loc)
    return found


def _stage_model(tr, path, remote_dir: str) -> str:
    """Upload a model and its external data files into remote_dir; the model's remote path."""
    tr.makedirs(remote_dir)
    remote = posixpath.join(remote_dir, os.path.basename(str(path)))
    tr.put(str(path), remote)
    here = os.path.dirname(os.path.abspath(str(path)))
    for loc in external_data(path):
        rel = posixpath.normpath(loc.replace(os.sep, "/"))
        src = os.path.join(here, *rel.split("/"))
        if rel.startswith("../") or posixpath.isabs(rel) or not os.path.isfile(src):
            continue  # onnxruntime refuses data outside the model's folder, and says which file
        if posixpath.dirname(rel):
            tr.makedirs(posixpath.join(remote_dir, posixpath.dirname(rel)))
        tr.put(src, posixpath.join(remote_dir, rel))
    return remote


# The stop mark goes down before the pid file is read, and the runner looks for it after writing its pid
# file: so a Ctrl-C in the runner's first moment (still importing, no pid file yet) stops it too.
_KILL = ("import os, signal, sys\nopen(sys.argv[1] + '.stop', 'w').close()\ntry:\n"
         "    os.kill(int(open(sys.argv[1]).read()), signal.SIGTERM)\nexcept (OSError, ValueError):\n    pass\n")


def profile_ssh(models: dict, target, inputs, *, ssh=None, op_runs=10, warmup=5, min_runs=30,
                min_seconds=1.0, max_seconds=30.0, threads=None, batch=1, settle=True) -> dict:
    from .crosscheck import attach_comparison, feeds_npz, host_feeds, read_outputs, runner_labels
    from .flash.devices import parse_device
    from .flash.fleet import open_transport
    from .flash.transport_ssh import SshOptions
    from .runner import RUNNER_PATH

    dev = parse_device(target.address)
    host, feeds, failed = host_feeds(models, inputs, batch, threads)
    todo = {k: v for k, v in models.items() if k not in failed}
    if not todo:
        return failed
    alias = runner_labels(todo)
    try:
        tr = open_transport(dev, ssh or SshOptions())
    except EdgekitError as e:
        return {**_unavailable(todo, f"cannot reach {dev.label}: {e}"), **failed}
    stage = posixpath.join(dev.path, BENCH_AREA, f"profile-{os.urandom(6).hex()}")
    pid_file = posixpath.join(stage, "runner.pid")
    step = "upload"
    try:
        tr.makedirs(stage)
        tr.put(str(RUNNER_PATH), posixpath.join(stage, "edgekit_runner.py"))
        # a folder per model: each one's external data files sit beside it under the names it references
        remote = {m: _stage_model(tr, todo[label], posixpath.join(stage, m)) for m, label in alias.items()}
        with tempfile.TemporaryDirectory(prefix="edgekit-remote-") as d:
            feeds_npz(os.path.join(d, "inputs.npz"), {k: v for k, v in feeds.items() if k in todo}, alias)
            tr.put(os.path.join(d, "inputs.npz"), posixpath.join(stage, "inputs.npz"))
        argv = [tr.python, posixpath.join(stage, "edgekit_runner.py"), "bench", "--always-dict",
                "--inputs", posixpath.join(stage, "inputs.npz"), "--outputs", posixpath.join(stage, "outputs.npz"),
                "--warmup", str(warmup), "--min-runs", str(min_runs), "--min-seconds", str(min_seconds),
                "--max-seconds", str(max_seconds), "--batch", str(batch), "--op-runs", str(op_runs),
                "--keep-nodes", "--providers", json.dumps([{"name": n, "options": o} for n, o in target.providers]),
                "--required", ",".join(target.required_providers), "--pid-file", pid_file]
        if threads:
            argv += ["--threads", str(threads)]
        if not settle:
            argv.append("--no-settle")
        for m, rpath in remote.items():
            argv += ["--model", f"{m}={rpath}"]
        step = "run"
        try:
            rc, out, errb = tr.run(argv, timeout=600 + 3 * max_seconds * max(1, len(todo)))
        except BaseException:
            # Ctrl-C or a timeout ends only this side's channel; the runner would time on, loading the device
            try:
                tr.run([tr.python, "-c", _KILL, pid_file], timeout=30)
            except Exception:
                pass
            raise
        text = out.decode(errors="replace").strip()
        try:
            rep = json.loads(text.splitlines()[-1])
        except (ValueError, IndexError):
            tail = (errb.decode(errors="replace").strip().splitlines() or [f"exit {rc}"])[-1]
            hint = " (is Python 3 with numpy and onnxruntime there?)" if rc in (126, 127) else ""
            return {**{k: {"status": "failed", "reason": f"{dev.label}: runner: {tail[:300]}{hint}"} for k in todo},
                    **failed}
        if "results" not in rep:
            return {**{k: {"status": "failed", "reason": f"{dev.label}: runner: {rep.get('reason', rep)}"}
                       for k in todo}, **failed}
        step = "fetch outputs"
        try:
            remote_out = read_outputs(io.BytesIO(tr.read_bytes(posixpath.join(stage, "outputs.npz"))), alias)
        except Exception:
            remote_out = {}
    except Exception as e:
        return {**{k: {"status": "failed", "reason": f"{dev.label}: {step}: {type(e).__name__}: {e}"} for k in todo},
                **failed}
    finally:
        try:
            tr.rmtree(stage)
        except Exception:
            pass
        try:
            tr.close()
        except Exception:
            pass
    res = {alias.get(k, k): v for k, v in rep["results"].items()}
    for r in res.values():
        if r.get("status") == "ok":
            r.update(emulated=target.emulated, device=dev.label, device_machine=r.pop("machine", None))
            if target.emulated:  # declared in the target: reached over SSH, yet not a device's latency
                r["note"] = "the device is emulated (target says emulated = true): correctness only, not device latency"
            if r["device_machine"] and r["device_machine"] != target.arch:
                r["note"] = "; ".join(filter(None, [r.get("note"), f"target says {target.arch}, "
                                                    f"the device reports {r['device_machine']}"]))
    res.update(failed)
    return attach_comparison(res, host, models, feeds, remote_out)
