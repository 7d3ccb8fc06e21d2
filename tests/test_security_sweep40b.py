"""sweep40 F3-F6: a device's or a run folder's files are input, never trusted whole. A device's history.json
or bundle.json that is a link or a FIFO is not read (F3); a manifest's artifact paths stay inside the run
folder and carry a hash (F4); a malformed manifest is a one-line input error naming the field (F5); two
runs' plots never share a file name (F6)."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from flash_fixtures import make_outdir


def _main_exit(args, capsys) -> tuple[int, str]:
    from tests.cliutil import run_cli

    return run_cli(args), capsys.readouterr().err


def _edit_manifest(outdir: Path, edit) -> Path:
    p = outdir / "manifest.json"
    m = json.loads(p.read_text())
    edit(m)
    p.write_text(json.dumps(m))
    return outdir


# ---- F4: artifacts stay inside the run folder and carry a hash

@pytest.fixture
def outside_model(tmp_path):
    """A model outside any run folder: what a hostile manifest would make edgekit pack or time."""
    src = make_outdir(tmp_path / "elsewhere")
    return src / "model.fp32.onnx"


def _art(**fields):
    return lambda m: m["artifacts"][0].update(fields)


@pytest.mark.parametrize("command", ["bundle", "profile"])
@pytest.mark.parametrize("case", ["absolute", "dotdot"])
def test_an_artifact_path_outside_the_run_folder_is_refused(tmp_path, outside_model, capsys, command, case):
    path = str(outside_model) if case == "absolute" else f"../elsewhere/{outside_model.name}"
    out = _edit_manifest(make_outdir(tmp_path / "out"), _art(path=path, sha256=None))
    args = [command, str(out)] + (["-o", str(tmp_path / "b.ekb")] if command == "bundle" else
                                  ["--max-seconds", "0.05", "--min-runs", "1"])
    code, err = _main_exit(args, capsys)
    assert code == 2, err
    assert f"{out / 'manifest.json'}: artifacts[0].path: {path!r}" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b.ekb").exists()


def test_an_artifact_linked_out_of_the_run_folder_is_refused(tmp_path, outside_model, capsys):
    out = make_outdir(tmp_path / "out")
    (out / "model.fp32.onnx").unlink()
    (out / "model.fp32.onnx").symlink_to(outside_model)
    _edit_manifest(out, _art(sha256=json.loads((outside_model.parent / "manifest.json").read_text())
                             ["artifacts"][0]["sha256"]))  # the link's target hashes as recorded
    code, err = _main_exit(["bundle", str(out), "-o", str(tmp_path / "b.ekb")], capsys)
    assert code == 2 and "model.fp32.onnx (fp32) leads outside the run folder" in err, err
    assert not (tmp_path / "b.ekb").exists()


@pytest.mark.parametrize("command", ["bundle", "profile"])
def test_an_artifact_without_a_sha256_is_refused(tmp_path, capsys, command):
    out = _edit_manifest(make_outdir(tmp_path / "out"), _art(sha256=None))
    args = [command, str(out)] + (["-o", str(tmp_path / "b.ekb")] if command == "bundle" else
                                  ["--max-seconds", "0.05", "--min-runs", "1"])
    code, err = _main_exit(args, capsys)
    assert code == 2, err
    assert f"{out / 'manifest.json'}: artifact model.fp32.onnx (fp32) records no sha256" in err


# ---- F5: a malformed manifest is an input error naming the file and the field

MALFORMED = {
    "stage status": (lambda m: m["stages"].append({"name": "export", "status": "ok"}),
                     "stages[0].status: 'ok' is not one of done, skipped, not-applicable, failed"),
    "bytes a string": (_art(bytes="x"), "artifacts[0].bytes: 'x' is not an int"),
    "stages an object": (lambda m: m.__setitem__("stages", {"a": 1}), "stages: {'a': 1} is not a list"),
    "artifact not an object": (lambda m: m["artifacts"].insert(0, "model.onnx"),
                               "artifacts[0]: 'model.onnx' is not a dict"),
    "kind unknown": (_art(kind="int3"), "artifacts[0].kind: 'int3' is not one of"),
    "path missing": (lambda m: m["artifacts"][0].pop("path"), "artifacts[0].path: missing"),
    "source a list": (lambda m: m.__setitem__("source", []), "source: [] is not a dict"),
    "latency a list": (_art(latency=[1]), "artifacts[0].latency: [1] is not a dict"),
}


@pytest.mark.parametrize("command", ["report", "bundle", "profile", "flash"])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_manifest_is_an_input_error_naming_the_field(tmp_path, capsys, monkeypatch, command, case):
    monkeypatch.chdir(tmp_path)
    edit, field = MALFORMED[case]
    out = _edit_manifest(make_outdir(tmp_path / "out"), edit)
    args = {"report": ["report", str(out), "-o", str(tmp_path / "r.html")],
            "bundle": ["bundle", str(out), "-o", str(tmp_path / "b.ekb")],
            "profile": ["profile", str(out), "--max-seconds", "0.05", "--min-runs", "1"],
            "flash": ["flash", str(out), "--device", str(tmp_path / "dev")]}[command]
    code, err = _main_exit(args, capsys)
    assert code == 2, err
    assert f"edgekit: error: {out / 'manifest.json'}: {field}" in err
    assert "internal error" not in err and len(err.strip().splitlines()) == 1


def test_a_manifest_that_is_not_an_object_is_an_input_error(tmp_path, capsys):
    out = make_outdir(tmp_path / "out")
    (out / "manifest.json").write_text("[1, 2]")
    code, err = _main_exit(["bundle", str(out), "-o", str(tmp_path / "b.ekb")], capsys)
    assert code == 2 and "manifest.json: not an edgekit manifest" in err, err


# ---- F6: runs whose labels slug alike keep their own plots

def _timed(outdir: Path) -> Path:
    """outdir with an ok latency on this host for each artifact, as `compress` records one."""
    samples = [0.031, 0.029, 0.035, 0.030, 0.041, 0.033]

    def edit(m):
        for i, a in enumerate(m["artifacts"]):
            a["latency"] = {"x86-laptop": {
                "target": "x86-laptop", "status": "ok", "emulated": False, "address": "local", "arch": "x86_64",
                "provider": "CPUExecutionProvider", "p50_ms": 0.031 + i, "p90_ms": 0.04 + i, "p99_ms": 0.05 + i,
                "mean_ms": 0.033 + i, "min_ms": 0.029 + i, "max_ms": 0.041 + i, "runs": len(samples),
                "samples_ms": [s + i for s in samples], "op_breakdown": {"MatMul": 0.02, "Add": 0.01},
                "threads": None, "batch": 1}}
        m["profile"] = {"x86-laptop": {"address": "local", "arch": "x86_64"}}
    return _edit_manifest(outdir, edit)


@pytest.mark.slow  # renders HTML and Markdown with 4 plots: ~10-25 s on a loaded 2-core host
def test_runs_whose_labels_slug_alike_keep_their_own_plots(tmp_path, capsys, monkeypatch):
    import re

    monkeypatch.chdir(tmp_path)
    a = _timed(make_outdir(tmp_path / "r a", int8_too=True))
    b = _timed(make_outdir(tmp_path / "r-a", int8_too=True, seed=5))
    code, err = _main_exit(["report", a.name, b.name, "-o", "slug.html", "--markdown", "slug.md"], capsys)
    assert code == 0, err
    md = (tmp_path / "slug.md").read_text()
    links = re.findall(r"\]\((slug_files/[^)]+\.png)\)", md)
    assert len(links) >= 4 and len(set(links)) == len(links), links  # each run's dist and ops plots
    assert sorted(os.listdir(tmp_path / "slug_files")) == sorted(Path(x).name for x in links)
    html = (tmp_path / "slug.html").read_text()
    ids = re.findall(r'<figure id="([^"]+)"', html)
    assert len(ids) == len(links) and len(set(ids)) == len(ids), ids
    svg_ids = re.findall(r'\sid="([^"]+)"', html)
    assert len(set(svg_ids)) == len(svg_ids)  # the SVGs' own ids are salted by the plot key


# ---- F3: a device's history.json and bundle.json are read only as bounded regular files

@pytest.fixture(scope="module")
def vs(tmp_path_factory):
    from flash_fixtures import bundles_for_seeds

    root = tmp_path_factory.mktemp("sweep40b")
    return bundles_for_seeds(root, range(1)) + [root / "v0.ekb"]  # the bundle, and its .ekb for the CLI


def _limited_memory():
    # without the fix a link to /dev/zero is read until memory runs out: let it fail at 2 GB, not the host
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def _edgekit(*args, timeout=60):
    """`edgekit ARGS` in a child with bounded memory and time: (exit status, stdout, stderr), 124 on a hang."""
    try:
        r = subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True,
                           timeout=timeout, preexec_fn=_limited_memory)
    except subprocess.TimeoutExpired:
        return 124, "", "timed out"
    return r.returncode, r.stdout, r.stderr


def _make_special(path: Path, what: str) -> None:
    path.unlink()
    if what == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif what == "fifo":
        os.mkfifo(path)
    else:  # a regular file over the 16 MiB limit (a JSON string, so it would parse)
        with open(path, "w") as f:
            f.write('"' + "x" * ((16 << 20) + 10) + '"')


def _flashed(dev: Path, vs) -> Path:
    from edgekit.flash import collect_devices, flash_many

    assert flash_many(collect_devices([str(dev)]), vs[0])[0].status == "flashed"
    return dev / "versions" / vs[0].version


SPECIAL = ["link to /dev/zero", "fifo", "too large"]
WHY = {"link to /dev/zero": "is not a regular file (a symlink)", "fifo": "is not a regular file (a FIFO)",
       "too large": "is larger than 16 MiB; edgekit reads no more of it"}


def _status_json(address: str, *extra):
    rc, out, err = _edgekit("devices", "status", "--device", address, "--json", *extra)
    assert rc in (0, 1) and out, (rc, err[-500:])
    return rc, json.loads(out)["devices"][0]


@pytest.mark.parametrize("what", SPECIAL)
def test_status_reports_a_special_bundle_json_as_that_versions_problem(tmp_path, vs, what):
    vdir = _flashed(tmp_path / "dev", vs)
    _make_special(vdir / "bundle.json", what)
    rc, dev = _status_json(str(tmp_path / "dev"))
    (v,) = dev["versions"]
    assert rc == 1 and v["intact"] is False and not dev["healthy"]
    assert v["problems"] == [f"{vs[0].version}/bundle.json {WHY[what]}"]


@pytest.mark.parametrize("what", SPECIAL)
def test_a_special_history_json_is_a_damaged_history(tmp_path, vs, what):
    vdir = _flashed(tmp_path / "dev", vs)
    _make_special(tmp_path / "dev" / "history.json", what)
    rc, dev = _status_json(str(tmp_path / "dev"))
    assert rc == 0 and dev["healthy"] and dev["versions"][0]["intact"]
    # flash reads it too: a warning, and the history is rebuilt from the folders' times
    rc, out, err = _edgekit("flash", str(vs[1]), "--device", str(tmp_path / "dev"), "--json")
    res = json.loads(out)["results"][0]
    assert rc == 0 and res["status"] == "up-to-date", err[-500:]
    assert res["warnings"] == [f"{tmp_path / 'dev' / 'history.json'} {WHY[what]}; the install order was taken "
                               f"from the version directories' times ({vdir.name}, oldest first)"]


def test_over_ssh_special_device_files_are_not_read(tmp_path, vs):
    from sshd import start_sshd

    fifo, big = tmp_path / "fifo", tmp_path / "big"
    _make_special(_flashed(fifo, vs) / "bundle.json", "fifo")
    _make_special(fifo / "history.json", "link to /dev/zero")  # the SFTP server follows links when it opens
    _make_special(_flashed(big, vs) / "bundle.json", "too large")
    srv = start_sshd(tmp_path / "sshd")
    try:
        login = ("--identity", str(srv.user_key), "--known-hosts", str(srv.known_hosts),
                 "--remote-python", sys.executable)
        got = {d: _status_json(srv.address(str(d)), *login) for d in (fifo, big)}
    finally:
        srv.stop()
    for d, what in ((fifo, "fifo"), (big, "too large")):
        rc, dev = got[d]
        assert rc == 1 and dev["versions"][0]["problems"] == [f"{vs[0].version}/bundle.json {WHY[what]}"]
