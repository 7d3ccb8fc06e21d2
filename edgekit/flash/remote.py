"""Run the bundled runner on a device without changing what it has deployed (on-device benchmarks).

The bundle goes to PATH/.bench/<version>-<nonce>/ (verified by hash, reused while its content
is unchanged), apart from versions/ and `current`, so profiling never alters the active model.
"""
from __future__ import annotations

import json
import posixpath

from ..errors import TargetError
from .bundle import META, RUNNER, Bundle
from .deploy import DeviceResult, Layout, _check_root, _mismatches, _upload, describe
from .devices import Device, parse_device
from .fleet import open_transport
from .transport_ssh import SshOptions

BENCH_AREA = ".bench"


def run_runner(device: Device | str, bundle: Bundle, args, *, ssh: SshOptions | None = None,
               timeout: float = 600.0) -> tuple[int, bytes, bytes, str]:
    """Stage bundle on the device and run `python edgekit_runner.py ARGS` there.

    In args, "{dir}" and "{model}" are replaced by the staged directory and model path.
    Returns (exit code, stdout, stderr, staged directory). Raises TargetError naming the step.
    """
    dev = parse_device(device) if isinstance(device, str) else device
    t = open_transport(dev, ssh or SshOptions())
    try:
        L = Layout(dev.path)
        want = dict(bundle.files)
        want[META] = bundle.meta_sha256()
        step = "upload"
        try:
            _check_root(t, L.root, create_last=True)  # benchmarking an unmounted card must not fill this disk
            stage = _upload(t, L, bundle, want, DeviceResult(device=t.label), None, area=BENCH_AREA)
            step = "verify"
            bad = _mismatches(t.hashes(stage, want), want)
            if bad:
                raise TargetError(f"{len(bad)} file(s) differ on the device: {'; '.join(bad[:3])}")
            step = "run"
            model = posixpath.join(stage, bundle.meta["model"])
            argv = [t.python, posixpath.join(stage, RUNNER)]
            argv += [str(a).replace("{dir}", stage).replace("{model}", model) for a in args]
            rc, out, err = t.run(argv, timeout=timeout)
        except TargetError as e:
            raise TargetError(f"{dev.label}: {step}: {e}") from None
        except Exception as e:
            raise TargetError(f"{dev.label}: {step}: {describe(e)}") from None
        return rc, out, err, stage
    finally:
        try:
            t.close()
        except Exception:
            pass


def bench_on_device(device: Device | str, bundle: Bundle, extra_args=(), *, ssh: SshOptions | None = None,
                    timeout: float = 600.0) -> dict:
    """`edgekit_runner.py bench --model M --inputs selftest.npz ARGS` on the device; its JSON report."""
    args = ["bench", "--model", "{model}", "--inputs", posixpath.join("{dir}", bundle.meta["selftest"]["inputs"]),
            *extra_args]
    rc, out, err, _ = run_runner(device, bundle, args, ssh=ssh, timeout=timeout)
    text = out.decode(errors="replace").strip()
    if rc != 0:
        tail = (err.decode(errors="replace").strip().splitlines() or text.splitlines() or [f"exit {rc}"])[-1]
        raise TargetError(f"{device if isinstance(device, str) else device.label}: bench failed (exit {rc}): {tail}")
    for cand in (text, text.splitlines()[-1] if text else ""):
        try:
            return json.loads(cand)
        except ValueError:
            continue
    raise TargetError(f"bench on {device}: the runner printed no JSON report: {text[-200:]!r}")
