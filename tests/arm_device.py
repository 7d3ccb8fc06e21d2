"""An ARM "device" on 127.0.0.1: the real sshd of tests/sshd.py, whose sessions run aarch64 Python.

sshd's ChrootDirectory cannot point under /tmp, so a ForceCommand wrapper runs each session's
command (SSH_ORIGINAL_COMMAND, run with `/bin/sh -c` as sshd runs commands) with a
directory first on PATH whose `python3` is the arm64 rootfs's Python under qemu-aarch64-static,
with edgekit.emulation's own argv and environment (QEMU_CPU=cortex-a72, matching the fake
Cortex-A72 cpuinfo the rootfs carries). SFTP requests go to sftp-server unchanged: ForceCommand
applies to subsystems too. The device's files are plain host files under the test's tmp dir:
qemu's -L prefix only redirects paths that exist inside the rootfs.

Also a tiny real model for it: a CNN trained for a second on scikit-learn's digits, exported
to ONNX, with an INT8 QDQ twin, in an edgekit OUTDIR (manifest + sample_inputs.npz).
"""
from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import numpy as np

from edgekit import emulation
from sshd import SshServer, start_sshd

SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server", "/usr/libexec/sftp-server")

WRAPPER = """#!/bin/sh
# ForceCommand of the ARM test device: sshd runs this for every session of every client.
case "$SSH_ORIGINAL_COMMAND" in
  internal-sftp|internal-sftp\\ *|*/sftp-server|*/sftp-server\\ *) exec {sftp} ;;
  "") echo "the ARM test device runs commands, it offers no login shell" >&2; exit 1 ;;
esac
PATH={bindir}:$PATH
export PATH
# /bin/sh, not the login shell: bash run by sshd reads ~/.bashrc, which may put another python3 first
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
"""


def _executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def write_python_shim(bindir: Path, rootfs: Path, home: Path) -> Path:
    """bindir/python3: exec the rootfs's aarch64 python3 under qemu with edgekit.emulation's environment."""
    bindir.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    lines = ["#!/bin/sh", "# python3 of the ARM test device: the arm64 rootfs's Python under qemu-user"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in emulation.qemu_env(rootfs, home=str(home)).items()]
    lines.append(f'exec {shlex.join(emulation.qemu_argv(rootfs, []))} "$@"')
    return _executable(bindir / "python3", "\n".join(lines) + "\n")


def start_arm_device(root: Path, rootfs: Path, env: dict | None = None) -> SshServer:
    """sshd on 127.0.0.1 whose `python3` is aarch64 (see the module doc); files, keys and logs under root."""
    sftp = next((p for p in SFTP_SERVERS if os.access(p, os.X_OK)), None)
    if sftp is None:
        raise RuntimeError(f"no sftp-server binary (looked at {', '.join(SFTP_SERVERS)}): install openssh-server")
    root.mkdir(parents=True, exist_ok=True)
    bindir = root / "arm-bin"
    write_python_shim(bindir, rootfs, root / "device-home")
    wrapper = _executable(root / "arm-session.sh", WRAPPER.format(sftp=shlex.quote(sftp),
                                                                   bindir=shlex.quote(str(bindir))))
    if any(c.isspace() or c in "\"'\\" for c in str(wrapper)):  # sshd_config takes the rest of the line
        raise RuntimeError(f"{wrapper}: the ForceCommand path must not contain spaces or quotes")
    return start_sshd(root / "server", env=env, extra_config=[f"ForceCommand {wrapper}"])


# ---------------------------------------------------------------- a tiny real model


def digits_split():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # (n, 1, 8, 8)
    return (x[:1500], d.target[:1500]), (x[1500:], d.target[1500:])


def _fit(data, epochs: int, seed: int):
    import torch
    from torch import nn

    (xtr, ytr), (xte, yte) = data
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr).long()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
    return model, acc


def train_digits_cnn(outdir: Path, *, epochs: int = 6, seed: int = 0) -> dict:
    """A small CNN trained on digits (about a second), exported to model.fp32.onnx, its INT8 QDQ twin
    model.int8.onnx, real held-out digits in sample_inputs.npz, and a manifest: an edgekit OUTDIR."""
    import torch

    from edgekit.artifact import Artifact, Manifest
    from edgekit.onnxutil import graph_facts
    from profile_models import quantize_qdq

    torch.manual_seed(seed)
    data = digits_split()
    (xtr, _), (xte, yte) = data
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on 2 shared cores, intra-op threads make this tiny model ~20x slower
    try:
        model, acc = _fit(data, epochs, seed)
    finally:
        torch.set_num_threads(threads)
    outdir.mkdir(parents=True, exist_ok=True)
    fp32 = outdir / "model.fp32.onnx"
    torch.onnx.export(model, (torch.from_numpy(xte[:1]),), str(fp32), input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    int8 = quantize_qdq(fp32, outdir / "model.int8.onnx", xtr[:64])
    np.savez(outdir / "sample_inputs.npz", x=xte[:8])
    arts = []
    for kind, p in (("fp32", fp32), ("int8", Path(int8))):
        facts = graph_facts(p)
        a = Artifact(kind=kind, path=p.name, stage="export" if kind == "fp32" else "quantize",
                     inputs=facts["inputs"], outputs=facts["outputs"], opset=facts["opset"], params=facts["params"])
        a.refresh_file_facts(outdir)
        arts.append(a)
    rec = {"host": {"status": "ok", "path": "model.int8.onnx", "kind": "int8", "reason": "test"}}
    Manifest(source={"spec": "tests:digits-cnn"}, artifacts=arts, recommended=rec,
             prepost={"pre": [], "post": [{"op": "softmax_topk", "k": 3}]}).write(outdir)
    return {"outdir": outdir, "fp32": str(fp32), "int8": str(int8), "accuracy": acc, "x_test": xte, "y_test": yte}


def rootfs_fixture():
    """Generator for a module fixture: the cached arm64 rootfs's status (emulation.setup's), built on first
    use (~35 s-1 min, ~450 MB). CI keeps it under EDGEKIT_CACHE (built once per run); without that variable
    a rootfs built here lives in the session's temp cache and is removed after."""
    built_here = not emulation.status()["ready"]
    st = emulation.setup(progress=lambda m: print(f"[arm64-emulated] {m}", flush=True))
    assert st["ready"] and st["machine"] == "aarch64", st
    yield st
    if built_here and not os.environ.get("EDGEKIT_CACHE"):
        shutil.rmtree(emulation.rootfs_path(), ignore_errors=True)
